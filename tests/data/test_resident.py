"""A resident copy of the feature store: the items' tokens on the training device, gathered per batch by row."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.data import DataLoader, Dataset

from fpt_monai.data import (
    FeatureStore,
    LoadPreloadedTokensd,
    MissingItemsError,
    ResidentStore,
    choose_residency,
    resident_store,
)
from fpt_monai.engines import FPTPrepareBatch

SHAPE = (2, 3, 4, 8)
SETTINGS = {"backbone": "vit_tiny_patch16_224", "layers": [10, 11], "k": 4, "normalization": {"mean": [0.5]}}


@pytest.fixture
def store(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE, "float16")
    g = torch.Generator().manual_seed(0)
    ids = [f"img/{i}.png" for i in range(7)]
    store.write_shard(ids[:4], torch.randn(4, *SHAPE, generator=g), torch.randn(4, *SHAPE, generator=g))
    store.write_shard(ids[4:], torch.randn(3, *SHAPE, generator=g), torch.randn(3, *SHAPE, generator=g))
    store.add_field("pooled", (6,))
    store.write_field_shard("pooled", ids, torch.randn(7, 6, generator=g))
    return store


def _items(n=7):
    return [{"id": f"img/{i}.png", "label": i % 2} for i in range(n)]


def test_batches_from_the_resident_copy_equal_batches_read_from_the_store(store):
    resident = ResidentStore(store, [i["id"] for i in _items()], fields=("tokens", "pooled"), progress=False)
    assert len(resident) == 7 and resident.keys.shape == (7, *SHAPE) and resident.keys.dtype == torch.float16
    assert resident.nbytes == 7 * (store.bytes_per_item + store.field_bytes_per_item("pooled"))
    fields = ("tokens", "pooled")
    read = DataLoader(Dataset(_items(), LoadPreloadedTokensd(store, fields=fields)), batch_size=3, num_workers=0)
    rows = DataLoader(
        Dataset(_items(), LoadPreloadedTokensd(store, fields=fields, resident=resident)), batch_size=3, num_workers=2
    )  # workers: only the id -> row table travels to them
    prepare, prepare_resident = FPTPrepareBatch(), FPTPrepareBatch(resident=resident)
    for a, b in zip(read, rows, strict=True):
        assert "keys" not in b and b["token_row"].dtype == torch.int64
        a["image_side"] = b["image_side"] = torch.zeros(len(b["label"]), 3, 4, 4)
        _, ta, _, ka = prepare(a, device="cpu")
        _, tb, _, kb = prepare_resident(b, device="cpu")
        assert torch.equal(ta, tb)
        for key in ("keys", "values", "pooled"):
            assert torch.equal(ka[key], kb[key]), key


def test_linear_probe_batches_gather_the_pooled_features(store):
    resident = ResidentStore(store, [i["id"] for i in _items()], fields=("pooled",), progress=False)
    assert resident.keys is None
    item = LoadPreloadedTokensd(store, fields=("pooled",), resident=resident)({"id": "img/5.png", "label": 1})
    batch = {"token_row": torch.tensor([item["token_row"]]), "label": torch.tensor([1])}
    pooled, _, _, kwargs = FPTPrepareBatch(resident=resident)(batch, device="cpu")
    assert torch.equal(pooled[0], store.get_pooled("img/5.png")) and kwargs["pooled"] is pooled


def test_auto_holds_on_a_gpu_what_fits_and_never_copies_on_a_cpu():
    gb = 10**9
    assert choose_residency(4 * gb, 10 * gb, "cuda:0", "auto")[0] is True
    held, why = choose_residency(6 * gb, 10 * gb, "cuda:0", "auto")
    assert held is False and "50% of the free GPU memory" in why  # the other half is for training
    held, why = choose_residency(1, 10 * gb, "cpu", "auto")
    assert held is False and "page cache" in why
    assert choose_residency(9 * gb, 10 * gb, "cpu", "true")[0] is True
    assert choose_residency(1, 10 * gb, "cuda:0", "false")[0] is False
    with pytest.raises(MemoryError, match="Set resident_store auto or false"):
        choose_residency(11 * gb, 10 * gb, "cuda:0", "true")
    with pytest.raises(ValueError, match="resident_store must be one of"):
        choose_residency(1, 1, "cpu", "gpu")


def test_resident_store_logs_its_choice(store, caplog):
    items = _items()
    with caplog.at_level(logging.INFO, logger="fpt_monai.data.resident"):
        assert resident_store(store, items, device="cpu", mode="auto") is None
        assert "read per batch: on a CPU the page cache" in caplog.text
        copy = resident_store(store, items, device="cpu", mode="true")
        assert copy is not None and len(copy) == 7 and "resident on cpu: 7 items" in caplog.text
    assert resident_store(None, items, mode="true") is None  # online mode: no store
    with pytest.raises(MemoryError, match=f"^{store.path}: a resident copy"):
        resident_store(store, items, device="cpu", mode="true", free_bytes=1)
    with pytest.raises(ValueError, match="resident_store must be one of"):
        resident_store(None, items, mode="yes please")


def test_missing_items_and_fields_are_named(store):
    with pytest.raises(MissingItemsError, match="'img/9.png'"):
        ResidentStore(store, ["img/0.png", "img/9.png"], progress=False)
    resident = ResidentStore(store, ["img/0.png"], progress=False)
    with pytest.raises(MissingItemsError, match="'img/3.png' is not in the resident copy"):
        LoadPreloadedTokensd(store, resident=resident)({"id": "img/3.png"})
    with pytest.raises(ValueError, match="holds \\('tokens',\\), not \\['pooled'\\]"):
        LoadPreloadedTokensd(store, fields=("tokens", "pooled"), resident=resident)
    with pytest.raises(KeyError, match="no resident store was given"):
        FPTPrepareBatch()({"token_row": torch.tensor([0]), "image_side": torch.zeros(1, 3, 4, 4)})
    with pytest.raises(TypeError, match="stays in the training process"):
        __import__("pickle").dumps(resident)
