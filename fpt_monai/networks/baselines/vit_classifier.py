# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Full fine-tuning and linear probing of the same timm ViT that FPT freezes (the baselines of the FPT papers)."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from fpt_monai.networks.backbone import create_vit_backbone
from fpt_monai.networks.spec import recorded

__all__ = ["HeadTunedViT", "ViTClassifier"]


class HeadTunedViT(nn.Module):
    """Base of the baselines built on a timm ViT with a new head: with ``freeze=True`` only the head (plus what a
    subclass adds) trains and the backbone stays in eval mode.

    Args:
        num_classes, backbone, pretrained, img_size, pos_interp, backbone_kwargs: see :class:`ViTClassifier`.
        freeze: freeze every backbone parameter but the head.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str,
        pretrained: bool | str | os.PathLike,
        img_size: int,
        pos_interp: str,
        backbone_kwargs: dict | None,
        freeze: bool,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.vit = create_vit_backbone(backbone, pretrained, img_size, pos_interp, **(backbone_kwargs or {}))
        self.vit.reset_classifier(num_classes)
        self.frozen = bool(freeze)
        if freeze:
            for name, p in self.vit.named_parameters():
                p.requires_grad_(name.startswith("head."))

    def train(self, mode: bool = True) -> HeadTunedViT:
        super().train(mode)
        if self.frozen:  # the frozen backbone stays deterministic; only the head follows `mode`
            self.vit.eval()
            self.vit.head.train(mode)
        return self


@recorded
class ViTClassifier(HeadTunedViT):
    """A timm ViT with a new classification head, trained fully or as a linear probe.

    Args:
        num_classes: number of logits. Defaults to 2.
        backbone: timm ViT name. Defaults to ``"vit_base_patch16_384"``.
        pretrained: ``True``, a weight file, or ``False`` (see :func:`create_vit_backbone`). Defaults to ``True``.
        img_size: input resolution (position embeddings resampled). Defaults to 512.
        pos_interp: ``"legacy"`` or ``"timm"``. Defaults to ``"legacy"``.
        train_backbone: fine-tune every parameter (``True``, full fine-tuning) or only the head (``False``, linear
            probing on the class token; the backbone then runs without gradients). Defaults to ``True``.
        grad_checkpointing: recompute block activations in backward (timm's ``set_grad_checkpointing``): the
            realistic memory-saving full fine-tuning. Defaults to ``False``.
        backbone_kwargs: extra ``timm.create_model`` arguments.

    ``forward(image, image_side=None)`` ignores ``image_side`` so the FPT bundle's online pipeline can feed it.
    """

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "vit_base_patch16_384",
        pretrained: bool | str | os.PathLike = True,
        img_size: int = 512,
        pos_interp: str = "legacy",
        train_backbone: bool = True,
        grad_checkpointing: bool = False,
        backbone_kwargs: dict | None = None,
    ) -> None:
        if grad_checkpointing and not train_backbone:
            raise ValueError("grad_checkpointing only helps when the backbone is trained (train_backbone=True).")
        super().__init__(
            num_classes, backbone, pretrained, img_size, pos_interp, backbone_kwargs, freeze=not train_backbone
        )
        if grad_checkpointing:
            self.vit.set_grad_checkpointing(True)

    def forward(self, image: torch.Tensor, image_side: torch.Tensor | None = None) -> torch.Tensor:
        if not self.frozen:
            return self.vit(image)
        with torch.no_grad():
            features = self.vit.forward_head(self.vit.forward_features(image), pre_logits=True)
        return self.vit.head(features)
