"""``fpt-monai <command>`` (also ``python -m fpt_monai <command>``): the one front door to every tool of the package.

Each command is a light module of :mod:`fpt_monai.commands` whose argument parser imports nothing heavy, so that
``--help`` and a mistyped option answer at once; the work (torch, MONAI) is imported only after the arguments parse.
The ``python -m monai.bundle run ...`` commands and the ``python -m fpt_monai.<module>`` entry points keep working.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main", "run"]

#: command -> (module of fpt_monai.commands, its function, one line of help). Order: the README's workflow first.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("demo", "main", "write the offline demo dataset (PNG, JPEG, DICOM, NIfTI; two classes)"),
    "datalist": ("datalist", "main", "a datalist.json from class folders, a CSV or MedMNIST, with stratified splits"),
    "preload": ("preload", "main", "store the frozen model's selected tokens of every image (the feature store)"),
    "train": ("bundle_run", "train", "train with the packaged MONAI bundle (presets by name, any bundle setting)"),
    "evaluate": ("bundle_run", "evaluate", "evaluate a trained bundle's best and final weights on its test split"),
    "infer": ("bundle_run", "infer", "classify images (a file, a folder or a datalist) with a trained bundle"),
    "summary": ("summary", "main", "a trained bundle's results; with two bundles, DeLong's paired test"),
    "study": ("study", "main", "cross-validated comparison of methods on your data (settings chosen on validation)"),
    "fuse": ("fuse", "main", "one bundle blending a trained FPT+ and a linear probe (weight chosen on validation)"),
    "export": ("export", "main", "TorchScript and ONNX exports of a trained bundle, checked against PyTorch"),
    "deploy": ("deploy", "main", "the MONAI Deploy app: classify a DICOM study with an exported model"),
    "benchmark": ("benchmark", "main", "the benchmarks behind docs/benchmarks.md (training cost, resolution, ...)"),
    "check": ("check", "main", "every speed and memory claim on this machine's GPU, in one report"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: fpt-monai <command> [options]      (fpt-monai <command> --help for its options)",
        "",
        "Fine-grained Prompt Tuning (FPT, FPT+) for high-resolution medical image classification with MONAI.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, _, text) in COMMANDS.items()]
    lines += [
        "",
        "The bundle also runs as ever: python -m monai.bundle run training --config_file bundle/configs/train.yaml",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to its command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from fpt_monai import __version__

        print(f"fpt-monai {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"{_usage()}\n\nfpt-monai: error: unknown command '{name}'.{hint}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    command = getattr(importlib.import_module(f"fpt_monai.commands.{module}"), function)
    return int(command(rest) or 0)


def run() -> None:
    """Console-script entry point: errors end with our one-line message after the traceback."""
    from fpt_monai.utils.errors import install_excepthook

    install_excepthook()
    sys.exit(main())
