from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
from safetensors.torch import save_file

from fpt_monai.data import datalist_from_json, make_demo_dataset
from fpt_monai.networks import create_vit_backbone

from ..conftest import REPO_ROOT

PROBE = "linear_probe"  # from stored pooled features: the store also feeds the scikit-learn logistic regression
SPLITS = ("training", "validation", "test")


def _study(tmp_path, weights):
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
        "--reference": PROBE,
        "--epochs": 1,
        "--batch-size": 4,
        "--num-workers": 0,
        "--device": "cpu",
        "--out-dir": tmp_path / "study",
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "scripts/study.py", *[str(v) for kv in args.items() for v in kv]],
        cwd=REPO_ROOT,
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
    bundle_runs = [r for r in result["runs"] if r["method"] != "logreg_sklearn"]
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
    assert set(summary) == {"fpt_plus", PROBE, "logreg_sklearn"}  # the logistic regression on the stored features
    assert summary["logreg_sklearn"]["runs"] == 3 * 2 and all(c > 0 for c in summary["logreg_sklearn"]["lr_per_fold"])
    assert summary["fpt_plus"]["runs"] == 3 * 2 and len(summary["fpt_plus"]["lr_per_fold"]) == 3
    assert len(summary["fpt_plus"]["test_auc_per_fold"]) == 3
    comparisons = {(c["method"], c["reference"]) for c in result["summary"]["paired"]}
    assert comparisons == {
        ("fpt_plus", PROBE),
        ("logreg_sklearn", PROBE),
        ("fpt_plus", "logreg_sklearn"),
        (PROBE, "logreg_sklearn"),
    }
    paired = next(c for c in result["summary"]["paired"] if (c["method"], c["reference"]) == ("fpt_plus", PROBE))
    assert paired["pairs"] == 6
    assert paired["folds"] == 3 and paired["test"] == "wilcoxon"
    text = (out / "study.md").read_text()
    assert "| fpt_plus |" in text and f"| fpt_plus | {PROBE} | 6 |" in text
    with open(out / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 + 6 and list(rows[0]) == ["fold", "method", "lr", "seed", "val_auc", "test_auc", "test_acc"]
    assert (out / "study.png").stat().st_size > 0
    stores = [d.name for d in (out / "tokens").iterdir() if d.is_dir()]
    assert len([s for s in stores if s.startswith("fpt_plus_")]) == 1  # one store for every fold, seed and method

    proc, second_time = _study(tmp_path, weights)
    result = json.loads((out / "study.json").read_text())
    assert result["new_runs"] == 0 and len(result["runs"]) == 15 + 6
    assert "0 new runs, 15 reused" in proc.stdout
    assert second_time < first_time / 2
