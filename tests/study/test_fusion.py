"""The study's fusions, the choice of the reference probe on validation, the costs and the method names (issue 22):
unit tests on synthetic run records (no bundle runs)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fpt_monai.engines.probability_blend import blend_probabilities, choose_blend_weight
from fpt_monai.study import runs as study_runs
from fpt_monai.study.compare import choose_reference, comparison_order, method_costs, summarize
from fpt_monai.study.fusion import default_fusions, fuse_method, is_probe, parse_fuse
from fpt_monai.study.report import markdown
from fpt_monai.study.runs import method_presets


def _pred(ids, labels, p1):
    p1 = np.clip(np.asarray(p1, float), 0.01, 0.99)
    return {
        "ids": list(ids),
        "labels": np.asarray(labels),
        "probs": np.stack([1 - p1, p1], 1),
        "class_names": ["a", "b"],
    }


def _study(rng, folds=2, seeds=(0, 1), n=24):
    """Two methods A (lr 0.1 chosen) and B (C 1.0): rows, chosen, test and validation predictions per run key; the
    validation ids of B listed in another order."""
    runs, chosen, test, val = [], {"A": {}, "B": {}}, {}, {}
    for f in range(folds):
        labels = np.arange(n) % 2
        ids = {s: [f"{s}{f}_{k}" for k in range(n)] for s in ("val", "test")}
        for method, lr, noise in (("A", 0.1, 0.35), ("B", 1.0, 0.45)):
            chosen[method][f] = lr
            for seed in seeds:
                key = (f, method, lr, seed)
                p_val = labels + rng.normal(0, noise, n) * 2 - 0.5
                p_test = labels + rng.normal(0, noise, n) * 2 - 0.5
                order = np.arange(n)[::-1] if method == "B" else np.arange(n)
                val[key] = _pred([ids["val"][k] for k in order], labels[order], p_val[order])
                test[key] = _pred(ids["test"], labels, p_test)
                runs.append(
                    {
                        "fold": f,
                        "method": method,
                        "lr": lr,
                        "seed": seed,
                        "val_auc": 0.7,
                        "test_auc": 0.7,
                        "test_acc": 0.7,
                    }
                )
            other = 0.01 if method == "A" else 10.0  # a learning rate that was not chosen: never fused
            runs.append(
                {"fold": f, "method": method, "lr": other, "seed": 0, "val_auc": 0.5, "test_auc": 0.9, "test_acc": 0.9}
            )
            val[(f, method, other, 0)] = test[(f, method, other, 0)] = None
    return runs, chosen, test, val


def test_fusion_weight_is_chosen_on_validation_and_tested_per_seed():
    rng = np.random.default_rng(0)
    runs, chosen, test, val = _study(rng)
    rows, weights, blended, why = fuse_method("A", "B", runs, chosen, test, val)
    assert why == "" and sorted(weights) == [0, 1] and len(rows) == 2 * 2
    for f in (0, 1):
        # the weight: choose_blend_weight on the seeds' averaged validation probabilities, B put in A's order
        va = np.mean([val[(f, "A", 0.1, s)]["probs"] for s in (0, 1)], 0)
        vb = np.mean([val[(f, "B", 1.0, s)]["probs"][::-1] for s in (0, 1)], 0)
        expected = choose_blend_weight(va, vb, val[(f, "A", 0.1, 0)]["labels"])
        assert weights[f] == expected["weight"]
        for s in (0, 1):
            row = next(r for r in rows if r["fold"] == f and r["seed"] == s)
            probs = blend_probabilities(test[(f, "A", 0.1, s)]["probs"], test[(f, "B", 1.0, s)]["probs"], weights[f])
            assert row["lr"] == weights[f] and row["val_auc"] == pytest.approx(expected["val_auc"])
            assert row["test_auc"] == pytest.approx(roc_auc_score(test[(f, "A", 0.1, s)]["labels"], probs[:, 1]))
            np.testing.assert_allclose(blended[(f, "fuse(A,B)", weights[f], s)]["probs"], probs)
    # the fusion is then a method like any other: summarised, compared, DeLong on its pooled predictions
    chosen["fuse(A,B)"] = weights
    summary = summarize(runs + rows, chosen, ["A", "B", "fuse(A,B)"], ["B"], {**test, **blended})
    paired = next(c for c in summary["paired"] if c["method"] == "fuse(A,B)")
    assert paired["pairs"] == 4 and paired["delong_n"] == 2 * 24 and paired["delong_p"] is not None

    # a run without validation predictions (an older study): no fusion, and why
    val[(1, "B", 1.0, 1)] = None
    rows, weights, _, why = fuse_method("A", "B", runs, chosen, test, val)
    assert rows == [] and weights == {} and "fold 1 lacks validation or test predictions of A or B" in why


def test_reference_is_the_strongest_probe_on_validation_never_test():
    runs = [
        # logreg: better on validation, worse on test; the linear probe the opposite; fpt_plus is not a probe
        {"fold": f, "method": m, "lr": 1.0, "seed": 0, "val_auc": v, "test_auc": t}
        for f in (0, 1)
        for m, v, t in (("logreg_sklearn", 0.8, 0.6), ("linear_probe+small_data", 0.7, 0.9), ("fpt_plus", 0.99, 0.99))
    ]
    runs.append({"fold": 0, "method": "logreg_sklearn@224", "lr": 3.0, "seed": 0, "val_auc": 0.95, "test_auc": 0.5})
    runs.append({"fold": 0, "method": "logreg_sklearn@224", "lr": 1.0, "seed": 0, "val_auc": 0.75, "test_auc": 0.5})
    chosen = {m: {0: 1.0, 1: 1.0} for m in ("logreg_sklearn", "linear_probe+small_data", "fpt_plus")}
    chosen["logreg_sklearn@224"] = {0: 1.0}  # its chosen setting's validation AUC counts, not the best row's
    methods = list(chosen)
    choice = choose_reference(runs, chosen, methods)
    assert choice["reference"] == "logreg_sklearn" and set(choice["probes"]) == set(methods) - {"fpt_plus"}
    assert choice["probes"]["logreg_sklearn@224"] == pytest.approx(0.75)
    assert "highest mean validation AUC" in choice["why"] and "linear_probe+small_data 0.700" in choice["why"]
    assert choose_reference(runs, chosen, methods, "fpt_plus")["reference"] == "fpt_plus"
    assert choose_reference(runs, chosen, ["fpt_plus"])["reference"] is None
    # the comparisons: the reference, then --baseline (an option's gain alone), then every probe, each once
    studied = [*methods, "fpt_plus+ema", "fuse(fpt_plus,logreg_sklearn)"]
    assert comparison_order("logreg_sklearn", "fpt_plus", studied) == [
        "logreg_sklearn",
        "fpt_plus",
        "linear_probe+small_data",
        "logreg_sklearn@224",
    ]
    assert comparison_order("logreg_sklearn", "logreg_sklearn", methods)[:2] == [
        "logreg_sklearn",
        "linear_probe+small_data",
    ]
    assert comparison_order(None, None, ["fpt_plus"]) == []
    assert is_probe("linear_probe_online") and not is_probe("fpt_plus+small_data")
    assert default_fusions(["fpt_plus+small_data+ema", "fpt", "lora", "linear_probe"], "logreg_sklearn") == [
        ("fpt_plus+small_data+ema", "logreg_sklearn"),
        ("fpt", "logreg_sklearn"),
    ]
    assert default_fusions(["fpt_plus"], "lora") == []  # the default fuses with a probe only
    summary = {"methods": [], "paired": [], "reference_choice": choice}
    assert "Reference: logreg_sklearn (the probe with the highest mean validation AUC" in markdown(summary, "h")


def test_parse_fuse():
    known = ["fpt_plus", "logreg_sklearn", "logreg_sklearn@224"]
    assert parse_fuse(None, known) is None and parse_fuse("none", known) == []
    assert parse_fuse("fpt_plus:logreg_sklearn@224; fpt_plus:logreg_sklearn", known) == [
        ("fpt_plus", "logreg_sklearn@224"),
        ("fpt_plus", "logreg_sklearn"),
    ]
    for bad in ("fpt_plus", "fpt_plus:lora", "fpt_plus:fpt_plus"):
        with pytest.raises(SystemExit, match="expected A:B"):
            parse_fuse(bad, known)


def test_costs_per_method_and_their_table(tmp_path):
    store = tmp_path / "tokens" / "vit_s_518_abc"
    store.mkdir(parents=True)
    (store / "shard.bin").write_bytes(b"x" * 3000)
    other = tmp_path / "tokens" / "vit_s_224_def"
    other.mkdir()
    (other / "shard.bin").write_bytes(b"x" * 1000)
    runs = [
        {"fold": 0, "method": "fpt_plus", "lr": 1e-3, "seed": 0, "train_seconds": 60.0, "stores": [str(store)]},
        {"fold": 0, "method": "fpt_plus", "lr": 3e-4, "seed": 0, "train_seconds": 180.0, "stores": [str(store)]},
        {"fold": 1, "method": "fpt_plus", "lr": 1e-3, "seed": 0, "train_seconds": None, "stores": [str(store)]},
        # one fit per fold, repeated per seed: counted once
        *(
            {
                "fold": 0,
                "method": "logreg_sklearn@224",
                "lr": 1.0,
                "seed": s,
                "train_seconds": 6.0,
                "stores": [str(other)],
            }
            for s in (0, 1)
        ),
    ]
    preloads = {str(other): 120.0}
    cost = method_costs(runs, "fpt_plus", preloads)
    assert cost["runs"] == 3 and cost["timed_runs"] == 2 and cost["train_minutes_mean"] == pytest.approx(2.0)
    assert cost["stores"] == [{"store": store.name, "gb": 3e-6, "preload_minutes": None}]
    assert cost["preload_minutes"] is None  # built before this study
    logreg = method_costs(runs, "logreg_sklearn@224", preloads)
    assert logreg["runs"] == 1 and logreg["train_minutes_mean"] == pytest.approx(0.1)
    assert logreg["preload_minutes"] == pytest.approx(2.0) and logreg["store_gb"] == pytest.approx(1e-6)
    fused = method_costs(runs, "fuse(fpt_plus,logreg_sklearn@224)", preloads, ["fpt_plus", "logreg_sklearn@224"])
    text = markdown({"methods": [], "paired": [], "costs": [cost, logreg, fused]}, "h")
    assert f"| fpt_plus | 3 (2) | 2.00 | {store.name} (3e-06) | built before |" in text
    assert "| logreg_sklearn@224 | 1 (1) | 0.10 |" in text and "| 2.0 |" in text
    assert "| fuse(fpt_plus,logreg_sklearn@224) | - | fpt_plus + logreg_sklearn@224 |" in text


def test_method_names_merge_any_number_of_presets(tmp_path, monkeypatch):
    # throwaway presets: a method and two recipes (as views4, ema, swa... are), merged in the name's order
    for folder, name in (("methods", "m"), ("recipes", "r1"), ("recipes", "r2")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{name}.yaml").write_text(f"{name}: 1\n")
    monkeypatch.setattr(study_runs, "PRESET_DIRS", (tmp_path / "methods", tmp_path / "recipes"))
    assert method_presets("m+r1+r2") == [
        tmp_path / "methods" / "m.yaml",
        tmp_path / "recipes" / "r1.yaml",
        tmp_path / "recipes" / "r2.yaml",
    ]
    with pytest.raises(SystemExit, match="unknown method 'r3'"):
        method_presets("m+r1+r3")


def test_prepare_store_times_and_run_stores_names_the_second_store_of_pooled_img_size(tmp_path, tiny_bundle_data):
    """A two-resolution method (pooled_img_size) trains from two stores: the study builds and times both before the
    runs (else the second one's preload lands in the first run's training time) and counts both in its costs."""
    import json

    from fpt_monai.data import FeatureStore

    from ..bundle_utils import tiny_overrides

    data_dir, weights = tiny_bundle_data
    out = tmp_path / "study"
    overrides = tiny_overrides(
        data_dir, weights, head="side+pooled", pooled_img_size=32, store_root=str(out / "tokens")
    )
    main = study_runs.prepare_store(out, [study_runs.TRAIN_CONFIG], [data_dir], overrides)
    preloads = study_runs.read_preloads(out)
    assert main in preloads and len(preloads) == 2 and all(v > 0 for v in preloads.values())
    (second,) = set(preloads) - {main}
    assert FeatureStore.open(second).settings["img_size"] == 32 and "pooled" in FeatureStore.open(second).fields
    bundle = tmp_path / "run"
    (bundle / "models").mkdir(parents=True)
    settings = {"mode": "preload", "store_dir": main, "pooled_store_dir": second, "dataset_dir": str(data_dir)}
    (bundle / "models" / "model_config.json").write_text(json.dumps({"training_settings": settings}))
    assert study_runs.run_stores(bundle) == sorted([main, second])
