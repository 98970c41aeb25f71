# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The logistic-regression probe on frozen features, its C chosen on validation: one fit for the study's probes
(``logreg_sklearn``, ``logreg_sklearn_tokens``) and for FPT's token head (:mod:`fpt_monai.engines.token_head`), so
that the bundle's head is the study's reference, not a second implementation of it.

Features are standardised on the training split (scikit-learn's ``StandardScaler``); for each C of a grid a
``LogisticRegression`` (lbfgs, L2) is fitted on the training split and scored by its validation AUC (macro one-vs-rest
for more than two classes); the highest wins, ties going to the smaller C (the stronger regularisation). The test
split is never read. Validation (and prediction) may read several views of each image (``[V, N, F]``): their
probabilities are averaged (test-time augmentation over the stored frozen views), the choice of C included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ABSENT_CLASS_LOGIT", "LogisticProbeFit", "fit_logistic_probe"]

# the logit of a class the training split lacks (predict_proba gives it 0): finite, so that fp16 and ONNX stay exact
ABSENT_CLASS_LOGIT = -30.0


@dataclass
class LogisticProbeFit:
    """A fitted probe: ``scaler`` and ``model`` (scikit-learn), the chosen ``C`` and its ``val_auc``, ``table`` (every
    C's validation AUC and training accuracy) and ``num_classes``."""

    scaler: Any
    model: Any
    C: float
    val_auc: float
    num_classes: int
    table: list[dict] = field(default_factory=list)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, num_classes]`` of features ``[N, F]``, or of views ``[V, N, F]`` averaged over
        the views (a class absent from the training split gets 0)."""
        return _view_mean_proba(self.scaler, self.model, x, self.num_classes)

    def linear_model(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, scale, weight [num_classes, F], bias [num_classes])`` with ``softmax(weight @ ((x - mean) /
        scale) + bias)`` equal to :meth:`predict_proba` (a binary fit's logit is the second class's, the first's 0; a
        class absent from the training split gets the logit :data:`ABSENT_CLASS_LOGIT`, a probability below 1e-13)."""
        coef, intercept, classes = self.model.coef_, self.model.intercept_, self.model.classes_
        weight = np.zeros((self.num_classes, coef.shape[1]))
        bias = np.full(self.num_classes, ABSENT_CLASS_LOGIT)
        if len(classes) == 2 and coef.shape[0] == 1:
            weight[classes[1]], bias[classes[1]], bias[classes[0]] = coef[0], intercept[0], 0.0
        else:
            weight[classes], bias[classes] = coef, intercept
        scale = np.where(self.scaler.scale_ > 0, self.scaler.scale_, 1.0)  # StandardScaler leaves constants as is
        return self.scaler.mean_, scale, weight, bias


def _view_mean_proba(scaler: Any, model: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """``model``'s probabilities ``[N, num_classes]`` of ``x`` ``[N, F]`` or ``[V, N, F]`` (the views' mean)."""
    x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"features must be [N, F] or views [V, N, F], got shape {tuple(x.shape)}.")
    views = x if x.ndim == 3 else x[None]
    probs = np.zeros((views.shape[1], int(num_classes)))
    for view in views:
        probs[:, model.classes_] += model.predict_proba(scaler.transform(view))
    return probs / len(views)


def fit_logistic_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cs: Sequence[float],
    num_classes: int,
    max_iter: int = 5000,
) -> LogisticProbeFit:
    """Fit the logistic regression for every C of ``cs`` (in the order given; ties keep the earlier, so pass them
    ascending) and keep the best by validation AUC.

    Args:
        x_train, y_train: training features ``[N, F]`` and labels (augmented views are simply more rows).
        x_val, y_val: validation features ``[M, F]``, or ``[V, M, F]`` for V views of each image (scored on the mean
            of their probabilities), and labels ``[M]``.
        cs: the C grid. num_classes: the classes of the task (one absent from training gets probability 0).
        max_iter: lbfgs iterations.

    Raises:
        ValueError: the training split holds fewer than two classes, or no C gave a finite validation AUC (e.g. a
            validation split of one class).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from fpt_monai.engines.metrics import classification_metrics

    if len(set(np.asarray(y_train).tolist())) < 2:
        raise ValueError("the training split holds one class only: a logistic regression cannot be fitted.")
    scaler = StandardScaler().fit(x_train)
    xs_train = scaler.transform(x_train)
    table, best = [], None
    for c in cs:
        model = LogisticRegression(C=float(c), max_iter=int(max_iter)).fit(xs_train, y_train)
        probs = _view_mean_proba(scaler, model, x_val, num_classes)
        auc = classification_metrics(probs, y_val, num_classes=int(num_classes))["auc"]
        auc = float(auc) if auc is not None and math.isfinite(auc) else None
        table.append({"C": float(c), "val_auc": auc, "train_accuracy": float(model.score(xs_train, y_train))})
        if auc is not None and (best is None or auc > best[0]):
            best = (auc, float(c), model)
    if best is None:
        raise ValueError("no C gave a validation AUC (does the validation split hold one class only?).")
    val_auc, c, model = best
    return LogisticProbeFit(scaler, model, c, val_auc, int(num_classes), table)
