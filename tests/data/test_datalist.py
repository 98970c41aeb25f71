from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fpt_monai.data import (
    check_datalist,
    datalist_from_csv,
    datalist_from_image_folder,
    datalist_from_json,
    datalist_from_medmnist,
    write_datalist,
)

from ..conftest import SHARED_DIR


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    return path


def _tree(root):
    # stems collide across classes and splits, and between formats: the reference's preload keys would clash
    for rel in [
        "train/benign/001.png",
        "train/malignant/001.png",
        "train/benign/x.png",
        "train/benign/x.jpg",
        "val/benign/002.png",
        "val/malignant/001.png",
        "test/malignant/001.png",
        "test/benign/001.png",
    ]:
        _png(root / rel)
    (root / "train" / "benign" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "benign" / "notes.txt").write_text("not an image")


def test_image_folder_ids_are_unique_relative_paths(tmp_path):
    _tree(tmp_path)
    dl = datalist_from_image_folder(tmp_path)
    assert dl["classes"] == ["benign", "malignant"]
    ids = [it["id"] for s in ("training", "validation", "test") for it in dl[s]]
    assert len(ids) == len(set(ids)) == 8
    assert "train/benign/x.png" in ids and "train/benign/x.jpg" in ids and "test/malignant/001.png" in ids
    labels = {it["id"]: it["label"] for s in ("training", "validation", "test") for it in dl[s]}
    assert labels["train/malignant/001.png"] == 1 and labels["val/benign/002.png"] == 0


def test_image_folder_class_order_is_global(tmp_path):
    _png(tmp_path / "train" / "b" / "1.png")
    _png(tmp_path / "train" / "c" / "1.png")
    _png(tmp_path / "test" / "c" / "1.png")  # test has no class 'b': 'c' must still be 1
    dl = datalist_from_image_folder(tmp_path)
    assert dl["test"][0]["label"] == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="split folders"):
        datalist_from_image_folder(tmp_path)
    _png(tmp_path / "train" / "loose.png")
    with pytest.raises(ValueError, match=r"loose\.png: image directly in a split folder"):
        datalist_from_image_folder(tmp_path)


def test_csv_with_names_splits_and_path_format(tmp_path):
    for i in range(4):
        _png(tmp_path / "images" / f"ISIC_{i}.png")
    (tmp_path / "labels.csv").write_text(
        "isic_id,diagnosis,split\nISIC_0,benign,train\nISIC_1,malignant,train\nISIC_2,benign,val\nISIC_3,malignant,test\n"
    )
    dl = datalist_from_csv(
        tmp_path / "labels.csv", path_column="isic_id", label_column="diagnosis", path_format="images/{}.png"
    )
    assert dl["classes"] == ["benign", "malignant"]
    assert [it["label"] for it in dl["training"]] == [0, 1] and dl["test"][0]["id"] == "images/ISIC_3.png"


def test_csv_errors(tmp_path):
    (tmp_path / "a.csv").write_text("path,label\nx.png,0\nx.png,1\n")
    with pytest.raises(ValueError, match="lines 2 and 3"):
        datalist_from_csv(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("path,label\nx.png,0\ny.png,5\n")
    dl = datalist_from_csv(tmp_path / "b.csv")  # no split column: all training
    assert len(dl["training"]) == 2
    with pytest.raises(ValueError, match=r"y\.png: label 5 is out of range for num_classes=2"):
        check_datalist(dl, num_classes=2)
    (tmp_path / "c.csv").write_text("file,label\nx.png,0\n")
    with pytest.raises(ValueError, match="no column 'path'"):
        datalist_from_csv(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("path,label,split\nx.png,0,holdout\n")
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        datalist_from_csv(tmp_path / "d.csv")


def test_json_round_trip(tmp_path):
    _tree(tmp_path / "data")
    dl = datalist_from_image_folder(tmp_path / "data")
    path = write_datalist(dl, tmp_path / "data" / "datalist.json")
    stored = json.loads(path.read_text())
    assert not stored["training"][0]["image"].startswith("/")  # relative to the JSON: the folder can move
    assert datalist_from_json(path) == dl
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    assert datalist_from_json(moved / "datalist.json")["training"][0]["image"].startswith(str(moved.resolve()))


def test_json_plain_monai_datalist(tmp_path):
    (tmp_path / "dl.json").write_text(
        json.dumps({"training": [{"image": "a/1.png", "label": 0}], "validation": [{"image": "b/1.png", "label": 1}]})
    )
    dl = datalist_from_json(tmp_path / "dl.json")
    assert dl["training"][0]["id"] == "a/1.png" and dl["test"] == []
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        datalist_from_json(tmp_path / "bad.json")
    (tmp_path / "dup.json").write_text(
        json.dumps({"training": [{"image": "a.png", "label": 0, "id": "x"}, {"image": "b.png", "label": 0, "id": "x"}]})
    )
    with pytest.raises(ValueError, match="duplicate item id 'x'"):
        datalist_from_json(tmp_path / "dup.json")


def test_medmnist_npz_generated(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    dl = datalist_from_medmnist(tmp_path / "breastmnist.npz", tmp_path / "png")
    assert [len(dl[s]) for s in ("training", "validation", "test")] == [6, 2, 3]
    assert dl["classes"] == ["malignant", "normal, benign"]
    first = dl["training"][0]
    assert np.array_equal(np.asarray(Image.open(first["image"])), arrays["train_images"][0])
    assert first["label"] == int(arrays["train_labels"][0, 0]) and first["id"] == "train/000000.png"
    arrays["train_labels"] = rng.integers(0, 2, (6, 14), dtype=np.uint8)
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(ValueError, match="multi-label"):
        datalist_from_medmnist(tmp_path / "chestmnist.npz", tmp_path / "png2")


@pytest.mark.parametrize("flag, counts", [("breastmnist", (546, 78, 156)), ("pneumoniamnist", (4708, 524, 624))])
def test_medmnist_official_files(tmp_path, flag, counts):
    npz = SHARED_DIR / "data" / "medmnist" / f"{flag}.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} not found (../shared is absent)")
    dl = datalist_from_medmnist(npz, tmp_path)
    assert tuple(len(dl[s]) for s in ("training", "validation", "test")) == counts
    assert {it["label"] for it in dl["training"]} == {0, 1}


def test_isic_csv_from_shared():
    csv_path = SHARED_DIR / "data" / "isic_uda1" / "labels.csv"
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} not found (../shared is absent)")
    dl = datalist_from_csv(
        csv_path,
        path_column="isic_id",
        label_column="label",
        path_format="images/{}.jpg",
        class_names=["benign", "malignant"],
    )
    assert tuple(len(dl[s]) for s in ("training", "validation", "test")) == (334, 112, 111)
    assert all(__import__("os").path.isfile(it["image"]) for it in dl["test"])
