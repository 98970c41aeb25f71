# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Input normalisation: the reference's per-dataset statistics, ``auto`` statistics of a training split, or the
backbone's own pre-training statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from tqdm.auto import tqdm

from fpt_monai.transforms.io import read_image

__all__ = ["DATASET_STATS", "backbone_stats", "compute_mean_std", "resolve_normalization"]

# RGB mean / std computed on each training set at 512 px by the reference implementation (configs/dataset/*.yaml)
DATASET_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "messidor2": ((0.48436, 0.22381, 0.07583), (0.29392, 0.14722, 0.06351)),
    "ddr": ((0.42374, 0.26095, 0.12840), (0.29483, 0.20167, 0.13668)),
    "isic2016": ((0.72439, 0.61872, 0.56646), (0.16385, 0.17090, 0.19106)),
    "isic2018": ((0.76356, 0.54661, 0.57075), (0.14041, 0.15191, 0.16923)),
    "ddsm": ((0.20267,) * 3, (0.22467,) * 3),
    "cmmd": ((0.16735,) * 3, (0.18017,) * 3),
    "covid": ((0.49834, 0.49864, 0.49895), (0.24262, 0.24259, 0.24264)),
    "chncxr": ((0.61055,) * 3, (0.25848,) * 3),
}


def backbone_stats(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the timm backbone was pre-trained with (e.g. 0.5/0.5 for the Google ViTs, ImageNet for DINOv2)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone.split(".")[0] if "." not in backbone else backbone)
    if cfg is None:
        raise ValueError(f"no pretrained configuration for backbone {backbone!r} in timm.")
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def compute_mean_std(
    items: Sequence[dict], size: int = 512, channels: int = 3, progress: bool = True
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``items`` (datalist items) resized to ``size x size``, in one pass (float64 sums).

    The reference makes two passes (mean, then std) over the training split at the LPM resolution; one pass with
    sums of values and squares gives the same statistics.
    """
    if not items:
        raise ValueError("cannot compute normalisation statistics of an empty split.")
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for item in tqdm(items, desc="mean/std", disable=not progress, unit="img"):
        img = TF.resize(torch.from_numpy(read_image(item["image"], channels=channels)), [size, size], antialias=True)
        arr = img.double().reshape(channels, -1)
        total += arr.sum(1).numpy()
        total_sq += (arr**2).sum(1).numpy()
        count += arr.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def resolve_normalization(
    norm: str | Sequence[Sequence[float]],
    backbone: str | None = None,
    items: Sequence[dict] | None = None,
    size: int = 512,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for a normalisation setting.

    Args:
        norm: a dataset name of :data:`DATASET_STATS` (reference behaviour), ``"auto"`` (computed on ``items``),
            ``"backbone"`` (the backbone's pre-training statistics), or ``[mean, std]``.
        backbone: timm name, for ``"backbone"``.
        items: training items, for ``"auto"``.
        size: resolution for ``"auto"``.
    """
    if isinstance(norm, str):
        key = norm.lower()
        if key in DATASET_STATS:
            return DATASET_STATS[key]
        if key == "auto":
            if not items:
                raise ValueError("normalization 'auto' needs the training items to compute statistics on.")
            return compute_mean_std(items, size=size)
        if key == "backbone":
            if backbone is None:
                raise ValueError("normalization 'backbone' needs the backbone name.")
            return backbone_stats(backbone)
        raise ValueError(
            f"unknown normalization {norm!r}; use 'auto', 'backbone', [mean, std] or one of {sorted(DATASET_STATS)}."
        )
    mean, std = norm
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"normalization [mean, std] = {norm!r} needs equal lengths and positive std.")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
