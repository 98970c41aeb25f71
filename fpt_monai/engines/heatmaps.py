# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Prompt-attention heatmaps as overlay PNGs: for bundle inference (``heatmaps: true``) and the Deploy app."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from fpt_monai.utils.atomic import atomic_write
from fpt_monai.utils.safe_paths import output_path, safe_file_name

__all__ = ["HeatmapWriter", "denormalize", "heatmap_name", "heatmap_overlay", "save_heatmap", "save_png"]

# A name kept as it is: letters, digits, '.', '-', single '_' between them, no '_frame<k>' ending. Every other name
# gets '__' and a hash of the value, which no kept name contains, and a frame's '_frame<k>' ending, which no kept name
# has: so two different (value, frame) pairs never get the same name.
_VERBATIM = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*(?:_[A-Za-z0-9.-]+)*")
_FRAME_ENDING = re.compile(r"_frame[0-9]+$")
_MAX_READABLE = 150  # characters of the readable part; the hash, the frame and the suffix fit under safe_paths' 200
HASH_LENGTH = 12


def heatmap_name(value: str, frame: int | None = None, hashed: bool = False) -> str:
    """A file name (without suffix) for the heatmap of one item, unique per ``(value, frame)``: the whole id or
    SOP Instance UID with its extension and folders, e.g. ``case.png`` -> ``case.png``, ``1.2.840.1`` ->
    ``1.2.840.1``. A value that is not a plain file name (path separators, ``__``, other characters, too long)
    becomes :func:`~fpt_monai.utils.safe_paths.safe_file_name` of it plus ``__`` and 12 hex digits of its SHA-256, e.g.
    ``a/b.png`` -> ``a__b.png__<hash>``, so that ``a/b.png`` and ``a__b.png`` stay apart. A frame of a multi-frame
    image adds ``_frame<k>``. The name passes :func:`~fpt_monai.utils.safe_paths.safe_file_name` unchanged.

    Args:
        value: the item's id (bundle inference) or SOP Instance UID (Deploy): untrusted text.
        frame: the frame of a multi-frame image, or ``None``.
        hashed: add the hash even to a plain name (for names that differ only in letter case, which a
            case-insensitive file system would mix up).
    """
    value = str(value)
    plain = len(value) <= _MAX_READABLE and _VERBATIM.fullmatch(value) and not _FRAME_ENDING.search(value)
    if plain and not hashed:
        name = value
    else:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LENGTH]
        name = f"{safe_file_name(value)[:_MAX_READABLE].rstrip('_')}__{digest}"
    return name if frame is None else f"{name}_frame{int(frame)}"


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


class HeatmapWriter:
    """Write ``<output_dir>/heatmaps/<name>.png`` for every image an inference evaluator sees, ``<name>`` from
    :func:`heatmap_name` of its whole id (``case.png`` -> ``heatmaps/case.png.png``; ``a/b.png`` ->
    ``heatmaps/a__b.png__<hash>.png``; ``_frame<k>`` for a frame of a multi-frame image): the fine-grained prompts'
    attention over the frozen model's selected tokens (:class:`~fpt_monai.networks.FPTExplainer`), blended over the
    image at its original size. Costs one more pass of the frozen model per batch.

    Every item gets its own file: two names that differ only in letter case (one file on a case-insensitive file
    system) get the hash too. The file of each ``(id, frame)`` is left in ``engine.state.heatmap_files`` (relative
    to ``output_dir``, kept in ``engine.state.heatmap_root``), where :class:`~fpt_monai.engines.PredictionWriter`
    names it in its prediction rows.

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
        self.files: dict[tuple[str, int | None], str] = {}  # (id, frame) -> path relative to output_dir
        self._taken: dict[str, tuple[str, int | None]] = {}  # case-folded name -> its (id, frame)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine: Engine | None = None) -> None:
        self.written, self.files, self._taken = [], {}, {}
        if engine is not None:
            engine.state.heatmap_files, engine.state.heatmap_root = self.files, self.output_dir.parent

    def name(self, item_id: str, frame: int | None) -> str:
        """The file name (without ``.png``) of one item's heatmap in this run (see the class docstring)."""
        key = (item_id, frame)
        name = heatmap_name(item_id, frame)
        if self._taken.setdefault(name.casefold(), key) != key:
            name = heatmap_name(item_id, frame, hashed=True)
            self._taken.setdefault(name.casefold(), key)
        return name

    def __call__(self, engine: Engine) -> None:
        items = engine.state.batch
        images = torch.stack([torch.as_tensor(item[self.image_key]) for item in items])
        device = next(self.explainer.parameters()).device
        with torch.no_grad():
            _, heatmaps = self.explainer.eval()(images.to(device))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        engine.state.heatmap_files, engine.state.heatmap_root = self.files, self.output_dir.parent
        for item, heat in zip(items, heatmaps, strict=True):
            item_id = str(item.get("id", len(self.written)))
            frame = item.get("frame")  # one heatmap per frame of a multi-frame image (frames="every")
            frame = int(torch.as_tensor(frame).reshape(-1)[0]) if frame is not None else None
            # the id comes from the input (file names, a datalist): output_path keeps the file inside the folder
            path = output_path(self.output_dir, self.name(item_id, frame), ".png")
            self.written.append(save_heatmap(path, item[self.image_key], heat, self.mean, self.std))
            self.files[(item_id, frame)] = path.relative_to(self.output_dir.parent).as_posix()
