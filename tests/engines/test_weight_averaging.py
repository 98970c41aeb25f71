"""Averaged weights (EMA / SWA): the averages against hand computations, what validation and the checkpoints hold,
exact resume, the raw trajectory untouched, the settings' errors, and one bundle run through train.yaml."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler

from fpt_monai.engines import FPTCheckpointer, WeightAveraging, check_weight_averaging, load_checkpoint
from fpt_monai.engines.model_record import read_record
from fpt_monai.engines.weight_averaging import EMA_WARMUP_POWER, default_swa_start_epoch
from fpt_monai.study.runs import find_preset

from ..bundle_utils import TRAIN_CONFIG, make_workflow
from ..conftest import REPO_ROOT

STEPS = 3  # iterations per epoch
FLOAT = ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "3.weight", "3.bias")


class Scripted(Metric):
    """The validation metric ``values[epoch - 1]`` (the validator's epoch is the trainer's)."""

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


def _snapshot(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _run(root, mode="none", epochs=4, auc=None, order="bundle", resume=True, **averaging):
    """A real MONAI trainer and validator on a small MLP with BatchNorm, the bundle's handlers in the bundle's order:
    the averager attached by the checkpointer, after the validation (``order="early"``: also attached directly before
    the validation). Returns what the run saw: the raw weights after every iteration (``raw``), the weights each
    validation evaluated (``validated``) and the network."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    gen = torch.Generator().manual_seed(1)
    data = [{"image": torch.randn(4, 3, generator=gen), "label": torch.tensor([0, 1, 0, 1])} for _ in range(STEPS)]
    validator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data[:1],
        network=net,
        key_val_metric={"val_auc": Scripted(auc or [0.5 + 0.01 * e for e in range(epochs)])},
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)  # momentum: optimizer state to resume
    averager = WeightAveraging(net, mode=mode, validator=validator, **averaging)
    checkpointer = FPTCheckpointer(root, net, optimizer, validator=validator, resume=resume, averager=averager)
    validation = ValidationHandler(validator=validator, interval=1, epoch_level=True)
    handlers = [validation, checkpointer] if order == "bundle" else [averager, validation, checkpointer]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=data,
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=handlers,
    )
    seen = {"raw": [], "validated": {}, "net": net}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen["raw"].append(_snapshot(net)))
    validator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda v: seen["validated"].setdefault(v.state.epoch, _snapshot(net))
    )
    trainer.run()
    return seen


def _assert_close(actual: dict, expected: dict, keys=FLOAT) -> None:
    for key in keys:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def _mean(states: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in states]).mean(0) for k in FLOAT}


