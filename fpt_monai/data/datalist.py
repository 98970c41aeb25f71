# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI datalists from the usual sources: an ImageFolder tree, a CSV, a datalist JSON, MedMNIST ``.npz`` files.

A datalist is ``{"training": [...], "validation": [...], "test": [...], "classes": [...]}`` whose items are
``{"image": path, "label": int, "id": str}`` (and ``"patient"`` when the source names one). Ids are unique and stable:
the path relative to the dataset root (never the bare file stem, which collides across classes and splits in the
reference implementation's preload cache). Sources without splits are split by :func:`make_splits` (stratified by
class, grouped by patient, seeded; :mod:`fpt_monai.data.splits`, whose names this module re-exports). The command line
(:mod:`fpt_monai.commands.datalist`, the work in :mod:`fpt_monai.data.datalist_cli`) writes ``datalist.json``::

    python -m fpt_monai.data.datalist /data/my_dataset            # /data/my_dataset/<class>/<image>
    python -m fpt_monai.data.datalist labels.csv --group-column patient_id --split 0.7,0.15,0.15
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fpt_monai.data.splits import (
    DEFAULT_SPLIT_FRACTIONS,
    GROUP_KEY,
    SPLIT_ALIASES,
    SPLITS,
    DatalistError,
    check_class_names,
    check_datalist,
    datalist_num_classes,
    empty_datalist,
    make_splits,
    split_name,
)
from fpt_monai.transforms.formats import image_format
from fpt_monai.utils.atomic import atomic_write_text

# the split names and checks (fpt_monai.data.splits) keep their names here, where they were first defined
__all__ = [
    "DEFAULT_SPLIT_FRACTIONS",
    "GROUP_KEY",
    "SPLITS",
    "DatalistError",
    "check_datalist",
    "datalist_from_csv",
    "datalist_from_image_folder",
    "datalist_from_json",
    "datalist_from_medmnist",
    "datalist_num_classes",
    "inference_items",
    "make_splits",
    "write_datalist",
]


