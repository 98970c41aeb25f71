"""The study (fpt_monai.study, ``fpt-monai study`` / scripts/study.py): pooled predictions, DeLong's comparison, the
prediction files, and a whole cross-validated study through the bundle, rerun without retraining."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

from fpt_monai.data import FeatureStore, datalist_from_json, make_demo_dataset
from fpt_monai.networks import create_vit_backbone
from fpt_monai.study.compare import DELONG_KEYS, delong_comparison, pool_predictions
from fpt_monai.study.report import markdown
from fpt_monai.study.runs import read_predictions

from ..conftest import REPO_ROOT

PROBE = "linear_probe"  # from stored pooled features: the store also feeds the scikit-learn logistic regression
SPLITS = ("training", "validation", "test")


def _pred(ids, labels, probs, classes=("a", "b")):
    return {
        "ids": list(ids),
        "labels": np.asarray(labels),
        "probs": np.asarray(probs, float),
        "class_names": list(classes),
    }


def test_pool_predictions_averages_seeds_per_id_and_concatenates_folds():
    # fold 0: two seeds listing the same images in different orders; fold 1: one seed
    seed0 = _pred(["x", "y", "z"], [0, 1, 1], [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    seed1 = _pred(["z", "x", "y"], [1, 0, 1], [[0.4, 0.6], [0.7, 0.3], [0.0, 1.0]])
    fold1 = _pred(["u", "v"], [0, 1], [[0.5, 0.5], [0.1, 0.9]])
    pooled = pool_predictions({1: [fold1], 0: [seed0, seed1]})
    assert pooled["ids"] == ["x", "y", "z", "u", "v"]  # folds in order, each in its first run's order
    assert pooled["labels"].tolist() == [0, 1, 1, 0, 1]
    expected = [[0.8, 0.2], [0.2, 0.8], [0.3, 0.7], [0.5, 0.5], [0.1, 0.9]]  # x: (0.9+0.7)/2, y: (0.4+0.0)/2 ...
    np.testing.assert_allclose(pooled["probs"], expected)
    assert pooled["class_names"] == ["a", "b"]

    with pytest.raises(ValueError, match="different images"):
        pool_predictions({0: [seed0, _pred(["x", "y", "w"], [0, 1, 1], seed0["probs"])]})
    with pytest.raises(ValueError, match="two labels"):
        pool_predictions({0: [seed0, _pred(["x", "y", "z"], [1, 1, 1], seed0["probs"])]})
    with pytest.raises(ValueError, match="two folds"):
        pool_predictions({0: [seed0], 1: [_pred(["x"], [0], [[0.5, 0.5]])]})


def test_delong_comparison_matches_ids_binary_and_reports_multiclass_per_class(tmp_path):
    from fpt_monai.engines.statistics import delong_test, delong_test_ovr

    rng = np.random.default_rng(0)
    n = 40
    labels = np.arange(n) % 2
    pa = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    pb = np.clip(0.5 + 0.1 * (labels - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    ids = [f"i{k}" for k in range(n)]
    pred = _pred(ids, labels, np.stack([1 - pa, pa], 1))
    order = rng.permutation(n)  # the reference lists the same images in another order
    ref = _pred([ids[k] for k in order], labels[order], np.stack([1 - pb, pb], 1)[order])
    out = delong_comparison(pred, ref)
    expected = delong_test(labels == 1, pa, pb)
    assert out["delong_n"] == n and out["delong_per_class"] is None and out["delong_note"] is None
    assert out["delong_auc_method"] == pytest.approx(roc_auc_score(labels, pa))
    assert out["delong_auc_reference"] == pytest.approx(roc_auc_score(labels, pb))
    assert out["delong_p"] == pytest.approx(expected["p_value"]) and 0 <= out["delong_p"] <= 1
    assert out["delong_ci"] == pytest.approx([expected["ci_low"], expected["ci_high"]])

    # a file on disk reads back to the same comparison; a missing one is "n/a"
    path = tmp_path / "predictions_best.csv"
    rows = [["id", "label", "prob_a", "prob_b"]] + [
        [i, int(y), 1 - p, p] for i, y, p in zip(ids, labels, pa, strict=True)
    ]
    path.write_text("\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    assert delong_comparison(read_predictions(path), ref)["delong_p"] == pytest.approx(out["delong_p"])
    assert read_predictions(tmp_path / "missing.csv") is None
    path.write_text("id,label,prob_a,prob_b\nx,7,0.5,0.5\n")
    with pytest.raises(SystemExit, match="label 7 outside"):
        read_predictions(path)
    missing = delong_comparison(None, ref, "m: a run without eval/predictions_best.csv (an older study)")
    assert missing["delong_p"] is None and "older study" in missing["delong_note"]
    assert "| n/a | n/a |" in markdown(
        {
            "methods": [],
            "paired": [
                {
                    **missing,
                    "method": "m",
                    "reference": "r",
                    "pairs": 0,
                    "auc_diff_mean": None,
                    "auc_diff_sd": None,
                    "folds_won": 0,
                    "folds": 0,
                    "p_value": None,
                    "test": "t",
                }
            ],
        },
        "header",
    )

    # three classes: one test per class against the rest, the smallest p, no binary p
    y3 = np.arange(60) % 3
    p3a = rng.dirichlet(np.ones(3), 60) + 0.5 * np.eye(3)[y3]
    p3b = rng.dirichlet(np.ones(3), 60)
    p3a /= p3a.sum(1, keepdims=True)
    names = ("u", "v", "w")
    out3 = delong_comparison(_pred(range(60), y3, p3a, names), _pred(range(60), y3, p3b, names))
    per_class = delong_test_ovr(y3, p3a, p3b, class_names=names)
    assert out3["delong_p"] is None and set(out3["delong_per_class"]) == set(names)
    for k, name in enumerate(names):
        assert out3["delong_per_class"][name]["auc_method"] == pytest.approx(roc_auc_score(y3 == k, p3a[:, k]))
        assert out3["delong_per_class"][name]["p"] == pytest.approx(per_class[name]["p_value"])
    assert out3["delong_p_min"] == pytest.approx(min(r["p_value"] for r in per_class.values()))
    assert out3["delong_auc_method"] == pytest.approx(roc_auc_score(y3, p3a, multi_class="ovr"))
    assert "no correction" in out3["delong_note"]


def _pooled_from_files(out, method, lrs_per_fold, seeds):
    """The method's pooled test predictions rebuilt from the runs' eval/predictions_best.csv: per fold the chosen
    lr's seeds averaged per id, then the folds together: {id: (label, probability of class 1)}."""
    pooled = {}
    for fold, lr in enumerate(lrs_per_fold):
        per_id = {}
        for seed in seeds:
            path = out / "runs" / f"fold{fold}" / f"{method}_lr{lr:g}_seed{seed}" / "eval" / "predictions_best.csv"
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    per_id.setdefault(row["id"], (int(row["label"]), []))[1].append(float(row["prob_abnormal"]))
        for item, (label, probs) in per_id.items():
            assert len(probs) == len(seeds) and item not in pooled
            pooled[item] = (label, sum(probs) / len(probs))
    return pooled


