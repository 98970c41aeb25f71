"""The operating point and temperature of a trained bundle (issue 20, parts 4 and 5): chosen on validation when
training completes, recorded with model.pt, applied by evaluation, inference, export and Deploy."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from fpt_monai.data.feature_store import file_sha256
from fpt_monai.engines import apply_calibration, decide

from ..conftest import error_text
from .conftest import TRAIN_CONFIG, make_workflow, run_workflow

EVAL_CONFIG = TRAIN_CONFIG.replace("train.yaml", "evaluate.yaml")
INFER_CONFIG = TRAIN_CONFIG.replace("train.yaml", "inference.yaml")


def test_chosen_on_validation_and_applied_everywhere(tmp_path, tiny_bundle_data, caplog):
    data_dir, weights = tiny_bundle_data
    root = tmp_path / "run"
    with caplog.at_level("INFO"):
        run_workflow(TRAIN_CONFIG, root, data_dir, weights, operating_point="youden", calibrate=True)
    record = json.loads((root / "models" / "model_config.json").read_text())
    calibration = record["calibration"]
    assert calibration["checkpoint_sha256"] == file_sha256(root / "models" / "model.pt")
    assert calibration["temperature"] > 0 and calibration["operating_point"]["positive_class"] == "abnormal"
    assert calibration["validation"]["n"] == len(json.loads((data_dir / "datalist.json").read_text())["validation"])
    assert "operating point: abnormal when p(abnormal) >=" in caplog.text and "temperature scaling T =" in caplog.text
    # the model card and metadata publish the record with its choice
    metadata = json.loads((root / "models" / "metadata.json").read_text())
    assert metadata["fpt_monai"]["model_config"]["calibration"] == calibration

    # a finished training run again trains nothing and keeps the choice
    run_workflow(TRAIN_CONFIG, root, data_dir, weights, operating_point="youden", calibrate=True)
    assert json.loads((root / "models" / "model_config.json").read_text())["calibration"] == calibration

    # evaluation: model.pt as deployed, with test sensitivity/specificity at the threshold and Wilson intervals
    run_workflow([TRAIN_CONFIG, EVAL_CONFIG], root, data_dir, weights)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    best = metrics["best"]
    assert best["temperature"] == calibration["temperature"] and "ece_uncalibrated" in best
    point = best["operating_point"]
    rows = list(csv.DictReader(open(root / "eval" / "predictions_best.csv")))
    labels = np.array([int(r["label"]) for r in rows])
    p1 = np.array([float(r["prob_abnormal"]) for r in rows])
    called = p1 >= calibration["operating_point"]["threshold"]
    assert point["tp"] == int((called & (labels == 1)).sum()) and point["tn"] == int((~called & (labels == 0)).sum())
    low, high = point["ci"]["sensitivity"]
    assert low <= point["sensitivity"] <= high
    card = (root / "models" / "model_card.md").read_text()  # the card a clinician reads: the rule and its figures
    assert "## Decision rule" in card and "operating point: abnormal when p(abnormal) >=" in card
    assert "best weights at the operating point (abnormal when p >=" in card and "sensitivity per class" in card
    flat = next(csv.DictReader(open(root / "eval" / "metrics.csv")))
    assert float(flat["op_threshold"]) == pytest.approx(calibration["operating_point"]["threshold"])

    from fpt_monai.reports.summary import summary

    text = summary(root)
    assert f"at the operating point (abnormal when p >= {calibration['operating_point']['threshold']:.3f}" in text
    assert f"temperature {calibration['temperature']:.3f} (chosen on validation)" in text

    # inference: calibrated probabilities, the class at the operating point
    run_workflow(INFER_CONFIG, root, data_dir, weights, workflow_type="infer", dataset_dir=str(data_dir / "images"))
    predictions = json.loads((root / "eval" / "predictions.json").read_text())
    probs = np.array([[r["probabilities"]["normal"], r["probabilities"]["abnormal"]] for r in predictions])
    expected = decide(probs, ["normal", "abnormal"], calibration)
    assert [r["prediction"] for r in predictions] == [["normal", "abnormal"][k] for k in expected]

    # export puts the temperature inside model.ts; Deploy applies the threshold and not the temperature again
    from fpt_monai.deploy import ExportedFPT
    from fpt_monai.export import export_bundle
    from fpt_monai.networks import network_from_model_config

    export_bundle(root, onnx=False, progress=False)
    model = ExportedFPT(root / "models")
    assert model.temperature is None and model.calibration == calibration
    files = sorted((data_dir / "images").rglob("*.png"))[:3]
    deployed = model(files)
    from fpt_monai.engines import load_checkpoint, read_model_config

    net = network_from_model_config(read_model_config(root / "models" / "model_config.json"), pretrained=str(weights))
    net.load_state_dict(load_checkpoint(root / "models" / "model.pt"))
    with torch.no_grad():
        raw = torch.softmax(net.eval()(torch.stack([d["image"] for d in deployed])), 1).numpy()
    want = apply_calibration(raw, calibration)
    got = np.array([[d["probabilities"]["normal"], d["probabilities"]["abnormal"]] for d in deployed])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [model.decide(d["probabilities"]) for d in deployed] == [d["class"] for d in deployed]
    from fpt_monai.deploy.operators import FPTClassifierOperator

    report = FPTClassifierOperator.report_text(
        {"class": deployed[0]["class"], "probabilities": deployed[0]["probabilities"], "instances": []}, model
    )
    assert "Decision: operating point: abnormal when p(abnormal) >=" in report
    assert [d["class"] for d in deployed] == [
        ["normal", "abnormal"][k] for k in decide(want, model.class_names, calibration)
    ]


def test_options_refused_before_anything_is_written(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    wf = make_workflow(
        TRAIN_CONFIG, tmp_path / "run", data_dir, weights, operating_point="youden", positive_class="maligant"
    )
    with pytest.raises(Exception) as err:
        wf.initialize()
    assert "positive_class 'maligant' is not one of the classes ['normal', 'abnormal']" in error_text(err.value)
    assert not (tmp_path / "run" / "models").exists()


def test_other_weights_are_refused(tmp_path, trained_tiny_bundle, tiny_bundle_data):
    import shutil

    source, data_dir, weights = trained_tiny_bundle
    root = tmp_path / "copy"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("eval"))
    record_file = root / "models" / "model_config.json"
    record = json.loads(record_file.read_text())
    record["calibration"] = {"checkpoint_sha256": "ab" * 32, "temperature": 1.5, "operating_point": None}
    record_file.write_text(json.dumps(record))
    wf = make_workflow(
        INFER_CONFIG, root, data_dir, weights, workflow_type="infer", dataset_dir=str(data_dir / "images")
    )
    with pytest.raises(Exception) as err:
        wf.initialize()
        wf.run()
    assert "were chosen on validation for a checkpoint with SHA-256 abababab" in error_text(err.value)
