# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A probability-level blend of two classifiers, with its weight chosen on the validation split (issue 22).

FPT+ (Huang et al., IEEE TNNLS 2025 <https://arxiv.org/abs/2408.02426>) and a linear probe on the frozen model's
pooled features see different things: on small data, averaging their probabilities beat either alone. The blend is
``w * p_a + (1 - w) * p_b``; ``w`` is chosen from a grid by validation AUC (ties: the lower validation loss, then
the weight nearest an even blend), never on test. Numpy only: the study and the bundle both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_BLEND_WEIGHTS", "blend_probabilities", "choose_blend_weight"]

# 0 (the second model alone) ... 1 (the first alone) in steps of 0.1: the validation split of a small data set cannot
# resolve a finer grid
DEFAULT_BLEND_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


def _probs(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{name} must be [N, C] class probabilities with C >= 2, got shape {arr.shape}.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} holds negative or non-finite values: pass probabilities (softmax), not logits.")
    return arr


def blend_probabilities(probs_a: Any, probs_b: Any, weight: float) -> np.ndarray:
    """``weight * probs_a + (1 - weight) * probs_b``, row-normalised.

    Args:
        probs_a: ``[N, C]`` probabilities of the first model (e.g. FPT+).
        probs_b: ``[N, C]`` probabilities of the second model (e.g. the linear probe), same items in the same order.
        weight: the first model's weight, in ``[0, 1]``.

    Raises:
        ValueError: shapes differ, values are not probabilities, or ``weight`` is outside ``[0, 1]``.
    """
    a, b = _probs(probs_a, "probs_a"), _probs(probs_b, "probs_b")
    if a.shape != b.shape:
        raise ValueError(f"the two models' probabilities differ in shape: {a.shape} vs {b.shape} (same items?).")
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"the blend weight must be in [0, 1], got {weight}.")
    p = float(weight) * a + (1.0 - float(weight)) * b
    return p / p.sum(1, keepdims=True)


def choose_blend_weight(
    probs_a: Any, probs_b: Any, labels: Any, weights: Sequence[float] = DEFAULT_BLEND_WEIGHTS
) -> dict[str, Any]:
    """Choose the blend weight on validation predictions.

    Args:
        probs_a, probs_b: ``[N, C]`` validation probabilities of the two models (same items, same order).
        labels: ``[N]`` integer validation labels.
        weights: the candidate weights of ``probs_a``. Defaults to 0, 0.1, ..., 1.

    Returns:
        ``{"weight", "val_auc", "val_loss", "table": [{"weight", "auc", "loss"}, ...]}``: the weight with the highest
        validation AUC (ties within 1e-9: the lower loss, then the weight nearest 0.5).

    Raises:
        ValueError: no weights, a weight outside ``[0, 1]``, labels that do not match, or a validation split
            holding a single class (no AUC to choose by).
    """
    from fpt_monai.engines.metrics import classification_metrics

    if len(weights) == 0:
        raise ValueError("give at least one candidate blend weight.")
    y = np.asarray(labels).astype(int).reshape(-1)
    a = _probs(probs_a, "probs_a")
    if len(y) != len(a):
        raise ValueError(f"{len(y)} validation labels for {len(a)} predictions: the items do not match.")
    if len(np.unique(y)) < 2:
        raise ValueError("the validation labels hold a single class: the blend weight cannot be chosen by AUC.")
    table = []
    for w in weights:
        m = classification_metrics(blend_probabilities(a, probs_b, w), y, num_classes=a.shape[1])
        table.append({"weight": float(w), "auc": m["auc"], "loss": m["loss"]})
    best = max(table, key=lambda r: (round(r["auc"], 9), -round(r["loss"], 9), -abs(r["weight"] - 0.5)))
    return {"weight": best["weight"], "val_auc": best["auc"], "val_loss": best["loss"], "table": table}
