"""Tests of fpt_monai.engines.statistics: every figure against an independent computation (scikit-learn, a
hand-computed case, a definition written out here, a published worked example or a known distribution)."""

from __future__ import annotations

import math
import time
from statistics import NormalDist

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from fpt_monai.engines import statistics as st
from fpt_monai.engines.statistics import (
    BOOTSTRAP_METRICS,
    apply_temperature,
    bootstrap_intervals,
    calibration_bins,
    choose_threshold,
    cohen_kappa,
    delong_test,
    delong_test_ovr,
    expected_calibration_error,
    fit_temperature,
    kappa_metric,
    kappa_metric_name,
    metrics_at_threshold,
    per_class_metrics,
    reliability_diagram,
)

PHI = NormalDist().cdf


def _one_hot_probs(preds, c):
    """Probabilities 0.8 on the predicted class, 0.1 elsewhere (3 classes: rows sum to 1)."""
    probs = np.full((len(preds), c), 0.1)
    probs[np.arange(len(preds)), preds] = 0.8
    return probs


def _random_case(n=300, c=3, seed=0, decimals=1):
    """Probabilities with ties (rounded logits) and labels that every class has."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += 1.0
    logits = np.round(logits, decimals)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True), labels


# ---------------------------------------------------------------------------------------------------------------
# 1. per-class figures


def test_per_class_metrics_hand_computed_3x3():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
    m = per_class_metrics(_one_hot_probs(preds, 3), labels, ["benign", "malignant", "normal"])
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert (m["n"], m["num_classes"], m["auc_classes"]) == (10, 3, 3)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    want = {  # sensitivity, specificity, PPV, NPV, F1, support, worked out from the matrix above
        "benign": (2 / 4, 5 / 6, 2 / 3, 5 / 7, 4 / 7, 4),
        "malignant": (2 / 3, 5 / 7, 2 / 4, 5 / 6, 4 / 7, 3),
        "normal": (2 / 3, 6 / 7, 2 / 3, 6 / 7, 2 / 3, 3),
    }
    for name, (sens, spec, ppv, npv, f1, support) in want.items():
        got = m["per_class"][name]
        assert (got["sensitivity"], got["specificity"], got["ppv"], got["npv"], got["f1"]) == pytest.approx(
            (sens, spec, ppv, npv, f1)
        )
        assert got["support"] == support and isinstance(got["support"], int)
    # benign's one-vs-rest AUC by hand: 2 cases at 0.8 beat 5 and tie 1 of 6 non-cases, 2 at 0.1 tie 5 of them
    assert m["per_class"]["benign"]["auc"] == pytest.approx((2 * 5.5 + 2 * 2.5) / 24)


def test_per_class_metrics_equal_scikit_learn():
    probs, labels = _random_case(n=250, c=4, seed=1)
    m = per_class_metrics(probs, labels)
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds, labels=range(4))
    assert m["confusion_matrix"] == cm.tolist()
    assert m["accuracy"] == pytest.approx(np.mean(preds == labels))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    recall = recall_score(labels, preds, average=None)
    precision = precision_score(labels, preds, average=None)
    f1 = f1_score(labels, preds, average=None)
    for k in range(4):
        got = m["per_class"][str(k)]
        neg = labels != k
        assert got["sensitivity"] == pytest.approx(recall[k])
        assert got["ppv"] == pytest.approx(precision[k])
        assert got["f1"] == pytest.approx(f1[k])
        assert got["specificity"] == pytest.approx(recall_score(neg, preds != k))  # recall of "not k"
        assert got["npv"] == pytest.approx(precision_score(neg, preds != k))
        assert got["auc"] == pytest.approx(roc_auc_score(labels == k, probs[:, k]))
        assert got["support"] == int(np.sum(labels == k))


def test_per_class_metrics_absent_class_and_never_predicted_class_are_nan():
    labels = np.array([0, 0, 1, 1, 0, 1])
    preds = np.array([0, 1, 1, 1, 0, 0])  # class 2 is neither a label nor predicted
    m = per_class_metrics(_one_hot_probs(preds, 3), labels)
    absent = m["per_class"]["2"]
    assert absent["support"] == 0
    assert math.isnan(absent["sensitivity"]) and math.isnan(absent["auc"]) and math.isnan(absent["ppv"])
    assert math.isnan(absent["f1"])
    assert absent["specificity"] == 1.0 and absent["npv"] == 1.0
    assert m["auc_classes"] == 2
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))  # classes present only
    assert m["macro_auc"] == pytest.approx(np.mean([m["per_class"][k]["auc"] for k in "01"]))
    only_one = per_class_metrics(_one_hot_probs(np.array([0, 1]), 2), np.array([0, 0]))
    assert math.isnan(only_one["macro_auc"]) and only_one["auc_classes"] == 0


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (np.ones(4), [0, 1, 0, 1], "2-D array"),
        (np.ones((3, 2)), [0, 1], "one label per row"),
        (np.ones((3, 2)), [0, 1, 2], r"\[0, 2\)"),
        (np.ones((3, 2)), [0.5, 1, 0], "integer"),
        (np.ones((3, 2)), ["a", "b", "a"], "integer class indices"),
        (np.array([[0.5, np.nan], [0.5, 0.5]]), [0, 1], "NaN"),
    ],
)
def test_per_class_metrics_refuses_bad_inputs(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        per_class_metrics(probs, labels)


def test_per_class_metrics_refuses_wrong_class_names():
    with pytest.raises(ValueError, match="one per class"):
        per_class_metrics(np.eye(2), [0, 1], ["a"])


# ---------------------------------------------------------------------------------------------------------------
# 2. kappa


def test_kappa_name_and_value_fit_the_labels():
    assert kappa_metric_name(False) == "kappa" and kappa_metric_name() == "kappa"
    assert kappa_metric_name(True) == "kappa_quadratic"
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
    # by hand: observed agreement 0.6, chance agreement (4*3 + 3*4 + 3*3) / 100 = 0.33
    assert cohen_kappa(labels, preds) == pytest.approx((0.6 - 0.33) / (1 - 0.33))
    assert kappa_metric(labels, preds) == ("kappa", pytest.approx(cohen_kappa_score(labels, preds)))
    name, value = kappa_metric(labels, preds, ordinal=True)
    assert name == "kappa_quadratic"
    assert value == pytest.approx(cohen_kappa_score(labels, preds, weights="quadratic"))
    assert cohen_kappa(labels, preds, "linear") == pytest.approx(cohen_kappa_score(labels, preds, weights="linear"))
    # renaming the classes (folder order) leaves the unweighted kappa alone, not the quadratic one
    perm = np.array([2, 0, 1])
    assert cohen_kappa(perm[labels], perm[preds]) == pytest.approx(cohen_kappa(labels, preds))
    assert cohen_kappa(perm[labels], perm[preds], "quadratic") != pytest.approx(cohen_kappa(labels, preds, "quadratic"))
    assert math.isnan(cohen_kappa([1, 1, 1], [1, 1, 1]))
    with pytest.raises(ValueError, match="weights"):
        cohen_kappa(labels, preds, "cubic")


# ---------------------------------------------------------------------------------------------------------------
# 3. bootstrap


def test_bootstrap_point_estimates_equal_per_class_metrics_and_intervals_contain_them():
    probs, labels = _random_case()
    names = ["benign", "malignant", "normal"]
    m = per_class_metrics(probs, labels, names)
    out = bootstrap_intervals(probs, labels, metrics=list(BOOTSTRAP_METRICS), n_resamples=500, class_names=names)
    assert out["macro_auc"].point == pytest.approx(m["macro_auc"], abs=1e-12)
    assert out["accuracy"].point == pytest.approx(m["accuracy"], abs=1e-12)
    assert out["balanced_accuracy"].point == pytest.approx(m["balanced_accuracy"], abs=1e-12)
    for name in names:
        for metric in ("auc", "sensitivity", "specificity", "ppv", "npv", "f1"):
            interval = out[f"{metric}/{name}"]
            assert interval.point == pytest.approx(m["per_class"][name][metric], abs=1e-12)
            assert interval.low <= interval.point <= interval.high and interval.low < interval.high
            assert interval.n_used == 500
    default = bootstrap_intervals(probs, labels, n_resamples=10, class_names=names)
    assert set(default) == {"macro_auc", "accuracy", "balanced_accuracy"} | {
        f"{metric}/{name}" for metric in ("auc", "sensitivity", "specificity") for name in names
    }


def test_vectorised_bootstrap_equals_scikit_learn_on_the_same_resamples(monkeypatch):
    """The callable path evaluates scikit-learn on each resample's items; the vectorised path computes from item
    multiplicities. The same seed draws the same resamples, so both give the same quantiles."""
    probs, labels = _random_case(n=120, seed=2)
    preds = probs.argmax(1)

    def sk(p, y):
        q = p.argmax(1)
        return {
            "macro_auc": roc_auc_score(y, p, multi_class="ovr"),
            "auc/1": roc_auc_score(y == 1, p[:, 1]),
            "accuracy": float(np.mean(q == y)),
            "balanced_accuracy": balanced_accuracy_score(y, q),
            "sensitivity/2": recall_score(y == 2, q == 2),
            "specificity/0": recall_score(y != 0, q != 0),
        }

    slow = bootstrap_intervals(probs, labels, metrics=sk, n_resamples=200, seed=7)
    fast = bootstrap_intervals(probs, labels, n_resamples=200, seed=7)
    for key, interval in slow.items():
        assert fast[key] == pytest.approx(interval, abs=1e-12), key
    assert preds.shape == labels.shape
    # large test sets are resampled in chunks (29 chunks of 7 here): both paths still see the same resamples
    monkeypatch.setattr(st, "_CHUNK_ELEMENTS", 120 * 7)
    chunked_fast = bootstrap_intervals(probs, labels, n_resamples=200, seed=7)
    chunked_slow = bootstrap_intervals(probs, labels, metrics=sk, n_resamples=200, seed=7)
    for key, interval in chunked_slow.items():
        assert chunked_fast[key] == pytest.approx(interval, abs=1e-12), key
        assert chunked_fast[key].low == pytest.approx(fast[key].low, abs=0.05)  # other draws, same distribution


def test_bootstrap_is_seeded_stratified_and_skips_undefined_resamples():
    probs, labels = _random_case(n=90, seed=3)
    a = bootstrap_intervals(probs, labels, n_resamples=300, seed=5)
    assert a == bootstrap_intervals(probs, labels, n_resamples=300, seed=5)
    assert a != bootstrap_intervals(probs, labels, n_resamples=300, seed=6)
    counts = np.bincount(labels, minlength=3)

    def class_counts(p, y):
        return {f"count/{k}": float(np.sum(y == k)) for k in range(3)}

    kept = bootstrap_intervals(probs, labels, metrics=class_counts, n_resamples=50)
    for k in range(3):
        assert kept[f"count/{k}"] == (counts[k], counts[k], counts[k], 50)  # every resample keeps the class counts
    free = bootstrap_intervals(probs, labels, metrics=class_counts, n_resamples=50, stratified=False)
    assert free["count/0"].low < counts[0] < free["count/0"].high

    # class 2 predicted once: resamples that miss that item have no PPV for class 2 and are skipped
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    preds = labels.copy()
    preds[labels == 2] = rng.integers(0, 2, 20)
    preds[0] = 2
    out = bootstrap_intervals(_one_hot_probs(preds, 3), labels, metrics=["ppv"], n_resamples=400, seed=1)
    assert 0 < out["ppv/2"].n_used < 400
    assert out["ppv/2"].n_used == pytest.approx(400 * (1 - (19 / 20) ** 20), rel=0.15)  # P(item 0 drawn)
    assert out["ppv/0"].n_used == 400


def test_bootstrap_of_2000_resamples_takes_seconds():
    probs, labels = _random_case(n=300, c=3, seed=4)
    start = time.perf_counter()
    out = bootstrap_intervals(probs, labels, metrics=list(BOOTSTRAP_METRICS), n_resamples=2000)
    elapsed = time.perf_counter() - start
    print(f"2000 stratified resamples of 300 items x 3 classes, {len(out)} metrics: {elapsed:.2f} s")
    assert elapsed < 5.0
    assert all(interval.n_used == 2000 for interval in out.values())


def test_bootstrap_intervals_cover_the_true_auc_and_sensitivity():
    """200 test sets of 100 negatives ~ N(0, 1) and 100 positives ~ N(1, 1): the true AUC is Phi(1 / sqrt(2)) and
    the true sensitivity of "positive when the score > 0" is Phi(1). The 95 % intervals (300 resamples each) must
    cover them in 90-99 % of the sets."""
    rng = np.random.default_rng(2024)
    true_auc, true_sens = PHI(1 / math.sqrt(2)), PHI(1.0)
    labels = np.repeat([0, 1], 100)
    covered_auc = covered_sens = 0
    for rep in range(200):
        score = rng.normal(size=200) + labels
        p1 = 1 / (1 + np.exp(-score))
        out = bootstrap_intervals(
            np.stack([1 - p1, p1], 1), labels, metrics=["macro_auc", "sensitivity"], n_resamples=300, seed=rep
        )
        covered_auc += out["macro_auc"].low <= true_auc <= out["macro_auc"].high
        covered_sens += out["sensitivity/1"].low <= true_sens <= out["sensitivity/1"].high
    assert 0.90 <= covered_auc / 200 <= 0.99, covered_auc
    assert 0.90 <= covered_sens / 200 <= 0.99, covered_sens


def test_bootstrap_refuses_bad_arguments():
    probs, labels = _random_case(n=30)
    with pytest.raises(ValueError, match="unknown bootstrap metrics"):
        bootstrap_intervals(probs, labels, metrics=["auroc"])
    with pytest.raises(ValueError, match="unknown bootstrap metrics"):
        bootstrap_intervals(probs, labels, metrics="macro_auc")
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_intervals(probs, labels, confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_intervals(probs, labels, n_resamples=0)


# ---------------------------------------------------------------------------------------------------------------
# 4. DeLong

# pROC's aSAH example (Turck et al., Intensive Care Med 2010; 113 patients: 41 poor and 72 good outcomes). DeLong's
# test is a function of the ranks alone, so the test is stated through DeLong's structural components (placement
# values) that pROC's own tests record for this data (xrobin/pROC, tests/testthat/helper-deLongPlacementsCpp-
# expected.R), as integers: for each poor-outcome patient, 2 x (good-outcome patients scored lower) + (tied); for
# each good-outcome patient, 2 x (poor-outcome patients scored higher) + (tied). Patients in data order.
# fmt: off
ASAH_S100B_CASES = [81, 63, 103, 78, 130, 144, 140, 26, 123, 50, 26, 128, 126, 139, 144, 118, 144, 144, 144, 26, 144,
                    120, 0, 50, 116, 144, 118, 144, 38, 118, 81, 63, 74, 116, 144, 88, 144, 121, 144, 144, 130]
ASAH_S100B_CONTROLS = [58, 55, 66, 80, 28, 52, 66, 66, 80, 73, 80, 70, 63, 77, 52, 77, 63, 58, 52, 80, 53, 55, 36,
                       70, 24, 28, 53, 77, 32, 28, 63, 73, 70, 73, 80, 58, 66, 55, 54, 80, 80, 70, 80, 70, 73, 53, 70,
                       73, 37, 63, 42, 77, 66, 39, 77, 80, 48, 34, 66, 54, 73, 55, 66, 77, 80, 52, 54, 28, 52, 54, 24,
                       27]
ASAH_WFNS_CASES = [117, 94, 128, 140, 140, 140, 140, 94, 140, 94, 37, 94, 140, 128, 128, 94, 140, 140, 140, 94, 140,
                   94, 140, 94, 128, 140, 128, 128, 37, 128, 128, 94, 94, 140, 140, 94, 94, 140, 140, 140, 140]
ASAH_WFNS_CONTROLS = [80, 80, 80, 80, 18, 80, 66, 66, 80, 66, 66, 80, 80, 80, 66, 80, 66, 80, 80, 53, 44, 80, 44, 80,
                      18, 18, 80, 80, 66, 44, 80, 80, 66, 66, 80, 66, 80, 66, 66, 80, 80, 80, 80, 66, 80, 66, 80, 80,
                      53, 66, 44, 66, 80, 44, 80, 80, 18, 44, 66, 66, 80, 80, 80, 53, 80, 66, 66, 44, 44, 80, 80,
                      80]
# fmt: on


def _scores_from_placements(cases2, controls2):
    """Scores (rank levels) whose placement values are the given ones: walk up the pooled ranking, placing at each
    level the next group of cases (equal placement), of controls, or both tied."""
    cases2, controls2 = np.asarray(cases2), np.asarray(controls2)
    case_groups = sorted(set(cases2.tolist()))  # lowest-scored cases first
    control_groups = sorted(set(controls2.tolist()), reverse=True)  # lowest-scored controls first
    case_score, control_score = np.zeros(len(cases2)), np.zeros(len(controls2))
    below, above, level = 0, len(cases2), 0  # controls placed so far, cases not placed yet
    while case_groups or control_groups:
        level += 1
        u = case_groups[0] if case_groups else None
        v = control_groups[0] if control_groups else None
        m1 = int(np.sum(cases2 == u)) if u is not None else 0
        m0 = int(np.sum(controls2 == v)) if v is not None else 0
        if u is not None and u == 2 * below:  # cases alone at this level
            case_score[cases2 == u], above = level, above - m1
            case_groups.pop(0)
        elif v is not None and v == 2 * above:  # controls alone
            control_score[controls2 == v], below = level, below + m0
            control_groups.pop(0)
        else:  # tied
            assert u == 2 * below + m0 and v == 2 * (above - m1) + m1, "placements of no ranking"
            case_score[cases2 == u], control_score[controls2 == v] = level, level
            above, below = above - m1, below + m0
            case_groups.pop(0)
            control_groups.pop(0)
    return np.concatenate([case_score, control_score])


def _delong_by_definition(positive, scores_a, scores_b):
    """DeLong, DeLong & Clarke-Pearson (1988), written from the paper: psi over all m x n pairs, the structural
    components V10 and V01, their covariance matrices S10 and S01, and z for theta_a - theta_b."""
    comps = []
    for s in (scores_a, scores_b):
        x, y = s[positive][:, None], s[~positive][None, :]
        psi = (x > y) + 0.5 * (x == y)
        comps.append((psi.mean(), psi.mean(1), psi.mean(0)))
    m, n = positive.sum(), (~positive).sum()
    s10 = np.array([[np.sum((r[1] - r[0]) * (s[1] - s[0])) / (m - 1) for s in comps] for r in comps])
    s01 = np.array([[np.sum((r[2] - r[0]) * (s[2] - s[0])) / (n - 1) for s in comps] for r in comps])
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    return comps[0][0], comps[1][0], (comps[0][0] - comps[1][0]) / math.sqrt(var)


def test_delong_reproduces_proc_on_asah():
    """pROC's documented output of roc.test(roc(aSAH$outcome, aSAH$s100b), roc(aSAH$outcome, aSAH$wfns)):
    AUC 0.7314 vs 0.8237, Z = -2.209, p-value = 0.02718."""
    s100b = _scores_from_placements(ASAH_S100B_CASES, ASAH_S100B_CONTROLS)
    wfns = _scores_from_placements(ASAH_WFNS_CASES, ASAH_WFNS_CONTROLS)
    labels = np.r_[np.ones(41, int), np.zeros(72, int)]
    # the scores rebuilt have pROC's structural components exactly (checks the O(n log n) placements too)
    for scores, cases2, controls2 in (
        (s100b, ASAH_S100B_CASES, ASAH_S100B_CONTROLS),
        (wfns, ASAH_WFNS_CASES, ASAH_WFNS_CONTROLS),
    ):
        _, v10, v01 = st._placements(labels == 1, scores)
        assert v10 * 144 == pytest.approx(np.asarray(cases2), abs=1e-9)
        assert v01 * 82 == pytest.approx(np.asarray(controls2), abs=1e-9)
    got = delong_test(labels, s100b, wfns)
    assert round(got["auc_a"], 4) == 0.7314 and round(got["auc_b"], 4) == 0.8237
    assert round(got["z"], 3) == -2.209
    assert round(got["p_value"], 5) == 0.02718
    assert (got["n_positive"], got["n_negative"]) == (41, 72)
    assert got["difference"] == pytest.approx(got["auc_a"] - got["auc_b"])
    assert got["se"] == pytest.approx(got["difference"] / got["z"])
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(
        (got["difference"] - 1.959964 * got["se"], got["difference"] + 1.959964 * got["se"]), abs=1e-6
    )
    assert got["ci_high"] < 0  # p < 0.05: the interval excludes 0
    assert got["auc_a"] == pytest.approx(roc_auc_score(labels, s100b))
    swapped = delong_test(labels, wfns, s100b)
    assert swapped["z"] == pytest.approx(-got["z"]) and swapped["p_value"] == pytest.approx(got["p_value"])


def test_delong_equals_the_1988_definition_with_ties():
    rng = np.random.default_rng(11)
    labels = (rng.random(140) < 0.4).astype(int)
    a = np.round(rng.normal(size=140) + labels, 1)  # many ties
    b = np.round(0.5 * a + rng.normal(size=140) + 0.5 * labels, 0)
    got = delong_test(labels, a, b)
    auc_a, auc_b, z = _delong_by_definition(labels == 1, a, b)
    assert got["auc_a"] == pytest.approx(auc_a, abs=1e-12) and got["auc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert got["z"] == pytest.approx(z, rel=1e-10)
    assert got["p_value"] == pytest.approx(2 * (1 - PHI(abs(z))), rel=1e-8)
    same = delong_test(labels, a, 3 * a + 1)  # the same ranking
    assert (same["difference"], same["z"], same["p_value"]) == pytest.approx((0.0, 0.0, 1.0))


def test_delong_tiny_hand_computed_case():
    """Positives scored (3, 2), negatives (1, 2.5, 0) by A and (3, 1), (2, 0, 1.5) by B. By hand: AUC_A = 5/6,
    AUC_B = 4/6; V10_A = (1, 2/3), V10_B = (1, 1/3); V01_A = (1, 1/2, 1), V01_B = (1/2, 1, 1/2);
    S10 = [[1/18, 1/9], [1/9, 2/9]], S01 = [[1/12, -1/12], [-1/12, 1/12]] (n - 1 denominators);
    var = (1/18 + 2/9 - 2/9) / 2 + (1/12 + 1/12 + 1/6) / 3 = 1/36 + 1/9 = 5/36."""
    labels = np.array([1, 1, 0, 0, 0])
    got = delong_test(labels, np.array([3, 2, 1, 2.5, 0]), np.array([3, 1, 2, 0, 1.5]))
    assert got["auc_a"] == pytest.approx(5 / 6) and got["auc_b"] == pytest.approx(4 / 6)
    assert got["se"] == pytest.approx(math.sqrt(5 / 36))
    assert got["z"] == pytest.approx((1 / 6) / math.sqrt(5 / 36))


def test_delong_one_vs_rest_per_class():
    probs_a, labels = _random_case(n=150, c=3, seed=8)
    probs_b, _ = _random_case(n=150, c=3, seed=9)
    out = delong_test_ovr(labels, probs_a, probs_b, ["a", "b", "c"])
    assert set(out) == {"a", "b", "c"}
    for k, name in enumerate("abc"):
        want = delong_test(labels == k, probs_a[:, k], probs_b[:, k])
        assert out[name] == pytest.approx(want)
        assert out[name]["auc_a"] == pytest.approx(roc_auc_score(labels == k, probs_a[:, k]))


def test_delong_refuses_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative"):
        delong_test([1, 0, 0, 0], [1, 2, 3, 4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="binary"):
        delong_test([0, 1, 2, 1], [1, 2, 3, 4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="one score per case"):
        delong_test([0, 1, 0, 1], [1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="same shape"):
        delong_test_ovr([0, 1], np.eye(2), np.ones((2, 3)) / 3)


# ---------------------------------------------------------------------------------------------------------------
# 5. calibration


def test_ece_of_a_calibrated_and_of_known_miscalibrated_samples():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    labels = (rng.random(200_000) < p).astype(int)  # P(label 1) = p: calibrated
    assert expected_calibration_error(np.stack([1 - p, p], 1), labels) < 0.01
    # says 0.9, right 6 times out of 10: ECE 0.3
    probs = np.tile([0.9, 0.1], (10, 1))
    assert expected_calibration_error(probs, np.r_[np.zeros(6, int), np.ones(4, int)]) == pytest.approx(0.3)
    # two bins by hand: 4 at 0.95 with 2 right (gap 0.45), 4 at 0.55 with 3 right (gap 0.2) -> 0.325
    probs = np.array([[0.95, 0.05]] * 4 + [[0.45, 0.55]] * 4)
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 0])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.325)


def test_calibration_bins_equal_a_loop_over_bins():
    probs, labels = _random_case(n=400, c=3, seed=5, decimals=3)
    table = calibration_bins(probs, labels, n_bins=15)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        assert table["count"][b] == inside.sum()
        if inside.any():
            assert table["accuracy"][b] == pytest.approx(correct[inside].mean())
            assert table["confidence"][b] == pytest.approx(conf[inside].mean())
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
        else:
            assert math.isnan(table["accuracy"][b])
    assert expected_calibration_error(probs, labels) == pytest.approx(ece)
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(probs * 3, labels)


def test_reliability_diagram_writes_a_png(tmp_path):
    probs, labels = _random_case(n=200, seed=6)
    path = reliability_diagram(probs, labels, tmp_path / "plots" / "reliability_best.png", "best weights, test")
    assert path == tmp_path / "plots" / "reliability_best.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert [p.name for p in path.parent.iterdir()] == ["reliability_best.png"]  # no temporary file left


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(20_000, 4))
    true = np.exp(logits / 2.0)
    true /= true.sum(1, keepdims=True)
    labels = (rng.random((20_000, 1)) > np.cumsum(true, 1)).sum(1)  # drawn from softmax(logits / 2)
    t_logits = fit_temperature(logits, labels)
    assert t_logits == pytest.approx(2.0, abs=0.1)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    assert fit_temperature(probs, labels) == pytest.approx(t_logits, rel=1e-6)  # log-probabilities as logits
    scaled = apply_temperature(probs, t_logits)
    want = np.exp(logits / t_logits)
    assert scaled == pytest.approx(want / want.sum(1, keepdims=True), abs=1e-9)
    assert (scaled.argmax(1) == probs.argmax(1)).all()
    assert expected_calibration_error(scaled, labels) < expected_calibration_error(probs, labels)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(probs, 0.0)
    with pytest.raises(ValueError, match="kind"):
        fit_temperature(logits, labels, kind="scores")


# ---------------------------------------------------------------------------------------------------------------
# 6. operating points


def test_choose_threshold_hand_made_case():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.5, 0.7, 0.8])
    # cut-offs (>=) 0.8: J 0.25, 0.7: 0.5, 0.6: 0.25, 0.5: 0.5, 0.4: 0.75 (sens 1, spec 0.75), 0.3: 0.5, ...
    got = choose_threshold(labels, scores)
    assert got == pytest.approx({"threshold": 0.35, "sensitivity": 1.0, "specificity": 0.75, "youden_j": 0.75})
    # the most specific cut-off with sensitivity >= 0.7 is 0.5 (sens 0.75, spec 0.75): midpoint with 0.4
    got = choose_threshold(labels, scores, target_sensitivity=0.7)
    assert got == pytest.approx({"threshold": 0.45, "sensitivity": 0.75, "specificity": 0.75, "youden_j": 0.5})
    assert choose_threshold(labels, scores, target_sensitivity=1.0)["threshold"] == pytest.approx(0.35)
    # ties in J (0.7 and 0.4 here) go to the lower cut-off, which misses fewer positives
    tied = choose_threshold(labels, np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.65, 0.7, 0.8]))
    assert tied["threshold"] == pytest.approx(0.35) and tied["sensitivity"] == 1.0


def test_chosen_threshold_and_metrics_at_threshold_agree_with_scikit_learn():
    probs, labels = _random_case(n=200, c=3, seed=10, decimals=2)
    positive = labels == 2
    chosen = choose_threshold(positive, probs[:, 2])
    m = metrics_at_threshold(positive, probs[:, 2], chosen["threshold"])
    tn, fp, fn, tp = confusion_matrix(positive, probs[:, 2] >= chosen["threshold"]).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (tp, fp, tn, fn, 200)
    assert m["sensitivity"] == pytest.approx(chosen["sensitivity"]) == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(chosen["specificity"]) == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp)) and m["npv"] == pytest.approx(tn / (tn + fn))
    # Youden's J is the best over every cut-off of the ROC curve
    best = max(
        metrics_at_threshold(positive, probs[:, 2], t)["sensitivity"]
        + metrics_at_threshold(positive, probs[:, 2], t)["specificity"]
        for t in np.unique(probs[:, 2])
    )
    assert chosen["youden_j"] == pytest.approx(best - 1)
    # intervals of the figures at the chosen threshold, through the bootstrap's callable path
    out = bootstrap_intervals(
        probs, labels, metrics=lambda p, y: metrics_at_threshold(y == 2, p[:, 2], chosen["threshold"]), n_resamples=200
    )
    assert out["sensitivity"].point == pytest.approx(m["sensitivity"])
    assert out["sensitivity"].low < m["sensitivity"] < out["sensitivity"].high


def test_thresholds_refuse_bad_inputs():
    with pytest.raises(ValueError, match="positive and negative"):
        choose_threshold([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold([0, 1], [0.1, 0.2], method="target_sensitivity")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        choose_threshold([0, 1], [0.1, 0.2], target_sensitivity=95)
    with pytest.raises(ValueError, match="method"):
        choose_threshold([0, 1], [0.1, 0.2], method="roc01")
    with pytest.raises(ValueError, match="finite"):
        metrics_at_threshold([0, 1], [0.1, 0.2], float("nan"))
