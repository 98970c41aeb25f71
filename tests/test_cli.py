"""``fpt-monai <command>``: one --help listing every command, each command's --help and argument errors answered
before torch, numpy or MONAI is imported, and train/evaluate/infer building the MONAI bundle command a user would
type with the packaged configs."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from fpt_monai.cli import COMMANDS

HEAVY = ("torch", "numpy", "monai", "timm", "PIL", "sklearn", "matplotlib", "holoscan")


def _front_door(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fpt_monai", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_help_lists_every_command_and_an_unknown_one_gets_a_suggestion():
    proc = _front_door("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f"\n  {name} " in proc.stdout
    typo = _front_door("trian")
    assert typo.returncode == 2 and "unknown command 'trian'. Did you mean 'train'?" in typo.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_answers_help_without_heavy_imports(command):
    """--help of every command exits 0 with its usage, and the process never imported a heavy library."""
    code = (
        "import sys\n"
        "from fpt_monai.cli import main\n"
        "try:\n"
        f"    main([{command!r}, '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: fpt-monai" in proc.stdout
    heavy = ast.literal_eval(proc.stdout.rsplit("HEAVY ", 1)[1].strip())
    assert heavy == [], f"fpt-monai {command} --help imported {heavy}"


def test_train_builds_the_bundle_command_with_packaged_configs_and_bundle_settings(tmp_path):
    proc = _front_door(
        "train", "--bundle_root", "runs/x", "--preset", "dinov2_s14", "--preset", "recipes/small_data",
        "--epochs", "3", "--print-command", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.strip()
    assert " -m monai.bundle run training --config_file " in argv
    import shlex

    parts = shlex.split(argv)
    configs = ast.literal_eval(parts[parts.index("--config_file") + 1])
    assert [c.rsplit("/", 2)[-2:] for c in configs] == [
        ["configs", "train.yaml"],
        ["backbones", "dinov2_s14.yaml"],
        ["recipes", "small_data.yaml"],
    ]
    assert parts[-4:] == ["--bundle_root", "runs/x", "--epochs", "3"]
    evaluate = shlex.split(_front_door("evaluate", "--bundle_root", "r", "--print-command").stdout)
    assert [c.rsplit("/", 1)[-1] for c in ast.literal_eval(evaluate[evaluate.index("--config_file") + 1])] == [
        "train.yaml",
        "evaluate.yaml",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--bundle_root", "r", "--preset", "smal_data"], "no such preset; the packaged presets are"),
        (["train", "--bundle_root", "r", "--epochs"], "--epochs needs a value"),
        (["infer", "--bundle_root", "r", "stray"], "unexpected argument 'stray'"),
        (["evaluate"], "the following arguments are required: --bundle_root"),
        (["benchmark", "nope"], "unknown benchmark 'nope'"),
        (["fuse", "--fpt", "a", "--probe", "b", "--out", "c", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["fuse", "--fpt", "a", "--probe", "b", "--out", "c", "--weights", "0.5,2"], "numbers in [0, 1]"),
    ],
)
def test_argument_errors_name_the_problem(args, message):
    proc = _front_door(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_version():
    proc = _front_door("--version")
    from fpt_monai import __version__

    assert proc.returncode == 0 and proc.stdout == f"fpt-monai {__version__}\n"
