# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""VPT-deep baseline (Jia et al., "Visual Prompt Tuning", ECCV 2022 <https://arxiv.org/abs/2203.12119>)."""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn

from fpt_monai.networks.baselines.vit_classifier import HeadTunedViT
from fpt_monai.networks.spec import recorded

__all__ = ["VPTDeepViT"]


@recorded
class VPTDeepViT(HeadTunedViT):
    """A frozen timm ViT with ``num_prompts`` learnable tokens inserted after the prefix tokens of every block
    (fresh per block, the previous block's prompt outputs are dropped) and a trainable head.

    Args:
        num_classes: number of logits. Defaults to 2.
        backbone, pretrained, img_size, pos_interp, backbone_kwargs: see :func:`create_vit_backbone`.
        num_prompts: prompts per block. Defaults to 16 (16 x 12 x 768 = 147,456 prompt parameters for ViT-B).
        prompt_dropout: dropout on the prompts. Defaults to 0.
    """

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "vit_base_patch16_384",
        pretrained: bool | str | os.PathLike = True,
        img_size: int = 512,
        pos_interp: str = "legacy",
        num_prompts: int = 16,
        prompt_dropout: float = 0.0,
        backbone_kwargs: dict | None = None,
    ) -> None:
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}.")
        super().__init__(num_classes, backbone, pretrained, img_size, pos_interp, backbone_kwargs, freeze=True)
        depth, dim = len(self.vit.blocks), self.vit.embed_dim
        patch = self.vit.patch_embed.patch_size
        bound = math.sqrt(6.0 / float(3 * patch[0] * patch[1] + dim))  # VPT's uniform (xavier-style) init
        self.prompts = nn.Parameter(torch.empty(depth, num_prompts, dim).uniform_(-bound, bound))
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.num_prompts = num_prompts

    def forward(self, image: torch.Tensor, image_side: torch.Tensor | None = None) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(image))))
        B, n_prefix, P = x.shape[0], vit.num_prefix_tokens, self.num_prompts
        for i, blk in enumerate(vit.blocks):
            prompts = self.prompt_dropout(self.prompts[i]).unsqueeze(0).expand(B, -1, -1)
            rest = x[:, n_prefix:] if i == 0 else x[:, n_prefix + P :]
            x = blk(torch.cat([x[:, :n_prefix], prompts, rest], dim=1))
        x = vit.norm(x)
        return vit.forward_head(x)
