# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI datalists from the usual sources: an ImageFolder tree, a CSV, a datalist JSON, MedMNIST ``.npz`` files.

A datalist is ``{"training": [...], "validation": [...], "test": [...], "classes": [...]}`` whose items are
``{"image": path, "label": int, "id": str}``. Ids are unique and stable: the path relative to the dataset root (never
the bare file stem, which collides across classes and splits in the reference implementation's preload cache).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fpt_monai.atomic import atomic_write_text
from fpt_monai.transforms.io import image_format

__all__ = [
    "SPLITS",
    "DatalistError",
    "check_datalist",
    "datalist_from_csv",
    "datalist_from_image_folder",
    "datalist_from_json",
    "datalist_from_medmnist",
    "inference_items",
    "write_datalist",
]

SPLITS = ("training", "validation", "test")
_SPLIT_ALIASES = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}


def _split_name(name: str, where: str) -> str:
    key = str(name).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {name!r}; use train/val/test (or training/validation/test).")
    return _SPLIT_ALIASES[key]


def _empty() -> dict:
    return {split: [] for split in SPLITS}


class DatalistError(ValueError):
    """A datalist that cannot be used as it is: a bad item, a label out of range, an empty split."""


_SPLIT_USE = {
    "training": "there is nothing to train on",
    "validation": "training chooses models/model.pt on it, and evaluation and inference need that file",
    "test": "evaluation has nothing to measure",
}


def check_datalist(
    datalist: Mapping,
    num_classes: int | None = None,
    required_splits: Sequence[str] = (),
    source: str | os.PathLike | None = None,
) -> None:
    """Validate items (``image``, integer ``label``, unique ``id``) and, if given, labels in ``[0, num_classes)``,
    a ``classes`` list of ``num_classes`` names and non-empty ``required_splits``.

    Args:
        datalist: ``training``/``validation``/``test`` lists of items (and optionally ``classes``).
        num_classes: the number of classes the model has; ``None`` skips the label range check.
        required_splits: splits that must hold at least one item (checked after every other check, so that the run
            stops before it writes anything, e.g. ``("training", "validation")`` for training).
        source: the datalist file, named in the errors.

    Raises:
        DatalistError: naming the datalist file, the offending items or split, and how to fix them.
    """
    where = f" in {source}" if source is not None else ""
    head = f"{source}: " if source is not None else ""
    classes = datalist.get("classes")
    if num_classes is not None and classes is not None and len(classes) != num_classes:
        raise DatalistError(
            f"{head}the datalist has {len(classes)} classes {list(classes)} but num_classes={num_classes}. Set "
            f"num_classes to {len(classes)} (or fix the datalist's 'classes')."
        )
    seen: dict[str, str] = {}
    for split in SPLITS:
        for item in datalist.get(split, []):
            if "image" not in item or "label" not in item or "id" not in item:
                raise DatalistError(f"{head}item {item} in {split!r} needs 'image', 'label' and 'id'.")
            label = item["label"]
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                raise DatalistError(
                    f"{item['image']}: label {label!r}{where} is not an integer class index. Use 0..n-1 "
                    "(the position of the class name in 'classes')."
                )
            if num_classes is not None and not 0 <= int(label) < num_classes:
                raise DatalistError(
                    f"{item['image']}: label {label}{where} is out of range for num_classes={num_classes} "
                    f"(valid: 0..{num_classes - 1}). Fix the label or set num_classes."
                )
            if item["id"] in seen:
                raise DatalistError(f"{head}duplicate item id {item['id']!r} in {seen[item['id']]!r} and {split!r}.")
            seen[item["id"]] = split
    for split in required_splits:
        split = _split_name(split, "required_splits")
        if not datalist.get(split):
            raise DatalistError(
                f"{head}the {split} split is empty (unreadable images dropped with --skip_unreadable count as "
                f"absent); {_SPLIT_USE[split]}. Add {split} items to the datalist"
                + (" (e.g. 10-20% of the labelled images, stratified by class)." if split == "validation" else ".")
            )


