from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from fpt_monai.engines import FPTCheckpointer, atomic_torch_save


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    atomic_torch_save({"a": torch.ones(2)}, tmp_path / "ck.pt")

    def broken_save(obj, f):
        f.write(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "ck.pt")
    monkeypatch.undo()
    assert torch.equal(torch.load(tmp_path / "ck.pt", weights_only=True)["a"], torch.ones(2))  # previous intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


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
