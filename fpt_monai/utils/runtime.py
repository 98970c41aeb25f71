# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Fit a run to the machine it runs on: CPUs, torch threads, DataLoader workers, and a readable console.

The bundle configs call :func:`setup_run` first (``$fpt_monai.utils.runtime.setup_run(verbose=@verbose,
num_threads=@num_threads)``) and take ``num_workers`` from :func:`default_num_workers`; our command-line tools add
``--verbose``/``--threads`` with :func:`add_runtime_arguments` and call :func:`setup_cli`.

Why threads matter: PyTorch starts one OpenMP thread per core, and by default idle OpenMP threads spin. When
another process keeps a core busy, every parallel region waits for the thread that lost its core: on a 2-core
machine shared with one busy process an epoch took about 60 s with the default threads and 6.7 s with
``OMP_NUM_THREADS=1``. The thread count chosen here never depends on the load (runs stay reproducible); a busy
machine only triggers a warning that says what to do.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from fpt_monai.utils.quiet import quiet_third_party

__all__ = [
    "add_runtime_arguments",
    "available_cpus",
    "cgroup_cpu_limit",
    "configure_threads",
    "default_num_workers",
    "setup_cli",
    "setup_run",
]

# the name the log lines have always carried (docs/operations.md quotes them; logging configs may name it)
logger = logging.getLogger("fpt_monai.runtime")

CGROUP_ROOT = "/sys/fs/cgroup"
BUSY_ADVICE = (
    "on a shared machine, OpenMP threads that spin while they wait can make each step 10x slower; start the run "
    "with OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE in its environment (docs/operations.md, 'Performance on shared "
    "machines')"
)

# torch's own choice, read before our first set_num_threads, so that "auto" gives the same answer on every call
_torch_default_threads: int | None = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_v2_dir(root: Path, proc_cgroup: str | None) -> Path | None:
    """This process's cgroup v2 folder (``0::/path`` in /proc/self/cgroup), if it is not the root one."""
    for line in (proc_cgroup or "").splitlines():
        if line.startswith("0::") and line[3:].strip("/"):
            return root / line[3:].strip("/")
    return None


