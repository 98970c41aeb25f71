# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The whole FPT preprocessing for one mode and phase, as one MONAI ``Compose`` (used by the bundle configs)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from monai.transforms import Compose, DeleteItemsd, NormalizeIntensityd

from fpt_monai.transforms.io import LoadMedicalImaged
from fpt_monai.transforms.views import LPMViewd, SideViewd

__all__ = ["FPT_MODES", "fpt_transforms"]

FPT_MODES = ("preload", "online", "inference")


def fpt_transforms(
    mode: str,
    train: bool,
    img_size: int = 512,
    side_img_size: int = 128,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    store=None,
    channels: int = 3,
    window: Sequence[float] | None = None,
) -> Compose:
    """Preprocessing of FPT's inputs.

    - ``"preload"``: load the image, make the (augmented in training) side view, add the stored keys/values of the
      item from ``store``, drop the full-resolution image. The frozen model's view is never made.
    - ``"online"``: load the image, make the side view and the LPM view (``image``, never augmented).
    - ``"inference"``: load the image and make the LPM view only (the network derives the side view).

    Args:
        mode: ``"preload"``, ``"online"`` or ``"inference"``.
        train: augment the side view.
        img_size: LPM resolution.
        side_img_size: side resolution.
        mean, std: normalisation of both views.
        store: a :class:`~fpt_monai.data.FeatureStore` or its directory (``"preload"`` only).
        channels, window: see :class:`~fpt_monai.transforms.LoadMedicalImaged`.
    """
    from fpt_monai.transforms.tokens import LoadPreloadedTokensd

    if mode not in FPT_MODES:
        raise ValueError(f"mode must be one of {FPT_MODES}, got {mode!r}.")
    mean, std = list(mean), list(std)
    steps: list = [LoadMedicalImaged("image", channels=channels, window=window)]
    if mode != "inference":
        steps.append(SideViewd("image", output_key="image_side", size=side_img_size, train=train))
        steps.append(NormalizeIntensityd("image_side", subtrahend=mean, divisor=std, channel_wise=True))
    if mode == "preload":
        if store is None or (isinstance(store, (str, os.PathLike)) and not os.path.isdir(store)):
            raise ValueError(f"mode 'preload' needs an existing feature store, got {store!r}; run the preload step.")
        steps.append(LoadPreloadedTokensd(store))
        steps.append(DeleteItemsd("image"))
    else:
        steps.append(LPMViewd("image", size=img_size))
        steps.append(NormalizeIntensityd("image", subtrahend=mean, divisor=std, channel_wise=True))
    return Compose(steps)
