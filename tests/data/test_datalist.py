from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from fpt_monai.data import (
    DatalistError,
    check_datalist,
    datalist_from_csv,
    datalist_from_image_folder,
    datalist_from_json,
    datalist_from_medmnist,
    datalist_num_classes,
    make_splits,
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
    with pytest.raises(DatalistError, match="no class folders"):
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
    assert dl["classes"] == ["0", "1", "2", "3", "4", "5"]  # integer labels: classes named by their index
    with pytest.raises(ValueError, match=r"y\.png: label 5 is out of range for num_classes=2"):
        check_datalist({k: v for k, v in dl.items() if k != "classes"}, num_classes=2)
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


# ------------------------------------------------------------------------------------------------ make_splits
SPLIT_NAMES = ("training", "validation", "test")


def _items(counts, patients=None):
    """Items with ``counts[label]`` images per label; ``patients``: the number of images per patient, cycled."""
    items, patient, left = [], 0, 0
    for label, n in enumerate(counts):
        for i in range(n):
            item = {"image": f"/x/{label}/{i}.png", "label": label, "id": f"{label}/{i:03d}.png"}
            if patients is not None:
                if left == 0:
                    patient, left = patient + 1, patients[patient % len(patients)]
                item["patient"] = f"P{patient:03d}"
                left -= 1
            items.append(item)
    return items


def _ids(datalist, split):
    return [item["id"] for item in datalist[split]]


@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.7, 0.15, 0.15), (0.8, 0.2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_make_splits_stratified_within_one_item(fractions, seed):
    counts = (23, 11, 7)
    items = _items(counts)
    dl = make_splits(items, fractions, seed=seed)
    assert sorted(i for s in SPLIT_NAMES for i in _ids(dl, s)) == sorted(i["id"] for i in items)  # each once
    for split, fraction in zip(SPLIT_NAMES, fractions, strict=False):
        per_class = Counter(item["label"] for item in dl[split])
        for label, n in enumerate(counts):
            assert abs(per_class[label] - fraction * n) <= 1, (split, label, per_class[label], fraction * n)
    if len(fractions) == 2:
        assert dl["test"] == []
    assert all(_ids(dl, s) == sorted(_ids(dl, s)) for s in SPLIT_NAMES)


def test_make_splits_is_deterministic_order_independent_and_seeded():
    items = _items((20, 12, 9))
    first = make_splits(items, seed=0, class_names=["a", "b", "c"])
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert make_splits(shuffled, seed=0, class_names=["a", "b", "c"]) == first
    assert first["classes"] == ["a", "b", "c"]
    other = make_splits(items, seed=1, class_names=["a", "b", "c"])
    assert _ids(other, "training") != _ids(first, "training")
    assert [len(other[s]) for s in SPLIT_NAMES] == [len(first[s]) for s in SPLIT_NAMES]  # same counts, other items
    first["training"][0]["label"] = 99  # the result holds copies
    assert all(item["label"] != 99 for item in items)


@pytest.mark.parametrize("seed", range(5))
def test_make_splits_grouped_never_shares_a_patient(seed):
    items = _items((40, 30, 14), patients=(1, 3, 2, 4, 1, 2))
    rng = random.Random(seed)
    for item in items[::5]:  # patients whose images have different labels
        item["label"] = rng.randrange(3)
    dl = make_splits(items, (0.6, 0.2, 0.2), seed=seed)
    where = {}
    for split in SPLIT_NAMES:
        for item in dl[split]:
            assert where.setdefault(item["patient"], split) == split, f"patient {item['patient']} in two splits"
        assert {item["label"] for item in dl[split]} == {0, 1, 2}
    assert sorted(i for s in SPLIT_NAMES for i in _ids(dl, s)) == sorted(i["id"] for i in items)
    n = len(items)
    for split, fraction in zip(SPLIT_NAMES, (0.6, 0.2, 0.2), strict=True):
        assert abs(len(dl[split]) - fraction * n) <= 4, (split, len(dl[split]), fraction * n)  # patients of <= 4


def test_make_splits_groups_change_the_split():
    items = _items((30, 30), patients=(3,))
    grouped = make_splits(items, seed=0)
    ungrouped = make_splits(items, seed=0, group_key=None)
    patients = [{i["patient"] for i in ungrouped[s]} for s in SPLIT_NAMES]
    assert patients[0] & (patients[1] | patients[2])  # image by image, patients straddle splits here
    grouped_patients = [{i["patient"] for i in grouped[s]} for s in SPLIT_NAMES]
    assert not grouped_patients[0] & grouped_patients[1] and not grouped_patients[0] & grouped_patients[2]


@pytest.mark.parametrize("patients", [None, (1,)])
def test_make_splits_puts_every_class_in_every_split(patients):
    # 3 images of class 1 at 90/5/5: rounding alone gives 3/0/0
    dl = make_splits(_items((40, 3), patients=patients), (0.9, 0.05, 0.05), seed=0)
    assert [Counter(i["label"] for i in dl[s])[1] for s in SPLIT_NAMES] == [1, 1, 1]


def test_make_splits_errors():
    with pytest.raises(DatalistError, match=r"class 'rare' has 2 images: too few .* 3 splits.*--split 0\.8,0\.2"):
        make_splits(_items((10, 2)), class_names=["common", "rare"])
    make_splits(_items((10, 2)), (0.5, 0.5))  # two splits: two images are enough
    with pytest.raises(DatalistError, match=r"label 1 has 4 images of 2 patients: too few"):
        make_splits(_items((10, 4), patients=(2,)))
    with pytest.raises(DatalistError, match=r"class 'c' has 0 images"):
        make_splits(_items((10, 10)), class_names=["a", "b", "c"])
    with pytest.raises(DatalistError, match="at least two classes"):
        make_splits(_items((10,)))
    with pytest.raises(DatalistError, match=r"sum to 0\.9, not 1"):
        make_splits(_items((10, 10)), (0.6, 0.2, 0.1))
    with pytest.raises(DatalistError, match="between 0 and 1"):
        make_splits(_items((10, 10)), (1.0, 0.0))
    with pytest.raises(DatalistError, match="4 split fractions"):
        make_splits(_items((10, 10)), (0.25, 0.25, 0.25, 0.25))
    mixed = _items((10, 10), patients=(2,))
    del mixed[3]["patient"]
    with pytest.raises(DatalistError, match=r"item '0/003\.png' has no 'patient' while others have one"):
        make_splits(mixed)
    with pytest.raises(DatalistError, match=r"duplicate item id '0/000\.png'"):
        make_splits(_items((10, 10)) + _items((1,)))
    with pytest.raises(DatalistError, match="no items"):
        make_splits([])
    # 0.333 three times is 1 within the tolerance
    assert sum(len(v) for k, v in make_splits(_items((9, 9)), (0.333, 0.333, 0.333)).items()) == 18


def _class_tree(root, counts=(("benign", 10), ("malignant", 6), ("normal", 5))):
    for name, n in counts:
        for i in range(n):
            _png(root / name / f"{i:03d}.png")
    _png(root / "benign" / "sub" / "nested.png")  # sub-folders of a class folder belong to it
    (root / "benign" / "notes.txt").write_text("not an image")


def test_image_folder_without_split_folders(tmp_path):
    _class_tree(tmp_path)
    with pytest.raises(DatalistError, match=r"without train/ val/ test/ split folders; pass split_fractions"):
        datalist_from_image_folder(tmp_path)
    dl = datalist_from_image_folder(tmp_path, split_fractions=(0.6, 0.2, 0.2), seed=0)
    assert dl["classes"] == ["benign", "malignant", "normal"]
    ids = [i for s in SPLIT_NAMES for i in _ids(dl, s)]
    assert len(ids) == len(set(ids)) == 22 and "benign/sub/nested.png" in ids and "malignant/005.png" in ids
    labels = {it["id"]: it["label"] for s in SPLIT_NAMES for it in dl[s]}
    assert labels["malignant/000.png"] == 1 and labels["normal/004.png"] == 2
    assert all({it["label"] for it in dl[s]} == {0, 1, 2} for s in SPLIT_NAMES)
    assert [len(dl[s]) for s in SPLIT_NAMES] == [14, 4, 4]  # the nearest counts: 11 -> 7/2/2, 6 -> 4/1/1, 5 -> 3/1/1
    assert datalist_from_image_folder(tmp_path, split_fractions=(0.6, 0.2, 0.2), seed=0) == dl
    ordered = datalist_from_image_folder(tmp_path, ["normal", "malignant", "benign"], split_fractions=(0.8, 0.2))
    assert ordered["test"] == [] and {it["label"] for it in ordered["training"] if it["id"].startswith("normal/")} == {
        0
    }


def test_image_folder_with_split_folders_keeps_its_splits(tmp_path):
    _tree(tmp_path)
    dl = datalist_from_image_folder(tmp_path)
    assert sorted(_ids(dl, "validation")) == ["val/benign/002.png", "val/malignant/001.png"]
    assert sorted(_ids(dl, "test")) == ["test/benign/001.png", "test/malignant/001.png"]
    with pytest.raises(DatalistError, match=r"has split folders \['test', 'train', 'val'\], whose splits are kept"):
        datalist_from_image_folder(tmp_path, split_fractions=(0.6, 0.2, 0.2))


def test_image_folder_layout_errors(tmp_path):
    _png(tmp_path / "mixed" / "train" / "a" / "1.png")
    _png(tmp_path / "mixed" / "b" / "1.png")
    with pytest.raises(DatalistError, match=r"split folders \['train'\] beside other folders \['b'\]"):
        datalist_from_image_folder(tmp_path / "mixed", split_fractions=(0.6, 0.2, 0.2))
    _png(tmp_path / "one" / "images" / "a" / "1.png")
    with pytest.raises(DatalistError, match=r"one class folder 'images'.*one level down"):
        datalist_from_image_folder(tmp_path / "one", split_fractions=(0.6, 0.2, 0.2))
    _class_tree(tmp_path / "loose")
    _png(tmp_path / "loose" / "stray.png")
    with pytest.raises(DatalistError, match=r"images directly in the dataset folder \(stray\.png\)"):
        datalist_from_image_folder(tmp_path / "loose", split_fractions=(0.6, 0.2, 0.2))
    _class_tree(tmp_path / "small", (("a", 10), ("b", 2)))
    with pytest.raises(DatalistError, match=r"class 'b' has 2 images"):
        datalist_from_image_folder(tmp_path / "small", split_fractions=(0.6, 0.2, 0.2))


def _patient_csv(path, n_patients=24, split=None):
    lines = ["file,diagnosis,patient_id" + (",split" if split else "")]
    for p in range(n_patients):
        for k in range(1 + p % 3):
            row = f"p{p:02d}_{k}.png,{'malignant' if p % 2 else 'benign'},P{p:02d}"
            lines.append(row + (f",{split(p, k)}" if split else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_with_patient_column_is_split_by_patient(tmp_path):
    csv_path = _patient_csv(tmp_path / "labels.csv")
    kwargs = {"path_column": "file", "label_column": "diagnosis", "group_column": "patient_id"}
    dl = datalist_from_csv(csv_path, split_fractions=(0.6, 0.2, 0.2), seed=0, **kwargs)
    assert dl["classes"] == ["benign", "malignant"]
    patients = [{it["patient"] for it in dl[s]} for s in SPLIT_NAMES]
    assert sum(len(p) for p in patients) == len(set().union(*patients)) == 24  # no patient in two splits
    assert all({it["label"] for it in dl[s]} == {0, 1} for s in SPLIT_NAMES)
    item = next(it for s in SPLIT_NAMES for it in dl[s] if it["id"] == "p05_2.png")
    assert item["patient"] == "P05" and item["label"] == 1
    assert datalist_from_csv(csv_path, split_fractions=(0.6, 0.2, 0.2), seed=0, **kwargs) == dl
    without = datalist_from_csv(csv_path, path_column="file", label_column="diagnosis")  # old behaviour
    assert len(without["training"]) == 48 and "patient" not in without["training"][0]


def test_csv_patient_column_errors(tmp_path):
    kwargs = {"path_column": "file", "label_column": "diagnosis", "group_column": "patient_id"}
    leak = _patient_csv(tmp_path / "leak.csv", split=lambda p, k: "test" if (p, k) == (2, 1) else "train")
    with pytest.raises(DatalistError, match=r"lines 5 and 6: patient 'P02' is in training and test"):
        datalist_from_csv(leak, **kwargs)
    kept = _patient_csv(tmp_path / "kept.csv", split=lambda p, k: "val" if p % 4 == 1 else "train")
    dl = datalist_from_csv(kept, **kwargs)
    assert {it["patient"] for it in dl["validation"]} == {f"P{p:02d}" for p in range(1, 24, 4)}
    with pytest.raises(DatalistError, match=r"has a split column 'split', whose splits are kept"):
        datalist_from_csv(kept, split_fractions=(0.6, 0.2, 0.2), **kwargs)
    assert len(datalist_from_csv(kept, split_column=None, split_fractions=(0.6, 0.2, 0.2), **kwargs)["test"]) > 0
    (tmp_path / "blank.csv").write_text("file,diagnosis,patient_id\na.png,x,P1\nb.png,y,\n")
    with pytest.raises(DatalistError, match=r"blank\.csv line 3: no 'patient_id'"):
        datalist_from_csv(tmp_path / "blank.csv", **kwargs)
    with pytest.raises(ValueError, match=r"no column 'subject'"):
        datalist_from_csv(kept, path_column="file", label_column="diagnosis", group_column="subject")


def test_integer_labels_without_names_train_with_every_class(tmp_path):
    rows = "".join(f"{i}.png,{i % 3}\n" for i in range(9))
    (tmp_path / "labels.csv").write_text("path,label\n" + rows)
    dl = datalist_from_csv(tmp_path / "labels.csv", split_fractions=(0.34, 0.33, 0.33))
    assert dl["classes"] == ["0", "1", "2"] and datalist_num_classes(dl) == 3  # the bundle's num_classes
    assert datalist_num_classes({"training": [{"label": 4}], "test": [{"label": 1}]}) == 5  # no names: label + 1
    assert datalist_num_classes({"training": [{"label": 0}]}) == 2


@pytest.mark.parametrize("name", ["$__import__('os').system('id')", "@network", "%train.yaml#x", ""])
def test_class_names_that_configs_would_evaluate_are_refused(tmp_path, name):
    item = {"image": "a.png", "label": 0, "id": "a.png"}
    with pytest.raises(DatalistError, match="Rename the class"):
        check_datalist({"training": [item], "classes": [name, "normal"]}, source=tmp_path / "d.json")
    if name:  # a class folder of that name is refused too
        _png(tmp_path / "tree" / name / "1.png")
        _png(tmp_path / "tree" / "normal" / "1.png")
        with pytest.raises(DatalistError, match="Rename the class"):
            datalist_from_image_folder(tmp_path / "tree", split_fractions=(0.5, 0.5))
