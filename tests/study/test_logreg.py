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


def _views_store(tmp_path, n=60, views=("hflip",)):
    """A store with the plain view and ``views`` of every image: the class signal in layer 1's values, each view a
    noisier copy of it."""
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([i % 2 for i in range(n)], dtype=torch.float32)
    store = FeatureStore.create(tmp_path / "v", {"synthetic": 1}, SHAPE, "float32")
    plain = [f"img{i}" for i in range(n)]
    for name in ("", *views):
        values = torch.randn(n, *SHAPE, generator=gen) * 3
        values[:, 1, 0, :, 0] += 2.0 * labels[:, None]
        store.write_shard([f"{i}@{name}" if name else i for i in plain], torch.zeros(n, *SHAPE), values)
    items = [{"id": i, "label": int(y)} for i, y in zip(plain, labels, strict=True)]
    folds = [
        {"training": items[:30], "validation": items[30:45], "test": items[45:]},
        {"training": items[30:], "validation": items[:15], "test": items[15:30]},
    ]
    return store, folds


@pytest.mark.parametrize("tta", [False, True])
def test_views_probe_fits_every_stored_view_and_tta_averages_them(tmp_path, tta):
    from fpt_monai.engines.logistic_probe import fit_logistic_probe

    store, folds = _views_store(tmp_path)
    method = logreg_name(None, "tokens", 2, tta)
    assert method == ("logreg_sklearn_tokens+views2+tta" if tta else "logreg_sklearn_tokens+views2")
    rows, test_preds, _ = logreg_runs(store.path, folds, [0], method, "tokens", views=2, tta=tta)
    plain_rows, _, _ = logreg_runs(store.path, folds, [0], logreg_name(None, "tokens"), "tokens")
    assert len(rows) == 2
    for fold, dl in enumerate(folds):
        feats = {
            name: {s: np.stack([probe_features(store, f"{i['id']}{name}", "tokens") for i in dl[s]]) for s in dl}
            for name in ("", "@hflip")
        }
        y = {s: np.array([i["label"] for i in dl[s]]) for s in dl}
        # an independent fit on the training images' two views (twice the rows), evaluated plain or on the mean
        x_train = np.concatenate([feats[""]["training"], feats["@hflip"]["training"]])
        evaluate = {s: np.stack([feats[""][s], feats["@hflip"][s]]) if tta else feats[""][s] for s in dl}
        want = fit_logistic_probe(
            x_train, np.concatenate([y["training"]] * 2), evaluate["validation"], y["validation"], LOGREG_CS, 2
        )
        row = rows[fold]
        assert row["lr"] == want.C and row["val_auc"] == pytest.approx(want.val_auc)
        probs = test_preds[(fold, method, want.C, 0)]["probs"]
        np.testing.assert_allclose(probs, want.predict_proba(evaluate["test"]))
        assert row["test_auc"] == pytest.approx(roc_auc_score(y["test"], probs[:, 1]))
        assert want.scaler.n_samples_seen_ == 60  # both views of the 30 training images
    assert [r["test_auc"] for r in rows] != [r["test_auc"] for r in plain_rows]


