from __future__ import annotations

import json
import subprocess
import sys

from fpt_monai.data import datalist_from_json

from ..conftest import REPO_ROOT


def test_bench_epoch_times_training_from_the_store_and_from_a_resident_copy(tmp_path, trained_tiny_bundle):
    root, data_dir, weights = trained_tiny_bundle
    store = next((root / "tokens").iterdir())
    out = tmp_path / "epoch.json"
    cmd = [sys.executable, "scripts/bench_epoch.py", "--datalist", str(data_dir / "datalist.json")]
    cmd += ["--store-dir", str(store), "--epochs", "2", "--batch-size", "4", "--variants", "store:0,resident:0"]
    for key, value in (("backbone", "vit_tiny_patch16_224"), ("pretrained", weights), ("img_size", 64)):
        cmd += ["--set", f"{key}={value}"]
    cmd += ["--set", "side_img_size=32", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    n_train = len(datalist_from_json(data_dir / "datalist.json")["training"])
    assert [(r["resident"], r["num_workers"]) for r in rows] == [(False, 0), (True, 0)]
    for row in rows:
        assert row["train_images"] == n_train and set(row["epoch_s"]) == {"1", "2"}
        assert row["train_img_per_s"] > 0 and row["peak_mb"] > 0
    assert "| resident copy | 0 |" in proc.stdout and "| store, per item | 0 |" in proc.stdout
    assert not (store.parent / "fpt_plus_vit_base_patch16_384_512").exists()  # read the given store, built nothing
