"""The study's logistic regressions on a store's pooled features and on its tokens' layer means (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from fpt_monai.data import FeatureStore
from fpt_monai.study.runs import LOGREG_CS, logreg_name, logreg_runs, probe_features

SHAPE = (2, 3, 4, 5)  # layers, heads, k, head_dim


def _store(tmp_path, n=60, tokens=True):
    """A store whose class signal sits in the values of layer 1 only: the pooled features are noise."""
    gen = torch.Generator().manual_seed(0)
    labels = [i % 2 for i in range(n)]
    store = FeatureStore.create(tmp_path / "s", {"synthetic": 1}, SHAPE, "float32")
    ids = [f"img{i}" for i in range(n)]
    keys = torch.randn(n, *SHAPE, generator=gen)
    values = torch.randn(n, *SHAPE, generator=gen)
    values[:, 1, 0, :, 0] += 3.0 * torch.tensor(labels, dtype=torch.float32)[:, None]
    if tokens:
        store.write_shard(ids, keys, values)
    store.add_field("pooled", (8,))
    store.write_field_shard("pooled", ids, torch.randn(n, 8, generator=gen))
    items = [{"id": i, "label": y} for i, y in zip(ids, labels, strict=True)]
    folds = [
        {"training": items[:30], "validation": items[30:45], "test": items[45:]},
        {"training": items[30:], "validation": items[:15], "test": items[15:30]},
    ]
    return store, folds, values


def test_token_features_are_each_layers_mean_value_heads_merged(tmp_path):
    store, _, values = _store(tmp_path)
    got = probe_features(store, "img3", "tokens")
    # [L, heads, k, head_dim] -> the mean over the k selected tokens, then layer by layer, head by head
    want = np.concatenate([values[3, layer, head].mean(0).numpy() for layer in range(2) for head in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(probe_features(store, "img3"), store.get_pooled("img3").numpy())
    with pytest.raises(ValueError, match="features must be one of"):
        probe_features(store, "img3", "hidden")
    assert logreg_name(None, "tokens") == "logreg_sklearn_tokens"
    assert logreg_name(224, "tokens") == "logreg_sklearn_tokens@224" and logreg_name(224) == "logreg_sklearn@224"


def test_token_logreg_chooses_c_on_validation_and_reads_the_signal_the_pooled_one_lacks(tmp_path):
    store, folds, _ = _store(tmp_path)
    method = logreg_name(None, "tokens")
    rows, test_preds, val_preds = logreg_runs(store.path, folds, [0, 1], method, "tokens")
    pooled_rows, _, _ = logreg_runs(store.path, folds, [0], logreg_name(), "pooled")
    assert len(rows) == 2 * 2 and {r["method"] for r in rows} == {method}
    for fold, dl in enumerate(folds):
        # an independent fit: standardised features, every C of the grid, the best validation AUC wins
        x = {s: np.stack([probe_features(store, i["id"], "tokens") for i in dl[s]]) for s in dl}
        y = {s: np.array([i["label"] for i in dl[s]]) for s in dl}
        scaler = StandardScaler().fit(x["training"])
        best = max(
            (
                roc_auc_score(y["validation"], m.predict_proba(scaler.transform(x["validation"]))[:, 1]),
                -k,
                c,
                m,
            )
            for k, c in enumerate(LOGREG_CS)
            for m in [LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x["training"]), y["training"])]
        )
        row = next(r for r in rows if r["fold"] == fold and r["seed"] == 0)
        assert row["lr"] == best[2] and row["val_auc"] == pytest.approx(best[0])
        want = roc_auc_score(y["test"], best[3].predict_proba(scaler.transform(x["test"]))[:, 1])
        assert row["test_auc"] == pytest.approx(want)
        assert test_preds[(fold, method, best[2], 1)]["ids"] == [i["id"] for i in dl["test"]]
        assert val_preds[(fold, method, best[2], 0)]["labels"].tolist() == y["validation"].tolist()
    # the signal is in the tokens: their probe finds it, the pooled features' does not
    assert np.mean([r["test_auc"] for r in rows]) > 0.85 > np.mean([r["test_auc"] for r in pooled_rows])


def test_no_token_logreg_without_the_tokens_of_every_image(tmp_path):
    store, folds, _ = _store(tmp_path, tokens=False)
    assert logreg_runs(store.path, folds, [0], logreg_name(None, "tokens"), "tokens") == ([], {}, {})
    assert logreg_runs(store.path, folds, [0])[0]  # the pooled features are there
