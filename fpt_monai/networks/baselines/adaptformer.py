# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""AdaptFormer baseline (Chen et al., NeurIPS 2022 <https://arxiv.org/abs/2205.13535>): a bottleneck adapter in
parallel with each block's MLP."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from fpt_monai.networks.baselines.vit_classifier import HeadTunedViT
from fpt_monai.networks.spec import recorded

__all__ = ["AdaptFormerViT", "ParallelAdapter"]


class ParallelAdapter(nn.Module):
    """``scale * up(dropout(relu(down(x))))`` with the up-projection zero-initialised (the block starts unchanged)."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x)))) * self.scale


@recorded
class AdaptFormerViT(HeadTunedViT):
    """A frozen timm ViT whose blocks get a trainable :class:`ParallelAdapter` beside the MLP, plus a trainable head.

    Block: ``x = x + attn(norm1(x))``; ``x = x + mlp(norm2(x)) + adapter(x)``.

    Args:
        num_classes: number of logits. Defaults to 2.
        backbone, pretrained, img_size, pos_interp, backbone_kwargs: see :func:`create_vit_backbone`.
        bottleneck: adapter width. Defaults to 64.
        scale: adapter output scale. Defaults to 0.1.
        dropout: adapter dropout. Defaults to 0.1.
    """

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "vit_base_patch16_384",
        pretrained: bool | str | os.PathLike = True,
        img_size: int = 512,
        pos_interp: str = "legacy",
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
        backbone_kwargs: dict | None = None,
    ) -> None:
        if bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1, got {bottleneck}.")
        super().__init__(num_classes, backbone, pretrained, img_size, pos_interp, backbone_kwargs, freeze=True)
        self.adapters = nn.ModuleList(
            ParallelAdapter(self.vit.embed_dim, bottleneck, scale, dropout) for _ in self.vit.blocks
        )

    def forward(self, image: torch.Tensor, image_side: torch.Tensor | None = None) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(image))))
        for blk, adapter in zip(vit.blocks, self.adapters, strict=True):
            x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
            x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))) + adapter(x)
        return vit.forward_head(vit.norm(x))