def _rel_id(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def datalist_from_image_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None) -> dict:
    """Datalist from ``root/<split>/<class>/<image>`` (the reference repository's layout).

    Split folders: ``train``, ``val`` (or ``valid``/``validation``) and ``test``; class index = position in the
    sorted union of class folder names across splits (or in ``class_names``), so all splits agree. Files are kept
    when their suffix is a supported image type (or they are DICOM files without suffix); hidden files are ignored.

    Raises:
        ValueError: no split folders, an image outside a class folder, or a class folder not in ``class_names``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: dataset folder does not exist.")
    split_dirs = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in _SPLIT_ALIASES:
            split_dirs[child] = _SPLIT_ALIASES[child.name.lower()]
    if not split_dirs:
        raise ValueError(f"{root}: expected split folders train/ val/ test/ with one folder per class inside.")
    found = sorted({c.name for d in split_dirs for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")})
    classes = list(class_names) if class_names is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} are not in class_names {classes}.")
    out = _empty()
    for split_dir, split in split_dirs.items():
        for entry in sorted(split_dir.iterdir()):
            if entry.is_file() and not entry.name.startswith(".") and image_format(entry):
                raise ValueError(f"{entry}: image directly in a split folder; put it in a class folder.")
        for label, name in enumerate(classes):
            class_dir = split_dir / name
            if not class_dir.is_dir():
                continue
            for path in sorted(class_dir.rglob("*")):
                if path.is_file() and not any(p.startswith(".") for p in path.relative_to(class_dir).parts):
                    if image_format(path):
                        out[split].append({"image": str(path.resolve()), "label": label, "id": _rel_id(path, root)})
    out["classes"] = classes
    check_datalist(out, len(classes), source=root)
    return out


def datalist_from_csv(
    csv_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str | None = "split",
    path_format: str = "{}",
    class_names: Sequence[str] | None = None,
    default_split: str = "training",
) -> dict:
    """Datalist from a CSV with an image path, a label and optionally a split per row.

    Args:
        csv_path: the CSV file (with a header row).
        image_root: folder the paths are relative to; defaults to the CSV's folder.
        path_column: column with the image path (or an identifier turned into a path by ``path_format``).
        label_column: column with the label: an integer index, or a class name when ``class_names`` is given or
            the column is not numeric (then classes are the sorted unique names).
        split_column: column with train/val/test; ``None`` (or a CSV without it) puts every row in ``default_split``.
        path_format: format string applied to the path column, e.g. ``"images/{}.jpg"`` for ISIC-style ids.
        class_names: names of the classes in index order.
        default_split: split for rows without a split column.

    Raises:
        ValueError: missing columns, unknown class names or splits, duplicate paths (naming the CSV rows).
    """
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path}: no rows.")
    columns = set(rows[0])
    for col in (path_column, label_column):
        if col not in columns:
            raise ValueError(f"{csv_path}: no column {col!r} (columns: {sorted(columns)}).")
    use_split = split_column is not None and split_column in columns
    raw = [r[label_column].strip() for r in rows]
    if class_names is None and not all(v.lstrip("-").isdigit() for v in raw):
        class_names = sorted(set(raw))
    out = _empty()
    seen: dict[str, int] = {}
    for line, (row, value) in enumerate(zip(rows, raw, strict=True), start=2):
        if class_names is not None and not value.lstrip("-").isdigit():
            if value not in class_names:
                raise ValueError(f"{csv_path} line {line}: class {value!r} is not one of {list(class_names)}.")
            label = list(class_names).index(value)
        else:
            label = int(value)
        path = root / path_format.format(row[path_column].strip())
        item_id = _rel_id(path, root)
        if item_id in seen:
            raise ValueError(f"{csv_path} lines {seen[item_id]} and {line}: the same image {item_id!r} twice.")
        seen[item_id] = line
        split = _split_name(row[split_column], f"{csv_path} line {line}") if use_split else default_split
        out[split].append({"image": str(path.resolve()), "label": label, "id": item_id})
    if class_names is not None:
        out["classes"] = list(class_names)
    check_datalist(out, len(class_names) if class_names is not None else None, source=csv_path)
    return out


def datalist_from_json(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> dict:
    """Read a MONAI datalist JSON (``training``/``validation``/``test`` lists; MONAI's ``load_decathlon_datalist``
    conventions: relative image paths are relative to ``base_dir``, by default the JSON's folder).

    Items without ``id`` get the image path relative to ``base_dir``. A ``classes`` list is kept if present.
    """
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else path.parent
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatalistError(
            f"{path}: no such datalist file. Check the path (the bundle reads <dataset_dir>/datalist.json); "
            "fpt_monai.data.write_datalist writes one."
        ) from err
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise DatalistError(f"{path}: cannot read the datalist JSON ({err}). Fix or rewrite the file.") from err
    if not isinstance(data, dict) or not any(k in data for k in SPLITS):
        raise DatalistError(f"{path}: a datalist needs at least one of the keys {SPLITS}.")
    out = _empty()
    for split in SPLITS:
        for item in data.get(split, []):
            if not isinstance(item, dict) or "image" not in item:
                raise DatalistError(f"{path}: item {item!r} in {split!r} has no 'image'.")
            image = Path(item["image"])
            image = image if image.is_absolute() else base / image
            new = {**item, "image": str(image.resolve())}
            new.setdefault("id", _rel_id(image, base))
            out[split].append(new)
    if "classes" in data:
        out["classes"] = list(data["classes"])
    check_datalist(out, len(out["classes"]) if "classes" in out else None, source=path)
    return out


def write_datalist(datalist: Mapping, path: str | os.PathLike) -> Path:
    """Write a datalist JSON atomically; image paths under the JSON's folder are stored relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    out: dict = {}
    for key, value in datalist.items():
        if key in SPLITS:
            items = []
            for item in value:
                image = Path(item["image"]).resolve()
                rel = image.relative_to(base).as_posix() if image.is_relative_to(base) else str(image)
                items.append({**item, "image": rel})
            out[key] = items
        else:
            out[key] = value
    return atomic_write_text(path, json.dumps(out, indent=1))


# label names of the binary MedMNIST sets (medmnist INFO), used when the medmnist package is not installed
_MEDMNIST_LABELS = {
    "breastmnist": ["malignant", "normal, benign"],
    "pneumoniamnist": ["normal", "pneumonia"],
}
_NPZ_SPLITS = {"train": "training", "val": "validation", "test": "test"}


def datalist_from_medmnist(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    download: bool = False,
    size: int = 28,
) -> dict:
    """Datalist from an official MedMNIST ``.npz`` file (or, with ``download=True``, a MedMNIST flag such as
    ``"breastmnist"`` fetched through the ``medmnist`` package). Images are written once as PNG files under
    ``output_dir/<split>/<index>.png`` (existing files are reused), so the usual loaders apply.

    Args:
        source: path to ``<flag>.npz``, or a flag with ``download=True``.
        output_dir: where the PNG files go.
        download: download the file with the ``medmnist`` package (needs network access).
        size: MedMNIST+ image size of the file to download (28, 64, 128 or 224).

    Raises:
        ValueError: not a MedMNIST file, multi-label tasks, 3-D sets.
    """
    output_dir = Path(output_dir)
    if download:
        try:
            import medmnist
        except ImportError as err:
            raise ImportError("download=True needs the medmnist package: pip install medmnist") from err
        flag = str(source).lower()
        if flag not in medmnist.INFO:
            raise ValueError(f"unknown MedMNIST flag {flag!r}; known: {sorted(medmnist.INFO)}.")
        cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
        cls(split="train", download=True, root=str(output_dir), size=size)
        npz = output_dir / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
        labels = medmnist.INFO[flag]["label"]
        class_names = [labels[str(i)] for i in range(len(labels))]
    else:
        npz = Path(source)
        flag = npz.name.split(".")[0].split("_")[0].lower()
        class_names = _MEDMNIST_LABELS.get(flag)
    try:
        data = np.load(npz, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{npz}: not a readable MedMNIST .npz file ({err}).") from err
    from PIL import Image

    out = _empty()
    for prefix, split in _NPZ_SPLITS.items():
        if f"{prefix}_images" not in data.files:
            raise ValueError(f"{npz}: no '{prefix}_images' array; is this a MedMNIST file?")
        images, labels = data[f"{prefix}_images"], data[f"{prefix}_labels"]
        if labels.ndim == 2 and labels.shape[1] != 1:
            raise ValueError(f"{npz}: multi-label MedMNIST task ({labels.shape[1]} labels) is not supported.")
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise ValueError(f"{npz}: images of shape {images.shape} are not 2-D (3-D MedMNIST is not supported).")
        folder = output_dir / prefix
        folder.mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels.reshape(-1), strict=True)):
            file = folder / f"{i:06d}.png"
            if not file.is_file():
                tmp = file.with_suffix(".tmp.png")
                Image.fromarray(np.asarray(img, dtype=np.uint8)).save(tmp)
                os.replace(tmp, file)
            out[split].append({"image": str(file.resolve()), "label": int(label), "id": f"{prefix}/{file.name}"})
    num_classes = int(max(int(data[f"{p}_labels"].max()) for p in _NPZ_SPLITS)) + 1
    out["classes"] = class_names if class_names is not None else [str(i) for i in range(num_classes)]
    check_datalist(out, len(out["classes"]), source=npz)
    return out


def inference_items(source: str | os.PathLike, split: str = "test") -> list[dict]:
    """Items ``{"image", "id"}`` to classify: every image under a folder (recursively; ids relative to it), one image
    file, or the ``split`` of a datalist JSON (all splits if it has no such split).

    Raises:
        ValueError: nothing to classify, or a source that does not exist.
    """
    source = Path(source)
    if source.is_dir():
        items = [
            {"image": str(p.resolve()), "id": p.relative_to(source).as_posix()}
            for p in sorted(source.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts) and image_format(p)
        ]
    elif source.is_file() and source.suffix.lower() == ".json":
        dl = datalist_from_json(source)
        chosen = dl[split] if dl.get(split) else [i for s in SPLITS for i in dl[s]]
        items = [{"image": i["image"], "id": i["id"]} for i in chosen]
    elif source.is_file():
        items = [{"image": str(source.resolve()), "id": source.name}]
    else:
        raise ValueError(f"{source}: no such folder or file to run inference on.")
    if not items:
        raise ValueError(f"{source}: no supported image files (PNG/JPEG/BMP/TIFF/DICOM/NIfTI) found.")
    return items
