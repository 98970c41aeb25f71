# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The whole FPT preprocessing for one mode and phase, as one MONAI ``Compose`` (used by the bundle configs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    tokens: Callable | None = None,
    side_view: bool = True,
    channels: int = 3,
    window: Sequence[float] | None = None,
    frozen_view: Callable | None = None,
) -> Compose:
    """Preprocessing of FPT's inputs.

    - ``"preload"``: load the image, make the (augmented in training) side view, add the item's stored features with
      ``tokens``, drop the full-resolution image. The frozen model's view is never made. With ``side_view=False``
      (a linear probe on stored pooled features) the image is not even read: only ``tokens`` runs.
    - ``"online"``: load the image, make the side view and the LPM view (``image``, never augmented).
    - ``"inference"``: load the image and make the LPM view only (the network derives the side view).

    Args:
        mode: ``"preload"``, ``"online"`` or ``"inference"``.
        train: augment the side view.
        img_size: LPM resolution.
        side_img_size: side resolution.
        mean, std: normalisation of both views.
        tokens: the transform that adds the stored features (``"preload"`` only), e.g.
            ``fpt_monai.data.LoadPreloadedTokensd(store, fields=("tokens",))``.
        side_view: make the side view (``"preload"``/``"online"``). Defaults to ``True``.
        channels, window: see :class:`~fpt_monai.transforms.LoadMedicalImaged`.
        frozen_view: a geometric transform of the loaded image placed right after loading, before both views
            (:mod:`fpt_monai.transforms.frozen_views`): training's draw of a stored view (``RandFrozenViewd``, which
            also points ``tokens`` at the view's stored id) or the preload's ``FrozenViewd``. ``None``: none.

    Raises:
        ValueError: unknown mode, or ``"preload"`` without ``tokens``.
    """
    if mode not in FPT_MODES:
        raise ValueError(f"mode must be one of {FPT_MODES}, got {mode!r}.")
    if mode == "preload" and tokens is None:
        raise ValueError(
            "mode 'preload' needs the transform that adds the stored features (tokens=fpt_monai.data."
            "LoadPreloadedTokensd(store)); run the preload step to build the store."
        )
    mean, std = list(mean), list(std)
    # the frozen view comes first: the side view, the LPM view and the token lookup all follow the drawn view
    view = [frozen_view] if frozen_view is not None else []
    if mode == "preload" and not side_view:
        return Compose([*view, tokens])
    steps: list = [LoadMedicalImaged("image", channels=channels, window=window), *view]
    if mode != "inference" and side_view:
        steps.append(SideViewd("image", output_key="image_side", size=side_img_size, train=train))
        steps.append(NormalizeIntensityd("image_side", subtrahend=mean, divisor=std, channel_wise=True))
    if mode == "preload":
        steps.append(tokens)
        steps.append(DeleteItemsd("image"))
    else:
        steps.append(LPMViewd("image", size=img_size))
        steps.append(NormalizeIntensityd("image", subtrahend=mean, divisor=std, channel_wise=True))
    return Compose(steps)
