"""fpt_monai.utils.runtime and fpt_monai.utils.quiet: CPUs from affinity and cgroup quotas, threads, workers, warning
filters; their old names (fpt_monai.runtime, ...) are the same modules."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import warnings
from pathlib import Path

import pytest
import torch

from fpt_monai.utils import quiet, runtime
from fpt_monai.utils.quiet import KNOWN_WARNINGS, NOISY_LOGGERS, quiet_third_party

# one real text per entry of KNOWN_WARNINGS (as the library prints it) and the module that warns
SAMPLES = {
    r"Current stack size \(": (
        "Current stack size (8.0 MB) is below the recommended minimum (32.0 MB). This may cause segmentation "
        "faults or crashes. Consider increasing the stack size with 'ulimit -s 32768'.",
        RuntimeWarning,
        "holoscan.core",
    ),
    r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated": (
        "`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)` "
        "instead.",
        FutureWarning,
        "monai.engines.trainer",
    ),
}
KEPT = [
    # ours
    ("pretrained=False: the frozen model is randomly initialised", UserWarning, "fpt_monai.networks.fpt"),
    # unknown third-party ones, also from a module that has a filtered warning
    ("This DataLoader will create 4 worker processes in total.", UserWarning, "torch.utils.data.dataloader"),
    ("something else went wrong", RuntimeWarning, "holoscan.core"),
    # a filtered text from another module or of another category
    (SAMPLES[r"Current stack size \("][0], RuntimeWarning, "holoscan.core.other"),
    (SAMPLES[r"Current stack size \("][0], UserWarning, "holoscan.core"),
]


@pytest.fixture(autouse=True)
def _restore():
    """Torch threads, logger levels and warning filters as they were (these tests change all three)."""
    threads = torch.get_num_threads()
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    with warnings.catch_warnings():
        yield
    torch.set_num_threads(threads)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    quiet._saved_levels.clear()


def _emit(samples) -> list[str]:
    """Warn each ``(text, category, module)`` as that module would; the texts that were shown."""
    with warnings.catch_warnings(record=True) as seen:
        for text, category, module in samples:
            warnings.warn_explicit(text, category, filename=f"{module}.py", lineno=1, module=module, registry={})
    return [str(w.message) for w in seen]


# -------------------------------------------------------------------------------------------------------- CPUs
@pytest.mark.parametrize(
    "files, limit, cpus",
    [
        ({"cpu.max": "150000 100000"}, 1.5, 1),  # docker --cpus 1.5: rounded down
        ({"cpu.max": "50000 100000"}, 0.5, 1),  # never 0
        ({"cpu.max": "400000 100000"}, 4.0, 4),
        ({"cpu.max": "max 100000"}, None, 8),  # no quota: the affinity
        ({"cpu.max": "garbage"}, None, 8),
        ({"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"}, 2.5, 2),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None, 8),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 3.0, 3),
        ({}, None, 8),
    ],
)
def test_cgroup_quota(tmp_path, files, limit, cpus):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert runtime.cgroup_cpu_limit(tmp_path) == limit
    assert runtime.available_cpus(cgroup_root=tmp_path, affinity=8) == cpus


def test_quota_of_own_cgroup_and_affinity_cap(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000")
    (tmp_path / "user.slice" / "job").mkdir(parents=True)
    (tmp_path / "user.slice" / "job" / "cpu.max").write_text("200000 100000")
    assert runtime.cgroup_cpu_limit(tmp_path, proc_cgroup="0::/user.slice/job\n") == 2.0
    assert runtime.cgroup_cpu_limit(tmp_path, proc_cgroup="0::/\n") is None
    (tmp_path / "cpu.max").write_text("800000 100000")
    assert runtime.available_cpus(cgroup_root=tmp_path, affinity=2) == 2  # the affinity is the smaller
    assert runtime.available_cpus() >= 1


@pytest.mark.parametrize("cpus, cap, workers", [(1, 4, 0), (2, 4, 2), (3, 4, 3), (16, 4, 4), (16, 2, 2), (8, 0, 0)])
def test_default_num_workers(cpus, cap, workers):
    assert runtime.default_num_workers(cap, cpus=cpus) == workers


def test_default_num_workers_share_the_cpus_among_torchrun_processes(monkeypatch):
    assert runtime.default_num_workers(4, cpus=16, processes=8) == 2
    assert runtime.default_num_workers(4, cpus=16, processes=16) == 0  # one CPU each: load in the training process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runtime.default_num_workers(4, cpus=8) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "x")
    assert runtime.default_num_workers(4, cpus=8) == 4


def test_default_num_workers_rejects_a_negative_cap():
    with pytest.raises(ValueError, match="cap"):
        runtime.default_num_workers(-1)


# ----------------------------------------------------------------------------------------------------- threads
def test_threads_never_depend_on_the_load():
    chosen = {load: runtime.configure_threads("auto", load=load, cpus=2, environ={}) for load in (0.0, 1.9, 2.0, 50.0)}
    assert len(set(chosen.values())) == 1
    assert chosen[0.0] == min(runtime._torch_default_threads, 2) == torch.get_num_threads()


def test_auto_is_capped_at_the_cpus_available():
    assert runtime.configure_threads("auto", load=0.0, cpus=1, environ={}) == 1 == torch.get_num_threads()
    # and "auto" comes back to torch's default capped, not to the last number set
    expected = min(runtime._torch_default_threads, 64)
    assert runtime.configure_threads("auto", load=0.0, cpus=64, environ={}) == expected


@pytest.mark.parametrize(
    "asked, environ, threads, why",
    [
        ("auto", {"OMP_NUM_THREADS": "1"}, 1, "OMP_NUM_THREADS=1"),
        ("auto", {"OMP_NUM_THREADS": "3,1"}, 3, "OMP_NUM_THREADS=3,1"),  # nested levels: the first
        ("auto", {"OMP_NUM_THREADS": "x"}, None, "torch's default {default}, capped at the CPUs available"),
        (1, {"OMP_NUM_THREADS": "2"}, 1, "num_threads 1"),  # the explicit number wins
        ("2", {}, 2, "num_threads 2"),  # from a command line
    ],
)
def test_which_number_and_the_info_line(caplog, asked, environ, threads, why):
    caplog.set_level(logging.INFO, logger="fpt_monai.runtime")
    got = runtime.configure_threads(asked, load=0.0, cpus=2, environ=environ)
    assert got == (threads or min(runtime._torch_default_threads, 2)) == torch.get_num_threads()
    why = why.format(default=runtime._torch_default_threads)  # OMP_NUM_THREADS="x": ignored
    assert [r.getMessage() for r in caplog.records] == [f"torch intra-op threads: {got} (2 CPUs available; {why})"]


@pytest.mark.parametrize("bad", [0, -1, "two", "1.5", True, 2.0])
def test_bad_thread_numbers(bad):
    with pytest.raises(ValueError, match="num_threads"):
        runtime.configure_threads(bad, load=0.0, cpus=2, environ={})


@pytest.mark.parametrize(
    "load, threads, warned",
    [(2.0, 2, True), (7.5, 2, True), (1.9, 2, False), (9.0, 1, False)],  # one thread: nothing spins
)
def test_busy_machine_warning(caplog, load, threads, warned):
    caplog.set_level(logging.INFO, logger="fpt_monai.runtime")
    runtime.configure_threads(threads, load=load, cpus=2, environ={})
    busy = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(busy) == warned
    if warned:
        assert f"load average {load:.1f} with 2 CPUs" in busy[0]
        assert "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE" in busy[0] and "10x slower" in busy[0]


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    runtime.add_runtime_arguments(parser)
    args = parser.parse_args([])
    assert (args.verbose, args.threads) == (False, "auto")
    args = parser.parse_args(["--threads", "1", "--verbose"])
    assert (args.verbose, args.threads) == (True, 1)
    assert runtime.setup_cli(args) == 1 == torch.get_num_threads()
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "0"])
    bare = argparse.ArgumentParser()
    runtime.add_runtime_arguments(bare, threads=False)
    assert not hasattr(bare.parse_args([]), "threads") and runtime.setup_cli(bare.parse_args([])) is None


# ---------------------------------------------------------------------------------------------------- warnings
def test_every_filter_has_a_sample():
    assert sorted(SAMPLES) == sorted(k.message for k in KNOWN_WARNINGS)
    assert all(k.why for k in KNOWN_WARNINGS)


def test_filters_hide_exactly_the_listed_warnings():
    warnings.simplefilter("always")
    assert len(_emit(SAMPLES.values())) == len(SAMPLES)  # shown without the filters
    assert quiet_third_party(environ={}) is True
    assert _emit(SAMPLES.values()) == []
    assert _emit(KEPT) == [text for text, _, _ in KEPT]


@pytest.mark.parametrize("verbose, environ", [(True, {}), ("true", {}), (False, {"FPT_VERBOSE": "1"})])
def test_verbose_shows_everything(verbose, environ):
    warnings.simplefilter("always")
    quiet_third_party(True, environ={})  # importing fpt_monai installed them: start from the loggers' own levels
    before = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    quiet_third_party(environ={})  # installed earlier in the process: verbose takes them back
    assert all(logging.getLogger(name).level >= level for name, level in NOISY_LOGGERS.items())
    assert quiet_third_party(verbose, environ=environ) is False
    assert len(_emit(SAMPLES.values())) == len(SAMPLES)
    assert {name: logging.getLogger(name).level for name in NOISY_LOGGERS} == before  # their INFO lines show again


def test_filters_are_installed_once_and_not_with_fpt_verbose_0():
    quiet_third_party(environ={"FPT_VERBOSE": "0"})
    quiet_third_party(environ={})
    ours = [k.filter_item() for k in KNOWN_WARNINGS]
    assert sum(f in ours for f in warnings.filters) == len(KNOWN_WARNINGS)


def test_noisy_loggers_keep_their_warnings():
    quiet_third_party(environ={})
    for name in NOISY_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.WARNING)


def test_the_real_grad_scaler_warning_is_matched():
    """MONAI's trainer builds ``torch.cuda.amp.GradScaler()`` (GPU, amp): run that line as the trainer's module."""
    import monai.engines.trainer as trainer

    def scaler_warnings() -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if quiet_ok:
                quiet_third_party(environ={})
            exec(compile("torch.cuda.amp.GradScaler()", trainer.__file__, "exec"), dict(vars(trainer)))
        return [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]

    quiet_ok = False
    assert any("GradScaler(args...)` is deprecated" in text for text in scaler_warnings())
    quiet_ok = True
    assert scaler_warnings() == []


def test_holoscan_still_prints_the_filtered_text():
    """The stack-size text we filter is the one holoscan prints (guards against a rewording upstream)."""
    spec = importlib.util.find_spec("holoscan")
    if spec is None:
        pytest.skip("holoscan is not installed (no deploy extra)")
    source = (Path(spec.origin).parent / "core" / "__init__.py").read_text()
    assert 'f"Current stack size (' in source and "RuntimeWarning" in source
