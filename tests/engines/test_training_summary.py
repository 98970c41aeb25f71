"""The end-of-training summary, and every "best" line of a training naming the epoch of model.pt (ties included)."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import StatsHandler, ValidationHandler, from_engine

from fpt_monai.engines import FPTCheckpointer, TrainingSummary, epoch_metrics_print, evaluate_command, load_checkpoint
from fpt_monai.engines.training_summary import STATS_LOGGER

# per validation: val_auc ties at 1.0 in epochs 2-4 and epoch 3 has the lowest val_loss of them, so model.pt is epoch
# 3; MONAI alone keeps the first strictly best (epoch 2). Epoch 5 has the lowest loss but a lower AUC.
AUC = [0.8, 1.0, 1.0, 1.0, 0.9]
LOSS = [0.5, 0.4, 0.2, 0.3, 0.1]
BEST_SO_FAR = [1, 2, 3, 3, 3]
# the training accuracy peaks at epoch 1: MONAI's default trainer print would call epoch 1 the best
TRAIN_ACC = [0.9, 0.5, 0.6, 0.7, 0.8, 0.85]


class Scripted(Metric):
    """A metric whose value at epoch ``e`` (the validator's epoch is the trainer's) is ``values[e - 1]``."""

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


def _engines(root, epochs=5, auc=AUC, loss=LOSS):
    """A real MONAI trainer and validator on a linear model, with the bundle's handlers in the bundle's order."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    data = [{"image": torch.randn(4, 2), "label": torch.tensor([0, 1, 0, 1])} for _ in range(2)]
    validator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=net,
        key_val_metric={"val_auc": Scripted(auc)},
        additional_metrics={"val_loss": Scripted(loss)},
        val_handlers=[StatsHandler(iteration_log=False)],
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    checkpointer = FPTCheckpointer(root / "models", net, optimizer, validator=validator, tie_metric="val_loss")
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=data,
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        key_train_metric={"train_acc": Scripted(TRAIN_ACC)},
        train_handlers=[
            ValidationHandler(validator=validator, interval=1, epoch_level=True),
            checkpointer,
            TrainingSummary(bundle_root=root, ckpt_dir=root / "models"),
            StatsHandler(
                tag_name="train_loss",
                output_transform=from_engine(["loss"], first=True),
                epoch_print_logger=epoch_metrics_print,
            ),
        ],
    )
    return trainer, validator, net


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@pytest.fixture(autouse=True)
def _stats_handler_lines(caplog):
    """MONAI's StatsHandler logs to its own logger, which does not propagate: caplog gets its lines too, in order."""
    stats = logging.getLogger(STATS_LOGGER)
    stats.addHandler(caplog.handler)
    yield
    stats.removeHandler(caplog.handler)


def _summary(lines: list[str]) -> list[str]:
    """The summary's lines: from its first line to the evaluation command."""
    first = next(i for i, line in enumerate(lines) if line.startswith(("Training finished", "Nothing trained")))
    last = next(i for i, line in enumerate(lines) if line.startswith("Next, evaluate"))
    return lines[first : last + 2]


def _named_best(line: str) -> int | None:
    """The epoch a log line names as the best, if it names one."""
    for pattern in (r"best value: \S+ at epoch: (-?\d+)", r"model\.pt <- epoch (\d+)", r"^Best epoch: (\d+)"):
        found = re.search(pattern, line)
        if found:
            return int(found.group(1))
    return None


@pytest.fixture
def trained(tmp_path, caplog):
    """A 5-epoch training with the tie; ``(root, log lines, weights after each epoch)``."""
    (tmp_path / "models").mkdir()
    with caplog.at_level(logging.INFO):
        trainer, validator, net = _engines(tmp_path)
        weights = {}
        trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: weights.update({e.state.epoch: net.weight.detach().clone()})
        )
        per_epoch = {}  # what was logged during each epoch (its validation included)
        trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: per_epoch.update({e.state.epoch: len(caplog.records)})
        )
        trainer.run()
    return tmp_path, _lines(caplog), weights, per_epoch


