"""Temperature scaling and the operating point (issue 20, parts 4 and 5): chosen on validation, recorded, applied."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fpt_monai.engines import CalibrationError, check_calibration, check_operating_point_options, decide
from fpt_monai.engines.operating_point import (
    apply_calibration,
    choose_calibration,
    describe_calibration,
    operating_point_report,
)
from fpt_monai.engines.record_schema import RecordSchemaError, validate_record
from fpt_monai.engines.statistics import choose_threshold, fit_temperature, wilson_interval

SHA = "ab" * 32


def test_wilson_interval_hand_computed():
    # 8 of 10 at 95 %: the textbook interval (Newcombe, Stat Med 1998, method 3) is 0.4902-0.9433
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # 3 of 3: z^2/n terms only -> [z^2/3 / (1 + z^2/3) ... 1]; the bootstrap would give [1, 1]
    z2 = 1.959963984540054**2
    low, high = wilson_interval(3, 3)
    assert low == pytest.approx(1 - (z2 / 3) / (1 + z2 / 3), abs=1e-9) and high == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(4, 3)


def test_options_are_checked_up_front():
    binary = ["benign", "malignant"]
    assert check_operating_point_options(binary, "youden")["positive_class"] == "malignant"
    chosen = check_operating_point_options(binary, "none", target_sensitivity="0.95")
    assert chosen["rule"] == "target_sensitivity" and chosen["target_sensitivity"] == 0.95
    assert check_operating_point_options(binary)["rule"] == "none"
    three = ["benign", "malignant", "normal"]
    with pytest.raises(CalibrationError, match="--positive_class"):
        check_operating_point_options(three, "youden")
    assert check_operating_point_options(three, "youden", positive_class="malignant")["positive_class"] == "malignant"
    with pytest.raises(CalibrationError, match="'maligant' is not one of"):
        check_operating_point_options(three, "youden", positive_class="maligant")
    with pytest.raises(CalibrationError, match=r"\(0, 1\]"):
        check_operating_point_options(binary, target_sensitivity=1.5)
    with pytest.raises(CalibrationError, match="must be one of"):
        check_operating_point_options(binary, "best")
    with pytest.raises(CalibrationError, match="0 of 3 images of 'malignant'"):
        check_operating_point_options(binary, "youden", validation_labels=[0, 0, 0])


def _overconfident(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), labels] += 1.0
    return 6.0 * logits, labels  # sharpened: a large temperature undoes it


def test_choose_calibration_fits_temperature_and_threshold():
    logits, labels = _overconfident()
    options = check_operating_point_options(["a", "b", "c"], "youden", positive_class="b", calibrate=True)
    calibration = choose_calibration(logits, labels, ["a", "b", "c"], SHA, options)
    assert calibration["temperature"] == pytest.approx(fit_temperature(logits, labels, kind="logits"))
    assert calibration["temperature"] > 2.0
    validation = calibration["validation"]
    assert validation["nll_after"] < validation["nll_before"] and validation["ece_after"] < validation["ece_before"]
    scaled = torch.softmax(torch.from_numpy(logits / calibration["temperature"]), 1).numpy()
    expected = choose_threshold((labels == 1).astype(int), scaled[:, 1])
    assert calibration["operating_point"]["threshold"] == pytest.approx(expected["threshold"])
    assert calibration["operating_point"]["validation_sensitivity"] == expected["sensitivity"]
    validate_record(_record(["a", "b", "c"], calibration))  # what training writes, the schema accepts
    assert "T = " in describe_calibration(calibration)[0] and "b when p(b) >=" in describe_calibration(calibration)[1]
    assert choose_calibration(logits, labels, ["a", "b", "c"], SHA, check_operating_point_options(["a"] * 3)) is None


def test_decide_and_apply():
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.55, 0.45]])
    point = {"positive_class": "m", "threshold": 0.4}
    assert decide(probs, ["b", "m"], {"operating_point": point}) == [0, 1, 1]
    assert decide(probs, ["b", "m"], None) == [0, 1, 0]
    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.45, 0.1, 0.45]])
    # one class against the rest: below the threshold, the most probable other class
    assert decide(three, ["a", "m", "c"], {"operating_point": {"positive_class": "m", "threshold": 0.25}}) == [1, 2, 0]
    scaled = apply_calibration(probs, {"temperature": 2.0})
    logits = np.log(probs)
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True)
    np.testing.assert_allclose(scaled, expected, rtol=1e-9)
    np.testing.assert_array_equal(apply_calibration(probs, {"temperature": None}), probs)


def test_operating_point_report_counts_and_intervals():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    probs1 = np.clip(0.3 * labels + rng.uniform(0, 0.7, 60), 0, 1)
    probs = np.stack([1 - probs1, probs1], 1)
    calibration = {"operating_point": {"positive_class": "m", "threshold": 0.5, "rule": "youden"}}
    report = operating_point_report(probs, labels, ["b", "m"], calibration)
    tn, fp, fn, tp = confusion_matrix(labels, (probs1 >= 0.5).astype(int), labels=[0, 1]).ravel()
    assert (report["tp"], report["fp"], report["tn"], report["fn"]) == (tp, fp, tn, fn)
    assert report["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert report["ci"]["specificity"] == pytest.approx(list(wilson_interval(tn, tn + fp)))
    assert operating_point_report(probs, labels, ["b", "m"], {"operating_point": None}) is None


def test_check_calibration_names_the_weights(tmp_path):
    from fpt_monai.data.feature_store import file_sha256

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    right = {"checkpoint_sha256": file_sha256(checkpoint), "temperature": 1.5, "operating_point": None}
    check_calibration(right, checkpoint, ["a", "b"])
    check_calibration(None, checkpoint, ["a", "b"])
    with pytest.raises(CalibrationError, match=r"model\.pt: the record's temperature and operating point"):
        check_calibration({**right, "checkpoint_sha256": SHA}, checkpoint, ["a", "b"])


def _record(class_names, calibration):
    return {
        "format": 2,
        "class_names": class_names,
        "num_classes": len(class_names),
        "network_name": "fpt",
        "variant": "fpt_plus",
        "backbone": "vit_tiny_patch16_224",
        "img_size": 64,
        "side_img_size": 32,
        "token_ratio": 0.2,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "calibration": calibration,
    }


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"temperature": -1.0}, "temperature is null or a number"),
        ({"temperature": "1.5"}, "temperature is null or a number"),
        ({"checkpoint_sha256": "x"}, "64 hex digits"),
        ({"extra": 1}, "unknown keys"),
        ({"operating_point": {"positive_class": "z"}}, "operating_point is an object with exactly"),
        (
            {
                "operating_point": {
                    "positive_class": "z",
                    "rule": "youden",
                    "target_sensitivity": None,
                    "threshold": 0.5,
                    "validation_sensitivity": 1.0,
                    "validation_specificity": 1.0,
                }
            },
            "positive_class is not one of class_names",
        ),
        (
            {
                "operating_point": {
                    "positive_class": "b",
                    "rule": "youden",
                    "target_sensitivity": None,
                    "threshold": 3.0,
                    "validation_sensitivity": 1.0,
                    "validation_specificity": 1.0,
                }
            },
            "threshold and validation figures",
        ),
    ],
)
def test_schema_refuses_a_bad_calibration(change, problem):
    calibration = {"checkpoint_sha256": SHA, "temperature": 1.2, "operating_point": None, **change}
    with pytest.raises(RecordSchemaError, match=problem):
        validate_record(_record(["a", "b"], calibration))


def test_temperature_scaled_exports():
    from fpt_monai.networks import TemperatureScaled, TemperatureScaledExplainer

    net = torch.nn.Linear(4, 3).eval()
    scaled = torch.jit.script(TemperatureScaled(net, 2.5))
    x = torch.randn(5, 4)
    torch.testing.assert_close(scaled(x), net(x) / 2.5)

    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x[:, :1]

    logits, heatmap = torch.jit.script(TemperatureScaledExplainer(Pair(), 4.0))(x)
    torch.testing.assert_close(logits, x / 2) and torch.testing.assert_close(heatmap, x[:, :1])
    with pytest.raises(ValueError, match="temperature must be"):
        TemperatureScaled(net, 0.0)


def test_prediction_writer_applies_the_operating_point(tmp_path):
    import json

    from fpt_monai.engines import PredictionWriter

    writer = PredictionWriter(
        tmp_path,
        ["b", "m"],
        calibration={
            "temperature": 2.0,
            "operating_point": {
                "positive_class": "m",
                "threshold": 0.35,
                "rule": "youden",
                "target_sensitivity": None,
                "validation_sensitivity": 1.0,
                "validation_specificity": 0.5,
            },
        },
    )
    writer.probs = [np.array([0.8, 0.2]), np.array([0.65, 0.35]), np.array([0.3, 0.7])]
    writer.ids, writer.frames, writer.labels = ["x", "y", "z"], [None] * 3, [-1] * 3
    writer.write()
    rows = json.loads((tmp_path / "predictions.json").read_text())
    scaled = apply_calibration(np.stack(writer.probs), {"temperature": 2.0})
    # 0.35 -> 0.42 after T = 2: called "m" at the threshold 0.35, though "b" is more probable
    assert [r["prediction"] for r in rows] == ["m" if p[1] >= 0.35 else "b" for p in scaled] == ["b", "m", "m"]
    assert rows[1]["probabilities"]["m"] == pytest.approx(scaled[1, 1])


@pytest.mark.filterwarnings("ignore:.*has no recorded checksum")  # a model.pt saved by the test, not training
@pytest.mark.parametrize("calibrate", [False, True])
def test_chooser_writes_model_pt_validation_predictions(tmp_path, calibrate):
    """At training's end the chooser writes model.pt's (not the network's current) validation probabilities, in
    predictions_best.csv's format, temperature-scaled when a temperature was chosen (issue 22)."""
    import csv
    import json

    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    from fpt_monai.engines import FPTPrepareBatch, OperatingPointChooser
    from fpt_monai.study.runs import read_predictions

    torch.manual_seed(0)
    items = [{"image": torch.randn(4), "label": k % 2, "id": f"v{k}"} for k in range(7)]
    validator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items), batch_size=3),
        network=torch.nn.Linear(4, 2),
        prepare_batch=FPTPrepareBatch(),
    )
    trained = torch.nn.Linear(4, 2)
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    torch.save(trained.state_dict(), ckpt / "model.pt")
    record = _record(["b", "m"], None)
    del record["calibration"]
    record["frozen_weights"] = {"source": "w.safetensors", "id": "sha256:" + "0" * 64}
    (ckpt / "model_config.json").write_text(json.dumps(record))
    network = torch.nn.Linear(4, 2)  # the network's final weights differ from model.pt's
    final = {k: v.clone() for k, v in network.state_dict().items()}
    options = check_operating_point_options(["b", "m"], calibrate=calibrate)
    calibration = OperatingPointChooser(network, validator, ckpt, ["b", "m"], options)()
    # model.pt was scored in the network itself, whose final weights and training mode are then put back
    assert all(torch.equal(v, final[k]) for k, v in network.state_dict().items()) and network.training

    path = tmp_path / "eval" / "predictions_validation.csv"
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == ["id", "label", "prob_b", "prob_m"]
    pred = read_predictions(path)
    assert pred["ids"] == [f"v{k}" for k in range(7)] and pred["labels"].tolist() == [k % 2 for k in range(7)]
    with torch.no_grad():
        logits = trained(torch.stack([i["image"] for i in items])).double()
    temperature = calibration["temperature"] if calibrate else 1.0
    assert (calibration is not None) == calibrate
    np.testing.assert_allclose(pred["probs"], torch.softmax(logits / temperature, 1).numpy(), atol=2e-6)
    if calibrate:
        assert temperature != pytest.approx(1.0)  # the scaled probabilities are a different file

    path.unlink()
    OperatingPointChooser(network, validator, ckpt, ["b", "m"], options, write_predictions=False)()
    assert not path.exists()