def test_ema_equals_a_hand_computation_with_the_warmed_up_decay(tmp_path):
    decay = 0.9
    seen = _run(tmp_path, "ema", epochs=3, ema_decay=decay)
    raw = seen["raw"]
    ema = {k: raw[0][k].clone() for k in FLOAT}  # the first update copies
    expected_per_epoch = {}
    for n in range(1, len(raw)):
        d = min(decay, 1 - (1 + n) ** -EMA_WARMUP_POWER)
        assert d < decay or n > 5  # the warm-up: the early updates keep less of the average than ema_decay
        ema = {k: d * ema[k] + (1 - d) * raw[n][k] for k in FLOAT}
        if (n + 1) % STEPS == 0:
            expected_per_epoch[(n + 1) // STEPS] = ema
    for epoch in (2, 3):
        _assert_close(seen["validated"][epoch], expected_per_epoch[epoch])  # each validation: that epoch's EMA
    final = load_checkpoint(tmp_path / "model_final.pt")
    _assert_close(final, expected_per_epoch[3])
    _assert_close(seen["net"].state_dict(), expected_per_epoch[3])  # the trained network ends with the average
    assert not torch.allclose(final["0.weight"], raw[-1]["0.weight"])  # it is not the raw end


def test_ema_without_warmup_uses_the_decay_from_the_second_update(tmp_path):
    seen = _run(tmp_path, "ema", epochs=1, ema_decay=0.5, ema_warmup=False)
    raw = seen["raw"]
    expected = {k: 0.25 * raw[0][k] + 0.25 * raw[1][k] + 0.5 * raw[2][k] for k in FLOAT}
    _assert_close(seen["validated"][1], expected)


def test_swa_is_the_mean_of_the_epoch_end_weights_from_its_start(tmp_path):
    seen = _run(tmp_path, "swa", epochs=5, swa_start_epoch=3)
    ends = {e: seen["raw"][e * STEPS - 1] for e in range(1, 6)}
    for epoch in (1, 2):  # before the start: the raw weights are validated
        _assert_close(seen["validated"][epoch], ends[epoch])
    _assert_close(seen["validated"][3], ends[3])
    _assert_close(seen["validated"][4], _mean([ends[3], ends[4]]))
    _assert_close(seen["validated"][5], _mean([ends[3], ends[4], ends[5]]))
    _assert_close(load_checkpoint(tmp_path / "model_final.pt"), _mean([ends[3], ends[4], ends[5]]))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["weight_averaging"]["n_averaged"] == 3 and last["weight_averaging"]["swa_start_epoch"] == 3


def test_swa_starts_in_the_last_third_by_default(tmp_path):
    assert [default_swa_start_epoch(e) for e in (1, 2, 3, 20, 30)] == [1, 2, 3, 14, 21]
    seen = _run(tmp_path, "swa", epochs=3)
    assert load_checkpoint(tmp_path / "last.pt")["weight_averaging"]["n_averaged"] == 1  # epoch 3 only
    _assert_close(seen["validated"][2], seen["raw"][2 * STEPS - 1])


@pytest.mark.parametrize("mode", ["ema", "swa"])
def test_training_continues_from_the_raw_weights(tmp_path, mode):
    plain = _run(tmp_path / "none", "none", epochs=3)
    averaged = _run(tmp_path / mode, mode, epochs=3, swa_start_epoch=1)
    assert len(plain["raw"]) == len(averaged["raw"]) == 3 * STEPS
    for a, b in zip(plain["raw"], averaged["raw"], strict=True):  # the same trajectory, bit for bit
        assert all(torch.equal(a[k], b[k]) for k in a)
    last = load_checkpoint(tmp_path / mode / "last.pt")
    assert all(torch.equal(last["network"][k], averaged["raw"][-1][k]) for k in last["network"])  # raw in last.pt
    assert not torch.equal(averaged["validated"][3]["0.weight"], averaged["raw"][-1]["0.weight"])


def test_none_changes_nothing(tmp_path):
    seen = _run(tmp_path, "none", epochs=2)
    for epoch in (1, 2):  # the raw epoch-end weights are validated
        assert all(torch.equal(v, seen["raw"][epoch * STEPS - 1][k]) for k, v in seen["validated"][epoch].items())
    last = load_checkpoint(tmp_path / "last.pt")
    assert "weight_averaging" not in last  # the checkpoint of a training without the handler
    final = load_checkpoint(tmp_path / "model_final.pt")
    assert all(torch.equal(final[k], seen["raw"][-1][k]) for k in final)


def test_model_pt_holds_the_averaged_weights_of_the_best_validation(tmp_path):
    seen = _run(tmp_path, "ema", epochs=4, auc=[0.6, 0.9, 0.7, 0.8])  # epoch 2 validates best
    best = load_checkpoint(tmp_path / "model.pt")
    assert all(torch.equal(best[k], seen["validated"][2][k]) for k in FLOAT)
    assert not torch.equal(best["0.weight"], seen["raw"][2 * STEPS - 1]["0.weight"])  # not the raw epoch-2 weights


@pytest.mark.parametrize(("mode", "extra"), [("ema", {"ema_decay": 0.9}), ("swa", {"swa_start_epoch": 2})])
def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path, mode, extra):
    _run(tmp_path / "whole", mode, epochs=4, **extra)
    _run(tmp_path / "parts", mode, epochs=3, **extra)  # "interrupted" after epoch 3 (in SWA's average)
    resumed = _run(tmp_path / "parts", mode, epochs=4, **extra)  # a new process: fresh network, last.pt restored
    assert len(resumed["raw"]) == STEPS  # only epoch 4 trained
    for name in ("model_final.pt", "model.pt"):
        a, b = load_checkpoint(tmp_path / "whole" / name), load_checkpoint(tmp_path / "parts" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "parts" / "last.pt")
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"])
    wa, wb = a["weight_averaging"], b["weight_averaging"]
    assert wa["n_averaged"] == wb["n_averaged"] == (4 * STEPS if mode == "ema" else 3)
    assert all(torch.equal(wa["averaged"][k], wb["averaged"][k]) for k in wa["averaged"])


