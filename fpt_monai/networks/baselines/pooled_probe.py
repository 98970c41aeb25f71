# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Linear probing on stored pooled features: the cheapest baseline of the FPT papers, trained in seconds.

The frozen model's final class token and mean patch token (``[B, 2 * D]``) are computed once by the preload step and
kept in the feature store; training reads them and fits :class:`~fpt_monai.networks.PooledHead`, without building
the frozen model or decoding an image. For inference (and export) the same network built with ``frozen_model=True``
computes the features from the image, so it keeps the one-tensor forward of every method.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from fpt_monai.networks.frozen_vit import FrozenViTExtractor
from fpt_monai.networks.pooled_head import PooledHead
from fpt_monai.networks.spec import recorded
from fpt_monai.networks.trainable_state import keep_frozen_model_out_of_state_dict

__all__ = ["PooledLinearProbe"]


@recorded
class PooledLinearProbe(nn.Module):
    """Linear probe on the frozen model's pooled features (class token + mean patch token after the final norm).

    Args:
        num_classes: number of logits. Defaults to 2.
        backbone: timm ViT name. Defaults to ``"vit_base_patch16_384"``.
        pretrained: ``True``, a weight file, or ``False`` (see :func:`~fpt_monai.networks.create_vit_backbone`).
            Defaults to ``True``.
        img_size: frozen-model resolution. Defaults to 512.
        pos_interp: ``"legacy"`` or ``"timm"``. Defaults to ``"legacy"``.
        layer_norm_eps: see :class:`FrozenViTExtractor`. Defaults to ``None``.
        feature_norm: see :class:`PooledHead`. Defaults to ``True``.
        frozen_model: build (and load) the frozen model; ``False`` for training from stored pooled features.
            Defaults to ``True``.
        backbone_kwargs: extra ``timm.create_model`` arguments.

    ``forward(image, pooled=None)``: logits from the stored ``pooled`` features when given (``image`` is then
    ignored), else from ``image`` through the frozen model. ``state_dict()`` holds the head only.

    Examples::

        >>> net = PooledLinearProbe(num_classes=3, backbone="vit_tiny_patch16_224", pretrained=False, img_size=64)
        >>> net(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "vit_base_patch16_384",
        pretrained: bool | str | os.PathLike = True,
        img_size: int = 512,
        pos_interp: str = "legacy",
        layer_norm_eps: float | None = None,
        feature_norm: bool = True,
        frozen_model: bool = True,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        kwargs = dict(
            backbone=backbone,
            pretrained=pretrained if frozen_model else False,
            img_size=img_size,
            layers="all",
            pos_interp=pos_interp,
            backbone_kwargs=backbone_kwargs,
            pooled=True,
            layer_norm_eps=layer_norm_eps,
        )
        # without the frozen model only its width is needed (no memory, no weight file read)
        lpm = FrozenViTExtractor(**kwargs) if frozen_model else FrozenViTExtractor.skeleton(**kwargs)
        self.lpm: FrozenViTExtractor | None = lpm if frozen_model else None
        self.pooled_dim = lpm.pooled_dim
        self.num_classes = int(num_classes)
        self.head = PooledHead(lpm.pooled_dim, self.num_classes, feature_norm=feature_norm)
        keep_frozen_model_out_of_state_dict(self)

    def forward(
        self,
        image: torch.Tensor,
        image_side: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, num_classes]`` (``image_side``, ``keys`` and ``values`` are accepted and ignored, so every
        FPT pipeline can feed this network)."""
        if pooled is None:
            if self.lpm is None:
                raise RuntimeError(
                    "this probe was built with frozen_model=False (training from stored features): pass pooled=..., "
                    "or build it with frozen_model=True to run the frozen model."
                )
            pooled = self.lpm.pool(image)
        return self.head(pooled)
