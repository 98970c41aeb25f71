"""What ``python -m fpt_monai.check`` measures with: the papers' setting on a real device, or a tiny one that runs in
seconds on a CPU (the test of the command itself)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

__all__ = ["SECTIONS", "CheckSettings", "default_budgets"]

#: The sections in the order they run.
SECTIONS = ("paper_benchmark", "preload_precision", "bundle", "resolution")


def default_budgets(tiny: bool) -> dict[str, float]:
    """Seconds each section may take: the full check fits in 10 minutes on a GPU; the tiny one in about a minute."""
    if tiny:
        return {"paper_benchmark": 60.0, "preload_precision": 60.0, "bundle": 120.0, "resolution": 90.0}
    return {"paper_benchmark": 150.0, "preload_precision": 60.0, "bundle": 180.0, "resolution": 210.0}


@dataclasses.dataclass
class CheckSettings:
    """Settings shared by every section (written to ``<work_dir>/settings.json`` for the section processes).

    Args:
        device: torch device of every measurement.
        tiny: a tiny model and sizes (seconds on a CPU) instead of the papers' setting.
        out_dir: where the report goes.
        work_dir: scratch folder of this run (demo data, store, bundle), removed afterwards unless kept.
        backbone: timm name of the frozen model (random weights unless ``pretrained``).
        pretrained: a weight file for the frozen model, or ``""`` for random weights (speed and memory do not
            depend on the weights; token agreement is more telling with real ones).
        img_size: the frozen model's input size (the papers': 512).
        batch_size: training batch of the paper benchmark (the papers': 16).
        resolution_sizes: input sizes of the resolution sweep.
        resolution_batch_size: batch of the resolution sweep.
        precision_images: images of the preload-precision section.
        demo_per_class: demo images per class of the bundle section.
        demo_img_size: size of those images (and the bundle's ``img_size``).
        bundle_epochs: training epochs of each bundle run (throughput from the epochs after the first).
        budgets: seconds per section.
    """

    device: str = "cpu"
    tiny: bool = False
    out_dir: str = "outputs/check"
    work_dir: str = ""
    backbone: str = "vit_base_patch16_384"
    pretrained: str = ""
    img_size: int = 512
    batch_size: int = 16
    resolution_sizes: tuple[int, ...] = (512, 1024, 2048)
    resolution_batch_size: int = 4
    precision_images: int = 32
    demo_per_class: int = 32
    demo_img_size: int = 512
    bundle_epochs: int = 3
    budgets: dict[str, float] = dataclasses.field(default_factory=lambda: default_budgets(False))

    @classmethod
    def tiny_defaults(cls, **overrides) -> CheckSettings:
        """A ViT-Tiny at 64 px with a handful of images: every code path, in seconds."""
        base = {
            "tiny": True,
            "backbone": "vit_tiny_patch16_224",
            "img_size": 64,
            "batch_size": 2,
            "resolution_sizes": (32, 64),
            "resolution_batch_size": 1,
            "precision_images": 6,
            "demo_per_class": 3,
            "demo_img_size": 64,
            "bundle_epochs": 1,
            "budgets": default_budgets(True),
        }
        return cls(**{**base, **overrides})

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CheckSettings:
        data = json.loads(Path(path).read_text())
        data["resolution_sizes"] = tuple(data["resolution_sizes"])
        return cls(**data)
