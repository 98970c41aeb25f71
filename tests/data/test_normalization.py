from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fpt_monai.data import DATASET_STATS, backbone_stats, compute_mean_std, resolve_normalization


def test_compute_mean_std_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    items, pixels = [], []
    for i in range(3):
        arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        items.append({"image": str(tmp_path / f"{i}.png")})
        pixels.append(arr.reshape(-1, 3) / 255.0)
    mean, std = compute_mean_std(items, size=16, progress=False)  # same size: no resampling
    all_px = np.concatenate(pixels)
    np.testing.assert_allclose(mean, all_px.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, all_px.std(0), atol=1e-6)


def test_resolve_normalization(tmp_path):
    assert resolve_normalization("isic2016") == DATASET_STATS["isic2016"]
    assert resolve_normalization("DDSM")[0] == (0.20267,) * 3
    assert resolve_normalization("backbone", backbone="vit_base_patch16_384") == ((0.5,) * 3, (0.5,) * 3)
    mean, std = backbone_stats("vit_small_patch14_dinov2")
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    assert resolve_normalization([[0.1, 0.2, 0.3], [1, 1, 1]]) == ((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    Image.fromarray(np.full((8, 8), 51, np.uint8)).save(tmp_path / "a.png")
    mean, std = resolve_normalization("auto", items=[{"image": str(tmp_path / "a.png")}], size=8)
    assert mean == pytest.approx((0.2,) * 3) and std == pytest.approx((0.0,) * 3, abs=1e-6)
    for bad in ("imagenet21k", "auto", "backbone", [[0.1], [0.0]]):
        with pytest.raises(ValueError):
            resolve_normalization(bad)
