from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine

from fpt_monai.engines import (
    CorruptCheckpointError,
    FPTCheckpointer,
    atomic_torch_save,
    load_checkpoint,
    verify_checkpoint,
)

DISK_FULL = """
import resource, signal, sys, torch
from fpt_monai.engines import atomic_torch_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # exceeding the limit fails the write (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # no file may grow past 200 kB: the disk is 'full'
try:
    atomic_torch_save({"a": torch.zeros(1_000_000)}, sys.argv[1])
except Exception as err:  # torch reports the failed write(2) as a RuntimeError chained to the OSError
    while err is not None and not isinstance(err, OSError):
        err = err.__context__
    print("write failed:", err.strerror)
"""


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"a": torch.ones(2)}, path)
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "write failed: File too large" in done.stdout  # a real failed write(2), from the kernel
    assert verify_checkpoint(path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))  # the previous checkpoint, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checksums.json", "last.pt"]  # no temporary left over


def test_corrupt_or_modified_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.arange(1000.0)}, path)
    atomic_torch_save({"w": torch.arange(1000.0) * 2}, path)  # the record follows the newest file
    assert verify_checkpoint(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit in the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="corrupt or was modified"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="train first"):
        verify_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "other" / "x.pt"
    foreign.parent.mkdir()
    torch.save({"w": torch.ones(1)}, foreign)
    with pytest.warns(UserWarning, match="no recorded checksum"):
        assert verify_checkpoint(foreign) is False


def test_best_model_ignores_nan_and_is_strict(tmp_path):
    net = torch.nn.Linear(2, 2)
    validator = Engine(lambda e, b: None)
    ck = FPTCheckpointer(tmp_path, net, validator=validator)
    trainer = Engine(lambda e, b: None)
    ck.attach(trainer)
    for value, saved in ((math.nan, False), (0.6, True), (0.6, False), (0.7, True)):
        (tmp_path / "model.pt").unlink(missing_ok=True)
        validator.state.metrics = {"val_auc": value}
        ck.update_best(validator)
        assert (tmp_path / "model.pt").exists() == saved
    assert ck.best_metric == 0.7


def test_corrupt_last_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"garbage")
    trainer = Engine(lambda e, b: None)
    FPTCheckpointer(tmp_path, torch.nn.Linear(2, 2)).attach(trainer)
    with pytest.raises(RuntimeError, match=r"cannot resume from .*last\.pt.*Move it away"):
        trainer.run([0], max_epochs=1)


def test_ties_of_the_key_metric_go_to_the_lower_validation_loss(tmp_path):
    net = torch.nn.Linear(2, 2)
    validator = Engine(lambda e, b: None)
    ck = FPTCheckpointer(tmp_path, net, validator=validator, tie_metric="val_loss")
    ck.attach(Engine(lambda e, b: None))
    # (auc, loss, saved): a tie at AUC 1.0 with a lower loss wins, a tie with a higher loss does not
    for auc, loss, saved in ((1.0, 0.6, True), (1.0, 0.4, True), (1.0, 0.5, False), (0.9, 0.1, False)):
        (tmp_path / "model.pt").unlink(missing_ok=True)
        validator.state.metrics = {"val_auc": auc, "val_loss": loss}
        ck.update_best(validator)
        assert (tmp_path / "model.pt").exists() == saved, (auc, loss)
    assert (ck.best_metric, ck.best_tie) == (1.0, 0.4)
    validator.state.metrics = {"val_auc": 1.0}
    with pytest.raises(KeyError, match="val_loss"):
        ck.update_best(validator)
