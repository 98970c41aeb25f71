"""The study's data: the datalist (``--datalist``, ``--csv``, ``--image-folder`` or the default ISIC CSV), one check
of every image, stratified folds with a validation part each, and the folds' datalists on disk."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fpt_monai.study.defaults import ISIC_COLUMNS, ISIC_CSV, SHARED

__all__ = [
    "SPLITS",
    "check_images_once",
    "fold_datalists",
    "load_datalist",
    "num_classes",
    "parse_list",
    "split_ids",
    "stratified_holdout",
    "write_folds",
]

SPLITS = ("training", "validation", "test")


def parse_list(text: str, kind=float) -> list:
    """``"a,b,c"`` as a list of ``kind`` (empty entries skipped)."""
    return [kind(v) for v in text.split(",") if v.strip()]


def load_datalist(args: argparse.Namespace) -> dict:
    """The datalist from ``--datalist``, ``--image-folder``, ``--csv`` or (default) the ISIC CSV in ../shared/data,
    relative to the current directory (the clone's root on the project's machines)."""
    from fpt_monai.data import datalist_from_csv, datalist_from_image_folder, datalist_from_json

    class_names = parse_list(args.class_names, str) if args.class_names else None
    try:
        if args.datalist:
            return datalist_from_json(args.datalist)
        if args.image_folder:
            return datalist_from_image_folder(args.image_folder, class_names)
        columns = {} if args.csv else dict(ISIC_COLUMNS)
        given = {k: getattr(args, k) for k in ISIC_COLUMNS if getattr(args, k) is not None}
        columns.update(given)
        if "class_names" in columns:
            columns["class_names"] = parse_list(columns["class_names"], str)
        csv_path = Path(args.csv or ISIC_CSV)
        if not csv_path.is_file():
            where = "" if args.csv else f" (the default: the ISIC data in {SHARED}, relative to {Path.cwd()})"
            raise SystemExit(f"{csv_path} not found{where}; give --datalist, --csv or --image-folder.")
        return datalist_from_csv(csv_path, **columns)
    except ValueError as err:
        raise SystemExit(f"cannot read the dataset: {err}") from err


def check_images_once(datalist: dict, skip_unreadable) -> dict:
    """Read every image once, here: the runs then skip the bundle's own check (``check_images: false``)."""
    from fpt_monai.data import UnreadableImagesError, check_images

    try:
        return check_images(datalist, skip_unreadable=skip_unreadable)
    except UnreadableImagesError as err:
        raise SystemExit(f"{err}\nIn this study: --set skip_unreadable=true.") from err


def num_classes(datalist: dict) -> int:
    """The datalist's classes: its ``classes`` entry, else one more than the largest label."""
    if datalist.get("classes"):
        return len(datalist["classes"])
    return 1 + max(item["label"] for split in SPLITS for item in datalist.get(split, []))


def stratified_holdout(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """Split ``indices`` into (rest, held out) with ``fraction`` of every class (at least one of each class with two
    or more images) held out; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels[indices]):
        members = rng.permutation(indices[labels[indices] == c])
        n = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.extend(members[:n])
    held = np.sort(np.asarray(held, dtype=int))
    return np.setdiff1d(indices, held), held


def fold_datalists(datalist: dict, folds: int, val_fraction: float, seed: int) -> list[dict]:
    """Stratified ``folds``-fold datalists over all labelled items (``folds`` 0: the datalist itself)."""
    if folds == 0:
        empty = [s for s in SPLITS if not datalist.get(s)]
        if empty:
            raise SystemExit(f"--folds 0 uses the datalist's fixed split, but its {empty} split(s) are empty.")
        return [datalist]
    from sklearn.model_selection import StratifiedKFold

    items = [item for split in SPLITS for item in datalist.get(split, [])]
    labels = np.asarray([item["label"] for item in items])
    smallest = np.bincount(labels)[np.unique(labels)].min()
    if not 2 <= folds <= smallest:
        raise SystemExit(f"--folds {folds}: needs 2 <= folds <= {smallest}, the images of the smallest class.")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for f, (rest, test) in enumerate(splitter.split(np.zeros(len(items)), labels)):
        train, val = stratified_holdout(rest, labels, val_fraction, seed + f)
        fold = {name: [items[i] for i in idx] for name, idx in zip(SPLITS, (train, val, test), strict=True)}
        if "classes" in datalist:
            fold["classes"] = datalist["classes"]
        out.append(fold)
    return out


def split_ids(datalist: dict) -> dict[str, list[str]]:
    """The item ids of each split (what makes two folds' datalists the same split)."""
    return {s: [str(item["id"]) for item in datalist.get(s, [])] for s in SPLITS}


def write_folds(folds: list[dict], out: Path) -> list[Path]:
    """``<out>/folds/fold<f>/datalist.json``; refuses to change the split of an existing study."""
    from fpt_monai.data import datalist_from_json, write_datalist

    dirs = []
    for f, fold in enumerate(folds):
        path = out / "folds" / f"fold{f}" / "datalist.json"
        if path.is_file() and split_ids(datalist_from_json(path)) != split_ids(fold):
            raise SystemExit(f"{path} holds another split: finished runs would not match; use a new --out-dir.")
        write_datalist(fold, path)
        dirs.append(path.parent)
    return dirs
