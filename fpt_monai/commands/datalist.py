# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``fpt-monai datalist`` (also ``python -m fpt_monai.data.datalist``): write the ``datalist.json`` of an image folder,
a CSV or a MedMNIST file.

The parser imports nothing heavy, so that ``--help`` and a mistyped option answer at once; the work
(:mod:`fpt_monai.data.datalist_cli`) is imported after the arguments parse.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fpt_monai.data.sanity import DEFAULT_MIN_IMAGES_PER_CLASS
from fpt_monai.data.splits import DEFAULT_SPLIT_FRACTIONS

__all__ = ["PROG", "build_parser", "main"]

PROG = "fpt-monai datalist"
_EPILOG = """examples:
  # /data/my_dataset/<class>/<image>: a 60/20/20 split stratified by class -> /data/my_dataset/datalist.json
  python -m fpt_monai.data.datalist /data/my_dataset
  # a CSV (path,label[,split][,patient_id]): 70/15/15 by patient, so that no patient is in two splits
  python -m fpt_monai.data.datalist /data/cxr/labels.csv --group-column patient_id --split 0.7,0.15,0.15
  # ISIC-style ids in the CSV: the image of row "ISIC_0001" is images/ISIC_0001.jpg
  python -m fpt_monai.data.datalist labels.csv --path-column isic_id --path-format "images/{}.jpg"
  # a MedMNIST file: its splits as PNG files and the datalist -> ./breastmnist/
  python -m fpt_monai.data.datalist breastmnist.npz

A tree with split folders (train/ val/ test/) or a CSV with a split column keeps its splits. Then train with
  python -m monai.bundle run training --config_file bundle/configs/train.yaml --dataset_dir <folder of datalist.json>
"""


def _fractions_arg(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers like 0.6,0.2,0.2") from err
    return tuple(v / 100 for v in values) if values and abs(sum(values) - 100) < 0.1 else values  # 60,20,20


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``fpt-monai datalist``; ``prog`` names the command in the usage line."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write the MONAI datalist (datalist.json) of an image folder, a CSV file or a MedMNIST .npz file; "
        "a source without splits is split stratified by class (and by patient with --group-column).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        type=Path,
        help="a folder <class>/<image> or <split>/<class>/<image>, a CSV file, or a MedMNIST .npz file",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the datalist to write; defaults to datalist.json in the folder, beside the CSV, or in "
        "<npz folder>/<name>/ (the bundle reads <dataset_dir>/datalist.json)",
    )
    p.add_argument(
        "--split",
        type=_fractions_arg,
        metavar="FRACTIONS",
        help="training,validation[,test] fractions for a source without splits; defaults to "
        + ",".join(f"{f:g}" for f in DEFAULT_SPLIT_FRACTIONS),
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    p.add_argument("--classes", metavar="NAMES", help="class names in label order, e.g. normal,benign,malignant")
    p.add_argument("--group-column", metavar="COLUMN", help="CSV column with the patient id: no patient in two splits")
    p.add_argument("--path-column", metavar="COLUMN", help="CSV column with the image path (default: path)")
    p.add_argument("--label-column", metavar="COLUMN", help="CSV column with the label (default: label)")
    p.add_argument(
        "--split-column",
        metavar="COLUMN",
        help="CSV column with train/val/test, used when present (default: split; '' to ignore it)",
    )
    p.add_argument("--image-root", type=Path, help="folder the CSV paths are relative to (default: the CSV's folder)")
    p.add_argument(
        "--path-format", metavar="FORMAT", help='turns the CSV path column into a path, e.g. "images/{}.jpg"'
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing datalist file")
    p.add_argument(
        "--min-images-per-class",
        type=int,
        default=DEFAULT_MIN_IMAGES_PER_CLASS,
        metavar="N",
        help=f"warn when a class has fewer than N images in a split (default {DEFAULT_MIN_IMAGES_PER_CLASS}; 0: never)",
    )
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``; ``--help`` and bad arguments exit here, 2 for the latter), then
    write the datalist: 0 when written, 1 on an error of ours (one line on stderr naming the file and the fix)."""
    args = build_parser(prog).parse_args(argv)
    from fpt_monai.data.datalist_cli import run_command

    return run_command(args)
