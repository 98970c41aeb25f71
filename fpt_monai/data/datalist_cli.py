# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What ``fpt-monai datalist`` (``python -m fpt_monai.data.datalist``) does once its arguments parsed
(:mod:`fpt_monai.commands.datalist`): write the ``datalist.json`` of an image folder, a CSV or a MedMNIST file,
splitting sources without splits (:func:`fpt_monai.data.splits.make_splits`), and print what it wrote."""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fpt_monai.data.datalist import (
    _folder_layout,
    datalist_from_csv,
    datalist_from_image_folder,
    datalist_from_medmnist,
    write_datalist,
)
from fpt_monai.data.sanity import datalist_warnings
from fpt_monai.data.splits import DEFAULT_SPLIT_FRACTIONS, GROUP_KEY, SPLITS, DatalistError

__all__ = ["run_command"]

_CSV_OPTIONS = {  # CLI option -> datalist_from_csv argument (their defaults there apply when not given)
    "path_column": "--path-column",
    "label_column": "--label-column",
    "split_column": "--split-column",
    "image_root": "--image-root",
    "path_format": "--path-format",
}


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def _default_output(source: Path) -> Path:
    if source.is_dir():
        return source / "datalist.json"
    if source.suffix.lower() == ".npz":  # the PNG files go beside the datalist
        return source.parent / source.name.split(".")[0] / "datalist.json"
    return source.parent / "datalist.json"


def _build(args: argparse.Namespace, output: Path) -> tuple[dict, str]:
    """The datalist of ``args.source`` and a line that says how it was split."""
    source: Path = args.source
    class_names = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    csv_given = [flag for key, flag in _CSV_OPTIONS.items() if getattr(args, key) is not None]
    if args.group_column is not None:
        csv_given.append("--group-column")
    if source.is_dir():
        if csv_given:
            raise DatalistError(f"{source}: {', '.join(csv_given)} apply to a CSV source, not to an image folder.")
        split_dirs, _ = _folder_layout(source)
        # --split with split folders is refused there (their splits are kept)
        fractions = args.split or (None if split_dirs else DEFAULT_SPLIT_FRACTIONS)
        datalist = datalist_from_image_folder(source, class_names, split_fractions=fractions, seed=args.seed)
        if split_dirs:
            return datalist, f"as given by the split folders {sorted({c.name for c in split_dirs})}"
        return datalist, _split_line(fractions, args.seed, None)
    if source.suffix.lower() == ".npz":
        given = [f for f, v in (("--split", args.split), ("--classes", class_names)) if v is not None] + csv_given
        if given:
            raise DatalistError(
                f"{source}: {', '.join(given)} do not apply to a MedMNIST file (it has its own splits and class names)."
            )
        return datalist_from_medmnist(source, output.parent), "as given by the MedMNIST file"
    if source.suffix.lower() not in (".csv", ".tsv", ".txt"):
        raise DatalistError(
            f"{source}: not a folder, a .csv or a .npz file. Give the image folder, a CSV (path,label[,split]) or a "
            "MedMNIST .npz file."
        )
    kwargs = {key: getattr(args, key) for key in _CSV_OPTIONS if getattr(args, key) is not None}
    if kwargs.get("split_column") == "":
        kwargs["split_column"] = None
    split_column = kwargs.get("split_column", "split")
    header = _csv_header(source)
    has_split = split_column is not None and split_column in header
    fractions = args.split or (None if has_split else DEFAULT_SPLIT_FRACTIONS)
    datalist = datalist_from_csv(
        source,
        class_names=class_names,
        group_column=args.group_column,
        split_fractions=fractions,
        seed=args.seed,
        **kwargs,
    )
    if has_split:
        return datalist, f"as given by the CSV's {split_column!r} column"
    how = _split_line(fractions, args.seed, args.group_column)
    patient_like = [c for c in header if any(w in c.lower() for w in ("patient", "subject"))]
    if args.group_column is None and patient_like:
        how += (
            f"\nnote: the CSV has a column {patient_like[0]!r}; --group-column {patient_like[0]} keeps each "
            "patient's images in one split."
        )
    return datalist, how


def _split_line(fractions: Sequence[float], seed: int, group_column: str | None) -> str:
    parts = "/".join(f"{100 * f:g}" for f in fractions)
    by = f", by patient ({group_column})" if group_column else ""
    return f"{parts} %, stratified by class{by}, seed {seed}"


def _class_names(datalist: Mapping) -> list[str]:
    """The datalist's ``classes``, else the labels ``0..max`` as names."""
    labels = [int(i["label"]) for split in SPLITS for i in datalist.get(split, [])]
    return list(datalist.get("classes") or [str(label) for label in range(max(labels, default=-1) + 1)])


def _count_table(datalist: Mapping) -> str:
    """Images per class and split (and patients per split when the items name them), as aligned text."""
    items = {split: datalist.get(split, []) for split in SPLITS}
    rows = [["class", *SPLITS, "total"]]
    for label, name in enumerate(_class_names(datalist)):
        row = [sum(1 for i in items[split] if int(i["label"]) == label) for split in SPLITS]
        rows.append([name, *row, sum(row)])
    totals = [len(items[split]) for split in SPLITS]
    rows.append(["total", *totals, sum(totals)])
    if any(GROUP_KEY in i for split in SPLITS for i in items[split]):
        patients = [len({i.get(GROUP_KEY) for i in items[split]}) for split in SPLITS]
        rows.append(["patients", *patients, len({i.get(GROUP_KEY) for split in SPLITS for i in items[split]})])
    widths = [max(len(str(row[k])) for row in rows) for k in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            str(v).ljust(w) if k == 0 else str(v).rjust(w) for k, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def run_command(args: argparse.Namespace) -> int:
    """The command on its parsed arguments (:func:`fpt_monai.commands.datalist.build_parser`): 0 when the datalist
    was written, 1 on an error of ours (one line on stderr naming the file and the fix)."""
    try:
        if not args.source.exists():
            raise DatalistError(
                f"{args.source}: no such file or folder. Give an image folder, a CSV file or a MedMNIST .npz file."
            )
        output = args.output or _default_output(args.source)
        if output.exists() and not args.force:  # checked before any work (a MedMNIST file writes its PNG files)
            raise DatalistError(
                f"{output}: a datalist already exists; pass --force to overwrite it (or -o another file)."
            )
        datalist, how = _build(args, output)
        written = write_datalist(datalist, output).resolve()
    except (ValueError, OSError) as err:
        from fpt_monai.utils.errors import error_line, find_error, is_ours

        if not is_ours(find_error(err)):
            raise  # a traceback shows where it happened (the excepthook adds the last line)
        print(error_line(err), file=sys.stderr)
        return 1
    # the bundle reads <dataset_dir>/datalist.json; another file name is given as datalist_file as well
    where = f"--dataset_dir {shlex.quote(str(written.parent))}"
    if written.name != "datalist.json":
        where += f" --datalist_file {shlex.quote(str(written))}"
    print(_count_table(datalist))
    print(f"splits: {how}")
    print(f"wrote {written}")
    for message in datalist_warnings(datalist, args.min_images_per_class):  # too few images, a likely typo
        print(f"warning: {message}", file=sys.stderr)
    # the bundle takes the number of classes from the datalist's "classes"; one bundle folder per dataset, so that a
    # second dataset does not resume the first one's training
    bundle_root = shlex.quote(f"runs/{written.parent.name or 'my_run'}")
    train = f"python -m monai.bundle run training --config_file bundle/configs/train.yaml --bundle_root {bundle_root}"
    print(f"next: {train} {where}")
    return 0
