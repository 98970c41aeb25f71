"""The one logistic-regression probe of the study and the token head: the linear model it hands to a network gives
its probabilities, for two classes and with a class the training split lacks; degenerate splits are refused."""

from __future__ import annotations

import numpy as np
import pytest

from fpt_monai.engines.logistic_probe import fit_logistic_probe


def _softmax_of_linear_model(fit, x):
    mean, scale, weight, bias = fit.linear_model()
    logits = ((x - mean) / scale) @ weight.T + bias
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("num_classes, train_classes", [(2, (0, 1)), (4, (0, 1, 3))])
def test_the_linear_model_gives_the_fits_probabilities(num_classes, train_classes):
    rng = np.random.default_rng(0)
    y_train = np.array([train_classes[i % len(train_classes)] for i in range(60)])
    y_val = np.arange(30) % num_classes  # every class: a macro AUC needs each one in validation
    x_train = rng.normal(size=(60, 7)) + y_train[:, None] * 0.8
    x_val = rng.normal(size=(30, 7)) + y_val[:, None] * 0.8
    x_train[:, 6] = 1.0  # a constant feature: StandardScaler's scale 1 keeps it finite
    cs = [1e-3, 1e-1, 10.0]
    fit = fit_logistic_probe(x_train, y_train, x_val, y_val, cs, num_classes)
    assert fit.C in cs and fit.val_auc == max(r["val_auc"] for r in fit.table) and len(fit.table) == 3
    probs = fit.predict_proba(x_val)
    assert probs.shape == (30, num_classes)
    missing = [c for c in range(num_classes) if c not in train_classes]
    assert np.all(probs[:, missing] == 0)
    # every class, the one absent from training too (its logit keeps it at 0, not at a uniform share)
    np.testing.assert_allclose(_softmax_of_linear_model(fit, x_val), probs, atol=1e-6)
    if num_classes == 2:
        weight, bias = fit.linear_model()[2:]
        assert np.all(weight[0] == 0) and bias[0] == 0  # the binary fit's logit is the second class's


def test_degenerate_splits_are_refused():
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="one class only"):
        fit_logistic_probe(x, np.zeros(10, dtype=int), x, np.arange(10) % 2, [1.0], 2)
    with pytest.raises(ValueError, match="no C gave a validation AUC"):
        fit_logistic_probe(x, np.arange(10) % 2, x, np.zeros(10, dtype=int), [1.0], 2)


def test_validation_views_are_scored_on_their_averaged_probabilities():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    y_train, y_val = np.arange(80) % 2, np.arange(40) % 2
    x_train = rng.normal(size=(80, 5)) + y_train[:, None] * 0.5
    # three noisy views of each validation image: their mean probability ranks better than any one view
    x_views = np.stack([rng.normal(size=(40, 5)) * 2 + y_val[:, None] * 0.5 for _ in range(3)])
    cs = [1e-3, 1e-2, 1e-1, 1.0]
    fit = fit_logistic_probe(x_train, y_train, x_views, y_val, cs, 2)
    scaler = StandardScaler().fit(x_train)
    for row, c in zip(fit.table, cs, strict=True):  # an independent fit of each C, scored on the views' mean
        model = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x_train), y_train)
        mean = np.mean([model.predict_proba(scaler.transform(v)) for v in x_views], 0)
        assert row["val_auc"] == pytest.approx(roc_auc_score(y_val, mean[:, 1]))
    probs = fit.predict_proba(x_views)
    np.testing.assert_allclose(probs, np.mean([fit.predict_proba(v) for v in x_views], 0))
    assert fit.val_auc == pytest.approx(roc_auc_score(y_val, probs[:, 1]))
    assert not np.allclose(probs, fit.predict_proba(x_views[0]))  # not the first view alone
    with pytest.raises(ValueError, match=r"\[N, F\] or views \[V, N, F\]"):
        fit.predict_proba(x_views[None])
