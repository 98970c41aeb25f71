"""``fpt-monai export``: export a trained FPT bundle (TorchScript, the heatmap explainer, ONNX) and check the exports
against PyTorch (:func:`fpt_monai.export.export_bundle`). The parser imports nothing heavy."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

DESCRIPTION = (
    "Export a trained FPT bundle (TorchScript, the heatmap explainer, ONNX) and check the exports against PyTorch. "
    "Every setting comes from the bundle's record (models/model_config.json)."
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``fpt-monai export`` (and of ``python scripts/export_bundle.py``)."""
    p = argparse.ArgumentParser(prog="fpt-monai export", description=DESCRIPTION)
    p.add_argument("--bundle-root", required=True, help="the trained bundle (models/model.pt and model_config.json)")
    p.add_argument("--pretrained", default=None, help="the frozen model's weight file, if it moved since training")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--batch-size", type=int, default=3, help="batch of the agreement check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed probability difference")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), export the bundle and print the agreement with PyTorch.

    Returns:
        The exit code, 0. A bundle that cannot be exported raises :class:`fpt_monai.export.ExportError` (its message
        names the file and the fix).
    """
    args = build_parser().parse_args(argv)
    from fpt_monai.export import export_bundle

    report = export_bundle(
        args.bundle_root,
        pretrained=args.pretrained,
        onnx=not args.no_onnx,
        batch_size=args.batch_size,
        tolerance=args.tolerance,
    )
    for name, diff in report["max_abs_prob_diff"].items():
        print(f"{name:>22}: max |p - p_pytorch| = {diff:.2e}")
    identity = report["identity"]
    print(
        f"model {identity['name']} (fpt_monai {identity['version']}), run {identity['run_id'] or 'untracked'}, "
        f"model.pt sha256 {identity['checkpoint_sha256']}"
    )
    print("wrote " + ", ".join(report["files"]) + " in models/")
    return 0
