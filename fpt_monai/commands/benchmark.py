"""``fpt-monai benchmark <name> [options]``: the benchmarks of :mod:`fpt_monai.benchmarks` (docs/benchmarks.md)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS = {
    "training_cost": "trainable parameters, peak training memory and speed of FPT, FPT+ and the baselines",
    "resolution": "the same at 512-2048 px: tokens, k, preload, store size, FPT+ and full fine-tuning",
    "precision": "preload in fp32/bf16/fp16 against a bare timm forward; token agreement with fp32",
    "preload_speed": "preload throughput and the feature store's read speed",
    "epoch": "training epochs through the bundle from a real store, resident copy on and off",
    "importance": "the frozen extractor's token importance against a bare forward at high resolution",
}


def _usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["usage: fpt-monai benchmark <name> [options]   (fpt-monai benchmark <name> --help)", "", "benchmarks:"]
    return "\n".join(lines + [f"  {name.ljust(width)}  {text}" for name, text in BENCHMARKS.items()])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"{_usage()}\n\nfpt-monai benchmark: error: unknown benchmark '{name}'", file=sys.stderr)
        return 2
    module = importlib.import_module(f"fpt_monai.benchmarks.{name}")
    # the benchmarks parse sys.argv (some re-run themselves per measurement with the same arguments)
    sys.argv = [f"fpt-monai benchmark {name}", *rest]
    module.run()
    return 0
