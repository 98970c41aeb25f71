# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Statistics a clinician needs next to a point estimate on a small test set (issue 20): per-class figures,
a kappa that fits the labels, stratified bootstrap intervals, DeLong's test for two correlated AUCs,
calibration (ECE, reliability diagram, temperature scaling) and operating points.

All functions are pure (numpy + scikit-learn; no scipy, which is not a declared dependency) and validate their
inputs up front: a bad shape, a label outside ``[0, C)`` or a non-finite score raises ``ValueError`` naming the
argument, the problem and the fix.

Conventions:
    * ``probs`` is ``[N, C]`` (softmax probabilities, or any scores where larger means "more likely this class");
      ``labels`` is ``[N]`` integers in ``[0, C)``. The predicted class is ``probs.argmax(1)``.
    * An undefined figure (a zero denominator, a class absent from ``labels``) is ``NaN``, never 0: a
      sensitivity of a class with no cases is not "0 %", it does not exist.
    * AUCs are rank-based (Mann-Whitney with mid-ranks: ties count one half), equal to scikit-learn's
      ``roc_auc_score``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from fpt_monai.utils.atomic import atomic_write

__all__ = [
    "BOOTSTRAP_METRICS",
    "DEFAULT_BOOTSTRAP_METRICS",
    "Interval",
    "apply_temperature",
    "bootstrap_intervals",
    "calibration_bins",
    "choose_threshold",
    "cohen_kappa",
    "delong_test",
    "delong_test_ovr",
    "expected_calibration_error",
    "fit_temperature",
    "kappa_metric",
    "kappa_metric_name",
    "metrics_at_threshold",
    "per_class_metrics",
    "reliability_diagram",
    "wilson_interval",
]

# metrics the vectorised bootstrap computes; the per-class ones expand to "<metric>/<class name>"
BOOTSTRAP_METRICS = (
    "macro_auc",
    "accuracy",
    "balanced_accuracy",
    "auc",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
)
_PER_CLASS = ("auc", "sensitivity", "specificity", "ppv", "npv", "f1")
DEFAULT_BOOTSTRAP_METRICS = ("macro_auc", "accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")
_CHUNK_ELEMENTS = 2_000_000  # resamples x items processed at once: bounds memory (~16 MB per float array)


class Interval(NamedTuple):
    """A bootstrap percentile interval: the point estimate on the whole sample, the interval's bounds and how many
    resamples had the metric defined (a resample where it is undefined, e.g. a PPV with no positive prediction, is
    skipped)."""

    point: float
    low: float
    high: float
    n_used: int


# ----------------------------------------------------------------------------------------------------------------
# input checks


def _as_probs(probs: Any, name: str = "probs") -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise ValueError(
            f"{name} must be a 2-D array [N, C] with N >= 1 and C >= 2, got shape {arr.shape}; pass one row of "
            "class probabilities per image (for a binary score s, pass np.stack([1 - s, s], 1))."
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the model outputs before computing metrics.")
    return arr


def _as_labels(labels: Any, n: int | None = None, num_classes: int | None = None, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of integer class indices, got shape {arr.shape}.")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}; map class names to 0..C-1.")
    as_int = arr.astype(np.int64)
    if not np.all(as_int == arr):
        raise ValueError(f"{name} must hold integer class indices, got non-integer values; map classes to 0..C-1.")
    if n is not None and as_int.shape[0] != n:
        raise ValueError(f"{name} has {as_int.shape[0]} entries but the scores have {n} rows; pass one label per row.")
    if num_classes is not None and (as_int.min() < 0 or as_int.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} score columns, got values in "
            f"[{as_int.min()}, {as_int.max()}]; the label order must match the probability columns."
        )
    return as_int


def _as_binary(labels: Any, n: int | None = None, name: str = "labels") -> np.ndarray:
    arr = _as_labels(labels, n=n, name=name)
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(
            f"{name} must be binary (0 = negative, 1 = positive), got values in [{arr.min()}, {arr.max()}]; for one "
            "class against the rest pass labels == k and probs[:, k]."
        )
    return arr


