"""``fpt-monai train | evaluate | infer``: the packaged MONAI bundle's workflows without typing config lists.

Each builds the ``python -m monai.bundle run`` command a user would type (the same configs, in the same order, with
the same settings) and runs it, so that everything documented for the bundle holds: ``--key value`` pairs that are
not options of this command are bundle settings (``--epochs 30``, ``--pretrained w.safetensors``,
``--tracking mlflow``), and ``--print-command`` shows the MONAI command instead of running it::

    fpt-monai train --bundle_root runs/my_fpt --dataset_dir my_images --preset dinov2_s14 --preset small_data \\
        --pretrained dinov2_vits14.safetensors --tracking mlflow
    # = python -m monai.bundle run training --config_file "['<pkg>/bundle/configs/train.yaml',
    #       '<pkg>/configs/backbones/dinov2_s14.yaml','<pkg>/configs/recipes/small_data.yaml']" --bundle_root ...

Presets are the packaged ``configs/<group>/<name>.yaml`` (by ``name`` or ``group/name``) or any YAML file.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["bundle_command", "build_parser", "evaluate", "infer", "train"]

#: workflow -> (the bundle's configs before the presets, MONAI's runner id, what it does)
WORKFLOWS = {
    "train": (("train.yaml",), "training", "train with the packaged bundle (train.yaml, then the presets in order)"),
    "evaluate": (
        ("train.yaml", "evaluate.yaml"),
        "run",
        "evaluate a trained bundle's best and final weights on its test split (every model setting is read from "
        "the bundle's record)",
    ),
    "infer": (("inference.yaml",), "run", "classify a file, a folder or a datalist with a trained bundle"),
}
_STACK_BYTES = 32 * 2**20  # the stack holoscan (imported by `import monai`) asks for; see docs/operations.md


def build_parser(workflow: str) -> argparse.ArgumentParser:
    configs, _, text = WORKFLOWS[workflow]
    p = argparse.ArgumentParser(
        prog=f"fpt-monai {workflow}",
        description=f"{text}. Options not listed here are bundle settings, passed on as --key value "
        "(e.g. --epochs 30 --batch_size 16 --tracking mlflow); see bundle/docs/README.md.",
    )
    p.add_argument("--bundle_root", "--bundle-root", dest="bundle_root", required=True, help="the bundle's folder")
    if workflow == "train":
        p.add_argument(
            "--preset",
            action="append",
            default=[],
            help="a packaged preset (small_data, dinov2_s14, recipes/small_data, ...) or a YAML file; repeatable, "
            "merged in order after train.yaml",
        )
    p.add_argument("--config", action="append", default=[], help="another config file merged last (repeatable)")
    p.add_argument("--print-command", action="store_true", help="print the MONAI command instead of running it")
    return p


def _settings(rest: list[str], p: argparse.ArgumentParser) -> list[str]:
    """The bundle settings among the unparsed arguments: ``--key value`` or ``--key=value`` pairs."""
    out, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or len(arg) < 3:
            p.error(f"unexpected argument {arg!r}: bundle settings are given as --key value")
        if "=" in arg:
            key, value = arg.split("=", 1)
            out += [key, value]
            i += 1
            continue
        if i + 1 >= len(rest) or (rest[i + 1].startswith("--") and len(rest[i + 1]) > 2):
            p.error(f"{arg} needs a value (bundle settings are --key value, e.g. {arg} true)")
        out += [arg, rest[i + 1]]
        i += 2
    return out


def bundle_command(workflow: str, argv: Sequence[str]) -> tuple[list[str], bool, bool]:
    """The ``python -m monai.bundle run`` command for ``argv``, whether it runs only this package's configs, and
    whether only to print it (argument errors exit here, before anything heavy is imported)."""
    p = build_parser(workflow)
    args, rest = p.parse_known_args(list(argv))
    settings = _settings(rest, p)
    from fpt_monai.utils.bundle_files import bundle_config, resolve_preset

    configs, runner, _ = WORKFLOWS[workflow]
    files = [str(bundle_config(name)) for name in configs]
    try:
        files += [str(resolve_preset(name)) for name in getattr(args, "preset", [])]
    except ValueError as err:
        p.error(str(err))
    for extra in args.config:
        if not os.path.isfile(extra):
            p.error(f"--config {extra}: no such file")
        files.append(extra)
    cmd = [sys.executable, "-m", "monai.bundle", "run", runner, "--config_file", repr(files)]
    cmd += ["--bundle_root", args.bundle_root, *settings]
    return cmd, not args.config, args.print_command


def _raise_stack_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < _STACK_BYTES:
        target = _STACK_BYTES if hard == resource.RLIM_INFINITY else min(_STACK_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_STACK, (target, hard))


def _run(workflow: str, argv: Sequence[str] | None) -> int:
    cmd, ours_only, print_only = bundle_command(workflow, sys.argv[1:] if argv is None else argv)
    if print_only:
        print(shlex.join(cmd))
        return 0
    env = dict(os.environ)
    if ours_only:  # MONAI's notice that configs run code concerns other configs than this package's own
        env["PYTHONWARNINGS"] = ",".join(
            filter(None, [env.get("PYTHONWARNINGS"), "ignore:parsing config_file:UserWarning"])
        )
    preexec = _raise_stack_limit if os.name == "posix" else None
    return subprocess.call(cmd, env=env, preexec_fn=preexec)


def train(argv: Sequence[str] | None = None) -> int:
    """``fpt-monai train``: ``python -m monai.bundle run training`` with train.yaml and the presets."""
    return _run("train", argv)


def evaluate(argv: Sequence[str] | None = None) -> int:
    """``fpt-monai evaluate``: ``python -m monai.bundle run`` with train.yaml and evaluate.yaml."""
    return _run("evaluate", argv)


def infer(argv: Sequence[str] | None = None) -> int:
    """``fpt-monai infer``: ``python -m monai.bundle run`` with inference.yaml."""
    return _run("infer", argv)
