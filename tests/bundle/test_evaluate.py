from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fpt_monai.data import datalist_from_json

from ..conftest import error_text
from .conftest import TRAIN_CONFIG, run_workflow

EVAL_CONFIG = TRAIN_CONFIG.replace("train.yaml", "evaluate.yaml")


def _run(config, bundle_root, data_dir, weights, **extra):
    return run_workflow(config, bundle_root, data_dir, weights, **extra)


@pytest.mark.parametrize("mode", ["preload", "online"])
def test_evaluate_best_and_final(tmp_path, tiny_bundle_data, mode):
    data_dir, weights = tiny_bundle_data
    _run(TRAIN_CONFIG, tmp_path, data_dir, weights, mode=mode)
    config = json.loads((tmp_path / "models" / "model_config.json").read_text())
    assert config["class_names"] == ["normal", "abnormal"] and len(config["mean"]) == 3
    record = tmp_path / "models" / "mlflow_run.json"
    assert not record.exists()  # only a tracked training names its MLflow run
    record.write_text("not json")  # an untracked evaluation does not read it
    _run([TRAIN_CONFIG, EVAL_CONFIG], tmp_path, data_dir, weights, mode=mode)
    out = tmp_path / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"best", "final"}
    n_test = len(datalist_from_json(data_dir / "datalist.json")["test"])
    assert metrics["best"]["n"] == n_test and set(metrics["best"]) >= {
        "auc",
        "acc",
        "f1",
        "precision",
        "recall",
        "kappa",
    }
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["checkpoint"] for r in rows] == ["best", "final"]
    preds = list(csv.DictReader(open(out / "predictions_best.csv")))
    assert len(preds) == n_test and preds[0]["id"].startswith("images/test/")
    assert abs(float(preds[0]["prob_normal"]) + float(preds[0]["prob_abnormal"]) - 1) < 1e-5
    for name in ("roc_best.png", "confusion_final.png", "reliability_best.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # issue 20: each figure with its bootstrap interval, per-class figures against an independent computation
    from sklearn.metrics import confusion_matrix, recall_score

    best = metrics["best"]
    labels = np.array([int(r["label"]) for r in preds])
    probs = np.array([[float(r["prob_normal"]), float(r["prob_abnormal"])] for r in preds])
    predicted = probs.argmax(1)
    sensitivity = recall_score(labels, predicted, labels=[0, 1], average=None, zero_division=np.nan)
    for c, name in enumerate(("normal", "abnormal")):
        assert best["per_class"][name]["sensitivity"] == pytest.approx(sensitivity[c], nan_ok=True)
        assert best["per_class"][name]["support"] == int((labels == c).sum())
    assert best["confusion_matrix"] == confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    assert best["bootstrap_resamples"] == 2000 and best["ci_level"] == 0.95
    for key in ("acc", "balanced_acc", "sensitivity/normal", "specificity/abnormal"):
        low, high = best["ci"][key]
        value = best[key] if "/" not in key else best["per_class"][key.split("/")[1]][key.split("/")[0]]
        assert low <= value <= high, key
    assert "kappa_quadratic" not in best  # nominal classes: Cohen's unweighted kappa only
    assert {"auc_ci_low", "acc_ci_high", "sensitivity_abnormal", "sensitivity_abnormal_ci_low", "npv_normal"} <= set(
        rows[0]
    )


def test_evaluate_without_training_names_the_checkpoint(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    with pytest.raises(Exception) as info:
        _run([TRAIN_CONFIG, EVAL_CONFIG], tmp_path, data_dir, weights, mode="online")
    text = error_text(info.value)
    assert "model.pt" in text and "train first" in text


def test_evaluate_an_empty_split_names_the_datalist_before_writing(tmp_path, tiny_bundle_data):
    import shutil

    data_dir, weights = tiny_bundle_data
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    datalist = json.loads((data / "datalist.json").read_text())
    datalist["test"] = []
    (data / "datalist.json").write_text(json.dumps(datalist))
    _run(TRAIN_CONFIG, tmp_path / "bundle", data, weights, mode="online", epochs=1)  # training needs no test split
    eval_dir = tmp_path / "bundle" / "eval"
    # training writes model.pt's validation probabilities there (issue 22); evaluation must add nothing
    written_by_training = sorted(p.name for p in eval_dir.iterdir()) if eval_dir.exists() else []
    assert written_by_training == ["predictions_validation.csv"]
    with pytest.raises(Exception) as info:
        _run([TRAIN_CONFIG, EVAL_CONFIG], tmp_path / "bundle", data, weights, mode="online")
    text = error_text(info.value)
    # evaluation reads training's copy of its datalist, kept inside the bundle (issue 19)
    assert str(tmp_path / "bundle" / "models" / "datalist.json") in text and "the test split is empty" in text
    assert sorted(p.name for p in eval_dir.iterdir()) == written_by_training


def test_evaluation_names_its_lines_test_best_and_test_final(tmp_path, trained_tiny_bundle, caplog):
    """Issue 20: no val_* line for test figures, no first checkpoint's 'best value' given to the second; one line
    per checkpoint named for it, with intervals, and a 'wrote' line per file."""
    import shutil

    source, data_dir, weights = trained_tiny_bundle
    root = tmp_path / "bundle"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("eval"))
    import logging

    shared = logging.getLogger("ignite.engine.engine.SupervisedEvaluator")  # every validator's logger in a process
    level = shared.level
    with caplog.at_level("INFO"):
        _run([TRAIN_CONFIG, EVAL_CONFIG], root, data_dir, weights)
    # quieted for this evaluation only: a training's validator run later in the process keeps its lines
    assert shared.level == level
    text = caplog.text
    assert "val_auc" not in text and "val_acc" not in text and "Key metric" not in text
    assert "test_best (model.pt, n=" in text and "test_final (model_final.pt, n=" in text
    assert "95 % CI" in text and "test_best sensitivity per class" in text
    for name in ("metrics.json", "metrics.csv", "predictions_best.csv", "confusion_final.png", "reliability_best.png"):
        assert f"wrote {root / 'eval' / name}" in text
