from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.handlers import from_engine

from fpt_monai.engines import ClassificationMetric, classification_metrics


def _auc_by_pairs(scores, labels):
    """Mann-Whitney: share of (positive, negative) pairs ranked correctly, ties count half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_binary_auc_uses_probabilities_not_raw_logits():
    # logits whose class-1 column ranks differently from the softmax probability of class 1
    logits = np.array([[5.0, 4.0], [0.0, 1.0], [-3.0, -2.5], [2.0, 3.5]])
    labels = np.array([0, 1, 0, 1])
    probs = torch.softmax(torch.tensor(logits), 1).numpy()
    got = classification_metrics(probs, labels)["auc"]
    assert got == pytest.approx(_auc_by_pairs(probs[:, 1], labels))
    assert got != pytest.approx(_auc_by_pairs(logits[:, 1], labels))  # the reference's logits[:, 1] bug


def test_multiclass_metrics():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    probs = rng.dirichlet(np.ones(3), 30)
    probs[np.arange(30), labels] += 0.5
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(probs, labels)
    preds = probs.argmax(1)
    assert m["acc"] == pytest.approx((preds == labels).mean())
    per_class_recall = [np.mean(preds[labels == c] == c) for c in range(3)]
    assert m["recall"] == pytest.approx(np.mean(per_class_recall))  # macro, not micro
    aucs = [_auc_by_pairs(probs[:, c], (labels == c).astype(int)) for c in range(3)]
    assert m["auc"] == pytest.approx(np.mean(aucs))
    # Cohen's kappa from its definition: unweighted by default (nominal classes), quadratic only for ordinal labels
    observed = np.zeros((3, 3))
    for t, p in zip(labels, preds, strict=True):
        observed[t, p] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    p_o, p_e = np.trace(observed) / observed.sum(), np.trace(expected) / observed.sum()
    assert m["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e)) and "kappa_quadratic" not in m
    W = np.array([[(i - j) ** 2 / 4 for j in range(3)] for i in range(3)])
    ordinal = classification_metrics(probs, labels, ordinal=True)
    assert ordinal["kappa_quadratic"] == pytest.approx(1 - (W * observed).sum() / (W * expected).sum())
    assert ordinal["kappa"] == m["kappa"]
    # the unweighted kappa does not depend on the order of the class names; the quadratic one does
    order = np.array([2, 0, 1])
    renamed = classification_metrics(probs[:, np.argsort(order)], order[labels], ordinal=True)
    assert renamed["kappa"] == pytest.approx(m["kappa"])
    assert renamed["kappa_quadratic"] != pytest.approx(ordinal["kappa_quadratic"])


def test_auc_is_nan_with_one_class():
    assert np.isnan(classification_metrics(np.array([[0.3, 0.7], [0.6, 0.4]]), np.array([1, 1]))["auc"])


def test_ignite_metric_on_decollated_outputs():
    from ignite.engine import Engine

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1, 1])

    def step(engine, i):  # MONAI engines decollate: a list of per-sample dicts
        return [{"pred": probs[j], "label": labels[j]} for j in (2 * i, 2 * i + 1)]

    engine = Engine(step)
    for name in ("auc", "acc", "kappa", "kappa_quadratic"):
        ClassificationMetric(name, output_transform=from_engine(["pred", "label"])).attach(engine, name)
    engine.run([0, 1], max_epochs=1)
    expected = classification_metrics(probs.numpy(), labels.numpy(), ordinal=True)
    for name in ("auc", "acc", "kappa", "kappa_quadratic"):
        assert engine.state.metrics[name] == pytest.approx(expected[name])
    with pytest.raises(ValueError, match="metric must be one of"):
        ClassificationMetric("mcc")