@pytest.mark.parametrize("mode", ["ema", "swa"])
def test_the_handler_order_does_not_change_what_is_saved(tmp_path, mode):
    # the bundle's order (attached by the checkpointer, after the validation): SWA still folds each epoch end in
    # before that epoch's validation; attached directly before the validation as well, it still averages once
    bundle = _run(tmp_path / "bundle", mode, epochs=3, swa_start_epoch=1)
    early = _run(tmp_path / "early", mode, epochs=3, swa_start_epoch=1, order="early")
    for epoch in (1, 2, 3):
        assert all(torch.equal(v, early["validated"][epoch][k]) for k, v in bundle["validated"][epoch].items())
    for name in ("model.pt", "model_final.pt"):
        a, b = load_checkpoint(tmp_path / "bundle" / name), load_checkpoint(tmp_path / "early" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = load_checkpoint(tmp_path / "bundle" / "last.pt"), load_checkpoint(tmp_path / "early" / "last.pt")
    assert (
        a["weight_averaging"]["n_averaged"]
        == b["weight_averaging"]["n_averaged"]
        == (3 * STEPS if mode == "ema" else 3)
    )
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"])


def test_a_resume_with_another_averaging_is_refused(tmp_path):
    _run(tmp_path, "none", epochs=1)
    with pytest.raises(RuntimeError, match=r"trained with weight_averaging none, this training uses ema.*--weight_av"):
        _run(tmp_path, "ema", epochs=2)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "polyak"}, r"weight_averaging: 'polyak' is not one of none, ema, swa"),
        ({"mode": "ema", "ema_decay": 1.0}, r"ema_decay: 1\.0 must be a number in \(0, 1\)"),
        ({"mode": "ema", "ema_decay": 0}, r"ema_decay: 0 must be a number in \(0, 1\)"),
        ({"mode": "swa", "swa_start_epoch": 0}, r"swa_start_epoch: 0 must be an epoch number from 1"),
        ({"mode": "swa", "swa_start_epoch": 31, "epochs": 30}, r"swa_start_epoch: 31 is beyond the training's 30"),
    ],
)
def test_bad_settings_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        check_weight_averaging(**settings)
    if "epochs" not in settings:  # the handler checks at construction
        with pytest.raises(ValueError, match=message):
            WeightAveraging(torch.nn.Linear(2, 2), **settings)


def test_swa_start_beyond_the_trainers_epochs_is_refused_when_attached(tmp_path):
    with pytest.raises(ValueError, match=r"swa_start_epoch: 5 is beyond the training's 2 epochs"):
        _run(tmp_path, "swa", epochs=2, swa_start_epoch=5)


def test_the_recipes_are_presets():
    assert find_preset("ema").name == "ema.yaml" and find_preset("swa").name == "swa.yaml"


def test_a_bundle_training_with_ema(tmp_path, tiny_bundle_data, caplog):
    data_dir, weights = tiny_bundle_data
    recipe = str(REPO_ROOT / "configs" / "recipes" / "ema.yaml")
    wf = make_workflow([TRAIN_CONFIG, recipe], tmp_path, data_dir, weights, store_root=str(tmp_path / "tokens"))
    with caplog.at_level(logging.INFO, logger="fpt_monai.engines.weight_averaging"):
        wf.initialize()
        assert wf.parser.get_parsed_content("weight_averaging") == "ema"
        assert wf.check_properties() == []  # MONAI's check of train#handlers (each a component) passes
        wf.run()
        steps = wf.parser.get_parsed_content("train#trainer").state.iteration
        wf.finalize()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("weight averaging:")]
    assert "EMA (decay 0.998 per step, warmed up)" in line and "frozen weights excluded" in line
    models = tmp_path / "models"
    settings = read_record(models / "model_config.json")["training_settings"]  # the record says how it was trained
    assert settings["weight_averaging"] == "ema" and settings["ema_decay"] == 0.998
    assert settings["swa_start_epoch"] is None and settings["store_views"] == 1
    last = load_checkpoint(models / "last.pt")
    averaging = last["weight_averaging"]
    assert averaging["mode"] == "ema" and averaging["n_averaged"] == steps > 0
    final = load_checkpoint(models / "model_final.pt")
    assert set(averaging["averaged"]) <= set(final) == set(last["network"])  # the trainable state only
    assert not any(k.startswith("lpm.") for k in final)
    assert all(torch.equal(final[k], v) for k, v in averaging["averaged"].items())  # the final average
    assert any(not torch.equal(final[k], last["network"][k]) for k in averaging["averaged"])  # last.pt: raw
