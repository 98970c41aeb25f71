"""The bundle fitted to the machine: its set-up step, DataLoader workers and threads, and a console without the
known-harmless third-party warnings (fpt_monai.utils.runtime, fpt_monai.utils.quiet)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import warnings

import pytest
import torch

from fpt_monai.utils.quiet import KNOWN_WARNINGS, quiet_third_party
from fpt_monai.utils.runtime import default_num_workers

from ..conftest import REPO_ROOT
from .conftest import META, TRAIN_CONFIG, tiny_overrides

CONFIGS = REPO_ROOT / "bundle" / "configs"
SETUP = "$fpt_monai.utils.runtime.setup_run(verbose=@verbose, num_threads=@num_threads)"
STACK = 32 * 1024 * 1024  # what holoscan asks for (`ulimit -s 32768`)


@pytest.fixture(autouse=True)
def _restore_threads_and_loggers():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    quiet_third_party(verbose=True)  # the library loggers' levels back


def _parser(*files, **override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser.read_config([str(f) for f in files])
    parser.update(override)
    parser.parse()
    return parser


@pytest.mark.parametrize(
    "files, workers",
    [
        ([TRAIN_CONFIG], default_num_workers()),
        ([TRAIN_CONFIG, CONFIGS / "multi_gpu_train.yaml"], default_num_workers()),  # its `imports` replace ours
        ([TRAIN_CONFIG, REPO_ROOT / "bundle" / "configs" / "demo.yaml"], 0),  # presets that set 0 keep it
        ([TRAIN_CONFIG, REPO_ROOT / "configs" / "methods" / "linear_probe.yaml"], 0),
        ([TRAIN_CONFIG, REPO_ROOT / "configs" / "recipes" / "small_data.yaml"], 0),
        ([CONFIGS / "inference.yaml"], default_num_workers(cap=2)),
    ],
)
def test_num_workers_default(files, workers):
    assert _parser(*files).get_parsed_content("num_workers") == workers


@pytest.mark.parametrize(
    "files, first",
    [
        ([TRAIN_CONFIG], "setup#0"),
        ([TRAIN_CONFIG, CONFIGS / "evaluate.yaml"], "initialize#0"),
        ([TRAIN_CONFIG, CONFIGS / "preload.yaml"], "initialize#0"),
        ([CONFIGS / "inference.yaml"], "initialize#0"),
    ],
)
def test_setup_is_the_first_step(files, first):
    """Before the datalist is read or a network is built; ``--verbose true`` arrives as text from the CLI."""
    ours = [k.filter_item() for k in KNOWN_WARNINGS]
    with warnings.catch_warnings():
        parser = _parser(*files, verbose="true", num_threads=1)
        assert parser.get(first) == SETUP
        assert parser.get_parsed_content(first) == 1
        assert not any(f in ours for f in warnings.filters)
        _parser(*files, num_threads=1).get_parsed_content(first)
        assert all(f in warnings.filters for f in ours)
    if first == "setup#0":
        assert "$@setup" in parser.get("initialize")


def _raise_stack_limit() -> None:
    """In the child, what `ulimit -s 32768` does in a shell (the fix docs/operations.md gives)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < STACK and (hard == resource.RLIM_INFINITY or hard >= STACK):
        resource.setrlimit(resource.RLIMIT_STACK, (STACK, hard))


def test_cli_training_prints_no_known_harmless_warning(tiny_bundle_data, tmp_path):
    """A tracked training from the command line on the machine's defaults (workers, threads): the only warning left
    on stderr is MONAI's notice that configs run code, printed before any config item can run."""
    data_dir, weights = tiny_bundle_data
    overrides = tiny_overrides(data_dir, weights, epochs=1)
    del overrides["num_workers"]  # the bundle's default for this machine
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN_CONFIG]
    cmd += ["--meta_file", META, "--bundle_root", str(tmp_path), "--tracking", "mlflow"]
    cmd += [f"--{k}={v}" for k, v in overrides.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("FPT_VERBOSE", "PYTHONWARNINGS")}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env, preexec_fn=_raise_stack_limit
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch intra-op threads: 1 (" in done.stdout and "OMP_NUM_THREADS=1)" in done.stdout
    for known in KNOWN_WARNINGS:
        assert not re.search(known.message, done.stderr, re.I), known
    # MLflow's notes on a new sqlite store, and PyTorch's "more workers than CPUs"
    assert "MLflow database tables" not in done.stderr and "Updating database tables" not in done.stderr
    assert "suggested max number of worker" not in done.stderr
    warned = re.findall(r"\b\w+Warning: .*", done.stderr)
    assert warned and all(w.startswith("UserWarning: parsing config_file") for w in warned), warned
