"""``fpt-monai deploy`` (= ``python -m fpt_monai.deploy``): the MONAI Deploy app on a DICOM study folder.

The parser reads its defaults from the environment variables a MONAI Application Package sets (``HOLOSCAN_INPUT_PATH``,
``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``) and ``FPT_DEPLOY_*``; the app (MONAI Deploy SDK, holoscan, torch)
is imported only after the arguments parse.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from fpt_monai.transforms.dicom_objects import FRAME_POLICIES
from fpt_monai.utils.flags import as_bool

__all__ = ["build_parser", "main"]

DESCRIPTION = "Classify the DICOM images of a study folder with an exported FPT model (MONAI Deploy app)."


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="fpt-monai deploy", description=DESCRIPTION)
    p.add_argument("-i", "--input", default=env("HOLOSCAN_INPUT_PATH", "input"), help="DICOM study folder")
    p.add_argument("-o", "--output", default=env("HOLOSCAN_OUTPUT_PATH", "output"), help="output folder")
    p.add_argument("-m", "--model", default=env("HOLOSCAN_MODEL_PATH", "models"), help="model.ts or its folder")
    p.add_argument("--rules", default=env("FPT_DEPLOY_RULES"), help="series-selection rules: JSON file or text")
    p.add_argument("--heatmaps", action="store_true", default=as_bool(env("FPT_DEPLOY_HEATMAPS")), help="heatmap PNGs")
    p.add_argument("--device", default=env("FPT_DEPLOY_DEVICE", "cpu"), help="torch device, e.g. cuda:0")
    p.add_argument(
        "--frames",
        default=env("FPT_DEPLOY_FRAMES", "refuse"),
        help=f"multi-frame images: {' | '.join(FRAME_POLICIES)} (one prediction per frame) | a frame index",
    )
    p.add_argument("-l", "--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse (``--help`` and argument errors exit here), then run the app; its exit status."""
    build_parser().parse_args(argv)
    from fpt_monai.deploy.app import main as run_app

    return run_app(None if argv is None else list(argv))
