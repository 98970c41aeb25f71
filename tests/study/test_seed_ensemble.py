"""The study's seed ensembles (issue 22): a method's probabilities averaged over its seeds per fold, tested as one
model; unit tests on synthetic run records (no bundle runs)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fpt_monai.study.compare import summarize
from fpt_monai.study.fusion import default_fusions, fuse_method
from fpt_monai.study.report import markdown
from fpt_monai.study.seed_ensemble import ensemble_name, seed_ensemble, seed_ensemble_methods

from .test_fusion import _study


def test_seed_ensemble_averages_the_chosen_runs_seeds_per_fold():
    rng = np.random.default_rng(1)
    runs, chosen, test, val = _study(rng, folds=2, seeds=(0, 1, 2))
    rows, test_preds, val_preds, why = seed_ensemble("A", runs, chosen, test, val)
    assert why == "" and len(rows) == 2  # one row per fold, never the lr that was not chosen (test AUC 0.9)
    for f in (0, 1):
        row = next(r for r in rows if r["fold"] == f)
        assert row["method"] == "seeds(A)" and row["lr"] == 0.1 and row["seed"] == 0 and row["seeds"] == [0, 1, 2]
        key = (f, "seeds(A)", 0.1, 0)
        mean_test = np.mean([test[(f, "A", 0.1, s)]["probs"] for s in (0, 1, 2)], 0)
        mean_val = np.mean([val[(f, "A", 0.1, s)]["probs"] for s in (0, 1, 2)], 0)
        np.testing.assert_allclose(test_preds[key]["probs"], mean_test)
        np.testing.assert_allclose(val_preds[key]["probs"], mean_val)
        labels = test[(f, "A", 0.1, 0)]["labels"]
        assert row["test_auc"] == pytest.approx(roc_auc_score(labels, mean_test[:, 1]))
        assert row["val_auc"] == pytest.approx(roc_auc_score(val[(f, "A", 0.1, 0)]["labels"], mean_val[:, 1]))
        single = [roc_auc_score(labels, test[(f, "A", 0.1, s)]["probs"][:, 1]) for s in (0, 1, 2)]
        assert row["test_auc"] != pytest.approx(np.mean(single))  # the ensemble, not the mean of single seeds
    # B's validation ids are listed in another order than its test ids: averaged by id, not by position
    rows_b, _, val_b, _ = seed_ensemble("B", runs, chosen, test, val)
    assert len(rows_b) == 2 and val_b[(0, "seeds(B)", 1.0, 0)]["ids"] == val[(0, "B", 1.0, 0)]["ids"]

    # then a method like any other: summarised, paired with B by fold, fused with a probe, in the report
    chosen = {**chosen, "seeds(A)": {r["fold"]: r["lr"] for r in rows}}
    summary = summarize(runs + rows, chosen, ["A", "B", "seeds(A)"], ["B"], {**test, **test_preds})
    ens = next(s for s in summary["methods"] if s["method"] == "seeds(A)")
    assert ens["runs"] == 2 and ens["test_auc_per_fold"] == [r["test_auc"] for r in rows]
    paired = next(c for c in summary["paired"] if c["method"] == "seeds(A)")
    assert paired["pairs"] == 2  # paired with B's seed 0 in each fold
    fused, weights, _, why = fuse_method(
        "seeds(A)", "B", runs + rows, chosen, {**test, **test_preds}, {**val, **val_preds}
    )
    assert why == "" and len(fused) == 2 and sorted(weights) == [0, 1]
    assert "seeds(A): A's test probabilities averaged over its seeds" in markdown(summary, "header")


def test_seed_ensemble_needs_two_seeds_and_every_prediction():
    rng = np.random.default_rng(2)
    runs, chosen, test, val = _study(rng, folds=2, seeds=(0,))
    rows, _, _, why = seed_ensemble("A", runs, chosen, test, val)
    assert rows == [] and "fold 0 has 1 seed(s) at its chosen lr 0.1" in why
    runs, chosen, test, val = _study(rng, folds=2, seeds=(0, 1))
    val[(1, "A", 0.1, 1)] = None  # e.g. a run of an older study, without its validation predictions
    rows, _, _, why = seed_ensemble("A", runs, chosen, test, val)
    assert rows == [] and "fold 1 lacks validation or test predictions" in why
    test[(0, "A", 0.1, 0)] = {**test[(0, "A", 0.1, 0)], "ids": ["other"] * 24}  # another image set
    rows, _, _, why = seed_ensemble("A", runs, chosen, test, val)
    assert rows == [] and "fold 0: no prediction of" in why


def test_which_methods_get_a_seed_ensemble_and_its_default_fusion():
    methods = ["fpt_plus+small_data+ema", "linear_probe+small_data", "logreg_sklearn", "logreg_sklearn@224", "lora"]
    assert seed_ensemble_methods(methods, [0, 1]) == ["fpt_plus+small_data+ema", "lora"]  # probes: deterministic
    assert seed_ensemble_methods(methods, [0]) == []
    assert ensemble_name("fpt_plus") == "seeds(fpt_plus)"
    assert default_fusions(["seeds(fpt_plus)", "seeds(lora)", "fpt_plus"], "logreg_sklearn") == [
        ("seeds(fpt_plus)", "logreg_sklearn"),
        ("fpt_plus", "logreg_sklearn"),
    ]


def test_each_seeds_mean_is_summarised_and_reported_when_the_seeds_differ():
    rng = np.random.default_rng(3)
    runs, chosen, test, val = _study(rng, folds=2, seeds=(0, 1))
    for r in runs:  # seed 1 trains worse; the probe-like B repeats one result per seed
        if r["method"] == "A" and r["lr"] == 0.1:
            r["test_auc"] = 0.8 - 0.1 * r["seed"] + 0.02 * r["fold"]
    summary = summarize(runs, chosen, ["A", "B"], ["B"], test)
    by_method = {s["method"]: s for s in summary["methods"]}
    assert by_method["A"]["test_auc_per_seed"] == {0: pytest.approx(0.81), 1: pytest.approx(0.71)}
    assert by_method["B"]["test_auc_per_seed"] == {0: 0.7, 1: 0.7}
    text = markdown(summary, "header")
    assert "Test AUC of each seed (mean over folds): A: seed 0 0.810, seed 1 0.710." in text  # B's seeds are equal
