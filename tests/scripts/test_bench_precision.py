from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import REPO_ROOT


def test_bench_precision_compares_every_precision_with_fp32(tmp_path):
    out = tmp_path / "precision.json"
    cmd = [sys.executable, "scripts/bench_precision.py", "--backbone", "vit_tiny_patch16_224", "--img-size", "64"]
    cmd += ["--num-images", "6", "--batch-size", "3", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "6 images (generated)" in result["setting"]
    fp32, bf16 = result["results"]["fp32"], result["results"]["bf16"]
    assert fp32["extract_img_s"] > 0 and fp32["bare_img_s"] > 0 and "identical_sets" not in fp32
    assert 0.0 <= bf16["identical_sets"] <= bf16["mean_set_overlap"] <= 1.0
    assert bf16["extract_speedup_vs_fp32"] > 0
    assert "| bf16 |" in proc.stdout