def _study(tmp_path, weights, front_door: bool = False):
    """The study through scripts/study.py from the clone, or (``front_door``) through ``python -m fpt_monai study``
    from another folder: the installed command, which finds the bundle and presets in the package."""
    args = {
        "--datalist": tmp_path / "data" / "datalist.json",
        "--weights": weights,
        "--backbone": "vit_tiny_patch16_224",
        "--img-size": 64,
        "--side-img-size": 32,
        "--folds": 3,
        "--methods": f"fpt_plus,{PROBE}",
        "--lrs": f"fpt_plus=1e-3,1e-4;{PROBE}=1e-3",
        "--seeds": "0,1",
        "--epochs": 1,
        "--batch-size": 4,
        "--num-workers": 0,
        "--device": "cpu",
        "--out-dir": tmp_path / "study",
        "--probe-img-sizes": 32,  # logreg_sklearn(_tokens)@32 from a store the study builds
    }
    start = time.monotonic()
    command = ["-m", "fpt_monai", "study"] if front_door else ["scripts/study.py"]
    proc = subprocess.run(
        [sys.executable, *command, *[str(v) for kv in args.items() for v in kv]],
        cwd=tmp_path if front_door else REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, time.monotonic() - start


@pytest.mark.slow
def test_study_cross_validates_every_method_through_the_bundle_and_reruns_nothing(tmp_path):
    dl = make_demo_dataset(tmp_path / "data", per_class=6, size=96)
    all_ids = {item["id"] for split in SPLITS for item in dl[split]}
    weights = tmp_path / "w.safetensors"
    save_file(create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=224).state_dict(), str(weights))
    out = tmp_path / "study"

    _, first_time = _study(tmp_path, weights)
    result = json.loads((out / "study.json").read_text())
    bundle_runs = [r for r in result["runs"] if r["method"] in ("fpt_plus", PROBE)]
    assert len(bundle_runs) == result["new_runs"] == 3 * ((2 + 1) + (1 + 1))  # fpt_plus: 2 lrs + 1 seed; probe
    test_ids = []
    for f in range(3):
        fold = datalist_from_json(out / "folds" / f"fold{f}" / "datalist.json")
        ids = [item["id"] for split in SPLITS for item in fold[split]]
        assert sorted(ids) == sorted(all_ids) and fold["classes"] == dl["classes"]  # a partition, original ids
        assert all(fold[split] for split in SPLITS)
        test_ids += [item["id"] for item in fold["test"]]
    assert sorted(test_ids) == sorted(all_ids)  # test folds are disjoint and cover everything

    summary = {s["method"]: s for s in result["summary"]["methods"]}
    # the reference: the probe with the best mean validation AUC of its chosen settings, never test
    choice = result["summary"]["reference_choice"]
    # the logistic regressions on the pooled features and on the stored tokens' layer means, at both sizes
    logregs = ["logreg_sklearn", "logreg_sklearn@32", "logreg_sklearn_tokens", "logreg_sklearn_tokens@32"]
    probes = [PROBE, *logregs]
    assert set(choice["probes"]) == set(probes)
    for m in probes:
        rows = [r for r in result["runs"] if r["method"] == m and r["lr"] == summary[m]["lr_per_fold"][r["fold"]]]
        assert rows and choice["probes"][m] == pytest.approx(np.mean([r["val_auc"] for r in rows]))
    ref = choice["reference"]
    assert ref == max(probes, key=lambda m: choice["probes"][m]) == result["reference"]
    assert "highest mean validation AUC" in choice["why"]
    fused = f"fuse(fpt_plus,{ref})"  # the FPT-family method fused with the reference probe, by default
    # two seeds: each bundle method that is not a probe also as its seed ensemble, fused with the probe too
    ensemble, fused_ensemble = "seeds(fpt_plus)", f"fuse(seeds(fpt_plus),{ref})"
    assert set(summary) == {"fpt_plus", PROBE, *logregs, fused, ensemble, fused_ensemble}
    fusion = next(f for f in result["summary"]["fusions"] if f["method"] == fused)
    assert sorted(int(k) for k in fusion["weights"]) == [0, 1, 2] and fusion["note"] == ""
    assert summary[fused]["lr_per_fold"] == [fusion["weights"][str(f)] for f in range(3)]
    assert summary[fused]["runs"] == 3 * 2 and all(0 <= w <= 1 for w in summary[fused]["lr_per_fold"])
    # every bundle run wrote model.pt's validation predictions: the validation part of its fold
    for r in bundle_runs:
        run_dir = out / "runs" / f"fold{r['fold']}" / f"{r['method']}_lr{r['lr']:g}_seed{r['seed']}"
        val = read_predictions(run_dir / "eval" / "predictions_validation.csv")
        fold = datalist_from_json(out / "folds" / f"fold{r['fold']}" / "datalist.json")
        assert val["ids"] == [str(item["id"]) for item in fold["validation"]]
        assert r["train_seconds"] > 0 and len(r["stores"]) == 1
    costs = {c["method"]: c for c in result["summary"]["costs"]}
    assert costs["fpt_plus"]["timed_runs"] == costs["fpt_plus"]["runs"] == 3 * 3
    assert costs["fpt_plus"]["train_minutes_mean"] > 0 and costs["fpt_plus"]["store_gb"] > 0
    # the study built both stores, timed (the runs' training holds no preload)
    assert costs["fpt_plus"]["preload_minutes"] > 0 and costs["logreg_sklearn@32"]["preload_minutes"] > 0
    assert costs["fpt_plus"]["stores"] == costs[PROBE]["stores"] == costs["logreg_sklearn"]["stores"]
    assert costs["logreg_sklearn_tokens"]["stores"] == costs["logreg_sklearn"]["stores"]  # the same store, read twice
    assert costs["logreg_sklearn_tokens@32"]["stores"] == costs["logreg_sklearn@32"]["stores"]
    assert costs[fused]["parts"] == ["fpt_plus", ref]
    for m in logregs:
        assert summary[m]["runs"] == 3 * 2 and all(c > 0 for c in summary[m]["lr_per_fold"])
    assert summary["fpt_plus"]["runs"] == 3 * 2 and len(summary["fpt_plus"]["lr_per_fold"]) == 3
    assert len(summary["fpt_plus"]["test_auc_per_fold"]) == 3
    comparisons = {(c["method"], c["reference"]) for c in result["summary"]["paired"]}
    # every method against each probe
    assert comparisons == {(m, p) for p in probes for m in summary if m != p}
    paired = next(c for c in result["summary"]["paired"] if (c["method"], c["reference"]) == ("fpt_plus", PROBE))
    assert paired["pairs"] == 6
    assert paired["folds"] == 3 and paired["test"] == "wilcoxon"
    # DeLong on the pooled test predictions: every image once, the chosen lr's seeds averaged
    pooled = {m: _pooled_from_files(out, m, summary[m]["lr_per_fold"], [0, 1]) for m in ("fpt_plus", PROBE)}
    # the seed ensemble: per fold the AUC of the two seeds' averaged probabilities, at fpt_plus's chosen lr
    assert summary[ensemble]["runs"] == 3 and summary[ensemble]["lr_per_fold"] == summary["fpt_plus"]["lr_per_fold"]
    for f in range(3):
        fold_ids = [
            str(item["id"]) for item in datalist_from_json(out / "folds" / f"fold{f}" / "datalist.json")["test"]
        ]
        labels_f = [pooled["fpt_plus"][i][0] for i in fold_ids]
        assert len(set(labels_f)) == 2  # stratified folds
        want = roc_auc_score(labels_f, [pooled["fpt_plus"][i][1] for i in fold_ids])
        assert summary[ensemble]["test_auc_per_fold"][f] == pytest.approx(want, abs=1e-9)
    assert costs[ensemble]["parts"] == ["fpt_plus"] and summary[fused_ensemble]["runs"] == 3  # seed 0's pairs
    for seed in (0, 1):  # each seed's mean over folds at the chosen lr
        chosen_rows = [
            r
            for r in result["runs"]
            if r["method"] == "fpt_plus"
            and r["seed"] == seed
            and r["lr"] == summary["fpt_plus"]["lr_per_fold"][r["fold"]]
        ]
        want = np.mean([r["test_auc"] for r in chosen_rows])
        assert len(chosen_rows) == 3 and summary["fpt_plus"]["test_auc_per_seed"][str(seed)] == pytest.approx(want)
    assert set(pooled["fpt_plus"]) == set(pooled[PROBE]) == set(all_ids)
    labels = [pooled[PROBE][i][0] for i in sorted(all_ids)]
    auc = {m: roc_auc_score(labels, [pooled[m][i][1] for i in sorted(all_ids)]) for m in pooled}
    assert paired["delong_auc_method"] == pytest.approx(auc["fpt_plus"], abs=1e-9)
    assert paired["delong_auc_reference"] == pytest.approx(auc[PROBE], abs=1e-9)
    assert paired["delong_difference"] == pytest.approx(auc["fpt_plus"] - auc[PROBE], abs=1e-9)
    assert paired["delong_n"] == len(all_ids) and paired["delong_per_class"] is None
    for c in result["summary"]["paired"]:  # the logistic regression's comparisons too
        assert set(DELONG_KEYS) <= set(c) and c["delong_n"] == len(all_ids), c
        assert c["delong_p"] is not None and 0.0 <= c["delong_p"] <= 1.0, c
        low, high = c["delong_ci"]
        assert low <= c["delong_difference"] <= high
    vs_logreg = next(
        c for c in result["summary"]["paired"] if c["reference"] == "logreg_sklearn" and c["method"] in auc
    )
    assert vs_logreg["delong_auc_method"] == pytest.approx(auc[vs_logreg["method"]], abs=1e-9)
    text = (out / "study.md").read_text()
    assert "| fpt_plus |" in text and f"| fpt_plus | {PROBE} | 6 |" in text
    assert "| fold-wise p (test) | pooled AUC (DeLong) | DeLong p |" in text
    assert "seeds(A): A's test probabilities averaged over its seeds" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| fpt_plus | {PROBE} | 6 |"))
    assert f"{auc['fpt_plus']:.3f} vs {auc[PROBE]:.3f}" in row and row.endswith(f"| {paired['delong_p']:.3f} |")
    with open(out / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 + 3 * 6 + 3 * 2 + 2 * 6 and list(rows[0])[:7] == [
        "fold",
        "method",
        "lr",
        "seed",
        "val_auc",
        "test_auc",
        "test_acc",
    ]
    text_costs = text[text.index("| method | runs (timed) |") :]
    assert "| fpt_plus | 9 (9) |" in text_costs and f"Reference: {ref} (the probe with" in text
    assert (out / "study.png").stat().st_size > 0
    stores = sorted(d.name for d in (out / "tokens").iterdir() if d.is_dir())
    # one store for every fold, seed and method (the folds' datalists name the same images: one store name); and
    # the 32 px store of logreg_sklearn@32 and logreg_sklearn_tokens@32: pooled features and tokens of every image
    assert len(stores) == 2 and stores[1].startswith("vit_tiny_patch16_224_64_"), stores
    assert stores[0].startswith("vit_tiny_patch16_224_32_")
    small = FeatureStore.open(out / "tokens" / stores[0])
    assert {"pooled", "tokens"} <= set(small.fields) and not small.missing([str(i) for i in all_ids], "tokens")

    proc, second_time = _study(tmp_path, weights, front_door=True)
    first_paired = result["summary"]["paired"]
    result = json.loads((out / "study.json").read_text())
    assert result["new_runs"] == 0 and len(result["runs"]) == 15 + 3 * 6 + 3 * 2 + 2 * 6
    assert result["summary"]["paired"] == first_paired  # DeLong and the fusions read back from the runs' files
    assert "0 new runs, 15 reused" in proc.stdout
    assert second_time < first_time / 2
