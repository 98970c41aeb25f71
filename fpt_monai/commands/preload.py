# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``fpt-monai preload`` (also ``python -m fpt_monai.data.preload``): run the frozen model once over a datalist and
store the selected tokens of every image (the feature store).

The parser imports nothing heavy (no torch, MONAI or timm), so that ``--help`` and a mistyped option answer at once;
the work (:func:`fpt_monai.data.preload.run_command`) is imported after the arguments parse.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fpt_monai.data.store_options import PRECISION_NAMES, STORE_DTYPES
from fpt_monai.utils.runtime import add_runtime_arguments

__all__ = ["DESCRIPTION", "PROG", "build_parser", "main"]

PROG = "fpt-monai preload"
# the first line of fpt_monai.data.preload's docstring, which the parser showed before it moved here
DESCRIPTION = (
    "Preloading: run the frozen model once over a datalist and keep the selected tokens in a :class:`FeatureStore`."
)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``fpt-monai preload``; ``prog`` names the command in the usage line."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    p.add_argument("--datalist", required=True, help="MONAI datalist JSON (fpt_monai.data.write_datalist)")
    p.add_argument("--store", required=True, help="feature store directory")
    p.add_argument("--splits", default="training,validation,test", help="datalist splits to preload")
    p.add_argument("--backbone", default="vit_base_patch16_384")
    p.add_argument("--pretrained", default="true", help="'true' (timm hub), 'false' (random) or a weight file")
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--layers", default=None, help="e.g. 6-11; default: the variant's")
    p.add_argument("--variant", default="fpt_plus", choices=["fpt_plus", "fpt"])
    p.add_argument("--token-ratio", type=float, default=0.2)
    p.add_argument("--token-importance", default="global", choices=["global", "class_token"])
    p.add_argument("--pos-interp", default="legacy", choices=["legacy", "timm"])
    p.add_argument("--normalization", default="auto", help="dataset name, auto, backbone, or JSON [mean, std]")
    p.add_argument("--dtype", default="float16", choices=list(STORE_DTYPES), help="stored dtype")
    p.add_argument(
        "--precision", default="fp32", choices=list(PRECISION_NAMES), help="frozen model's compute precision (autocast)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--device", default=None)
    p.add_argument("--layer-norm-eps", type=float, default=None, help="LayerNorm eps of the frozen model")
    p.add_argument("--pooled", action="store_true", help="also store the pooled features (linear probe, hybrid head)")
    p.add_argument("--no-progress", action="store_true")
    add_runtime_arguments(p)
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``; ``--help`` and bad arguments exit here), then preload: 0 when done."""
    args = build_parser(prog).parse_args(argv)
    from fpt_monai.data.preload import run_command

    return run_command(args)
