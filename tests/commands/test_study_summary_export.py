"""The light command modules of ``fpt-monai study``, ``summary`` and ``export``: importing one, building its parser,
its --help and an argument error import no heavy library; the old scripts are the same commands."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from ..conftest import REPO_ROOT

HEAVY = ("torch", "numpy", "monai", "timm", "PIL", "sklearn", "matplotlib")
COMMANDS = {"study": "study.py", "summary": "run_summary.py", "export": "export_bundle.py"}
BAD_ARGUMENT = {"study": ["--folds", "five"], "summary": ["a", "b", "c"], "export": []}  # export: --bundle-root


def _python(code: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_module_parses_help_and_errors_without_heavy_imports(name):
    code = f"""
import sys
from fpt_monai.commands import {name} as command
heavy = lambda: sorted(m for m in {HEAVY!r} if m in sys.modules)
print("IMPORT", heavy())
parser = command.build_parser()
print("PROG", repr(parser.prog))
for argv in (["--help"], {BAD_ARGUMENT[name]!r}):
    try:
        command.main(argv)
    except SystemExit as e:
        print("EXIT", e.code)
print("HEAVY", heavy())
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    assert ast.literal_eval(lines["IMPORT"]) == [], f"importing fpt_monai.commands.{name} imported heavy libraries"
    assert ast.literal_eval(lines["PROG"]) == f"fpt-monai {name}"
    assert f"usage: fpt-monai {name}" in proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("EXIT")] == ["EXIT 0", "EXIT 2"]
    assert "error:" in proc.stderr  # the argument error, from argparse
    assert ast.literal_eval(lines["HEAVY"]) == [], f"fpt-monai {name} --help / a bad argument imported heavy ones"


@pytest.mark.parametrize("name, script", list(COMMANDS.items()))
def test_old_script_is_the_same_command(name, script):
    """scripts/<script> --help prints the command module's help: one parser, not a copy."""
    old = subprocess.run(
        [sys.executable, f"scripts/{script}", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    new = _python(f"from fpt_monai.commands.{name} import main\nmain(['--help'])")
    assert old.returncode == new.returncode == 0, old.stderr + new.stderr
    assert old.stdout == new.stdout and f"usage: fpt-monai {name}" in old.stdout


def test_summary_of_a_folder_that_is_no_bundle_fails_with_the_reason(tmp_path, capsys):
    from fpt_monai.commands.summary import main

    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fpt_monai: error:") and "model_config.json: no such file" in err
    assert "is not a trained bundle" in err
