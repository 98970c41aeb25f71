from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine

from fpt_monai.data.feature_store import file_sha256
from fpt_monai.engines import (
    CorruptCheckpointError,
    FPTCheckpointer,
    atomic_torch_save,
    load_checkpoint,
    verify_checkpoint,
)
from fpt_monai.engines.checkpoint import ForeignCheckpointError
from fpt_monai.utils.errors import error_line


class RunsCode:
    """Unpickling this runs a command (a code-running pickle, as a tampered checkpoint would hold)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


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


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_code_running_pickle_with_a_matching_checksum_is_refused_and_never_run(tmp_path, writer):
    """A model.pt replaced by a pickle that runs code (its checksum updated too): refused by name, nothing runs,
    and the last line gives our reason and fix, not torch's advice to load it with code execution enabled."""
    import pickle

    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)
    payload = {"w": torch.ones(2), "x": RunsCode(marker)}
    with open(path, "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f)
    (tmp_path / "checksums.json").write_text(json.dumps({"model.pt": [file_sha256(path)]}))
    for call in (verify_checkpoint, load_checkpoint):
        with pytest.raises(ForeignCheckpointError) as info:
            call(path)
        text = str(info.value)
        assert text.startswith(f"{path}: not a checkpoint written by fpt_monai")
        assert "nothing in it ran" in text and "train again" in text
        if writer == "torch.save":  # pickle protocol 2: the unpickler names what it would have run
            assert "other than tensors (posix.system)" in text
        line = error_line(info.value)
        assert line.startswith("fpt_monai: error: ") and str(path) in line and "weights_only" not in line
        assert info.value.__cause__ is None and info.value.__suppress_context__  # torch's advice is not chained
    assert not marker.exists()


def test_a_file_that_is_not_a_torch_file_names_itself(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"hello, not a checkpoint")
    with pytest.warns(UserWarning, match="no recorded checksum"), pytest.raises(ForeignCheckpointError) as info:
        verify_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a checkpoint written by fpt_monai: it cannot be read")
    assert "weights_only" not in str(info.value)


def test_a_resume_from_a_code_running_last_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"network": RunsCode(marker)}, tmp_path / "last.pt")
    trainer = Engine(lambda e, b: None)
    FPTCheckpointer(tmp_path, torch.nn.Linear(2, 2)).attach(trainer)
    with pytest.warns(UserWarning, match="no recorded checksum"), pytest.raises(ForeignCheckpointError) as info:
        trainer.run([0], max_epochs=1)
    text = str(info.value)
    assert text.startswith(f"cannot resume from {tmp_path / 'last.pt'}: not a checkpoint") and "Move it away" in text
    assert not marker.exists()


def test_before_save_callbacks_run_before_last_pt_is_written(tmp_path):
    seen = []
    ck = FPTCheckpointer(tmp_path, torch.nn.Linear(2, 2))
    ck.add_before_save(lambda engine: seen.append((engine.state.epoch, ck.last_path.is_file())))
    trainer = Engine(lambda e, b: None)
    ck.attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    assert seen == [(1, False), (2, True)]  # epoch 2's callback ran while last.pt still held epoch 1
    assert torch.load(ck.last_path, weights_only=True)["trainer"]["epoch"] == 2
