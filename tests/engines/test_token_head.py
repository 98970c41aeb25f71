"""init_token_head on a real feature store with three classes: the head gives the fitted logistic regression's
probabilities, C is the grid's best on validation, and the record says so (issue 22)."""

from __future__ import annotations

import json

import numpy as np
import torch

from fpt_monai.data import FeatureStore
from fpt_monai.engines import init_token_head
from fpt_monai.networks import FPT, token_layer_means

from ..conftest import TINY

SHAPE = (6, 3, 5, 64)  # ViT-Tiny's second half: 6 layers, 3 heads, 5 tokens, head width 64


def test_three_classes_fit_on_training_chosen_on_validation(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(0)
    n, classes = 60, 3
    labels = torch.arange(n) % classes
    values = torch.randn(n, *SHAPE, generator=g)
    values[:, 2, 1, :, :4] += labels[:, None, None].float()  # a class signal in one layer and head
    store = FeatureStore.create(tmp_path / "store", {"test": 1}, SHAPE, dtype="float32")
    ids = [f"i{i}" for i in range(n)]
    store.write_shard(ids, torch.zeros_like(values), values)
    items = [{"id": i, "label": int(y)} for i, y in zip(ids, labels, strict=True)]
    datalist = {"training": items[:40], "validation": items[40:]}

    net = FPT(num_classes=classes, head="side+tokens", side_img_size=32, pretrained=False, frozen_model=False, **TINY)
    cs = [1e-3, 1e-1, 10.0]
    result = init_token_head(net, store, datalist, cs=cs, output_file=tmp_path / "token_head.json")

    x = token_layer_means(values).numpy()
    y = labels.numpy()
    aucs = {}
    for c in cs:  # the choice, made here independently
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x[:40], y[:40])
        aucs[c] = roc_auc_score(y[40:], model.predict_proba(x[40:]), multi_class="ovr", average="macro")
    best = max(cs, key=lambda c: (aucs[c], -c))
    assert result["C"] == best and abs(result["val_auc"] - aucs[best]) < 1e-9
    model = make_pipeline(StandardScaler(), LogisticRegression(C=best, max_iter=5000)).fit(x[:40], y[:40])
    probs = torch.softmax(net.token_head(torch.from_numpy(x)), dim=1).detach().numpy()
    np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-5)
    record = json.loads((tmp_path / "token_head.json").read_text())
    assert record["C"] == best and [r["C"] for r in record["table"]] == cs and record["features"] == x.shape[1]
    assert record["training_items"] == 40 and record["validation_items"] == 20
    assert net.token_head.fc.weight.requires_grad  # trainable by default
