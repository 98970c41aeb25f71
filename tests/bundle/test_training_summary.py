"""The bundle's training ends with its summary, and no line of it names another best epoch than model.pt's (a
validation AUC tied at a later epoch with a lower loss included)."""

from __future__ import annotations

import logging
import re

import torch
from ignite.metrics import Metric

from fpt_monai.engines import evaluate_command, load_checkpoint
from fpt_monai.engines.training_summary import STATS_LOGGER

from .conftest import TRAIN_CONFIG, make_workflow

# per epoch: val_auc ties at 1.0 in epochs 2 and 3, epoch 3 with the lower val_loss: model.pt is epoch 3's
AUC = [0.75, 1.0, 1.0]
LOSS = [0.6, 0.5, 0.3]


class Scripted(Metric):
    """A validation metric whose value at epoch ``e`` is ``values[e - 1]`` (the validator's epoch is the trainer's)."""

    def __init__(self, values) -> None:
        self.values = list(values)
        self.engine = None
        super().__init__()

    def attach(self, engine, name, usage=None) -> None:
        self.engine = engine
        super().attach(engine, name)

    def reset(self) -> None:
        pass

    def update(self, output) -> None:
        pass

    def compute(self) -> float:
        return self.values[self.engine.state.epoch - 1]


def _scripted(values) -> dict:
    return {"_target_": f"{__name__}.Scripted", "values": values}


def _named_best(line: str) -> int | None:
    for pattern in (r"best value: \S+ at epoch: (-?\d+)", r"model\.pt <- epoch (\d+)", r"^Best epoch: (\d+)"):
        found = re.search(pattern, line)
        if found:
            return int(found.group(1))
    return None


def _run(root, data_dir, weights, caplog) -> list[str]:
    """Train the tiny bundle (the scripted validation AUC and loss); its log lines."""
    caplog.clear()
    stats = logging.getLogger(STATS_LOGGER)  # MONAI's StatsHandler logger does not propagate to caplog's
    stats.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            wf = make_workflow(
                TRAIN_CONFIG,
                root,
                data_dir,
                weights,
                epochs=len(AUC),
                **{
                    "validate#key_metric#val_auc": _scripted(AUC),
                    "validate#additional_metrics#val_loss": _scripted(LOSS),
                },
            )
            wf.initialize()
            wf.run()
            wf.finalize()
    finally:
        stats.removeHandler(caplog.handler)
    return [r.getMessage() for r in caplog.records]


def test_training_ends_with_a_summary_that_every_best_line_agrees_with(tmp_path, tiny_bundle_data, caplog):
    data_dir, weights = tiny_bundle_data
    lines = _run(tmp_path, data_dir, weights, caplog)
    models = (tmp_path / "models").resolve()
    last = load_checkpoint(models / "last.pt")
    assert (last["best_epoch"], last["best_first_epoch"], last["trainer"]["epoch"]) == (3, 2, 3)

    # MONAI's validation line names model.pt's epoch in the epoch the tie is won (alone it says epoch 2)
    assert "Key metric: val_auc best value: 1.0 at epoch: 3" in lines
    assert not [line for line in lines if "Key metric: train_acc" in line]
    assert any(line.startswith("Epoch[3] Metrics -- train_acc: ") for line in lines)  # the metrics are still printed
    final = next(i for i, line in enumerate(lines) if line.startswith("Training finished"))
    assert {_named_best(line) for line in lines[final - 12 :]} - {None} == {3}
    assert [_named_best(line) for line in lines if line.startswith("Key metric")] == [1, 2, 3]

    summary = lines[final : final + 8]
    assert summary[0] == "Training finished at epoch 3 of 3; this run trained epochs 1-3."
    assert summary[1].startswith("Best epoch: 3 (val_auc 1.0000, the highest; tie broken by the lower val_loss")
    assert "first reached at epoch 2" in summary[1]
    assert summary[2] == f"Best weights (epoch 3): {models / 'model.pt'}"
    assert summary[3] == f"Final weights (epoch 3): {models / 'model_final.pt'}"
    assert summary[4].startswith("MLflow: not tracked")
    assert summary[5:7] == [
        "Next, evaluate the best and final weights on the test split:",
        "  " + evaluate_command(tmp_path),
    ]

    # the finished training run again: nothing trained, the same best and files
    before = (models / "model.pt").read_bytes()
    lines = _run(tmp_path, data_dir, weights, caplog)
    assert (models / "model.pt").read_bytes() == before
    assert not [line for line in lines if line.startswith("Epoch[")]
    nothing = next(i for i, line in enumerate(lines) if line.startswith("Nothing trained"))
    assert "already at epoch 3 of 3" in lines[nothing]
    assert lines[nothing + 1].startswith("Best epoch: 3 (") and lines[nothing + 2] == summary[2]
    assert {_named_best(line) for line in lines} - {None} == {3}
    # and model.pt holds the weights of epoch 3, the last trained (last.pt's), not those of epoch 2
    saved = load_checkpoint(models / "model.pt")
    assert saved.keys() == last["network"].keys()
    assert all(torch.equal(saved[k], v) for k, v in last["network"].items())
