"""``fpt-monai study``: accuracy study of any methods on any labelled dataset, by k-fold cross-validation through the
MONAI bundle (:mod:`fpt_monai.study`). The parser imports nothing heavy; the study is imported after parsing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fpt_monai.study import __doc__ as _STUDY_DOC
from fpt_monai.study.defaults import DEFAULT_LRS, DINOV2_WEIGHTS, ISIC_CSV

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``fpt-monai study`` (and of ``python scripts/study.py``)."""
    p = argparse.ArgumentParser(prog="fpt-monai study", description=_STUDY_DOC.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--datalist", help="datalist JSON (fpt_monai.data.datalist_from_json)")
    source.add_argument("--csv", help=f"CSV of images and labels (default: the ISIC CSV {ISIC_CSV})")
    source.add_argument("--image-folder", help="root/<split>/<class>/<image> tree")
    p.add_argument("--path-column", help="CSV column with the image path or id (default 'path'; ISIC: isic_id)")
    p.add_argument("--label-column", help="CSV column with the label (default 'label')")
    p.add_argument("--path-format", help="turns the path column into a path, e.g. 'images/{}.jpg' (default '{}')")
    p.add_argument("--class-names", help="comma-separated class names in index order (CSV / image folder)")
    p.add_argument("--folds", type=int, default=5, help="stratified folds over all images; 0: the fixed split as is")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation part of each fold's non-test images")
    p.add_argument("--split-seed", type=int, default=0, help="random state of the fold and validation splits")
    p.add_argument("--methods", default="fpt_plus,fpt,linear_probe,full_finetune", help="preset names, comma-separated")
    p.add_argument("--lrs", default="", help=f"'method=lr1,lr2;...' (default: built-in grids, else {DEFAULT_LRS})")
    p.add_argument(
        "--baseline",
        help="a studied method every other one is also compared with (paired), e.g. the plain recipe when studying "
        "its options: each option's gain alone",
    )
    p.add_argument(
        "--reference",
        help="method the others are compared with first (default: the probe, logreg_sklearn[@size] or linear_probe*, "
        "with the highest mean validation AUC)",
    )
    p.add_argument(
        "--fuse",
        default=None,
        help="'A:B;C:D': blends fuse(A,B) of two methods' probabilities, the weight chosen per fold on validation "
        "(default: every FPT-family method with the reference probe; 'none': no fusion)",
    )
    p.add_argument(
        "--probe-img-sizes",
        default="",
        help="comma list: logreg_sklearn also on the frozen model's pooled features at these resolutions "
        "(logreg_sklearn@<size>, from a pooled-only store the study builds)",
    )
    p.add_argument(
        "--probe-views",
        type=int,
        default=1,
        help="K > 1: the logistic regressions also fitted on K stored views of every training image (the plain one "
        "and the bundle's store_view_transforms, as store_views K stores them): <probe>+viewsK, and <probe>+viewsK+tta "
        "with validation and test averaging the K views' probabilities; the probe store then keeps K views of every "
        "image (K times its size and preload)",
    )
    p.add_argument("--seeds", default="0,1,2", help="the first one chooses the learning rate")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the bundle's, per CPUs)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--weights", default=str(DINOV2_WEIGHTS), help="pre-trained weights file (the bundle's pretrained)")
    p.add_argument("--img-size", type=int, default=518)
    p.add_argument("--side-img-size", type=int, default=0, help="FPT/FPT+ side view; 0: the preset's")
    p.add_argument("--normalization", default="backbone", help="the bundle's normalization (backbone keeps one store)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra bundle override for every run (value parsed as JSON when possible); repeatable",
    )
    p.add_argument("--out-dir", default="outputs/study")
    p.add_argument("--verbose", action="store_true", help="show the bundle's log messages and every warning")
    p.add_argument(
        "--no-logreg",
        action="store_true",
        help="skip the scikit-learn logistic regression on stored pooled features (C chosen on validation)",
    )
    from fpt_monai.utils.runtime import add_runtime_arguments

    add_runtime_arguments(p, verbose=False)  # --threads, also passed to every bundle run
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), then run the study.

    Returns:
        The exit code: 0 when the study finished (errors exit through ``SystemExit`` with the reason).
    """
    args = build_parser().parse_args(argv)
    from fpt_monai.study.run import run_study

    return run_study(args)
