"""Preload on the device in each compute precision of the frozen model (fp32, bf16, fp16 autocast) and each store
dtype: the stored tokens are the extractor's on that device, in the store's dtype, and the selected tokens agree with
fp32's."""

from __future__ import annotations

import json

import pytest
import torch

from fpt_monai.data import datalist_from_json, preload
from fpt_monai.networks import FrozenViTExtractor
from fpt_monai.transforms import fpt_transforms

from .conftest import is_cuda, relative_error

pytestmark = pytest.mark.cuda

MEAN, STD = (0.4, 0.4, 0.4), (0.25, 0.25, 0.25)
IMG_SIZE = 64
# each precision with the store dtype that belongs to it (every store dtype is covered once)
CASES = [("fp32", "float32", None), ("bf16", "bfloat16", torch.bfloat16), ("fp16", "float16", torch.float16)]
# fraction of the selected token indices shared with fp32 (per image, layer and head). Random weights make flat
# attention maps where near-ties flip: measured 0.995 for bf16 and fp16 on a CPU (17 tokens, 3 kept, blocks 6-11)
MIN_AGREEMENT = 0.9
# relative error of the stored keys against fp32's where the same tokens were selected in the same order: the
# compute precision's rounding through up to 12 blocks, then the store dtype's
KEY_TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2}  # bf16 on a CPU: 5.6e-3


@pytest.fixture(scope="module")
def images(tiny_bundle_data):
    """The tiny dataset's items and their frozen-model views ``[N, 3, 64, 64]`` (the preload's own transform)."""
    data_dir, weights = tiny_bundle_data
    datalist = datalist_from_json(data_dir / "datalist.json")
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    view = fpt_transforms("inference", False, IMG_SIZE, mean=MEAN, std=STD)
    return items, torch.stack([view({"image": item["image"]})["image"].as_tensor() for item in items]), weights


def _extractor(weights) -> FrozenViTExtractor:
    return FrozenViTExtractor("vit_tiny_patch16_224", pretrained=str(weights), img_size=IMG_SIZE, layers="6-11")


@pytest.mark.parametrize("precision, store_dtype, autocast_dtype", CASES, ids=[c[0] for c in CASES])
def test_preload_in_each_precision_on_the_device(tmp_path, device, images, precision, store_dtype, autocast_dtype):
    items, x, weights = images
    ext = _extractor(weights).to(device)
    x = x.to(device)
    with torch.inference_mode():
        ref_keys, _, ref_idx = ext.select(x)  # fp32
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            keys, values, idx = ext.select(x)
    assert keys.device == device and idx.shape == ref_idx.shape
    assert keys.dtype == (autocast_dtype or torch.float32)  # the frozen model computed in that precision
    # the importance stays fp32 in every precision: nearly the same tokens are selected
    shared = (idx.unsqueeze(-1) == ref_idx.unsqueeze(-2)).any(-1).float().mean().item()
    assert shared >= MIN_AGREEMENT, f"{precision}: {shared:.3f} of the selected tokens agree with fp32"
    if precision == "fp32":
        assert shared == 1.0

    store_dir = tmp_path / precision
    if precision == "fp16" and not is_cuda(device):  # CPU autocast computes in bf16: the preload refuses fp16
        with pytest.raises(ValueError, match="fp16' needs a GPU"):
            preload(items, ext, store_dir, MEAN, STD, dtype=store_dtype, device=device, precision=precision)
        return
    store = preload(
        items,
        ext,
        store_dir,
        MEAN,
        STD,
        dtype=store_dtype,
        batch_size=len(items),  # the batch above: the same kernels, so the same near-ties broken the same way
        device=device,
        progress=False,
        precision=precision,
    ).store
    assert len(store) == len(items) and store.dtype == store_dtype
    settings = json.loads((store_dir / "manifest.json").read_text())["settings"]
    assert settings.get("precision", "fp32") == precision
    stored_keys = torch.stack([store.get(item["id"])[0] for item in items])
    stored_values = torch.stack([store.get(item["id"])[1] for item in items])
    assert stored_keys.dtype == getattr(torch, store_dtype) and stored_keys.shape == keys.shape
    # what the store holds is the extractor's output on this device in that precision, rounded to the store dtype
    torch.testing.assert_close(stored_keys, keys.cpu().to(stored_keys.dtype), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(stored_values, values.cpu().to(stored_values.dtype), rtol=1e-3, atol=1e-3)
    same = (idx == ref_idx).all(-1)  # [N, L, heads]: the same tokens in the same order as fp32
    assert same.float().mean() >= MIN_AGREEMENT
    # ... and close to fp32's tokens wherever the same ones were selected
    assert relative_error(stored_keys.float()[same], ref_keys.cpu()[same]) < KEY_TOLERANCE[precision]
