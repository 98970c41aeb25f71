from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fpt_monai.engines import RunLockedError, acquire_run_lock
from fpt_monai.utils.errors import error_line

from ..conftest import REPO_ROOT

# the first training: takes the lock the way a MONAI config expression does (the result is not kept), then runs on
HOLDER = """
import gc, sys, time
from fpt_monai.engines import acquire_run_lock
acquire_run_lock(sys.argv[1])
gc.collect()  # the lock must survive its object going out of scope
print("held", flush=True)
time.sleep(600)
"""


def _start_holder(bundle_root):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(bundle_root)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()  # blocks until the lock is held (or the process died)
    if line.strip() != "held":
        proc.kill()
        pytest.fail(f"the holder did not take the lock: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


def test_a_second_training_is_refused_until_the_first_dies(tmp_path):
    bundle = tmp_path / "bundle"
    holder = _start_holder(bundle)
    try:
        with pytest.raises(RunLockedError) as info:
            acquire_run_lock(bundle)
        text = str(info.value)
        assert text.startswith(
            f"{bundle}: a training is already running there (PID {holder.pid} on host {socket.gethostname()}, started "
        ), text
        assert text.endswith("Wait for it to finish or train into another --bundle_root.")
        assert str(bundle / "models" / ".training.lock") in text
        assert error_line(info.value) == f"fpt_monai: error: {text}"  # the run's last line is ours
        assert holder.poll() is None  # refusing the second one did not disturb the first
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    # the kernel released the killed process's lock: no stale lock to clean up by hand
    lock = acquire_run_lock(bundle)
    try:
        assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()
        assert acquire_run_lock(bundle) is lock  # taken again in the process that holds it: the same lock
    finally:
        lock.release()
    assert not lock.held and lock.path.is_file()  # released, the file kept
    with acquire_run_lock(bundle, ckpt_dir=tmp_path / "elsewhere") as other:
        assert other.path == tmp_path / "elsewhere" / ".training.lock"


def test_a_released_lock_is_taken_by_another_process(tmp_path):
    lock = acquire_run_lock(tmp_path)
    lock.release()
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"PID {holder.pid} "):
            acquire_run_lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel releases the lock as the process is reaped
        try:
            acquire_run_lock(tmp_path).release()
            break
        except RunLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_only_rank_0_of_a_torchrun_training_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert acquire_run_lock(tmp_path) is None and not (tmp_path / "models").exists()
    monkeypatch.setenv("RANK", "0")
    lock = acquire_run_lock(tmp_path)
    lock.release()
    with pytest.raises(ValueError, match="purpose"):
        acquire_run_lock(tmp_path, purpose="../x")
