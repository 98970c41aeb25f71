from __future__ import annotations

import csv
import json
import subprocess
import sys

from ..conftest import REPO_ROOT


def test_benchmark_runs_end_to_end_with_every_requested_row(tmp_path):
    methods = ["fpt_plus", "full_finetune", "lora"]
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/benchmark.py",
            "--backbone",
            "vit_tiny_patch16_224",
            "--img-size",
            "64",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--methods",
            ",".join(methods),
            "--out-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "benchmark.json").read_text())["rows"]
    assert all(r["timm_fused_attention"] for r in rows)  # the default: SDPA
    assert [r["method"] for r in rows] == methods
    by = {r["method"]: r for r in rows}
    assert by["full_finetune"]["trainable_pct"] == 100.0 and by["full_finetune"]["memory_pct"] == 100.0
    assert by["fpt_plus"]["trainable"] == 87_005 and by["fpt_plus"]["store_bytes_per_image"] == 2 * 6 * 3 * 3 * 64 * 2
    assert all(r["peak_train_memory_mb"] > 0 and r["train_img_s"] > 0 and r["infer_img_s"] > 0 for r in rows)
    assert len(list(csv.DictReader(open(tmp_path / "benchmark.csv")))) == 3
    assert (tmp_path / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "benchmark.md").read_text()
    assert all(f"| {m} |" in table for m in methods)


def test_benchmark_eager_attention_and_training_only(tmp_path):
    """--attention eager reaches timm in the workers (the papers' denominator); --no-inference skips the forward."""
    cmd = [sys.executable, "scripts/benchmark.py", "--backbone", "vit_tiny_patch16_224", "--img-size", "64"]
    cmd += ["--batch-size", "2", "--steps", "1", "--warmup", "0", "--device", "cpu", "--methods", "fpt_plus,lora"]
    proc = subprocess.run(
        [*cmd, "--attention", "eager", "--no-inference", "--out-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert "eager attention" in result["setting"]
    assert [r["timm_fused_attention"] for r in result["rows"]] == [False, False]
    assert all(r["infer_img_s"] is None and r["step_s"] > 0 for r in result["rows"])
