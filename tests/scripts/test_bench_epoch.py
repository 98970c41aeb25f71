from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fpt_monai.data import datalist_from_json
from fpt_monai.engines import read_model_config

from ..conftest import REPO_ROOT


def test_bench_epoch_times_training_from_the_store_and_from_a_resident_copy(tmp_path, trained_tiny_bundle):
    root, data_dir, weights = trained_tiny_bundle
    store = Path(read_model_config(root / "models" / "model_config.json", bundle_root=root)["store_dir"]).resolve()
    stores_before = sorted(p.name for p in store.parent.iterdir())
    shards_before = sorted((p.name, p.stat().st_mtime_ns) for p in (store / "shards").iterdir())
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
    # read the given store, built nothing: no other store beside it, no shard added to it
    assert sorted(p.name for p in store.parent.iterdir()) == stores_before
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (store / "shards").iterdir()) == shards_before