def cgroup_cpu_limit(cgroup_root: str | os.PathLike = CGROUP_ROOT, *, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``docker --cpus 1.5`` gives 1.5), or None when unlimited.

    Reads cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) in the cgroup root, which is the
    container's own cgroup, and in this process's cgroup below it, and cgroup v1 ``cpu/cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` (``-1`` = unlimited). The smallest quota found wins; missing, unreadable or malformed
    files count as no quota.

    Args:
        cgroup_root: where the cgroup file system is mounted. Defaults to ``/sys/fs/cgroup``.
        proc_cgroup: the text of ``/proc/self/cgroup``. Defaults to reading it (only under the default root).
    """
    root = Path(cgroup_root)
    if proc_cgroup is None and str(root) == CGROUP_ROOT:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    limits = []
    v2_dirs = [root, _own_cgroup_v2_dir(root, proc_cgroup)]
    for text in (_read(d / "cpu.max") for d in v2_dirs if d is not None):
        fields = (text or "").split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                limits.append(int(fields[0]) / int(fields[1]))
            except (ValueError, ZeroDivisionError):
                pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        try:
            if quota is not None and period is not None and int(quota) > 0:
                limits.append(int(quota) / int(period))
        except (ValueError, ZeroDivisionError):
            pass
    limits = [x for x in limits if x > 0]
    return min(limits) if limits else None


def available_cpus(*, cgroup_root: str | os.PathLike = CGROUP_ROOT, affinity: int | None = None) -> int:
    """CPUs this process may use: its CPU affinity, capped by the cgroup CPU quota; at least 1.

    A container started with ``--cpus 2`` on a 64-core host sees 64 CPUs in ``os.cpu_count()``; torch would start
    64 threads that share two CPUs' worth of time. A fractional quota is rounded down (1.5 CPUs -> 1).

    Args:
        cgroup_root: where the cgroup file system is mounted (see :func:`cgroup_cpu_limit`). Defaults to
            ``/sys/fs/cgroup``.
        affinity: the number of CPUs in the affinity mask. Defaults to ``len(os.sched_getaffinity(0))`` where the
            platform has it, else ``os.cpu_count()``.
    """
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(cgroup_root)
    cpus = affinity if limit is None else min(affinity, math.floor(limit))
    return max(1, cpus)


def default_num_workers(cap: int = 4, *, cpus: int | None = None, processes: int | None = None) -> int:
    """DataLoader workers for this process: ``min(cap, CPUs per process)``, and 0 with a single CPU.

    With one CPU a worker process only competes with the training process for it (and copies every batch between
    processes), so loading stays in the main process. PyTorch warns when the workers outnumber the CPUs; this
    default never does. Under ``torchrun`` the CPUs are shared by the processes of the machine
    (``LOCAL_WORLD_SIZE``), so 8 ranks on 16 CPUs start 2 workers each, not 4.

    Args:
        cap: the most workers to start. Defaults to 4.
        cpus: the CPUs available. Defaults to :func:`available_cpus`.
        processes: training processes on this machine. Defaults to ``LOCAL_WORLD_SIZE`` (1 when unset).

    Raises:
        ValueError: when ``cap`` is negative.
    """
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}.")
    cpus = available_cpus() if cpus is None else cpus
    if processes is None:
        local = os.environ.get("LOCAL_WORLD_SIZE", "1")
        processes = int(local) if local.isdigit() and int(local) > 0 else 1
    per_process = cpus // max(1, processes)
    return 0 if per_process <= 1 else min(cap, per_process)


def _parse_threads(num_threads: int | str | None) -> int | None:
    """``None`` for "auto", else the positive number of threads asked for (an int, or digits from a command line)."""
    if num_threads is None or (isinstance(num_threads, str) and num_threads.strip().lower() == "auto"):
        return None
    if isinstance(num_threads, str) and num_threads.strip().isdigit():
        num_threads = int(num_threads)
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be 'auto' or a positive whole number, got {num_threads!r}.")
    return num_threads


def _threads_arg(text: str) -> int | str:
    """argparse type of ``--threads``: ``"auto"`` or a positive number, else a usage error."""
    try:
        value = _parse_threads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return "auto" if value is None else value


def _omp_num_threads(environ: Mapping[str, str]) -> int | None:
    """The first level of ``OMP_NUM_THREADS`` (``"4"`` or ``"4,2"``), when it is a positive number."""
    text = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def configure_threads(
    num_threads: int | str | None = "auto",
    *,
    log: logging.Logger | None = None,
    load: float | None = None,
    cpus: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Set torch's intra-op threads for this machine and say so in one INFO line.

    The number: ``num_threads`` when it is a number; else ``OMP_NUM_THREADS`` when that is set (torchrun sets 1 per
    process); else torch's default capped at the CPUs available. It never depends on the load. When the 1-minute
    load average, read before our work starts, is already at or above the CPUs available and more than one thread
    is chosen, a warning says how to run on a busy machine.

    Args:
        num_threads: ``"auto"`` or a positive number (``--num_threads 1``). Defaults to ``"auto"``.
        log: where the lines go. Defaults to this module's logger.
        load: the 1-minute load average. Defaults to ``os.getloadavg()[0]`` (none where the platform lacks it).
        cpus: the CPUs available. Defaults to :func:`available_cpus`.
        environ: the environment read for ``OMP_NUM_THREADS``. Defaults to ``os.environ``.

    Returns:
        The number of threads set.

    Raises:
        ValueError: when ``num_threads`` is neither ``"auto"`` nor a positive whole number.
    """
    global _torch_default_threads
    import torch  # here, not at the top: a command's parser adds --threads without importing torch

    log = logger if log is None else log
    env = os.environ if environ is None else environ
    cpus = available_cpus() if cpus is None else cpus
    if load is None and hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
    if _torch_default_threads is None:
        _torch_default_threads = torch.get_num_threads()
    asked, omp = _parse_threads(num_threads), _omp_num_threads(env)
    if asked is not None:
        threads, why = asked, f"num_threads {asked}"
    elif omp is not None:
        threads, why = omp, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"
    else:
        threads = min(_torch_default_threads, cpus)
        why = f"torch's default {_torch_default_threads}, capped at the CPUs available"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("torch intra-op threads: %d (%d CPUs available; %s)", threads, cpus, why)
    if load is not None and load >= cpus and threads > 1:
        log.warning(
            "the machine is busy: 1-minute load average %.1f with %d CPUs available; %s", load, cpus, BUSY_ADVICE
        )
    return threads


def setup_run(verbose: bool | str | None = False, num_threads: int | str | None = "auto") -> int:
    """The bundle's first set-up step: quiet the known-harmless warnings and set the threads.

    Called from the configs as ``$fpt_monai.utils.runtime.setup_run(verbose=@verbose, num_threads=@num_threads)``
    (``--verbose true`` / ``--num_threads 1`` on the command line).

    Args:
        verbose: show every warning (also ``FPT_VERBOSE=1``); see :func:`fpt_monai.utils.quiet.quiet_third_party`.
            Defaults to False.
        num_threads: see :func:`configure_threads`. Defaults to ``"auto"``.

    Returns:
        The number of torch threads set.
    """
    quiet_third_party(verbose)
    return configure_threads(num_threads)


def add_runtime_arguments(parser: argparse.ArgumentParser, *, verbose: bool = True, threads: bool = True) -> None:
    """Add ``--verbose`` and ``--threads`` (see :func:`setup_cli`) to a command line parser.

    Args:
        parser: the parser.
        verbose: add ``--verbose``. Defaults to True.
        threads: add ``--threads`` (tools that do heavy torch work). Defaults to True.
    """
    if verbose:
        parser.add_argument(
            "--verbose", action="store_true", help="show every warning, the known-harmless ones too (or FPT_VERBOSE=1)"
        )
    if threads:
        parser.add_argument(
            "--threads",
            default="auto",
            type=_threads_arg,
            help="torch intra-op threads: a number, or auto = OMP_NUM_THREADS if set, else at most the CPUs available",
        )


def setup_cli(args: argparse.Namespace) -> int | None:
    """What :func:`setup_run` does, for a command line parsed with :func:`add_runtime_arguments`.

    The thread line goes to stderr when no logging is configured (a command line tool has none).

    Returns:
        The number of torch threads set, or None when the parser has no ``--threads``.
    """
    quiet_third_party(getattr(args, "verbose", False))
    if not hasattr(args, "threads"):
        return None
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return configure_threads(args.threads)
