# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Side network of FPT/FPT+: a small, randomly initialised ViT on the low-resolution view whose every block also
sees that layer's fine-grained prompts (Huang et al., MICCAI 2024 <https://arxiv.org/abs/2403.07576>)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

__all__ = ["SIDE_INIT_MODES", "SideViT", "init_weights_hf_vit"]

SIDE_INIT_MODES = ("hf", "timm", "lpm")


def init_weights_hf_vit(module: nn.Module, std: float = 0.02) -> None:
    """Hugging Face ``ViTPreTrainedModel._init_weights``: the reference side network is built from a config, so its
    weights follow this scheme (Linear/Conv2d ``trunc_normal(0, std)`` and zero bias, LayerNorm 1/0)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SideViT(VisionTransformer):
    """timm ``VisionTransformer`` whose block loop appends per-layer prompts and drops them after each block.

    Block ``i`` receives ``concat(hidden, prompts[:, i])`` along the token axis; the last ``P`` outputs are
    discarded, so prompts carry no position embedding and are fresh in every layer (VPT-deep style). The head is
    the usual final LayerNorm, class token and ``Linear``.

    Args:
        img_size: side input resolution (128 for FPT+, 224 for FPT). Other sizes work at inference (position
            embeddings are resampled on the fly). Defaults to 128.
        patch_size: patch size, inherited from the LPM. Defaults to 16.
        embed_dim: width ``d`` (LPM width / 8 in the paper). Defaults to 96.
        depth: number of blocks = number of extracted LPM layers. Defaults to 6.
        num_heads: attention heads, inherited from the LPM. Defaults to 12.
        mlp_ratio: MLP expansion. Defaults to 4.
        num_classes: output logits. Defaults to 2.
        in_chans: input channels. Defaults to 3.
        init: ``"hf"`` (the reference implementation's Hugging Face initialisation), ``"timm"`` or ``"lpm"``.
            ``"lpm"`` initialises exactly like ``"hf"``; the caller then overwrites everything but the classification
            head with weights selected from the frozen model
            (:func:`fpt_monai.networks.weight_selection.select_side_weights`), so the head keeps its ``"hf"``
            values. Defaults to ``"hf"``.
        layer_norm_eps: LayerNorm epsilon; the reference inherits 1e-12 from the Hugging Face ViT config.
            Defaults to 1e-12.

    Raises:
        ValueError: invalid option values.
    """

    def __init__(
        self,
        img_size: int = 128,
        patch_size: int = 16,
        embed_dim: int = 96,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 2,
        in_chans: int = 3,
        init: str = "hf",
        layer_norm_eps: float = 1e-12,
    ) -> None:
        if init not in SIDE_INIT_MODES:
            raise ValueError(f"init must be one of {SIDE_INIT_MODES}, got {init!r}.")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}.")
        if img_size < patch_size:
            raise ValueError(f"img_size {img_size} is smaller than patch_size {patch_size}.")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            class_token=True,
            dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps),
            weight_init="" if init == "timm" else "skip",
        )
        if init != "timm":
            self.apply(init_weights_hf_vit)
            nn.init.trunc_normal_(self.pos_embed, mean=0.0, std=0.02)
            nn.init.trunc_normal_(self.cls_token, mean=0.0, std=0.02)

    def forward_features(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Token features after the final norm, ``[B, 1 + patches, embed_dim]``.

        Args:
            x: side view ``[B, C, H, W]``.
            prompts: fine-grained prompts ``[B, depth, P, embed_dim]``.
        """
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        num_tokens = x.shape[1]
        for i, blk in enumerate(self.blocks):
            x = blk(torch.cat([x, prompts[:, i]], dim=1))[:, :num_tokens]
        return self.norm(x)

    def forward(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x, prompts))
