"""Evaluation reports and prediction files (issue 20): intervals beside each figure, no silent overwrite."""

from __future__ import annotations

import csv
import logging
import os

import numpy as np
import pytest

from fpt_monai.engines import PredictionWriter, checkpoint_report, flat_metrics


def _writer(tmp_path, probs):
    writer = PredictionWriter(tmp_path, ["benign", "malignant"])
    writer.ids, writer.frames, writer.probs = [f"case{i}.png" for i in range(len(probs))], [None] * len(probs), probs
    return writer


def test_an_earlier_runs_predictions_are_kept_and_the_new_ones_said(tmp_path, caplog):
    _writer(tmp_path, [np.array([0.9, 0.1])]).write()
    os.utime(tmp_path / "predictions.csv", (1.7e9, 1.7e9))  # written at a known time
    first = (tmp_path / "predictions.csv").read_text()
    with caplog.at_level(logging.INFO):
        _writer(tmp_path, [np.array([0.2, 0.8]), np.array([0.6, 0.4])]).write()
    kept = sorted(p.name for p in tmp_path.glob("predictions_*.csv"))
    assert len(kept) == 1 and (tmp_path / kept[0]).read_text() == first
    assert (tmp_path / kept[0].replace(".csv", ".json")).is_file()
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [r["prediction"] for r in rows] == ["malignant", "benign"]
    assert f"kept the previous predictions as {tmp_path / kept[0]}" in caplog.text
    assert "case0.png: malignant (p=0.800)" in caplog.text and f"wrote {tmp_path / 'predictions.csv'}" in caplog.text


def test_a_checkpoint_report_puts_an_interval_beside_each_figure():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    probs = rng.dirichlet(np.ones(3), len(labels))
    probs[np.arange(len(labels)), labels] += 0.6
    probs /= probs.sum(1, keepdims=True)
    report = checkpoint_report(probs, labels, ["a", "b", "c"], n_resamples=300)
    for key in ("auc", "acc", "balanced_acc"):
        low, high = report["ci"][key]
        assert low < report[key] < high
    flat = flat_metrics(report)
    assert flat["sensitivity_b"] == pytest.approx(np.mean(probs[labels == 1].argmax(1) == 1))
    assert flat["sensitivity_b_ci_low"] <= flat["sensitivity_b"] <= flat["sensitivity_b_ci_high"]
    assert {"auc_ci_low", "auc_ci_high", "ppv_a", "npv_c", "f1_b", "ece", "n"} <= set(flat)
    assert "kappa_quadratic" not in flat
    assert "kappa_quadratic" in checkpoint_report(probs, labels, ["a", "b", "c"], ordinal=True, n_resamples=50)


def test_a_small_class_keeps_an_honest_interval():
    """3 of 3 found: the stratified bootstrap can only say [1, 1]; Wilson's interval says [0.44, 1]."""
    from fpt_monai.engines.statistics import wilson_interval

    labels = np.array([0] * 20 + [1] * 3)
    probs = np.tile([[0.9, 0.1]], (23, 1))
    probs[20:] = [0.2, 0.8]
    probs[:2] = [0.3, 0.7]  # two false positives
    report = checkpoint_report(probs, labels, ["benign", "malignant"], n_resamples=200)
    assert report["per_class"]["malignant"]["sensitivity"] == 1.0
    assert report["ci"]["sensitivity/malignant"] == pytest.approx(list(wilson_interval(3, 3)))
    assert report["ci"]["sensitivity/malignant"][0] < 0.5
    assert report["ci"]["specificity/malignant"] == pytest.approx(list(wilson_interval(18, 20)))
    assert report["ci"]["sensitivity/benign"] == pytest.approx(list(wilson_interval(18, 20)))
