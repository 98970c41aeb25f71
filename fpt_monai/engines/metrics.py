# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Classification metrics of the FPT papers, computed on softmax probabilities (the reference computes AUC on raw
logits, spec §6.10) with scikit-learn, and their Ignite wrapper for MONAI engines."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn import metrics as skm

__all__ = ["METRIC_NAMES", "ClassificationMetric", "classification_metrics"]

METRIC_NAMES = ("auc", "acc", "f1", "precision", "recall", "kappa", "kappa_quadratic", "loss")


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None, ordinal: bool = False
) -> dict[str, float]:
    """AUC, accuracy, macro F1/precision/recall, Cohen's kappa and the loss (mean negative log-likelihood of the
    labels, i.e. the cross-entropy of the logits).

    Args:
        probs: ``[N, C]`` class probabilities (softmax of the logits).
        labels: ``[N]`` integer labels.
        num_classes: C (defaults to ``probs.shape[1]``).
        ordinal: the labels are ordered grades (diabetic-retinopathy grading): also ``kappa_quadratic``, the
            quadratic-weighted kappa, whose value would depend on the (alphabetical) order of nominal classes.

    ``kappa`` is Cohen's unweighted kappa (agreement beyond chance on nominal classes); 0 when only one class occurs
    in the labels and predictions together.

    Binary AUC uses the positive class's probability; multi-class AUC is the macro one-vs-rest average. AUC is NaN
    when a class is absent from ``labels``. F1/precision/recall are macro averages (the reference's pre-2025 micro
    averages all equal accuracy, spec §6.11); for two classes macro F1 averages both classes.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int).reshape(-1)
    num_classes = num_classes or probs.shape[1]
    classes = list(range(num_classes))
    preds = probs.argmax(1)
    present = np.unique(labels)
    if len(present) < 2:
        auc = float("nan")
    elif num_classes == 2:
        auc = float(skm.roc_auc_score(labels, probs[:, 1]))
    else:
        norm = probs / probs.sum(1, keepdims=True)
        auc = float(skm.roc_auc_score(labels, norm, multi_class="ovr", average="macro", labels=classes))
    kw = {"labels": classes, "average": "macro", "zero_division": 0}
    return {
        "auc": auc,
        "acc": float(skm.accuracy_score(labels, preds)),
        "f1": float(skm.f1_score(labels, preds, **kw)),
        "precision": float(skm.precision_score(labels, preds, **kw)),
        "recall": float(skm.recall_score(labels, preds, **kw)),
        "loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
        if len(labels)
        else float("nan"),
        **{
            name: float(skm.cohen_kappa_score(labels, preds, labels=classes, weights=weights))
            if len(np.unique(np.concatenate([labels, preds]))) > 1
            else 0.0
            for name, weights in (("kappa", None), ("kappa_quadratic", "quadratic"))
            if weights is None or ordinal
        },
    }


class ClassificationMetric(EpochMetric):
    """One of :data:`METRIC_NAMES` over an epoch, from ``(probabilities [C], label)`` outputs.

    Args:
        name: ``"auc"``, ``"acc"``, ``"f1"``, ``"precision"``, ``"recall"``, ``"kappa"`` (Cohen's, unweighted),
            ``"kappa_quadratic"`` (for ordinal grades) or ``"loss"`` (lower is better).
        output_transform: maps the engine output to ``(probs, labels)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])`` after a softmax postprocessing.
    """

    def __init__(self, name: str = "auc", output_transform: Callable = lambda x: x) -> None:
        if name not in METRIC_NAMES:
            raise ValueError(f"metric must be one of {METRIC_NAMES}, got {name!r}.")
        self.name = name

        def compute(y_pred: torch.Tensor, y: torch.Tensor) -> float:
            y = y.reshape(-1) if y.ndim > 1 and y.shape[-1] == 1 else (y.argmax(1) if y.ndim > 1 else y)
            ordinal = name == "kappa_quadratic"
            return classification_metrics(y_pred.float().cpu().numpy(), y.cpu().numpy(), ordinal=ordinal)[name]

        super().__init__(compute, output_transform=output_transform, check_compute_fn=False)
