"""The probability blend of two classifiers and its weight chosen on validation (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

from fpt_monai.engines.metrics import classification_metrics
from fpt_monai.engines.probability_blend import blend_probabilities, choose_blend_weight


def _two_views(n: int = 400, seed: int = 0):
    """Two models whose scores carry independent noise around the same signal: their blend ranks better."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    signal = y * 1.0
    sa = signal + rng.normal(0, 1.0, n)
    sb = signal + rng.normal(0, 1.0, n)

    def probs(s):
        p = 1 / (1 + np.exp(-(s - 0.5) * 2))
        return np.stack([1 - p, p], 1)

    return probs(sa), probs(sb), y


def test_blend_is_convex_combination_and_rows_sum_to_one():
    a, b, _ = _two_views(10)
    p = blend_probabilities(a, b, 0.3)
    np.testing.assert_allclose(p, 0.3 * a + 0.7 * b, atol=1e-12)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(blend_probabilities(a, b, 1.0), a)
    np.testing.assert_allclose(blend_probabilities(a, b, 0.0), b)


def test_blend_of_independent_views_chosen_inside_and_better_than_either():
    a, b, y = _two_views()
    choice = choose_blend_weight(a, b, y)
    assert 0.2 <= choice["weight"] <= 0.8
    auc = {w: classification_metrics(blend_probabilities(a, b, w), y)["auc"] for w in (0.0, 1.0)}
    assert choice["val_auc"] > max(auc.values())
    assert len(choice["table"]) == 11 and choice["val_auc"] == max(r["auc"] for r in choice["table"])


def test_useless_second_model_gets_no_weight():
    a, _, y = _two_views()
    noise = np.random.default_rng(5).dirichlet([1, 1], len(y))
    assert choose_blend_weight(a, noise, y)["weight"] >= 0.9


def test_identical_models_tie_to_an_even_blend():
    a, _, y = _two_views(50)
    assert choose_blend_weight(a, a, y)["weight"] == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": ()}, "at least one"),
        ({"labels": np.zeros(400, int)}, "single class"),
        ({"labels": np.zeros(3, int)}, "do not match"),
    ],
)
def test_bad_choices_are_refused(kwargs, match):
    a, b, y = _two_views()
    args = {"probs_a": a, "probs_b": b, "labels": y, **kwargs}
    with pytest.raises(ValueError, match=match):
        choose_blend_weight(**args)


def test_logits_and_shape_mismatch_are_refused():
    a, b, _ = _two_views(10)
    with pytest.raises(ValueError, match="not logits"):
        blend_probabilities(a - 1.0, b, 0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        blend_probabilities(a, b[:5], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend_probabilities(a, b, 1.5)
