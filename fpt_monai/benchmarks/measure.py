"""What the benchmarks share: a process's peak memory on a CPU and an image read into the frozen model's view without
MONAI (PIL), so that a benchmark of the networks alone needs neither MONAI nor a demo of the bundle's readers."""

from __future__ import annotations

import resource
from collections.abc import Sequence

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "peak_rss_mb", "pil_view"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pil_view(
    path: str,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resample: str = "BICUBIC",
) -> torch.Tensor:
    """The RGB image at ``path`` resized to ``size`` x ``size`` and normalised: ``[3, size, size]`` float32."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size), getattr(Image.Resampling, resample))
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).float()
    return (x / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
