# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The two views of one image that FPT needs (Huang et al., MICCAI 2024, §2.1; spec §2.5):

- the LPM view: the whole image resized to the frozen model's resolution (e.g. 512 x 512), never augmented, so its
  tokens can be computed once and stored;
- the side view: the image at the side network's resolution (128 or 224), augmented in training with the reference
  recipe (horizontal flip, brightness/contrast jitter, random resized crop).

Both start from the original-resolution image loaded by :class:`~fpt_monai.transforms.LoadMedicalImaged` (float
``[C, H, W]`` in ``[0, 1]``); normalisation comes after, with MONAI's ``NormalizeIntensityd(channel_wise=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = ["LPMViewd", "SideViewd", "random_resized_crop_box"]


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    # bilinear with anti-aliasing = PIL's Resize((size, size)) of the reference pipeline
    out = TF.resize(img.as_tensor() if hasattr(img, "as_tensor") else img, [size, size], antialias=True)
    # keep the file name and original size (``spatial_shape``): predictions and heatmaps refer back to them
    return MetaTensor(out, meta=img.meta) if isinstance(img, MetaTensor) else out


class LPMViewd(MapTransform):
    """Resize the image under each key to ``size x size`` for the frozen model (no augmentation, ever).

    Args:
        keys: keys of the images to resize. Defaults to ``"image"``.
        size: LPM resolution. Defaults to 512.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection = "image", size: int = 512, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if size < 1:
            raise ValueError(f"size must be positive, got {size}.")
        self.size = int(size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _resize(d[key], self.size)
        return d


def random_resized_crop_box(
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    rng,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` drawn like torchvision's ``RandomResizedCrop.get_params`` (10 tries, then a centre
    crop), from a numpy ``RandomState`` so that MONAI's ``set_determinism`` and ``set_random_state`` apply."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.randint(0, height - h + 1)), int(rng.randint(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class SideViewd(Randomizable, MapTransform):
    """Make the side network's view of ``keys`` under ``output_key``: augmented in training, resized otherwise.

    Training (``train=True``), in the reference order: horizontal flip with ``flip_prob``, colour jitter
    (brightness and contrast factors uniform in ``[1 - b, 1 + b]``, applied in random order like torchvision's
    ``ColorJitter``), then a random resized crop of ``scale`` area and ``ratio`` aspect, resized to
    ``size x size``. The reference wrapped the crop in ``RandomApply``; we always resize (spec §6.18). Evaluation:
    resize to ``size x size``.

    Args:
        keys: the source image key (one). Defaults to ``"image"``.
        output_key: where the side view goes. Defaults to ``"image_side"``.
        size: side resolution (128 for FPT+, 224 for FPT). Defaults to 128.
        train: augment. Defaults to ``False``.
        flip_prob: horizontal flip probability. Defaults to 0.5.
        brightness: brightness jitter amplitude. Defaults to 0.2.
        contrast: contrast jitter amplitude. Defaults to 0.2.
        scale: crop area range. Defaults to ``(0.8, 1.0)``.
        ratio: crop aspect-ratio range. Defaults to ``(0.7, 1.3)``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        output_key: str = "image_side",
        size: int = 128,
        train: bool = False,
        flip_prob: float = 0.5,
        brightness: float = 0.2,
        contrast: float = 0.2,
        scale: Sequence[float] = (0.8, 1.0),
        ratio: Sequence[float] = (0.7, 1.3),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SideViewd takes one source key, got {self.keys}.")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}.")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}.")
        if not (0.0 <= brightness < 1.0 and 0.0 <= contrast < 1.0):
            raise ValueError("brightness and contrast must be in [0, 1).")
        if not (0.0 < scale[0] <= scale[1] <= 1.0 and 0.0 < ratio[0] <= ratio[1]):
            raise ValueError(f"invalid crop scale {scale} or ratio {ratio}.")
        self.output_key = output_key
        self.size = int(size)
        self.train = bool(train)
        self.flip_prob = flip_prob
        self.brightness = brightness
        self.contrast = contrast
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)

    def randomize(self, data: torch.Tensor) -> None:
        h, w = data.shape[-2:]
        self._flip = self.R.rand() < self.flip_prob
        self._b = self.R.uniform(1 - self.brightness, 1 + self.brightness)
        self._c = self.R.uniform(1 - self.contrast, 1 + self.contrast)
        self._brightness_first = self.R.rand() < 0.5
        self._box = random_resized_crop_box(h, w, self.scale, self.ratio, rng=self.R)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        (key,) = self.keys
        img = d[key]
        img = img.as_tensor() if hasattr(img, "as_tensor") else img
        if not self.train:
            d[self.output_key] = _resize(img, self.size)
            return d
        self.randomize(img)
        if self._flip:
            img = TF.horizontal_flip(img)
        jitter = [lambda x: TF.adjust_brightness(x, self._b), lambda x: TF.adjust_contrast(x, self._c)]
        for op in jitter if self._brightness_first else jitter[::-1]:
            img = op(img)
        top, left, h, w = self._box
        d[self.output_key] = TF.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
        return d
