"""The resolution sweep (fpt_monai.benchmarks.resolution): every measurement really runs, in processes of its own."""

from __future__ import annotations

import json
import math
import sys

from fpt_monai.benchmarks import resolution, training_cost
from fpt_monai.networks import FPT

TINY = ["--backbone", "vit_tiny_patch16_224", "--batch-size", "1", "--steps", "1", "--warmup", "0", "--device", "cpu"]


def test_sweep_through_the_old_command_reports_every_size(tmp_path, monkeypatch):
    """`scripts/benchmark.py --img-sizes ...` hands over to the sweep; tokens, k and store size follow the network."""
    sizes = [32, 64]
    argv = [*TINY, "--img-sizes", ",".join(map(str, sizes)), "--out-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["scripts/benchmark.py", *argv])
    training_cost.main()

    result = json.loads((tmp_path / "resolution.json").read_text())
    assert set(result) == {"setting", "rows", "full_finetune_stops_fitting_at"}
    setting = result["setting"]
    assert setting["device"] == "cpu" and setting["device_name"] and setting["torch"] and setting["threads"] >= 1
    assert result["full_finetune_stops_fitting_at"] is None
    rows = result["rows"]
    assert [r["img_size"] for r in rows] == sizes
    for r in rows:
        patches = (r["img_size"] // 16) ** 2
        assert r["tokens"] == patches + 1  # the class token counts
        assert r["k"] == int(0.2 * r["tokens"])
        shape = FPT(backbone="vit_tiny_patch16_224", pretrained=False, img_size=r["img_size"], frozen_model=False)
        assert r["store_bytes_per_item"] == 2 * math.prod(shape.token_shape) * 2  # keys + values, fp16
        assert r["full_finetune_status"] == "ok" and r["errors"] is None
        for key in ("preload_peak_mb", "bare_forward_peak_mb", "fpt_plus_peak_mb", "full_finetune_peak_mb"):
            assert r[key] > 0, key
        for key in ("preload_s_per_image", "bare_forward_s_per_image", "fpt_plus_step_s", "full_finetune_step_s"):
            assert r[key] > 0, key
        assert math.isclose(r["preload_vs_bare"], r["bare_forward_s_per_image"] / r["preload_s_per_image"])
        assert math.isclose(r["fpt_plus_train_img_s"], 1 / r["fpt_plus_step_s"])
        assert math.isclose(r["fpt_plus_memory_pct_of_full"], 100 * r["fpt_plus_peak_mb"] / r["full_finetune_peak_mb"])
        # full fine-tuning holds the whole ViT, its gradients and AdamW's two moments (4 x 22 MB for ViT-Ti)
        assert r["full_finetune_peak_mb"] > 4 * 5.5e6 * 4 / 2**20 > r["fpt_plus_peak_mb"]
    assert rows[1]["tokens"] > rows[0]["tokens"] and rows[1]["k"] > rows[0]["k"]
    assert rows[1]["store_bytes_per_item"] > rows[0]["store_bytes_per_item"]

    table = (tmp_path / "resolution.md").read_text()
    assert [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| ") and " px |" in ln] == [
        "32 px",
        "64 px",
    ]
    assert (tmp_path / "resolution.png").read_bytes()[:4] == b"\x89PNG"


def test_full_finetuning_that_does_not_fit_is_reported_and_larger_sizes_skipped(tmp_path):
    """Under a 24 MB address-space budget full fine-tuning of ViT-Ti (22 MB of weights alone) really fails to
    allocate and is reported, FPT+ from stored tokens still trains, and the larger size is not tried."""
    argv = [*TINY, "--img-sizes", "64,32", "--cpu-memory-limit-mb", "24", "--no-progress", "--out-dir", str(tmp_path)]
    result = resolution.main(argv)
    assert result == json.loads((tmp_path / "resolution.json").read_text())
    small, large = result["rows"]  # sorted by size
    assert (small["img_size"], large["img_size"]) == (32, 64)
    assert result["full_finetune_stops_fitting_at"] == 32
    assert small["full_finetune_status"] == "out of memory" and small["full_finetune_peak_mb"] is None
    assert "memory" in small["errors"]["full_finetune"].lower() or "primitive" in small["errors"]["full_finetune"]
    assert large["full_finetune_status"] == "skipped" and "32 px" in large["errors"]["full_finetune"]
    assert small["fpt_plus_status"] == "ok" and small["fpt_plus_peak_mb"] > 0
    assert small["fpt_plus_memory_pct_of_full"] is None
    assert "| out of memory |" in (tmp_path / "resolution.md").read_text()


def test_side_view_is_a_whole_number_of_patches():
    """FPT+'s 128 px side view becomes 126 px for a /14 backbone (the side network takes the frozen model's patch)."""
    assert resolution.side_img_size("vit_small_patch14_dinov2", "fpt_plus") == 126
    assert resolution.side_img_size("vit_tiny_patch16_224", "fpt_plus") == 128
    assert resolution.side_img_size("vit_small_patch14_dinov2", "fpt") == 224
