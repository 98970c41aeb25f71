from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from fpt_monai.data import CorruptStoreError, FeatureStore, LoadPreloadedTokensd, MissingItemsError, StoreMismatchError

SHAPE = (2, 3, 4, 8)
SETTINGS = {"backbone": "vit_tiny_patch16_224", "layers": [10, 11], "k": 4, "normalization": {"mean": [0.5]}}


def _tokens(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randn(n, *SHAPE, generator=g)


@pytest.mark.parametrize("dtype, tol", [("float32", 0.0), ("float16", 2e-3), ("bfloat16", 1.6e-2)])
def test_round_trip(tmp_path, dtype, tol):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE, dtype)
    keys, values = _tokens(5)
    store.write_shard([f"a/{i}.png" for i in range(3)], keys[:3], values[:3])
    store.write_shard(["b/0.png", "b/1.png"], keys[3:], values[3:])
    reopened = FeatureStore.open(tmp_path / "s", SETTINGS, dtype, SHAPE)
    assert len(reopened) == 5 and "b/1.png" in reopened and reopened.missing(["a/0.png", "zz"]) == ["zz"]
    k, v = reopened.get("b/0.png")
    assert k.dtype == getattr(torch, dtype) and k.shape == SHAPE
    torch.testing.assert_close(k.float(), keys[3], rtol=tol, atol=tol * 4)
    torch.testing.assert_close(v.float(), values[3], rtol=tol, atol=tol * 4)
    assert reopened.bytes_per_item == 2 * int(np.prod(SHAPE)) * (4 if dtype == "float32" else 2)
    reopened.verify()
    assert len(list((tmp_path / "s" / "shards").glob("*.npy"))) == 2  # few files, not one per item


def test_fpt_plus_vit_b_item_size_is_half_the_reference():
    shape = (6, 12, 205, 64)  # FPT+, ViT-B/16 at 512 px
    fp16 = 2 * int(np.prod(shape)) * 2
    assert fp16 == 3_778_560 and fp16 <= 3.8e6 and fp16 * 2 == 7_557_120  # reference: fp32, 7,557,120 B


def test_settings_mismatch_is_explained(tmp_path):
    FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    other = {**SETTINGS, "layers": [6, 7]}
    with pytest.raises(StoreMismatchError, match=r"layers: store has \[10, 11\], asked for \[6, 7\]") as info:
        FeatureStore.open(tmp_path / "s", other)
    assert "Preload into a new directory" in str(info.value)
    with pytest.raises(StoreMismatchError, match="dtype"):
        FeatureStore.open(tmp_path / "s", SETTINGS, dtype="float32")
    with pytest.raises(StoreMismatchError, match="token_shape"):
        FeatureStore.open_or_create(tmp_path / "s", SETTINGS, (2, 3, 5, 8))
    with pytest.raises(FileNotFoundError, match="preload step"):
        FeatureStore.open(tmp_path / "empty")


