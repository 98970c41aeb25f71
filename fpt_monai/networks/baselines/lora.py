# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LoRA baseline (Hu et al., ICLR 2022 <https://arxiv.org/abs/2106.09685>) on a timm ViT, through HF PEFT."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from fpt_monai.networks.backbone import create_vit_backbone
from fpt_monai.networks.spec import recorded

__all__ = ["LoRAViT"]


@recorded
class LoRAViT(nn.Module):
    """A frozen timm ViT with LoRA adapters (PEFT) and a trainable head.

    timm fuses query, key and value into one ``qkv`` layer, so rank-``r`` LoRA on ``qkv`` adapts all three; its
    parameter count (``r * (768 + 2304)`` per block) equals rank-``r`` LoRA on separate query and value layers, the
    setting the paper's 0.68 % corresponds to.

    Args:
        num_classes: number of logits. Defaults to 2.
        backbone, pretrained, img_size, pos_interp, backbone_kwargs: see :func:`create_vit_backbone`.
        rank: LoRA rank. Defaults to 16.
        alpha: LoRA scaling numerator (``alpha / rank``). Defaults to 16.
        dropout: LoRA dropout. Defaults to 0.
        target_modules: module names to adapt. Defaults to ``("qkv",)``.
    """

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "vit_base_patch16_384",
        pretrained: bool | str | os.PathLike = True,
        img_size: int = 512,
        pos_interp: str = "legacy",
        rank: int = 16,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] = ("qkv",),
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}.")
        vit = create_vit_backbone(backbone, pretrained, img_size, pos_interp, **(backbone_kwargs or {}))
        vit.reset_classifier(num_classes)
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(target_modules),
            modules_to_save=["head"],
        )
        self.model = get_peft_model(vit, config)

    def forward(self, image: torch.Tensor, image_side: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(image)