def test_views_probe_needs_every_view_of_every_image(tmp_path):
    from fpt_monai.study.run import check_probe_views
    from fpt_monai.study.runs import probe_views

    store, folds = _views_store(tmp_path)  # the plain view and the horizontal flip only
    assert logreg_runs(store.path, folds, [0], "x", "tokens", views=3) == ([], {}, {})
    assert logreg_runs(store.path, folds, [0], "x", "tokens", views=2)[0]
    # the views the bundle's store_views K stores, in its order
    assert probe_views(1) == ("",) and probe_views(4) == ("", "hflip", "vflip", "rot90")
    assert check_probe_views(7) == 7
    for bad in (0, 8):
        with pytest.raises(SystemExit, match="--probe-views must be between 1 and 7"):
            check_probe_views(bad)
    # the views of the bundle's store_view_transforms when the study sets them (--set store_view_transforms=...)
    assert probe_views(2, ["hflip"]) == ("", "hflip") and probe_views(3, "rot90,hflip") == ("", "rot90", "hflip")
    assert logreg_runs(store.path, folds, [0], "x", "tokens", views=2, transforms=["hflip"])[0]
    assert logreg_runs(store.path, folds, [0], "x", "tokens", views=2, transforms=["vflip"]) == ([], {}, {})
    assert check_probe_views(3, "hflip,rot90") == 3
    with pytest.raises(
        SystemExit, match=r"between 1 and 3 \(the plain view, then the store_view_transforms hflip, rot90"
    ):
        check_probe_views(4, "hflip,rot90")
    with pytest.raises(SystemExit, match="--probe-views 2: store_view_transforms names unknown transforms"):
        check_probe_views(2, ["sideways"])


def test_probe_store_preloads_every_images_views_through_the_bundle(tmp_path):
    from safetensors.torch import save_file

    from fpt_monai.commands.study import build_parser
    from fpt_monai.data import make_demo_dataset
    from fpt_monai.networks import create_vit_backbone
    from fpt_monai.study.folds import fold_datalists, write_folds
    from fpt_monai.study.runs import common_overrides, probe_store

    dl = make_demo_dataset(tmp_path / "data", per_class=4, size=48)
    weights = tmp_path / "w.safetensors"
    save_file(create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=224).state_dict(), str(weights))
    out = tmp_path / "study"
    args = build_parser().parse_args(
        ["--backbone", "vit_tiny_patch16_224", "--weights", str(weights), "--img-size", "32", "--device", "cpu"]
        + ["--num-workers", "0", "--out-dir", str(out)]
    )
    folds = fold_datalists(dl, 2, 0.25, 0)
    write_folds(folds, out)
    overrides = common_overrides(args, 2, out)
    store_dir = probe_store(out, folds, overrides, views=3)
    store = FeatureStore.open(store_dir)
    plain = [str(i["id"]) for s in ("training", "validation", "test") for i in folds[0][s]]
    assert not store.missing([f"{i}@{n}" for i in plain for n in ("hflip", "vflip")] + plain, "tokens")
    # a flipped view is another image for the frozen model: other tokens
    _, flipped = store.get(f"{plain[0]}@hflip")
    assert not torch.allclose(store.get(plain[0])[1].float(), flipped.float())
    # the plain-view probe finds the same store, views and all; with the views it fits (3 views of each image)
    assert probe_store(out, folds, overrides) == store_dir
    rows, _, _ = logreg_runs(store_dir, folds, [0], "t", "tokens", views=3, tta=True)
    assert len(rows) == 2 and all(0.0 <= r["test_auc"] <= 1.0 for r in rows)


def test_the_report_says_what_a_views_probe_is(tmp_path):
    from fpt_monai.study.compare import summarize
    from fpt_monai.study.report import markdown

    store, folds = _views_store(tmp_path)
    names = [logreg_name(None, "tokens"), logreg_name(None, "tokens", 2, True)]
    runs, preds, chosen = [], {}, {}
    for name, views in zip(names, (1, 2), strict=True):
        rows, test_preds, _ = logreg_runs(store.path, folds, [0], name, "tokens", views=views, tta=views > 1)
        runs += rows
        preds.update(test_preds)
        chosen[name] = {r["fold"]: r["lr"] for r in rows}
    legend = "logreg_sklearn...+viewsK: the logistic regression fitted on K stored views"
    text = markdown(summarize(runs, chosen, names, [names[0]], preds), "header")
    assert legend in text and f"| {names[1]} | {names[0]} | 2 |" in text  # paired with the plain-view probe
    plain_only = [r for r in runs if r["method"] == names[0]]
    assert legend not in markdown(summarize(plain_only, chosen, names[:1], [], preds), "header")
