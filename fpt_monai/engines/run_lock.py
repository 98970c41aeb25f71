# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One training at a time per bundle: a second training started into a bundle that is training is refused.

Two trainings into one ``--bundle_root`` would write the same checkpoints, model record and metrics, and each would
resume from the other's files. :func:`acquire_run_lock` takes an exclusive, non-blocking ``fcntl.flock`` on
``<bundle_root>/models/.training.lock`` and writes the holder's PID, host and start time into it; the file
descriptor stays open for the life of the process, so the kernel releases the lock when the process ends in any way
(SIGKILL and crashes included): a lock is never stale, and the file is never deleted (removing a lock file races
with the next holder). The held lock is kept in a module-level registry, so a lock taken in a MONAI config expression
is not garbage-collected (which would close the file and release the lock) while the run goes on.

Under ``torchrun`` one training runs as several processes: only the main one (rank 0, as for checkpoints,
:mod:`fpt_monai.engines.checkpoint`) takes the lock, whether or not the process group is joined yet (the ``RANK``
variable of torchrun is read then); the other ranks get ``None``. A training refused on rank 0 stops, and torchrun
stops its other ranks.

``flock`` locks are local to a machine, and on NFS they work only where the server supports them (NFSv4 does).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path

import torch.distributed as dist

__all__ = ["RunLock", "RunLockedError", "acquire_run_lock"]

_HELD: dict[Path, RunLock] = {}  # keeps every held lock (and its open file) alive until released or exit
_PURPOSE = re.compile(r"[a-z][a-z_]{0,31}")  # part of the lock file's name


class RunLockedError(RuntimeError):
    """Another process holds the bundle's run lock."""


def _is_main_process() -> bool:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")  # torchrun sets RANK before the group is joined


class RunLock:
    """An exclusive lock held on ``path`` (an open file descriptor); :meth:`release` or the process's end frees it.

    Args:
        path: the lock file.
        fd: its open file descriptor, locked.
        bundle_root: the bundle it guards (for messages).
        purpose: what it guards (``"training"``).
    """

    def __init__(self, path: Path, fd: int, bundle_root: Path, purpose: str = "training") -> None:
        self.path = path
        self.bundle_root = bundle_root
        self.purpose = purpose
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Free the lock (closing the file releases it); the lock file stays. A no-op once released."""
        if self._fd is None:
            return
        _HELD.pop(self.path, None)
        fd, self._fd = self._fd, None
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.path)!r}, held={self.held})"


def _holder(path: Path, wait_s: float = 1.0) -> str:
    """Who holds the lock at ``path``, as written there by the holder (it writes right after locking: wait a
    moment for it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return f"PID {int(info['pid'])} on host {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "holder unknown: its lock file is not readable yet"
            time.sleep(0.05)


def acquire_run_lock(
    bundle_root: str | os.PathLike, purpose: str = "training", ckpt_dir: str | os.PathLike | None = None
) -> RunLock | None:
    """Take the exclusive run lock of a bundle, ``<ckpt_dir>/.<purpose>.lock`` (``ckpt_dir`` defaults to
    ``<bundle_root>/models``), without waiting, and keep it until :meth:`RunLock.release` or the process's end.

    Taken again in the process that holds it, the held lock is returned. On a torchrun rank other than 0 nothing is
    taken and ``None`` is returned (see the module docstring).

    Args:
        bundle_root: the bundle being trained (named in the error).
        purpose: what the lock guards, part of the file name (``"training"``).
        ckpt_dir: the folder of the checkpoints (the bundle's ``@ckpt_dir``).

    Raises:
        RunLockedError: another process holds it; the message names the bundle, the holder's PID, host and start,
            and the fix.
    """
    if not _PURPOSE.fullmatch(purpose):
        raise ValueError(f"purpose must be 1-32 lowercase letters or '_', got {purpose!r}.")
    if not _is_main_process():
        return None
    bundle_root = Path(bundle_root)
    folder = Path(ckpt_dir) if ckpt_dir is not None else bundle_root / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f".{purpose}.lock").absolute()
    held = _HELD.get(path)
    if held is not None and held.held:
        return held
    # O_NOFOLLOW: a link planted there is refused rather than followed; O_CLOEXEC: child processes do not keep it
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(
            f"{bundle_root}: a {purpose} is already running there ({_holder(path)}; lock file {path}). Wait for it "
            "to finish or train into another --bundle_root."
        ) from None
    except BaseException:
        os.close(fd)
        raise
    started = datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started, "purpose": purpose})
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode("utf-8") + b"\n", 0)
    lock = _HELD[path] = RunLock(path, fd, bundle_root, purpose)
    return lock
