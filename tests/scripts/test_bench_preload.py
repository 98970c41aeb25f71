from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import REPO_ROOT


def test_bench_preload_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/bench_preload.py",
            "--backbone",
            "vit_tiny_patch16_224",
            "--img-size",
            "64",
            "--batch-size",
            "2",
            "--reps",
            "1",
            "--store-items",
            "4",
            "--preload-items",
            "4",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.read_text())
    assert res["token_shape"] == [6, 3, 3, 64]
    assert (
        res["bytes_per_item"] == 2 * 6 * 3 * 3 * 64 * 2
        and res["reference_bytes_per_item_fp32"] == 2 * res["bytes_per_item"]
    )
    for key in (
        "bare_timm_img_s",
        "extractor_img_s",
        "preload_end_to_end_img_s",
        "store_read_items_s",
        "train_step_items_s",
    ):
        assert res[key] > 0
    assert "| reads / training step |" in proc.stdout and "| extractor / bare timm |" in proc.stdout
