"""The package's rooms: packages whose names load on first use (PEP 562), command parsers that import nothing heavy,
the old import paths of the moved modules, and ``python -m`` entry points that are plain modules."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

LAZY_PACKAGES = ("fpt_monai.data", "fpt_monai.transforms", "fpt_monai.engines", "fpt_monai.utils")
HEAVY = ("torch", "numpy", "monai", "PIL", "timm")
COMMANDS = ("datalist", "preload", "demo")
MOVED = ("runtime", "quiet", "excepthook", "errors", "safe_paths", "atomic", "flags")


def _fresh(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (nothing imported yet) from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def _heavy_after(code: str) -> list[str]:
    """The heavy libraries in ``sys.modules`` after ``code`` ran in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = _fresh(probe)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_imports(package):
    module = importlib.import_module(package)
    assert len(set(module.__all__)) == len(module.__all__), "a name listed twice in __all__"
    for name in module.__all__:
        namespace: dict = {}
        exec(f"from {package} import {name}", namespace)  # the statement users write
        assert namespace[name] is getattr(module, name), name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize("package", ("fpt_monai.data", "fpt_monai.transforms", "fpt_monai.engines"))
def test_packages_import_nothing_heavy_until_a_name_is_used(package):
    assert _heavy_after(f"import {package}") == []


@pytest.mark.parametrize(
    "package, name",
    [("fpt_monai.data", "preload"), ("fpt_monai.data", "store_location"), ("fpt_monai.engines", "training_summary")],
)
def test_a_function_named_like_its_module_stays_the_export(package, name):
    """Importing the submodule must not replace the function (configs call ``$fpt_monai.data.store_location(...)``)."""
    submodule = importlib.import_module(f"{package}.{name}")
    exported = getattr(importlib.import_module(package), name)
    assert callable(exported) and not isinstance(exported, type(submodule))
    assert exported is getattr(submodule, name)
    assert sys.modules[f"{package}.{name}"] is submodule


def test_submodules_are_attributes_of_their_package():
    """As the eager imports made them (``$fpt_monai.engines.probe_selection.choose_probe_settings`` in a preset)."""
    import fpt_monai.engines

    assert fpt_monai.engines.probe_selection is importlib.import_module("fpt_monai.engines.probe_selection")


@pytest.mark.parametrize("command", COMMANDS)
def test_command_modules_parse_without_torch_monai_or_numpy(command):
    code = (
        f"from fpt_monai.commands.{command} import build_parser, main\n"
        "build_parser().format_help()\n"
        "try:\n    main(['--no-such-option'])\nexcept SystemExit as err:\n    assert err.code == 2, err.code\n"
    )
    assert _heavy_after(code) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_names_the_front_door(command, capsys):
    module = importlib.import_module(f"fpt_monai.commands.{command}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fpt-monai {command} ")


@pytest.mark.parametrize("module", ("fpt_monai.data.splits", "fpt_monai.data.datalist", "fpt_monai.data.store_options"))
def test_light_data_modules(module):
    assert _heavy_after(f"import {module}") == []


def test_the_reader_and_the_dicom_rules_do_not_import_each_other():
    code = "import sys, fpt_monai.transforms.dicom_objects\nassert 'fpt_monai.transforms.io' not in sys.modules"
    assert _heavy_after(code) == []
    from fpt_monai.transforms import dicom_objects, errors, io

    assert io.ImageReadError is errors.ImageReadError
    assert dicom_objects.MultiFrameError is errors.MultiFrameError
    assert issubclass(errors.MultiFrameError, io.ImageReadError)


def test_python_m_datalist_help_exits_zero_with_its_usage():
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "fpt_monai.data.datalist", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # -W error: runpy's "found in sys.modules" warning (the module imported by its package first) would fail it
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m fpt_monai.data.datalist ")
    assert "--group-column" in result.stdout and result.stderr == ""


@pytest.mark.parametrize("name", MOVED)
def test_old_paths_are_the_moved_modules(name):
    old = importlib.import_module(f"fpt_monai.{name}")
    assert old is importlib.import_module(f"fpt_monai.utils.{name}")


def test_old_excepthook_path_installs_the_hook():
    result = _fresh("import sys, fpt_monai.excepthook\nprint(getattr(sys.excepthook, '_fpt_monai', False))")
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


def test_runtime_arguments_without_torch():
    code = (
        "import argparse\nfrom fpt_monai.utils.runtime import add_runtime_arguments\n"
        "p = argparse.ArgumentParser()\nadd_runtime_arguments(p)\nassert p.parse_args(['--threads', '2']).threads == 2"
    )
    assert _heavy_after(code) == []


def test_preload_precisions_are_the_parser_choices():
    from fpt_monai.data.preload import PRECISIONS
    from fpt_monai.data.store_options import PRECISION_NAMES

    assert tuple(PRECISIONS) == PRECISION_NAMES and PRECISIONS["fp32"] is None