def test_missing_items_are_named(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    store.write_shard(["x.png"], *_tokens(1))
    with pytest.raises(MissingItemsError, match=r"lacks the tokens of 2 item\(s\): 'y.png', 'z.png'"):
        store.require(["x.png", "y.png", "z.png"])
    with pytest.raises(MissingItemsError, match="'q.png'"):
        store.get("q.png")
    with pytest.raises(ValueError, match="contains stored ones"):
        store.write_shard(["x.png"], *_tokens(1))


def test_truncated_shard_is_detected(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    name = store.write_shard(["a", "b"], *_tokens(2))
    data = tmp_path / "s" / "shards" / f"{name}.npy"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(CorruptStoreError, match=rf"{name}\.npy.*truncated"):
        FeatureStore.open(tmp_path / "s")


def test_flipped_bytes_are_detected(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    name = store.write_shard(["a", "b"], *_tokens(2))
    data = tmp_path / "s" / "shards" / f"{name}.npy"
    raw = bytearray(data.read_bytes())
    raw[-10] ^= 0xFF  # inside item "b"
    data.write_bytes(bytes(raw))
    store = FeatureStore.open(tmp_path / "s")
    store.get("a")  # the intact item still reads
    with pytest.raises(CorruptStoreError, match="'b' fails its CRC32 check"):
        store.get("b")
    with pytest.raises(CorruptStoreError, match="SHA-256 mismatch"):
        store.verify()


def test_interrupted_write_leftovers_are_cleaned(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    store.write_shard(["a"], *_tokens(1))
    shards = tmp_path / "s" / "shards"
    (shards / "r000-000007.npy").write_bytes(b"half a shard")  # data renamed, index never written
    (shards / ".r000-000008.npy.tmp-123").write_bytes(b"temp")
    store = FeatureStore.open_or_create(tmp_path / "s", SETTINGS, SHAPE)
    assert sorted(p.name for p in shards.iterdir()) == ["r000-000000.json", "r000-000000.npy"]
    assert store.ids == ["a"]


def test_transform_in_dataloader_workers(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    keys, values = _tokens(6)
    store.write_shard([str(i) for i in range(6)], keys, values)
    ds = Dataset([{"id": str(i), "label": i % 2} for i in range(6)], transform=LoadPreloadedTokensd(tmp_path / "s"))
    batches = list(DataLoader(ds, batch_size=3, num_workers=2))
    got = torch.cat([b["keys"] for b in batches]).float()
    torch.testing.assert_close(got, keys, rtol=2e-3, atol=8e-3)
    assert batches[0]["values"].shape == (3, *SHAPE)


def test_pooled_field_is_declared_written_and_read(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    store.write_shard(["a.png", "b.png"], *_tokens(2))
    with pytest.raises(MissingItemsError, match=r"holds no pooled features.*--pooled"):
        LoadPreloadedTokensd(store, fields=("tokens", "pooled"))
    store.add_field("pooled", (16,))
    pooled = torch.randn(2, 16)
    name = store.write_field_shard("pooled", ["a.png", "b.png"], pooled)
    assert name.startswith("pooled-") and store.missing(["a.png", "b.png", "c.png"], "pooled") == ["c.png"]
    reopened = FeatureStore.open(tmp_path / "s", SETTINGS)  # the manifest and the shard index record the field
    assert reopened.fields == ("tokens", "pooled") and len(reopened) == 2
    item = LoadPreloadedTokensd(reopened, fields=("tokens", "pooled"))({"id": "b.png"})
    assert torch.allclose(item["pooled"].float(), pooled[1], atol=1e-2)
    assert item["keys"].shape == SHAPE
    assert reopened.field_bytes_per_item("pooled") == 16 * 2  # fp16
    with pytest.raises(StoreMismatchError, match="shape"):
        reopened.add_field("pooled", (8,))
    with pytest.raises(ValueError, match="do not fit"):
        reopened.write_field_shard("pooled", ["c.png"], torch.randn(1, 8))


def _flip_manifest(path, edit):
    manifest = path / "manifest.json"
    manifest.write_bytes(edit(bytearray(manifest.read_bytes())))
    return manifest


@pytest.mark.parametrize(
    "edit, reason",
    [
        # a flipped high bit breaks the UTF-8 (was a bare UnicodeDecodeError without a file name)
        (lambda raw: raw[:5] + bytes([raw[5] ^ 0x80]) + raw[6:], "UnicodeDecodeError"),
        (lambda raw: raw[:-3], "JSONDecodeError"),  # truncated
        (lambda raw: raw.replace(b'"dtype"', b'"dtypo"'), "dtype None is not one of"),
        (lambda raw: raw.replace(b'"token_shape"', b'"token_shapf"'), "token_shape None is not a list"),
        (lambda raw: raw.replace(b'"settings"', b'"settingz"'), "settings is missing"),
        (lambda raw: raw.replace(b'"version": 1', b'"version": 7'), "feature-store version 7"),
        (lambda raw: b"[]", "not an fpt_monai feature-store manifest"),
    ],
)
def test_damaged_manifest_names_the_file_and_the_fix(tmp_path, edit, reason):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    store.write_shard(["a"], *_tokens(1))
    manifest = _flip_manifest(tmp_path / "s", edit)
    for opener in (FeatureStore, FeatureStore.open, lambda p: FeatureStore.open_or_create(p, SETTINGS, SHAPE)):
        with pytest.raises(CorruptStoreError) as info:
            opener(tmp_path / "s")
        text = str(info.value)
        assert text.startswith(f"{manifest}: ") and reason in text, text
        assert f"delete the folder {tmp_path / 's'} and run the preload step again" in text


def test_damaged_manifest_is_our_last_line(tmp_path):
    from fpt_monai.errors import error_line

    FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    manifest = _flip_manifest(tmp_path / "s", lambda raw: raw[:5] + bytes([raw[5] ^ 0x80]) + raw[6:])
    try:
        try:
            FeatureStore.open(tmp_path / "s")
        except CorruptStoreError as err:  # as MONAI wraps errors raised in config expressions
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from err
    except RuntimeError as err:
        line = error_line(err)
    assert line.startswith(f"fpt_monai: error: {manifest}: unreadable feature-store manifest") and "\n" not in line