def _as_scores(scores: Any, n: int | None = None, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {arr.shape}.")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but labels has {n}; pass one score per case.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the model outputs.")
    return arr


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names but probs has {num_classes} columns; pass one per class.")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, got {names}.")
    return names


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with NaN where den == 0 (an undefined figure, not 0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


# ----------------------------------------------------------------------------------------------------------------
# ranks and AUC


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def _auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count one half); NaN without both positives and negatives."""
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = _midranks(scores)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _dense_levels(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense 0-based ranks of ``x`` (equal values share a level) and the number of levels."""
    uniq, inverse = np.unique(x, return_inverse=True)
    return inverse.reshape(-1), len(uniq)


# ----------------------------------------------------------------------------------------------------------------
# 1. per-class figures


def per_class_metrics(probs: Any, labels: Any, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-class and overall figures of a classifier from its probabilities.

    Args:
        probs: ``[N, C]`` class probabilities (or scores; only their order within a column and the row argmax
            matter).
        labels: ``[N]`` integer labels in ``[0, C)``.
        class_names: C names for the ``per_class`` keys (default ``"0"``, ``"1"``, ...).

    Returns:
        ``{"n": N, "num_classes": C, "accuracy", "balanced_accuracy", "macro_auc", "auc_classes": number of classes
        whose AUC is defined, "confusion_matrix": [[int]] (rows = true class, columns = predicted),
        "per_class": {name: {"sensitivity", "specificity", "ppv", "npv", "f1", "auc", "support"}}}``. Sensitivity
        is recall, PPV precision; ``support`` is the class's number of cases (an int), AUC its one-vs-rest AUC of
        ``probs[:, k]``.

    A figure whose denominator is 0 is NaN: the sensitivity and AUC of a class absent from ``labels``, the PPV of a
    class never predicted, the F1 when PPV or sensitivity is NaN or both are 0, the specificity when every case is
    of that class. ``balanced_accuracy`` is the mean sensitivity over the classes present in ``labels`` (as
    scikit-learn's ``balanced_accuracy_score``); ``macro_auc`` the mean AUC over the classes whose AUC is defined
    (as scikit-learn's one-vs-rest macro AUC when every class is present; NaN when none is).
    """
    probs = _as_probs(probs)
    n, c = probs.shape
    labels = _as_labels(labels, n=n, num_classes=c)
    names = _class_names(class_names, c)
    preds = probs.argmax(1)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    fn, fp = support - tp, predicted - tp
    tn = n - tp - fn - fp
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    ppv, npv = _div(tp, tp + fp), _div(tn, tn + fn)
    f1 = _div(2 * ppv * sens, ppv + sens)
    aucs = np.array([_auc(labels == k, probs[:, k]) for k in range(c)])
    defined_auc = np.isfinite(aucs)
    present = support > 0
    return {
        "n": int(n),
        "num_classes": int(c),
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(sens[present].mean()),
        "macro_auc": float(aucs[defined_auc].mean()) if defined_auc.any() else float("nan"),
        "auc_classes": int(defined_auc.sum()),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            name: {
                "sensitivity": float(sens[k]),
                "specificity": float(spec[k]),
                "ppv": float(ppv[k]),
                "npv": float(npv[k]),
                "f1": float(f1[k]),
                "auc": float(aucs[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(names)
        },
    }


# ----------------------------------------------------------------------------------------------------------------
# 2. kappa


def kappa_metric_name(ordinal: bool = False) -> str:
    """The column name of the kappa that fits the labels: ``"kappa"`` (Cohen's unweighted, for nominal classes
    such as benign/malignant/normal) or ``"kappa_quadratic"`` (quadratic-weighted, only for ordinal grades such as
    diabetic-retinopathy 0-4, whose weights depend on the class order)."""
    return "kappa_quadratic" if ordinal else "kappa"


def cohen_kappa(labels: Any, preds: Any, weights: str | None = None, num_classes: int | None = None) -> float:
    """Cohen's kappa between true and predicted class indices (scikit-learn's ``cohen_kappa_score``).

    Args:
        labels: ``[N]`` true class indices.
        preds: ``[N]`` predicted class indices.
        weights: ``None`` (unweighted, the default: right for nominal classes), ``"linear"`` or ``"quadratic"``
            (only for ordinal classes: the value then depends on the order of the class indices).
        num_classes: C, so that classes absent from both arrays still count in the weights (default: the classes
            present).

    Returns:
        Kappa, or NaN when it is undefined (the expected agreement is 1: a single class in both arrays).
    """
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}.")
    labels = _as_labels(labels, num_classes=num_classes)
    preds = _as_labels(preds, n=len(labels), num_classes=num_classes, name="preds")
    from sklearn.metrics import cohen_kappa_score

    classes = list(range(num_classes)) if num_classes else sorted(set(labels.tolist()) | set(preds.tolist()))
    if len(set(labels.tolist()) | set(preds.tolist())) < 2:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(cohen_kappa_score(labels, preds, labels=classes, weights=weights))


def kappa_metric(labels: Any, preds: Any, ordinal: bool = False, num_classes: int | None = None) -> tuple[str, float]:
    """The kappa that fits the labels, with its column name: ``("kappa", unweighted)`` for nominal classes,
    ``("kappa_quadratic", quadratic-weighted)`` for ordinal ones (see :func:`kappa_metric_name`)."""
    return kappa_metric_name(ordinal), cohen_kappa(labels, preds, "quadratic" if ordinal else None, num_classes)


# ----------------------------------------------------------------------------------------------------------------
# 3. stratified bootstrap


def _resample_chunks(
    labels: np.ndarray, n_resamples: int, rng: np.random.Generator, stratified: bool
) -> Iterator[np.ndarray]:
    """``[b, N]`` indices of the resampled items, in chunks of at most ``_CHUNK_ELEMENTS`` indices (so that memory
    stays bounded for large test sets); stratified: each class's positions keep that class's items. The chunking
    depends on N only, so the same seed gives the same resamples whatever the caller does with them."""
    n = len(labels)
    order = np.argsort(labels, kind="mergesort")
    groups = [order[labels[order] == cls] for cls in np.unique(labels)] if stratified else [np.arange(n)]
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, step):
        b = min(step, n_resamples - start)
        yield np.concatenate([members[rng.integers(0, len(members), size=(b, len(members)))] for members in groups], 1)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``[B, N]`` multiplicities of each item in each resample."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b, dtype=np.int64) * n)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


class _AucPlan:
    """Per-class data for the weighted Mann-Whitney AUC of many resamples at once: items sorted by score, the
    boundaries of tied groups, each item's group."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="mergesort")
        levels, n_levels = _dense_levels(scores[self.order])
        self.starts = np.flatnonzero(np.r_[True, levels[1:] != levels[:-1]])
        self.levels = levels
        self.positive = positive[self.order]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """AUC per row of ``weights`` ``[B, N]`` (item multiplicities); NaN where a side has no weight."""
        w = weights[:, self.order]
        w_pos = w * self.positive
        w_neg = w - w_pos
        neg_per_level = np.add.reduceat(w_neg, self.starts, axis=1)
        neg_below = np.cumsum(neg_per_level, axis=1) - neg_per_level
        credit = neg_below + 0.5 * neg_per_level  # what a positive at each level wins against the negatives
        num = (w_pos * credit[:, self.levels]).sum(1)
        return _div(num, w_pos.sum(1) * w_neg.sum(1))


def _vector_metrics(
    weights: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    plans: list[_AucPlan],
    wanted: Sequence[str],
    names: Sequence[str],
) -> dict[str, np.ndarray]:
    """The built-in metrics for each row of item multiplicities ``weights`` ``[B, N]``."""
    c = len(names)
    cell = np.zeros((len(labels), c * c))
    cell[np.arange(len(labels)), labels * c + preds] = 1.0
    cm = (weights @ cell).reshape(-1, c, c)
    total = weights.sum(1)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(2), cm.sum(1)
    fn, fp = support - tp, predicted - tp
    tn = total[:, None] - tp - fn - fp
    out: dict[str, np.ndarray] = {}
    sens = _div(tp, tp + fn)
    if "accuracy" in wanted:
        out["accuracy"] = tp.sum(1) / total
    if "balanced_accuracy" in wanted:
        present = support > 0
        out["balanced_accuracy"] = _div(np.where(present, np.nan_to_num(sens), 0.0).sum(1), present.sum(1))
    if "auc" in wanted or "macro_auc" in wanted:
        aucs = np.stack([plan(weights) for plan in plans], 1)
        if "macro_auc" in wanted:
            defined = np.isfinite(aucs)
            out["macro_auc"] = _div(np.where(defined, aucs, 0.0).sum(1), defined.sum(1))
        if "auc" in wanted:
            out.update({f"auc/{name}": aucs[:, k] for k, name in enumerate(names)})
    per_class = {
        "sensitivity": sens,
        "specificity": lambda: _div(tn, tn + fp),
        "ppv": lambda: _div(tp, tp + fp),
        "npv": lambda: _div(tn, tn + fn),
        "f1": lambda: _div(2 * tp, 2 * tp + fp + fn),
    }
    for metric, values in per_class.items():
        if metric in wanted:
            values = values() if callable(values) else values
            out.update({f"{metric}/{name}": values[:, k] for k, name in enumerate(names)})
    return out


def bootstrap_intervals(
    probs: Any,
    labels: Any,
    metrics: Sequence[str] | Callable[[np.ndarray, np.ndarray], Mapping[str, float]] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
    class_names: Sequence[str] | None = None,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of classification metrics.

    Each resample draws N items with replacement; stratified (the default), it draws within each class as many
    items as the class has, so every resample keeps the test set's class counts (and every class present stays
    present, so per-class figures stay defined). The same ``seed`` gives the same intervals.

    Args:
        probs: ``[N, C]`` class probabilities.
        labels: ``[N]`` integer labels in ``[0, C)``.
        metrics: names among :data:`BOOTSTRAP_METRICS` (default :data:`DEFAULT_BOOTSTRAP_METRICS`: macro AUC,
            accuracy, balanced accuracy and each class's AUC, sensitivity and specificity), computed for all
            resamples at once from item multiplicities; or a callable ``f(probs, labels) -> {name: value}`` called
            once on the whole sample and once per resample (slower: a Python call per resample), e.g. for the
            sensitivity at a chosen threshold (:func:`metrics_at_threshold`).
        n_resamples: number of bootstrap resamples B.
        confidence: the interval's coverage, e.g. 0.95 for the 2.5th and 97.5th percentiles.
        seed: seed of ``numpy.random.default_rng``.
        stratified: resample within each class (True) or from the whole set (False).
        class_names: C names used in the per-class keys (default ``"0"``, ``"1"``, ...).

    Returns:
        ``{name: Interval(point, low, high, n_used)}``; per-class metric names are ``"<metric>/<class name>"``
        (e.g. ``"sensitivity/malignant"``). ``point`` is the metric on the whole sample (equal to
        :func:`per_class_metrics`'s value); ``low``/``high`` are percentiles over the resamples where the metric
        is defined (NaN resamples are skipped); ``n_used`` counts them. With no defined resample the bounds are
        NaN.
    """
    probs = _as_probs(probs)
    n, c = probs.shape
    labels = _as_labels(labels, n=n, num_classes=c)
    names = _class_names(class_names, c)
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence!r}.")
    chunks = _resample_chunks(labels, int(n_resamples), np.random.default_rng(seed), stratified)

    if callable(metrics):
        point = {k: float(v) for k, v in metrics(probs, labels).items()}
        samples = {k: np.full(n_resamples, np.nan) for k in point}
        b = 0
        for idx in chunks:
            for row in idx:
                for k, v in metrics(probs[row], labels[row]).items():
                    if k in samples:
                        samples[k][b] = float(v)
                b += 1
    else:
        wanted = tuple(DEFAULT_BOOTSTRAP_METRICS if metrics is None else metrics)
        unknown = [m for m in wanted if m not in BOOTSTRAP_METRICS]
        if isinstance(metrics, str) or unknown:
            raise ValueError(
                f"unknown bootstrap metrics {unknown or [metrics]}; choose a list among {list(BOOTSTRAP_METRICS)} or "
                "pass a callable f(probs, labels) -> {name: value}."
            )
        preds = probs.argmax(1)
        plans = [_AucPlan(probs[:, k], labels == k) for k in range(c)] if {"auc", "macro_auc"} & set(wanted) else []
        point = {
            k: float(v[0]) for k, v in _vector_metrics(np.ones((1, n)), labels, preds, plans, wanted, names).items()
        }
        parts: dict[str, list[np.ndarray]] = {k: [] for k in point}
        for idx in chunks:
            weights = _counts(idx, n)
            for k, v in _vector_metrics(weights, labels, preds, plans, wanted, names).items():
                parts[k].append(v)
        samples = {k: np.concatenate(v) for k, v in parts.items()}

    alpha = (1.0 - confidence) / 2.0
    out: dict[str, Interval] = {}
    for k, values in samples.items():
        finite = values[np.isfinite(values)]
        if finite.size:
            low, high = np.quantile(finite, [alpha, 1.0 - alpha])
        else:
            low = high = float("nan")
        out[k] = Interval(point[k], float(low), float(high), int(finite.size))
    return out


# ----------------------------------------------------------------------------------------------------------------
# 4. DeLong's test


def _placements(positive: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong's structural components by the mid-rank algorithm of Sun & Xu (2014): the AUC, ``V10`` (per
    positive: the share of negatives it out-scores, ties one half) and ``V01`` (per negative: the share of
    positives that out-score it), in O(n log n)."""
    pos, neg = scores[positive], scores[~positive]
    m, n = len(pos), len(neg)
    tz = _midranks(np.concatenate([pos, neg]))
    tx, ty = _midranks(pos), _midranks(neg)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(v10.mean()), v10, v01


def delong_test(labels: Any, scores_a: Any, scores_b: Any, confidence: float = 0.95) -> dict[str, float]:
    """DeLong's test for two correlated ROC AUCs measured on the same cases (DeLong, DeLong & Clarke-Pearson,
    Biometrics 1988; the fast algorithm of Sun & Xu, IEEE Signal Process. Lett. 2014). The same test as pROC's
    ``roc.test(..., method = "delong", paired = TRUE)``.

    Args:
        labels: ``[N]`` binary labels (1 = positive). For one class of a multi-class task against the rest pass
            ``labels == k`` with each model's ``probs[:, k]`` (or use :func:`delong_test_ovr`).
        scores_a: ``[N]`` scores of model A (larger = more likely positive).
        scores_b: ``[N]`` scores of model B on the same cases, in the same order.
        confidence: coverage of the interval of the difference.

    Returns:
        ``{"auc_a", "auc_b", "difference": auc_a - auc_b, "se": its standard error, "z", "p_value" (two-sided),
        "ci_low", "ci_high" (Wald interval of the difference), "n_positive", "n_negative"}``. When the difference
        has zero variance (e.g. identical rankings), ``z`` is 0 and ``p_value`` 1 if the AUCs are equal (NaN
        otherwise).
    """
    labels = _as_binary(labels)
    a = _as_scores(scores_a, n=len(labels), name="scores_a")
    b = _as_scores(scores_b, n=len(labels), name="scores_b")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence!r}.")
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(
            f"DeLong's test needs at least 2 positive and 2 negative cases, got {m} positive and {n} negative; "
            "compare the models on a test set with both outcomes."
        )
    auc_a, v10_a, v01_a = _placements(positive, a)
    auc_b, v10_b, v01_b = _placements(positive, b)
    s10 = np.cov(np.stack([v10_a, v10_b]))
    s01 = np.cov(np.stack([v01_a, v01_b]))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    diff = auc_a - auc_b
    se = math.sqrt(max(var, 0.0))
    if se > 1e-15:
        z = diff / se
        p = math.erfc(abs(z) / math.sqrt(2.0))
    else:
        z, p = (0.0, 1.0) if abs(diff) < 1e-15 else (float("nan"), float("nan"))
    half = NormalDist().inv_cdf(0.5 + confidence / 2.0) * se
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": diff,
        "se": se,
        "z": float(z),
        "p_value": float(p),
        "ci_low": diff - half,
        "ci_high": diff + half,
        "n_positive": m,
        "n_negative": n,
    }


def delong_test_ovr(
    labels: Any,
    probs_a: Any,
    probs_b: Any,
    class_names: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """DeLong's test for each class of a multi-class task, one class against the rest: class k's cases are the
    positives, scored by each model's ``probs[:, k]``.

    There is one test per class and no correction for testing several: with C classes, a Bonferroni reading
    compares each ``p_value`` with ``0.05 / C``. A macro-AUC test is not offered: the one-vs-rest problems share
    cases, and DeLong's variance does not cover the average of AUCs with different positive sets.

    Args:
        labels: ``[N]`` integer labels in ``[0, C)``.
        probs_a: ``[N, C]`` probabilities of model A.
        probs_b: ``[N, C]`` probabilities of model B on the same cases, in the same order.
        class_names: C names for the keys (default ``"0"``, ``"1"``, ...).
        confidence: coverage of each interval of the difference.

    Returns:
        ``{class name: delong_test result}`` for each class with at least 2 cases and 2 non-cases (others are
        left out).
    """
    pa, pb = _as_probs(probs_a, "probs_a"), _as_probs(probs_b, "probs_b")
    if pa.shape != pb.shape:
        raise ValueError(f"probs_a {pa.shape} and probs_b {pb.shape} must have the same shape (same cases, classes).")
    labels = _as_labels(labels, n=pa.shape[0], num_classes=pa.shape[1])
    names = _class_names(class_names, pa.shape[1])
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        positive = labels == k
        if 2 <= positive.sum() <= len(labels) - 2:
            out[name] = delong_test(positive, pa[:, k], pb[:, k], confidence)
    return out


# ----------------------------------------------------------------------------------------------------------------
# 5. calibration


def calibration_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label calibration table in ``n_bins`` equal-width confidence bins ``(i/n_bins, (i+1)/n_bins]`` (the
    first bin also takes confidence 0).

    Returns:
        ``{"edges": [n_bins + 1], "count": [n_bins] ints, "confidence": [n_bins] mean top probability,
        "accuracy": [n_bins] share correct}`` (confidence and accuracy NaN in empty bins).
    """
    probs = _as_probs(probs)
    labels = _as_labels(labels, n=probs.shape[0], num_classes=probs.shape[1])
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    if probs.min() < 0.0 or probs.max() > 1.0 + 1e-6:
        raise ValueError("probs must be probabilities in [0, 1] for calibration; apply a softmax to the logits first.")
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    which = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": _div(np.bincount(which, weights=conf, minlength=n_bins), count),
        "accuracy": _div(np.bincount(which, weights=correct, minlength=n_bins), count),
    }


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al., ICML 2017): ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``
    over ``n_bins`` equal-width bins of the top probability (see :func:`calibration_bins`). 0 is perfectly
    calibrated; a model that says 0.9 and is right 60 % of the time has 0.3."""
    table = calibration_bins(probs, labels, n_bins)
    used = table["count"] > 0
    gaps = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float((table["count"][used] * gaps).sum() / table["count"].sum())


def reliability_diagram(probs: Any, labels: Any, path: str | os.PathLike, title: str = "", n_bins: int = 15) -> Path:
    """Save a reliability diagram as a PNG (atomically): accuracy against mean confidence per bin, bars at the bins
    with each bin's count written on it, the diagonal of perfect calibration, and the ECE and N in the title.

    Args:
        probs: ``[N, C]`` class probabilities.
        labels: ``[N]`` integer labels.
        path: the PNG to write (its folder is created).
        title: e.g. ``"best weights, test split"``; `` - ECE 0.042 (n = 24, 15 bins)`` is appended.
        n_bins: number of equal-width confidence bins.

    Returns:
        ``path``.
    """
    table = calibration_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges, count = table["edges"], table["count"]
    width = edges[1] - edges[0]
    used = count > 0
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.bar(
        edges[:-1][used],
        table["accuracy"][used],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    ax.plot(table["confidence"][used], table["accuracy"][used], "o", color="tab:red", label="mean confidence")
    for left, acc, k in zip(edges[:-1][used], table["accuracy"][used], count[used], strict=True):
        ax.text(left + width / 2, min(acc + 0.02, 0.97), str(int(k)), ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    heading = f"ECE {ece:.3f} (n = {int(count.sum())}, {n_bins} bins)"
    ax.set_title(f"{title} - {heading}" if title else heading, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _looks_like_probs(x: np.ndarray) -> bool:
    return bool(x.min() >= 0.0 and x.max() <= 1.0 and np.allclose(x.sum(1), 1.0, atol=1e-3))


def fit_temperature(
    logits_or_probs: Any,
    labels: Any,
    kind: str = "auto",
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """Fit the temperature T of temperature scaling (Guo et al., ICML 2017) on a validation split: the T that
    minimises the mean negative log-likelihood of ``softmax(logits / T)``.

    The NLL is convex in 1/T, so a golden-section search over log T within ``bounds`` finds its minimum (to about
    1e-9 relative); no scipy needed. T > 1 softens over-confident probabilities, T < 1 sharpens.

    Args:
        logits_or_probs: ``[N, C]`` logits, or probabilities (then their logs serve as logits, clipped at 1e-12:
            softmax is shift-invariant, so this is exact for positive probabilities).
        labels: ``[N]`` integer labels.
        kind: ``"logits"``, ``"probs"`` or ``"auto"`` (probabilities when every row is in [0, 1] and sums to 1).
        bounds: the search interval of T; a result at a bound means the data ask for a more extreme T.

    Returns:
        T (a float > 0).
    """
    x = _as_probs(logits_or_probs, "logits_or_probs")
    labels = _as_labels(labels, n=x.shape[0], num_classes=x.shape[1])
    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"kind must be 'auto', 'logits' or 'probs', got {kind!r}.")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0.0 < lo < hi:
        raise ValueError(f"bounds must be 0 < low < high, got {bounds!r}.")
    if kind == "probs" or (kind == "auto" and _looks_like_probs(x)):
        if x.min() < 0.0:
            raise ValueError("kind='probs' but logits_or_probs has negative values; pass kind='logits'.")
        x = np.log(np.clip(x, 1e-12, None))
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-_log_softmax(x / math.exp(log_t))[rows, labels].mean())

    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-9:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2.0))


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities ``softmax(log(probs) / T)`` (equal to ``softmax(logits / T)`` for the
    logits that gave ``probs``). The argmax, hence accuracy and the confusion matrix, is unchanged.

    Args:
        probs: ``[N, C]`` probabilities (rows summing to 1).
        temperature: T > 0 from :func:`fit_temperature`.

    Returns:
        ``[N, C]`` float64 probabilities.
    """
    probs = _as_probs(probs)
    if not (isinstance(temperature, (int, float, np.floating)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}; fit it with fit_temperature.")
    if probs.min() < 0.0 or probs.max() > 1.0 + 1e-6:
        raise ValueError("probs must be probabilities in [0, 1]; for logits use softmax(logits / T) directly.")
    return np.exp(_log_softmax(np.log(np.clip(probs, 1e-12, None)) / float(temperature)))


# ----------------------------------------------------------------------------------------------------------------
# 6. operating points


def metrics_at_threshold(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """Figures of the rule "positive when ``score >= threshold``".

    Args:
        labels: ``[N]`` binary labels (1 = positive; one class against the rest: ``labels == k``).
        scores: ``[N]`` scores (e.g. ``probs[:, k]``).
        threshold: the cut-off.

    Returns:
        ``{"threshold", "sensitivity", "specificity", "ppv", "npv", "tp", "fp", "tn", "fn", "n"}`` (NaN for a
        figure whose denominator is 0; the counts as floats so that the dict is all floats).
    """
    labels = _as_binary(labels)
    scores = _as_scores(scores, n=len(labels))
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}.")
    positive, called = labels == 1, scores >= threshold
    tp, fp = float((positive & called).sum()), float((~positive & called).sum())
    fn, tn = float((positive & ~called).sum()), float((~positive & ~called).sum())
    return {
        "threshold": float(threshold),
        "sensitivity": float(_div(tp, tp + fn)),
        "specificity": float(_div(tn, tn + fp)),
        "ppv": float(_div(tp, tp + fp)),
        "npv": float(_div(tn, tn + fn)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": float(len(labels)),
    }


def choose_threshold(
    labels: Any, scores: Any, method: str = "youden", target_sensitivity: float | None = None
) -> dict[str, float]:
    """Choose the cut-off of "positive when ``score >= threshold``" on a validation split.

    ``"youden"`` maximises Youden's J = sensitivity + specificity - 1 (ties go to the lower threshold, the one
    that misses fewer positives); ``"target_sensitivity"`` takes the highest threshold whose sensitivity is at
    least ``target_sensitivity`` (the most specific rule that meets the target). As in pROC, the threshold is
    the midpoint between the chosen score and the next lower observed score, so that a new score between the two
    is not decided by the ordering of the validation cases (the lowest score itself when none is lower).

    Args:
        labels: ``[N]`` binary labels (1 = positive; one class against the rest: ``labels == k``).
        scores: ``[N]`` scores (e.g. ``probs[:, k]``).
        method: ``"youden"`` or ``"target_sensitivity"``; giving ``target_sensitivity`` selects the latter.
        target_sensitivity: the required sensitivity in (0, 1].

    Returns:
        ``{"threshold", "sensitivity", "specificity", "youden_j"}`` on the given cases.
    """
    labels = _as_binary(labels)
    scores = _as_scores(scores, n=len(labels))
    if target_sensitivity is not None:
        method = "target_sensitivity"
        if not 0.0 < float(target_sensitivity) <= 1.0:
            raise ValueError(f"target_sensitivity must lie in (0, 1], got {target_sensitivity!r}.")
    if method not in ("youden", "target_sensitivity"):
        raise ValueError(f"method must be 'youden' or 'target_sensitivity', got {method!r}.")
    if method == "target_sensitivity" and target_sensitivity is None:
        raise ValueError("method='target_sensitivity' needs target_sensitivity, e.g. target_sensitivity=0.95.")
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"choosing a threshold needs positive and negative cases, got {n_pos} positive and {n_neg} negative; "
            "use a validation split with both outcomes."
        )
    cut = np.unique(scores)[::-1]  # candidate cut-offs, highest first
    levels = np.searchsorted(-cut, -scores)  # index of each score in cut
    tp = np.cumsum(np.bincount(levels[positive], minlength=len(cut)))
    fp = np.cumsum(np.bincount(levels[~positive], minlength=len(cut)))
    sens, spec = tp / n_pos, 1.0 - fp / n_neg
    if method == "youden":
        j = sens + spec - 1.0
        best = int(np.flatnonzero(j >= j.max() - 1e-12)[-1])
    else:
        meets = np.flatnonzero(sens >= float(target_sensitivity) - 1e-12)
        best = int(meets[0])  # always exists: the lowest cut-off calls every case positive
    threshold = (cut[best] + cut[best + 1]) / 2.0 if best + 1 < len(cut) else cut[best]
    return {
        "threshold": float(threshold),
        "sensitivity": float(sens[best]),
        "specificity": float(spec[best]),
        "youden_j": float(sens[best] + spec[best] - 1.0),
    }


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion ``successes / n`` (Wilson, JASA 1927).

    For a figure whose denominator is fixed by the labels (sensitivity: the positives; specificity: the negatives),
    it is the analytic counterpart of the stratified bootstrap and stays honest where the bootstrap collapses: 3 of
    3 positives found gives [0.44, 1.00], not [1.00, 1.00].

    Args:
        successes: the count of successes, ``0 <= successes <= n``.
        n: the number of trials.
        confidence: the interval's level in (0, 1).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when ``n`` is 0.
    """
    from statistics import NormalDist

    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}.")
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes!r}, n={n!r}.")
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + float(confidence) / 2.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
