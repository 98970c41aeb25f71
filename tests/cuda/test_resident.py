"""The resident copy of the feature store on the device: every item reads back exactly as the store holds it, in the
store's dtype, on the device, and batches gathered from it reach the network there."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset

from fpt_monai.data import FeatureStore, LoadPreloadedTokensd, ResidentStore, available_memory, resident_store
from fpt_monai.engines import FPTPrepareBatch

from .conftest import is_cuda

pytestmark = pytest.mark.cuda

SHAPE = (2, 3, 4, 8)  # [L, heads, k, head_dim]
POOLED_SHAPE = (6,)
SETTINGS = {"backbone": "vit_tiny_patch16_224", "layers": [10, 11], "k": 4, "normalization": {"mean": [0.5]}}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
IDS = [f"img/{i}.png" for i in range(7)]


def _store(path, dtype: str) -> FeatureStore:
    """Seven items in two shards, with tokens and pooled features."""
    store = FeatureStore.create(path, SETTINGS, SHAPE, dtype)
    g = torch.Generator().manual_seed(0)
    store.write_shard(IDS[:4], torch.randn(4, *SHAPE, generator=g), torch.randn(4, *SHAPE, generator=g))
    store.write_shard(IDS[4:], torch.randn(3, *SHAPE, generator=g), torch.randn(3, *SHAPE, generator=g))
    store.add_field("pooled", POOLED_SHAPE)
    store.write_field_shard("pooled", IDS, torch.randn(7, *POOLED_SHAPE, generator=g))
    return store


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_resident_items_equal_the_store_on_the_device(tmp_path, device, dtype):
    store = _store(tmp_path / "store", dtype)
    before = torch.cuda.memory_allocated(device) if is_cuda(device) else 0
    resident = ResidentStore(store, reversed(IDS), fields=("tokens", "pooled"), device=device, progress=False)
    assert len(resident) == 7 and resident.row_index[IDS[-1]] == 0  # rows in the order asked for
    for name in ("keys", "values", "pooled"):
        tensor = getattr(resident, name)
        assert tensor.device == device and tensor.dtype == DTYPES[dtype], name
    assert resident.keys.shape == resident.values.shape == (7, *SHAPE)
    # keys and values are views of one allocation, not two copies
    assert resident.keys.untyped_storage().data_ptr() == resident.values.untyped_storage().data_ptr()
    assert resident.nbytes == 7 * (store.bytes_per_item + store.field_bytes_per_item("pooled"))
    if is_cuda(device):  # the copy lives in GPU memory
        assert torch.cuda.memory_allocated(device) - before >= resident.nbytes
    for item_id, row in resident.row_index.items():
        keys, values = store.get(item_id)
        assert keys.dtype == DTYPES[dtype]
        assert torch.equal(resident.keys[row].cpu(), keys), item_id
        assert torch.equal(resident.values[row].cpu(), values), item_id
        assert torch.equal(resident.pooled[row].cpu(), store.get_pooled(item_id)), item_id

    rows = torch.tensor([6, 0, 3, 3])  # any order, repeats allowed; row numbers come from the DataLoader on the CPU
    gathered = resident.gather(rows)
    for name, tensor in gathered.items():
        assert tensor.device == device and tensor.dtype == DTYPES[dtype], name
    by_row = {row: item_id for item_id, row in resident.row_index.items()}
    expected = torch.stack([store.get(by_row[int(r)])[0] for r in rows])
    assert torch.equal(gathered["keys"].cpu(), expected)


def test_batches_gathered_on_the_device_equal_batches_read_from_the_store(tmp_path, device):
    store = _store(tmp_path / "store", "float16")
    items = [{"id": item_id, "label": i % 2} for i, item_id in enumerate(IDS)]
    resident = ResidentStore(store, IDS, fields=("tokens", "pooled"), device=device, progress=False)
    fields = ("tokens", "pooled")
    pin = is_cuda(device)
    read = DataLoader(Dataset(items, LoadPreloadedTokensd(store, fields=fields)), batch_size=3, pin_memory=pin)
    rows = DataLoader(
        Dataset(items, LoadPreloadedTokensd(store, fields=fields, resident=resident)), batch_size=3, pin_memory=pin
    )
    prepare, prepare_resident = FPTPrepareBatch(), FPTPrepareBatch(resident=resident)
    batches = 0
    for a, b in zip(read, rows, strict=True):
        assert "keys" not in b and "token_row" in b  # only row numbers travel through the DataLoader
        if pin:  # page-locked batches, copied without blocking the step
            assert b["token_row"].is_pinned() and a["keys"].is_pinned()
        side = torch.zeros(len(b["label"]), 3, 4, 4)
        a["image_side"], b["image_side"] = side, side.pin_memory() if pin else side
        _, ta, _, ka = prepare(a, device=device, non_blocking=pin)
        inputs, tb, _, kb = prepare_resident(b, device=device, non_blocking=pin)
        assert inputs.device == device and tb.device == device and torch.equal(ta, tb)
        for key in ("keys", "values", "pooled"):
            assert kb[key].device == device and kb[key].dtype == torch.float16, key
            assert torch.equal(ka[key], kb[key]), key
        batches += 1
    assert batches == 3


def test_auto_residency_holds_the_store_on_a_gpu_only(tmp_path, device):
    store = _store(tmp_path / "store", "float16")
    items = [{"id": item_id} for item_id in IDS]
    assert available_memory(device) > 0
    copy = resident_store(store, items, fields=("tokens",), device=device, mode="auto")
    if is_cuda(device):  # a few KB fit in half of any GPU's free memory
        assert copy is not None and copy.keys.device == device and copy.pooled is None
    else:  # on a CPU the page cache holds the store
        assert copy is None
    forced = resident_store(store, items, fields=("tokens",), device=device, mode="true")
    assert forced is not None and forced.keys.device == device
