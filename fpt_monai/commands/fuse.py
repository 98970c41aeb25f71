"""``fpt-monai fuse``: one bundle from a trained FPT/FPT+ bundle and a trained linear probe bundle, their
probabilities blended with the weight chosen on the validation split (:func:`fpt_monai.engines.fuse.fuse_bundles`).
The parser imports nothing heavy."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

DESCRIPTION = (
    "Fuse a trained FPT/FPT+ bundle and a trained linear probe bundle (same frozen model and classes; the probe may "
    "use another img_size) into one bundle whose model blends their probabilities, the weight chosen on the "
    "validation split. The fused bundle evaluates, exports and deploys like any other."
)


def _weights(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--weights takes numbers separated by commas, got {text!r}") from err
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--weights takes numbers in [0, 1], got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--batch-size takes a whole number, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"--batch-size must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``fpt-monai fuse``."""
    p = argparse.ArgumentParser(prog="fpt-monai fuse", description=DESCRIPTION)
    p.add_argument("--fpt", required=True, help="the trained FPT/FPT+ bundle")
    p.add_argument("--probe", required=True, help="the trained linear probe bundle (configs/methods/linear_probe.yaml)")
    p.add_argument("--out", required=True, help="the fused bundle's folder (created)")
    p.add_argument("--pretrained", default=None, help="the frozen model's weight file, if it moved since training")
    p.add_argument(
        "--weights",
        type=_weights,
        default=None,
        help="FPT's candidate weights, comma-separated (default 0,0.1,...,1; 1 is FPT alone, 0 the probe alone)",
    )
    p.add_argument("--batch-size", type=_positive, default=8, help="batch of the validation pass")
    p.add_argument("--device", default=None, help="where the validation pass runs (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace a fused model already in --out")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, fuse the two bundles and print the validation table. Returns 0; bundles that cannot be fused
    raise :class:`fpt_monai.engines.fuse.FuseError` (its message names both bundles and the fix)."""
    args = build_parser().parse_args(argv)
    from fpt_monai.engines.fuse import fuse_bundles
    from fpt_monai.engines.probability_blend import DEFAULT_BLEND_WEIGHTS

    report = fuse_bundles(
        args.fpt,
        args.probe,
        args.out,
        pretrained=args.pretrained,
        weights=args.weights or DEFAULT_BLEND_WEIGHTS,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
    )
    print("validation: FPT weight -> AUC, loss")
    for row in report["table"]:
        mark = "  <- chosen" if row["weight"] == report["weight"] else ""
        print(f"  {row['weight']:.2f} -> {row['auc']:.4f}, {row['loss']:.4f}{mark}")
    print(f"wrote the fused bundle {report['out']} (FPT weight {report['weight']:.2f}); evaluate, export and deploy it")
    return 0
