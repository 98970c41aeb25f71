from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from fpt_monai.data import CorruptStoreError, FeatureStore, LoadPreloadedTokensd, MissingItemsError, StoreMismatchError
from fpt_monai.data.feature_store import UnknownFilesError

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
    committed = store.write_shard(["a"], *_tokens(1))
    shards = tmp_path / "s" / "shards"
    # data renamed, index never written: a writer's own name, and a name from before the writer token
    (shards / "r001-0123456789ab-000003.npy").write_bytes(b"half a shard")
    (shards / "pooled-r000-0123456789ab-000000.npy").write_bytes(b"half a shard")
    (shards / "r000-000007.npy").write_bytes(b"half a shard")
    (shards / ".r000-0123456789ab-000004.npy.tmp-123").write_bytes(b"temp")  # fpt_monai.utils.atomic's temporary files
    (shards / ".r000-0123456789ab-000004.json.tmp-123").write_bytes(b"temp")
    (tmp_path / "s" / ".manifest.json.tmp-99").write_bytes(b"temp")
    store = FeatureStore.open_or_create(tmp_path / "s", SETTINGS, SHAPE)
    assert sorted(p.name for p in shards.iterdir()) == [f"{committed}.json", f"{committed}.npy"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".lock", "manifest.json", "shards"]
    assert store.ids == ["a"]


def _refused(opener, folder, *names):
    with pytest.raises(UnknownFilesError) as info:
        opener(folder)
    text = str(info.value)
    assert text.startswith(f"{folder}: holds {len(names)} file(s) that no feature store writes"), text
    assert all(name in text for name in names), text
    assert "new --store_dir" in text and "move these files away" in text
    return text


OPENERS = {
    "open_or_create": lambda p: FeatureStore.open_or_create(p, SETTINGS, SHAPE),
    "create": lambda p: FeatureStore.create(p, SETTINGS, SHAPE),
}


@pytest.mark.parametrize("opener", OPENERS)
def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path, opener):
    # issue 19: a record's store_dir pointing at another folder made evaluation delete these two files
    folder = tmp_path / "other"
    (folder / "shards").mkdir(parents=True)
    (folder / "shards" / "keep_me.npy").write_bytes(b"precious")
    (folder / "shards" / ".keep_me_hidden").write_bytes(b"precious too")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    _refused(OPENERS[opener], folder, "shards/keep_me.npy", "shards/.keep_me_hidden")
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # no lock file, no manifest either
    # any other non-empty folder is not a store either; an empty or missing one becomes one
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    _refused(OPENERS[opener], tmp_path / "notes", "notes.txt")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert len(OPENERS[opener](tmp_path / "empty")) == 0
    assert len(OPENERS[opener](tmp_path / "new" / "store")) == 0


def test_unknown_files_in_a_store_are_refused_and_kept(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    name = store.write_shard(["a"], *_tokens(1))
    shards = tmp_path / "s" / "shards"
    foreign = {
        "shards/keep_me.npy": b"x",
        "shards/.keep_me_hidden": b"x",
        "shards/scan-000001.npy": b"x",  # looks like a shard, but no writer of ours names one so
        "shards/r000-000001.txt": b"x",
        "README.md": b"x",
    }
    for rel, data in foreign.items():
        (tmp_path / "s" / rel).write_bytes(data)
    (shards / "elsewhere").symlink_to(tmp_path)  # a link is never followed, nor removed
    _refused(OPENERS["open_or_create"], tmp_path / "s", *foreign, "shards/elsewhere")
    assert all((tmp_path / "s" / rel).exists() for rel in foreign) and (shards / "elsewhere").is_symlink()
    assert FeatureStore.open(tmp_path / "s").ids == ["a"]  # reading deletes nothing and needs no clean folder
    assert (shards / f"{name}.npy").is_file()
    with pytest.raises(UnknownFilesError, match="not a folder"):
        FeatureStore.open_or_create(tmp_path / "s" / "README.md", SETTINGS, SHAPE)


def test_shards_without_a_manifest_are_refused_not_adopted(tmp_path):
    # issue 19: a deleted manifest.json was written anew and the old shards adopted without a word
    store = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    name = store.write_shard(["a"], *_tokens(1))
    (tmp_path / "s" / "manifest.json").unlink()
    for opener in OPENERS.values():
        with pytest.raises(CorruptStoreError) as info:
            opener(tmp_path / "s")
        text = str(info.value)
        assert text.startswith(f"{tmp_path / 's'}: holds feature-store shards ({name}") and "no manifest.json" in text
        assert f"Delete the folder {tmp_path / 's'} and run the preload step again" in text
    assert not (tmp_path / "s" / "manifest.json").exists() and (tmp_path / "s" / "shards" / f"{name}.npy").exists()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        FeatureStore.open(tmp_path / "s")


def test_two_writers_of_one_store_keep_every_item_once(tmp_path):
    first = FeatureStore.create(tmp_path / "s", SETTINGS, SHAPE)
    second = FeatureStore.open_or_create(tmp_path / "s", SETTINGS, SHAPE)  # opened before either commits
    third = FeatureStore.open_or_create(tmp_path / "s", SETTINGS, SHAPE)
    reader = FeatureStore.open(tmp_path / "s")
    keys, values = _tokens(5)
    a = first.write_shard(["0", "1"], keys[:2], values[:2])
    # same prefix, another writer: another name; the item the other writer committed meanwhile is left out
    b = second.write_shard(["1", "2", "3"], keys[1:4], values[1:4])
    assert a != b and a.startswith("r000-") and b.startswith("r000-")
    assert json.loads((tmp_path / "s" / "shards" / f"{b}.json").read_text())["ids"] == ["2", "3"]
    assert third.write_shard(["0"], keys[:1], values[:1]) is None  # all of them stored already: no shard
    first.write_shard(["4"], keys[4:], values[4:])
    assert sorted(first.ids) == ["0", "1", "2", "3", "4"]  # committing re-read what the others committed
    torch.testing.assert_close(first.get("3")[0].float(), keys[3], rtol=2e-3, atol=8e-3)
    assert len(reader) == 0 and reader.missing(["0"]) == ["0"]  # a reader keeps its snapshot and keeps working
    store = FeatureStore.open(tmp_path / "s")
    assert sorted(store.ids) == ["0", "1", "2", "3", "4"]
    store.verify()
    # a field declared by one writer is seen by the other when it commits
    first.add_field("pooled", (16,))
    second.write_field_shard("pooled", ["0"], torch.randn(1, 16))
    assert (
        second.fields == ("tokens", "pooled") and first.write_field_shard("pooled", ["0"], torch.randn(1, 16)) is None
    )
    with pytest.raises(ValueError, match="shard prefix"):
        first.write_shard(["9"], keys[:1], values[:1], prefix="../x")


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
    from fpt_monai.utils.errors import error_line

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
