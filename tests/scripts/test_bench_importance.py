from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import REPO_ROOT


def test_bench_importance_times_both_paths_against_a_bare_forward(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/bench_importance.py",
            "--backbone",
            "vit_tiny_patch16_224",
            "--img-sizes",
            "64,80",
            "--layers",
            "2-4",
            "--batch-size",
            "2",
            "--reps",
            "1",
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.read_text())
    assert [row["img_size"] for row in res["sizes"]] == [64, 80]
    assert [row["tokens"] for row in res["sizes"]] == [17, 26] and res["sizes"][1]["k"] == 5
    for row in res["sizes"]:
        assert row["bare_s"] > 0 and set(row["extractor_s"]) == {"tiled", "batched"}
        assert row["extractor_vs_bare"]["tiled"] == row["bare_s"] / row["extractor_s"]["tiled"]
        assert row["extractor_vs_bare_cpu_time"]["tiled"] > 0
        assert row["same_token_sets_vs_batched"]["batched"] == 1.0
        assert 0.0 <= row["same_token_sets_vs_batched"]["tiled"] <= 1.0
    assert "| 80 px | 26 |" in proc.stdout and "tiled / bare speed" in proc.stdout
