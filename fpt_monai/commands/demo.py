# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``fpt-monai demo`` (also ``python -m fpt_monai.data.demo``): write the offline demo dataset, synthetic two-class
images in PNG, JPEG, DICOM and NIfTI with their ``datalist.json``.

The parser imports nothing heavy (no numpy), so that ``--help`` and a mistyped option answer at once; the work
(:func:`fpt_monai.data.demo.run_command`) is imported after the arguments parse.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fpt_monai.utils.runtime import add_runtime_arguments

__all__ = ["PROG", "build_parser", "main"]

PROG = "fpt-monai demo"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``fpt-monai demo``; ``prog`` names the command in the usage line."""
    p = argparse.ArgumentParser(prog=prog, description="Write the offline demo dataset.")
    p.add_argument("out_dir")
    p.add_argument("--per-class", type=int, default=24)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    add_runtime_arguments(p, threads=False)  # numpy drawing and file writing: no torch threads to set
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``; ``--help`` and bad arguments exit here), then write the dataset:
    0 when written."""
    args = build_parser(prog).parse_args(argv)
    from fpt_monai.data.demo import run_command

    return run_command(args)
