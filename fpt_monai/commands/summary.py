"""``fpt-monai summary``: what a trained bundle holds (:mod:`fpt_monai.reports.summary`); with two bundles, DeLong's
paired test of their best weights on the same test images. The parser imports nothing heavy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

DESCRIPTION = (
    "Print what a trained bundle holds: its test metrics, its latest predictions, where the files are, and how to "
    "open the MLflow UI on its store."
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``fpt-monai summary`` (and of ``python scripts/run_summary.py``)."""
    p = argparse.ArgumentParser(prog="fpt-monai summary", description=DESCRIPTION)
    p.add_argument("bundle_root", nargs="?", default="outputs/demo_bundle", help="the trained bundle's folder")
    p.add_argument(
        "other_bundle",
        nargs="?",
        default=None,
        help="a second bundle trained on the same datalist: its summary and DeLong's paired test of the two",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and print the summary (and the comparison).

    Returns:
        The exit code: 0, or 1 when a folder is not a trained and evaluated bundle (the reason on stderr).
    """
    args = build_parser().parse_args(argv)
    from fpt_monai.reports.summary import SummaryError, comparison, summary

    try:
        print(summary(args.bundle_root))
        if args.other_bundle:
            print(summary(args.other_bundle))
            print(comparison(args.bundle_root, args.other_bundle))
    except SummaryError as err:
        print(f"fpt_monai: error: {err}", file=sys.stderr)
        return 1
    return 0
