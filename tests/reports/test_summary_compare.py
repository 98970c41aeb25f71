"""fpt_monai.reports.summary (``fpt-monai summary``) with two bundles: DeLong's paired test of their best weights on
the same test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fpt_monai.engines.statistics import delong_test
from fpt_monai.reports import summary as run_summary


def _bundle(root: Path, ids, labels, probs, names) -> Path:
    (root / "eval").mkdir(parents=True)
    lines = ["id,label," + ",".join(f"prob_{c}" for c in names)]
    lines += [f"{i},{y}," + ",".join(f"{v:.6f}" for v in p) for i, y, p in zip(ids, labels, probs, strict=True)]
    (root / "eval" / "predictions_best.csv").write_text("\n".join(lines) + "\n")
    return root


def test_paired_delong_matches_an_independent_computation(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    labels = rng.integers(0, 2, n)
    p_a = np.clip(0.35 * labels + rng.uniform(0, 0.65, n), 0, 1)
    p_b = np.clip(0.15 * labels + rng.uniform(0, 0.85, n), 0, 1)
    ids = [f"img{i}.png" for i in range(n)]
    a = _bundle(tmp_path / "fpt", ids, labels, np.stack([1 - p_a, p_a], 1), ["benign", "malignant"])
    order = rng.permutation(n)  # the other bundle lists the same images in another order
    b = _bundle(
        tmp_path / "probe",
        [ids[i] for i in order],
        labels[order],
        np.stack([1 - p_b, p_b], 1)[order],
        ["benign", "malignant"],
    )
    text = run_summary.comparison(a, b)
    expected = delong_test(labels, np.round(p_a, 6), np.round(p_b, 6))
    assert f"same {n} test images" in text
    assert f"difference {expected['difference']:+.3f}" in text and f"p = {expected['p_value']:.3g}" in text
    assert f"fpt {expected['auc_a']:.3f}, probe {expected['auc_b']:.3f}" in text


def test_different_test_splits_are_refused(tmp_path):
    names = ["a", "b", "c"]
    probs = np.full((4, 3), 1 / 3)
    a = _bundle(tmp_path / "one", ["x", "y", "z", "w"], [0, 1, 2, 0], probs, names)
    b = _bundle(tmp_path / "two", ["x", "y", "z", "v"], [0, 1, 2, 0], probs, names)
    with pytest.raises(run_summary.SummaryError, match="different test images"):
        run_summary.comparison(a, b)
    with pytest.raises(run_summary.SummaryError, match="predictions_best.csv: no such file"):
        run_summary.comparison(a, tmp_path / "three")
    # three classes: one test per class against the rest, with the Bonferroni reading
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 6)
    pa, pb = rng.dirichlet(np.ones(3), 18), rng.dirichlet(np.ones(3), 18)
    ids = [str(i) for i in range(18)]
    text = run_summary.comparison(
        _bundle(tmp_path / "m1", ids, labels, pa, names), _bundle(tmp_path / "m2", ids, labels, pb, names)
    )
    assert text.count("vs rest") == 3 and "0.05/3" in text
