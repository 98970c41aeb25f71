"""Export a trained FPT bundle (TorchScript, the heatmap explainer, ONNX) and check the exports against PyTorch.

Every setting comes from the bundle's record (models/model_config.json); see fpt_monai.export.

    python scripts/export_bundle.py --bundle-root outputs/demo_bundle
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle-root", required=True, help="the trained bundle (models/model.pt and model_config.json)")
    p.add_argument("--pretrained", default=None, help="the frozen model's weight file, if it moved since training")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--batch-size", type=int, default=3, help="batch of the agreement check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed probability difference")
    args = p.parse_args(argv)
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
    return report


if __name__ == "__main__":
    from fpt_monai.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    main()