def test_every_best_line_names_the_epoch_of_model_pt(trained):
    root, lines, weights, per_epoch = trained
    last = load_checkpoint(root / "models" / "last.pt")
    assert last["best_epoch"] == 3 and (last["best_first_epoch"], last["best_first_tie"]) == (2, 0.4)
    # model.pt holds epoch 3's weights, not epoch 2's (MONAI's first best)
    saved = load_checkpoint(root / "models" / "model.pt")
    assert torch.equal(saved["weight"], weights[3]) and not torch.equal(saved["weight"], weights[2])
    # during each epoch every "best" line names the best so far, the tie won at epoch 3 included
    start = 0
    for epoch, end in sorted(per_epoch.items()):
        named = {_named_best(line) for line in lines[start:end]} - {None}
        assert named == {BEST_SO_FAR[epoch - 1]}, (epoch, lines[start:end])
        start = end
    # and at the end no line names another epoch than model.pt's
    assert {_named_best(line) for line in lines[start:]} - {None} == {3}
    assert not [line for line in lines if "train_acc best" in line or "Key metric: train_acc" in line]
    assert any(line.startswith("Epoch[5] Metrics -- train_acc: 0.8000") for line in lines)  # the metrics still printed
    tie_note = [line for line in lines if line.startswith("model.pt <- epoch 3")]
    assert len(tie_note) == 1 and "ties epoch 2's, tie broken by the lower val_loss" in tie_note[0]


def test_the_summary_says_what_training_produced(trained):
    root, lines, _, _ = trained
    summary = _summary(lines)
    assert summary[0] == "Training finished at epoch 5 of 5; this run trained epochs 1-5."
    assert summary[1].startswith("Best epoch: 3 (val_auc 1.0000, the highest; tie broken by the lower val_loss")
    assert "first reached at epoch 2" in summary[1] and "(0.2000; 0.4000 at epoch 2)" in summary[1]
    models = (root / "models").resolve()
    assert f"Best weights (epoch 3): {models / 'model.pt'}" in summary
    assert f"Final weights (epoch 5): {models / 'model_final.pt'}" in summary
    assert any(line.startswith("MLflow: not tracked") for line in summary)
    assert summary[-1] == "  " + evaluate_command(root)
    assert "--config_file \"['bundle/configs/train.yaml','bundle/configs/evaluate.yaml']\"" in summary[-1]
    assert summary[-1].endswith(f"--bundle_root {root}")


def test_a_finished_training_run_again_trains_nothing_and_says_so(trained, caplog):
    root, _, _, _ = trained
    # the training was tracked: its run record names the run and the store
    uri = f"sqlite:///{root}/mlruns.db"
    record = {"run_id": "0123abcd", "experiment_name": "fpt_demo", "tracking_uri": uri, "params": {}}
    (root / "models" / "mlflow_run.json").write_text(json.dumps(record))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        trainer, _, _ = _engines(root)
        epochs = []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
        trainer.run()
    lines = _lines(caplog)
    assert epochs == []
    assert any(line.startswith("Nothing trained:") and "already at epoch 5 of 5" in line for line in lines)
    assert any(line.startswith("Best epoch: 3 (") for line in lines)
    assert f"Best weights (epoch 3): {(root / 'models' / 'model.pt').resolve()}" in lines
    assert f"MLflow: run 0123abcd in experiment 'fpt_demo' at {uri}" in " ".join(lines)
    assert f"  browse it with: mlflow ui --backend-store-uri {uri}" in lines
    assert _summary(lines)[-1].endswith(f"--bundle_root {root} --tracking mlflow")
    assert {_named_best(line) for line in lines} - {None} == {3}


def test_a_resumed_training_reports_the_checkpointed_best(trained, caplog):
    root, _, _, _ = trained
    caplog.clear()
    with caplog.at_level(logging.INFO):
        # epoch 6 ties AUC 1.0 with a higher loss: the best stays epoch 3 (restored from last.pt; MONAI's validator
        # starts afresh and would call epoch 6 the best)
        trainer, validator, _ = _engines(root, epochs=6, auc=AUC + [1.0], loss=LOSS + [0.25])
        trainer.run()
    lines = _lines(caplog)
    assert any(line.startswith("Key metric: val_auc best value: 1.0 at epoch: 3") for line in lines)
    assert {_named_best(line) for line in lines} - {None} == {3}
    assert (validator.state.best_metric_epoch, validator.state.best_metric) == (3, 1.0)
    assert "Training finished at epoch 6 of 6; this run trained epoch 6." in lines


def test_a_nan_key_metric_is_never_called_the_best(tmp_path, caplog):
    (tmp_path / "models").mkdir()
    with caplog.at_level(logging.INFO):
        trainer, validator, _ = _engines(tmp_path, epochs=2, auc=[float("nan"), 0.7], loss=[0.3, 0.2])
        trainer.run()
    lines = _lines(caplog)
    # MONAI alone would take epoch 1's NaN as its first best
    assert {_named_best(line) for line in lines} - {None} == {0, 2}
    assert any(line.startswith("Key metric: val_auc best value: -inf at epoch: 0") for line in lines)
    assert any(line.startswith("Best epoch: 2 (val_auc 0.7000, the highest (val_loss 0.2000)).") for line in lines)