def _rel_id(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _is_image_file(path: Path, under: Path) -> bool:
    return path.is_file() and not any(p.startswith(".") for p in path.relative_to(under).parts) and image_format(path)


def _folder_layout(root: Path) -> tuple[dict[Path, str], list[Path]]:
    """``(split folders -> split, class folders)`` at the top of ``root``; exactly one of them is non-empty.

    Raises:
        DatalistError: no such folder, no folders, images at the top, or split folders beside other folders.
    """
    if not root.is_dir():
        raise DatalistError(f"{root}: dataset folder does not exist.")
    folders = [c for c in sorted(root.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    loose = [c.name for c in sorted(root.iterdir()) if _is_image_file(c, root)]
    if loose:
        raise DatalistError(
            f"{root}: images directly in the dataset folder ({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}"
            "); put each in the folder of its class (root/<class>/<image>)."
        )
    split_dirs = {c: SPLIT_ALIASES[c.name.lower()] for c in folders if c.name.lower() in SPLIT_ALIASES}
    class_dirs = [c for c in folders if c not in split_dirs]
    if split_dirs and class_dirs:
        raise DatalistError(
            f"{root}: split folders {[c.name for c in split_dirs]} beside other folders {[c.name for c in class_dirs]}."
            " Either put every class folder inside train/ val/ test/ (root/<split>/<class>/<image>), or have only "
            "class folders (root/<class>/<image>) and let them be split."
        )
    if not folders:
        raise DatalistError(
            f"{root}: no class folders; expected root/<class>/<image> (split by make_splits) or root/<split>/<class>/"
            "<image> with split folders train/ val/ test/."
        )
    return split_dirs, class_dirs


def datalist_from_image_folder(
    root: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    split_fractions: Sequence[float] | None = None,
    seed: int = 0,
) -> dict:
    """Datalist from ``root/<split>/<class>/<image>`` (the reference repository's layout, its splits kept) or from
    ``root/<class>/<image>`` (split by :func:`make_splits`, stratified by class).

    Split folders: ``train``, ``val`` (or ``valid``/``validation``) and ``test``; class index = position in the
    sorted union of class folder names across splits (or in ``class_names``), so all splits agree. Files are kept
    when their suffix is a supported image type (or they are DICOM files without suffix), in class folders and their
    sub-folders; hidden files are ignored.

    Args:
        root: the dataset folder.
        class_names: names of the classes in index order; defaults to the sorted class folder names.
        split_fractions: training/validation(/test) fractions for a tree without split folders, e.g.
            ``(0.6, 0.2, 0.2)``; required for such a tree, refused for a tree with split folders.
        seed: the seed of the split.

    Raises:
        DatalistError: a missing folder, images outside class folders, split folders beside class folders, a class
            folder not in ``class_names``, a class-folder tree without ``split_fractions`` (or a split tree with
            them), or a class too small to split.
    """
    root = Path(root)
    split_dirs, class_dirs = _folder_layout(root)
    if split_dirs and split_fractions is not None:
        raise DatalistError(
            f"{root}: has split folders {[c.name for c in split_dirs]}, whose splits are kept; drop split_fractions "
            "(--split), or move the class folders out of the split folders to split them anew."
        )
    if not split_dirs and split_fractions is None:
        raise DatalistError(
            f"{root}: class folders without train/ val/ test/ split folders; pass split_fractions=(0.6, 0.2, 0.2) to "
            f"split them, stratified by class (command line: python -m fpt_monai.data.datalist {root})."
        )
    pools = split_dirs if split_dirs else {root: "training"}
    found = sorted({c.name for d in pools for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")})
    classes = list(class_names) if class_names is not None else found
    check_class_names(classes, f"{root}: ")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatalistError(f"{root}: class folders {unknown} are not in class_names {classes}.")
    if not split_dirs and len(found) == 1:
        raise DatalistError(
            f"{root}: one class folder {found[0]!r}; a classifier needs at least two. Is the dataset one level down "
            f"({root / found[0]}/<class>/<image>)?"
        )
    out = empty_datalist()
    for split_dir, split in pools.items():
        for entry in sorted(split_dir.iterdir()):
            if _is_image_file(entry, split_dir):
                raise DatalistError(f"{entry}: image directly in a split folder; put it in a class folder.")
        for label, name in enumerate(classes):
            class_dir = split_dir / name
            if not class_dir.is_dir():
                continue
            for path in sorted(class_dir.rglob("*")):
                if _is_image_file(path, class_dir):
                    out[split].append({"image": str(path.resolve()), "label": label, "id": _rel_id(path, root)})
    if split_fractions is not None:
        out = make_splits(out["training"], split_fractions, seed=seed, class_names=classes, source=root)
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
    group_column: str | None = None,
    split_fractions: Sequence[float] | None = None,
    seed: int = 0,
) -> dict:
    """Datalist from a CSV with an image path, a label and optionally a split and a patient id per row.

    Args:
        csv_path: the CSV file (with a header row).
        image_root: folder the paths are relative to; defaults to the CSV's folder.
        path_column: column with the image path (or an identifier turned into a path by ``path_format``).
        label_column: column with the label: an integer index, or a class name when ``class_names`` is given or
            the column is not numeric (then classes are the sorted unique names).
        split_column: column with train/val/test; ``None`` (or a CSV without it) puts every row in ``default_split``,
            or splits the rows by ``split_fractions``.
        path_format: format string applied to the path column, e.g. ``"images/{}.jpg"`` for ISIC-style ids.
        class_names: names of the classes in index order.
        default_split: split for rows without a split column (when ``split_fractions`` is not given).
        group_column: column with the patient (or any group) id, stored as the items' ``"patient"``: a split by
            ``split_fractions`` keeps each patient in one split, and a split column that puts one patient in two
            splits is refused. Defaults to ``None`` (no patients).
        split_fractions: training/validation(/test) fractions, e.g. ``(0.6, 0.2, 0.2)``, to split rows that have no
            split column with :func:`make_splits` (stratified by class, grouped by patient).
        seed: the seed of that split.

    Raises:
        ValueError: missing columns, unknown class names or splits, duplicate paths (naming the CSV rows);
            :class:`DatalistError` for a missing patient id, a patient in two splits, ``split_fractions`` with a
            split column, or a class too small to split.
    """
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path}: no rows.")
    columns = set(rows[0])
    for col in (path_column, label_column, group_column):
        if col is not None and col not in columns:
            raise ValueError(f"{csv_path}: no column {col!r} (columns: {sorted(columns)}).")
    use_split = split_column is not None and split_column in columns
    if use_split and split_fractions is not None:
        raise DatalistError(
            f"{csv_path}: has a split column {split_column!r}, whose splits are kept; drop split_fractions (--split), "
            "or pass split_column=None (--split-column '') to split the rows anew."
        )
    raw = [r[label_column].strip() for r in rows]
    if class_names is None and not all(v.lstrip("-").isdigit() for v in raw):
        class_names = sorted(set(raw))
    out = empty_datalist()
    seen: dict[str, int] = {}
    patient_split: dict[str, tuple[str, int]] = {}
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
        split = split_name(row[split_column], f"{csv_path} line {line}") if use_split else default_split
        item = {"image": str(path.resolve()), "label": label, "id": item_id}
        if group_column is not None:
            patient = (row[group_column] or "").strip()
            if not patient:
                raise DatalistError(
                    f"{csv_path} line {line}: no {group_column!r}; every row needs its patient id (or leave out "
                    "the patient column)."
                )
            first = patient_split.setdefault(patient, (split, line))
            if first[0] != split:
                raise DatalistError(
                    f"{csv_path} lines {first[1]} and {line}: patient {patient!r} is in {first[0]} and {split}, so the "
                    "model would be tested on a patient it was trained on. Put all rows of a patient in one split, "
                    "or drop the split column and split by patient (split_fractions, --split)."
                )
            item[GROUP_KEY] = patient
        out[split].append(item)
    if class_names is None:  # integer labels without names: the classes are named by their index
        class_names = [str(i) for i in range(1 + max(i["label"] for s in SPLITS for i in out[s]))]
    if split_fractions is not None:
        out = make_splits(out[default_split], split_fractions, seed=seed, class_names=class_names, source=csv_path)
    out["classes"] = list(class_names)
    check_datalist(out, len(class_names), source=csv_path)
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
    out = empty_datalist()
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
    import numpy as np  # here, not at the top: `python -m fpt_monai.data.datalist --help` runs this module

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

    out = empty_datalist()
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

    A symbolic link in the folder whose target does not exist, and a file without a suffix that cannot be opened
    (its DICOM marker unreadable), are listed too when their names could be images (an image suffix or none), so
    that :func:`~fpt_monai.data.check_inference_images` reports them as unreadable instead of them vanishing.

    Raises:
        ValueError: nothing to classify, or a source that does not exist.
    """
    source = Path(source)
    if source.is_dir():
        items = []
        for p in sorted(source.rglob("*")):
            if any(part.startswith(".") for part in p.relative_to(source).parts) or p.is_dir():
                continue
            item_id = p.relative_to(source).as_posix()
            if p.is_file() and (image_format(p) or (p.suffix == "" and not os.access(p, os.R_OK))):
                items.append({"image": str(p.resolve()), "id": item_id})
            elif p.is_symlink() and not p.exists() and (p.suffix == "" or image_format(p)):
                # a dangling link: reported as unreadable with its target, never silently dropped
                items.append({"image": str(p.absolute()), "id": item_id})
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fpt_monai.data.datalist``: :func:`fpt_monai.commands.datalist.main` (``fpt-monai datalist``) under
    this module's name."""
    from fpt_monai.commands.datalist import main as command

    return command(argv, prog="python -m fpt_monai.data.datalist")


if __name__ == "__main__":
    import sys

    from fpt_monai.utils.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback of an unexpected error
    sys.exit(main())
