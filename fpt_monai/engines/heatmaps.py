# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Prompt-attention heatmaps as overlay PNGs: for bundle inference (``heatmaps: true``) and the Deploy app."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from fpt_monai.atomic import atomic_write
from fpt_monai.safe_paths import output_path

__all__ = ["HeatmapWriter", "denormalize", "heatmap_overlay", "save_heatmap", "save_png"]


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the channel-wise normalisation of a ``[C, H, W]`` network input; values clipped to [0, 1]."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image * s + m).clamp(0, 1)


def heatmap_overlay(
    image: torch.Tensor,
    heatmap: torch.Tensor,
    size: Sequence[int] | None = None,
    alpha: float = 0.45,
    colormap: str = "jet",
) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]``: the image in grey or colour with the heatmap blended on top.

    Args:
        image: ``[C, h, w]`` in [0, 1] (1 or 3 channels).
        heatmap: ``[h', w']`` or ``[1, h', w']`` in [0, 1].
        size: output ``(H, W)``, e.g. the original image's; defaults to the image's.
        alpha: opacity of the heatmap.
        colormap: a matplotlib colormap name.
    """
    import matplotlib

    size = tuple(int(v) for v in (size if size is not None else image.shape[-2:]))
    image = image.detach().float().cpu()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    heat = heatmap.detach().float().cpu().reshape(1, 1, *heatmap.shape[-2:])
    heat = F.interpolate(heat, size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    colours = matplotlib.colormaps[colormap](heat)[..., :3]
    rgb = (1 - alpha) * image.clamp(0, 1).permute(1, 2, 0).numpy() + alpha * colours
    return (rgb * 255).round().astype(np.uint8)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB ``uint8`` array as a PNG, atomically."""
    from PIL import Image

    atomic_write(path, lambda f: Image.fromarray(rgb).save(f, format="PNG"))


def save_heatmap(
    path: str | os.PathLike,
    image: torch.Tensor,
    heatmap: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> Path:
    """Blend ``heatmap`` over the normalised network input ``image`` ``[C, h, w]`` and save it as a PNG at the image's
    original size (its ``spatial_shape`` metadata, set by the loader; else its own size)."""
    size = getattr(image, "meta", {}).get("spatial_shape", image.shape[-2:])
    save_png(path, heatmap_overlay(denormalize(torch.as_tensor(image), mean, std), heatmap, size=np.asarray(size)[-2:]))
    return Path(path)


def _stem(item_id: str) -> str:
    return item_id[: -len(".nii.gz")] if item_id.endswith(".nii.gz") else os.path.splitext(item_id)[0]


class HeatmapWriter:
    """Write ``<output_dir>/heatmaps/<id>.png`` (``<id>_frame<k>.png`` for a frame of a multi-frame image) for every
    image an inference evaluator sees: the fine-grained prompts' attention over the frozen model's selected tokens
    (:class:`~fpt_monai.networks.FPTExplainer`), blended over the image at its original size. Costs one more pass of
    the frozen model per batch.

    Args:
        network: the evaluator's FPT (with its frozen model).
        output_dir: the heatmaps go to ``output_dir/heatmaps``.
        mean, std: the normalisation of the network input, to show the image in its own colours.
        image_key: key of the LPM view in each item. Defaults to ``"image"``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        output_dir: str | os.PathLike,
        mean: Sequence[float],
        std: Sequence[float],
        image_key: str = "image",
    ) -> None:
        from fpt_monai.networks import FPTExplainer

        self.explainer = FPTExplainer(network)
        self.output_dir = Path(output_dir) / "heatmaps"
        self.mean, self.std = list(mean), list(std)
        self.image_key = image_key
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        items = engine.state.batch
        images = torch.stack([torch.as_tensor(item[self.image_key]) for item in items])
        device = next(self.explainer.parameters()).device
        with torch.no_grad():
            _, heatmaps = self.explainer.eval()(images.to(device))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for item, heat in zip(items, heatmaps, strict=True):
            stem = _stem(str(item.get("id", len(self.written))))
            if item.get("frame") is not None:  # one heatmap per frame of a multi-frame image (frames="every")
                stem += f"_frame{int(torch.as_tensor(item['frame']).reshape(-1)[0])}"
            path = output_path(self.output_dir, stem, ".png")
            self.written.append(save_heatmap(path, item[self.image_key], heat, self.mean, self.std))
