# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Fine-grained Prompt Tuning (FPT) and FPT+ for high-resolution medical image classification.

Huang et al., "Fine-grained Prompt Tuning: A Parameter and Memory Efficient Transfer Learning Method for
High-resolution Medical Image Classification", MICCAI 2024 <https://arxiv.org/abs/2403.07576>;
Huang et al., "FPT+: A Parameter and Memory Efficient Transfer Learning Method for High-resolution Medical Image
Classification", IEEE TNNLS 2025 <https://arxiv.org/abs/2408.02426>.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fpt_monai.networks.backbone import create_vit_backbone
from fpt_monai.networks.frozen_vit import FrozenViTExtractor
from fpt_monai.networks.fusion import FusionModule
from fpt_monai.networks.pooled_head import PooledHead
from fpt_monai.networks.side_vit import SideViT
from fpt_monai.networks.spec import recorded
from fpt_monai.networks.trainable_state import keep_frozen_model_out_of_state_dict
from fpt_monai.networks.weight_selection import select_side_weights

__all__ = ["FPT", "FPT_HEADS", "FPT_VARIANTS", "token_layer_means"]

# "side": the paper's head (the side network's class token); "+pooled": plus a linear classifier on the frozen
# model's pooled features, so that FPT starts from what a linear probe has; "+prompts": plus a linear classifier on
# the fusion prompts' attention over the stored tokens of every extracted layer; "+tokens": plus a linear classifier
# on the mean of every extracted layer's stored values, started from a logistic regression fitted on them, so that
# FPT starts from the strongest probe of what it reads (docs/benchmarks.md, issue 22)
FPT_HEADS = ("side", "side+pooled", "side+prompts", "side+pooled+prompts", "side+tokens")


def token_layer_means(values: torch.Tensor) -> torch.Tensor:
    """The token head's (and the study's token probe's) features: the mean over the selected tokens of every
    extracted layer's values, heads merged, in fp32: ``[B, L, heads, k, head_dim]`` -> ``[B, L * heads * head_dim]``.
    """
    return values.float().mean(dim=3).flatten(1)


# Per-variant defaults of the reference implementation (configs/network/FPT.yaml and FPT+.yaml at HEAD d17ab24).
# FPT+ extracts the second half of the backbone's blocks (6-11 of a 12-block ViT), FPT all of them (0-11).
FPT_VARIANTS: dict[str, dict[str, Any]] = {
    "fpt_plus": {
        "layers": "second_half",
        "side_img_size": 128,
        "prompt_reduction": 1,
        "prompt_norm": True,
        "prompt_proj": False,
        "residual": "pre_proj",
    },
    "fpt": {
        "layers": "all",
        "side_img_size": 224,
        "prompt_reduction": 8,
        "prompt_norm": False,
        "prompt_proj": True,
        "residual": "post_proj",
    },
}


@recorded
class FPT(nn.Module):
    """FPT / FPT+ classifier: frozen LPM on the high-resolution image, fusion prompts, trainable side ViT.

    The frozen model (:class:`FrozenViTExtractor`) sees the image at ``img_size`` and returns the keys and values of
    its most important tokens; the :class:`FusionModule` turns them into fine-grained prompts; the :class:`SideViT`
    classifies a low-resolution view of the same image with those prompts. Only the fusion module and the side
    network are trainable (about 1% of the parameters).

    Forward contract:

    - ``net(image)``: logits; ``image`` is the normalised LPM-resolution batch, the side view is made inside by
      bilinear (anti-aliased) resizing, so one tensor is enough for ``verify_net_in_out``, export and MONAI Deploy;
    - ``net(image, image_side=...)``: uses a given (augmented) side view;
    - ``net.extract(image)`` -> ``(keys, values)``, each ``[B, L, heads, k, head_dim]``;
    - ``net.forward_features(image_side, keys, values, pooled=None)``: logits from preloaded tokens without the LPM
      (``pooled`` features are needed by a head with ``pooled``, e.g. ``head="side+pooled"``).

    Args:
        num_classes: number of output logits (1 for regression). Defaults to 2.
        variant: ``"fpt_plus"`` (FPT+: second half of the blocks, side 128 px, prompt LayerNorm, full-width prompts)
            or ``"fpt"`` (all blocks, side 224 px, prompts of width D/8 projected to D). Defaults to ``"fpt_plus"``.
        backbone: timm ViT name of the LPM. Defaults to ``"vit_base_patch16_384"`` (the paper's ViT-B/16 IN-21k).
        pretrained: ``True`` (timm hub), a local weight file, or ``False`` (random, warns). Defaults to ``True``.
        img_size: LPM input resolution. Defaults to 512.
        side_img_size: side-network input resolution; ``None`` takes the variant's (128 or 224).
        layers: LPM blocks to extract (see :func:`parse_layers`); ``None`` takes the variant's (``"second_half"``
            for FPT+, ``"all"`` for FPT).
        token_ratio: fraction of LPM tokens kept per layer and head. Defaults to 0.2.
        token_importance: ``"global"`` or ``"class_token"``. Defaults to ``"global"``.
        include_cls: whether prefix tokens may be selected. Defaults to ``True`` (reference behaviour).
        pos_interp: LPM position-embedding resampling, ``"legacy"`` (reference) or ``"timm"``. Defaults to
            ``"legacy"``.
        num_prompts: prompts per layer. Defaults to 16.
        side_reduction: side width = LPM width / this. Defaults to 8.
        prompt_reduction: prompt width = LPM width / this; ``None`` takes the variant's (1 or 8).
        prompt_norm: LayerNorm on prompts; ``None`` takes the variant's.
        prompt_proj: Linear projection of prompts to the LPM width; ``None`` takes the variant's.
        residual: fusion residual ``"pre_proj"``, ``"post_proj"`` or ``"none"``; ``None`` takes the variant's.
        residual_after_dropout: add the ``post_proj`` residual after dropout (commit ``ed3aa74``). Defaults to
            ``False``.
        fusion_dropout: dropout on the fine-grained prompts. Defaults to 0.5.
        prompt_init_std: prompt initialisation std. Defaults to 1e-6.
        side_init: initialisation of the side ViT: ``"hf"`` (reference: random, Hugging Face scheme), ``"timm"``, or
            ``"lpm"``: weight selection from the frozen model (Xu et al., "Initializing Models with Larger Ones",
            ICLR 2024 <https://arxiv.org/abs/2311.18823>; side block ``i`` starts from the frozen block whose tokens
            it receives, every weight an evenly spaced selection; LST initialises its side network from the backbone
            for the same reason). With ``frozen_model=False`` the frozen weights are read once for this and
            released. Defaults to ``"hf"``.
        head: ``"side"`` (the paper's), or the side network's logits plus zero-initialised linear classifiers
            (:class:`PooledHead`: a BatchNorm without affine parameters, then a linear layer): ``"side+pooled"`` on
            the frozen model's pooled features (final class token and mean patch token), ``"side+prompts"`` on the
            fusion module's context (:meth:`FusionModule.context`) averaged over each layer's prompts, ``[L * D]``,
            or ``"side+pooled+prompts"`` with both. The prompt head is an attentive probe (Bardes et al., V-JEPA,
            2024 <https://arxiv.org/abs/2404.08471>) built from FPT's own fusion prompts: with the prompts' initial
            uniform attention it reads the mean of every extracted layer's selected values (a multi-layer linear
            probe on the stored tokens), and training moves where the prompts look; its gradients also train the
            prompts the side network receives. It reads the stored tokens only (no other field, no second store).
            ``"side+tokens"``: plus the token head, a linear classifier on the mean over the selected tokens of
            every extracted layer's values, heads merged, ``[L * D]``, standardised by a stored mean and scale
            (``PooledHead(feature_norm="fixed")``): the features of the study's token probe. It starts at zero;
            the bundle sets it to a logistic regression fitted on the training split's stored tokens, C chosen on
            validation (``token_head_init: logreg``, :func:`fpt_monai.engines.token_head.init_token_head`), before
            training: FPT then starts from the probe and the side network learns what the probe misses
            (linear probing then fine-tuning, Kumar et al., ICLR 2022 <https://arxiv.org/abs/2202.10054>).
            Defaults to ``"side"``.
        pooled_img_size: the resolution of the hybrid head's pooled features, when it is not ``img_size`` (two
            resolutions: a linear probe on the frozen model is often best at its pre-training size, e.g. 224 px for
            DINOv2 ViT-S/14, while the tokens are at 518 px). The frozen model then runs a second time, without
            token selection, on the image resized to this size (bilinear, anti-aliased), through the same weights
            with the position embeddings of that grid (:meth:`FrozenViTExtractor.set_pooled_view`; no second copy of
            the weights, nothing more in ``state_dict``); from a feature store, ``pooled`` must come from a store
            preloaded at this size. Needs a head with ``pooled`` (``"side+pooled"``). ``None`` (or ``img_size``): one
            resolution. Defaults to ``None``.
        lpm_layer_norm_eps: LayerNorm epsilon of the frozen model; ``None`` keeps the backbone's own (timm: 1e-6),
            ``1e-12`` reproduces the reference's Hugging Face ViT exactly. Defaults to ``None``.
        layer_norm_eps: side-network LayerNorm epsilon. Defaults to 1e-12 (reference).
        query_chunk_size: see :class:`FrozenViTExtractor`. Defaults to 256.
        backbone_kwargs: extra keyword arguments for ``timm.create_model``.
        frozen_model: build (and load) the frozen model. ``False`` builds only the trainable part, for training
            from preloaded tokens: no LPM weights are read or held in memory. Defaults to ``True``.

    ``state_dict()`` holds the trainable part only (about 1 % of the parameters): the frozen model's weights always
    come from ``pretrained``. Loading such a checkpoint into a model with the frozen model works with ``strict=True``;
    full checkpoints that include ``lpm.*`` keys load as well.

    Raises:
        ValueError: invalid option values or incompatible settings.

    Examples::

        >>> net = FPT(num_classes=5, variant="fpt_plus", pretrained=False)
        >>> net(torch.randn(2, 3, 512, 512)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        num_classes: int = 2,
        variant: str = "fpt_plus",
        backbone: str = "vit_base_patch16_384",
        pretrained: bool | str | os.PathLike = True,
        img_size: int = 512,
        side_img_size: int | None = None,
        layers: int | str | Sequence[int] | None = None,
        token_ratio: float = 0.2,
        token_importance: str = "global",
        include_cls: bool = True,
        pos_interp: str = "legacy",
        num_prompts: int = 16,
        side_reduction: int = 8,
        prompt_reduction: int | None = None,
        prompt_norm: bool | None = None,
        prompt_proj: bool | None = None,
        residual: str | None = None,
        residual_after_dropout: bool = False,
        fusion_dropout: float = 0.5,
        prompt_init_std: float = 1e-6,
        side_init: str = "hf",
        head: str = "side",
        pooled_img_size: int | None = None,
        lpm_layer_norm_eps: float | None = None,
        layer_norm_eps: float = 1e-12,
        query_chunk_size: int = 256,
        backbone_kwargs: dict | None = None,
        frozen_model: bool = True,
    ) -> None:
        super().__init__()
        if variant not in FPT_VARIANTS:
            raise ValueError(f"variant must be one of {tuple(FPT_VARIANTS)}, got {variant!r}.")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if head not in FPT_HEADS:
            raise ValueError(f"head must be one of {FPT_HEADS}, got {head!r}.")
        head_parts = set(head.split("+"))
        if pooled_img_size is not None and "pooled" not in head_parts:
            raise ValueError(
                f"pooled_img_size {pooled_img_size} is the resolution of the hybrid head's pooled features, but head "
                f"{head!r} reads none: set head 'side+pooled' (--head side+pooled), or leave pooled_img_size null."
            )
        for name, value in (
            ("side_reduction", side_reduction),
            ("prompt_reduction", prompt_reduction),
            ("num_prompts", num_prompts),
            ("side_img_size", side_img_size),
            ("pooled_img_size", pooled_img_size),
        ):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        preset = FPT_VARIANTS[variant]
        self.variant = variant

        lpm_kwargs = dict(
            backbone=backbone,
            pretrained=pretrained if frozen_model else False,
            img_size=img_size,
            layers=preset["layers"] if layers is None else layers,
            token_ratio=token_ratio,
            token_importance=token_importance,
            include_cls=include_cls,
            pos_interp=pos_interp,
            query_chunk_size=query_chunk_size,
            backbone_kwargs=backbone_kwargs,
            pooled="pooled" in head_parts,
            layer_norm_eps=lpm_layer_norm_eps,
        )
        # without the frozen model only its architecture is needed (no memory, no weight file read)
        lpm = FrozenViTExtractor(**lpm_kwargs) if frozen_model else FrozenViTExtractor.skeleton(**lpm_kwargs)
        self.lpm: FrozenViTExtractor | None = lpm if frozen_model else None
        # the frozen model's settings (weights aside): a network that shares one frozen model with FPT builds it
        self.lpm_kwargs = {k: v for k, v in lpm_kwargs.items() if k != "pretrained"}
        self._token_shape = lpm.token_shape
        lpm_dim, heads = lpm.embed_dim, lpm.num_heads
        if lpm_dim % side_reduction:
            raise ValueError(f"LPM width {lpm_dim} is not divisible by side_reduction {side_reduction}.")
        prompt_reduction = preset["prompt_reduction"] if prompt_reduction is None else int(prompt_reduction)
        if lpm_dim % prompt_reduction:
            raise ValueError(f"LPM width {lpm_dim} is not divisible by prompt_reduction {prompt_reduction}.")
        side_dim = lpm_dim // side_reduction
        if side_dim % heads:
            raise ValueError(
                f"side width {side_dim} (= {lpm_dim} / {side_reduction}) is not divisible by the LPM's {heads} heads."
            )
        self.img_size = int(img_size)
        self.side_img_size = int(preset["side_img_size"] if side_img_size is None else side_img_size)
        num_layers = len(lpm.layers)

        self.fusion = FusionModule(
            num_layers=num_layers,
            lpm_dim=lpm_dim,
            num_heads=heads,
            side_dim=side_dim,
            num_prompts=num_prompts,
            prompt_dim=lpm_dim // prompt_reduction,
            prompt_norm=preset["prompt_norm"] if prompt_norm is None else bool(prompt_norm),
            prompt_proj=preset["prompt_proj"] if prompt_proj is None else bool(prompt_proj),
            residual=preset["residual"] if residual is None else residual,
            residual_after_dropout=residual_after_dropout,
            dropout=fusion_dropout,
            prompt_init_std=prompt_init_std,
        )
        self.side = SideViT(
            img_size=self.side_img_size,
            patch_size=lpm.patch_size,
            embed_dim=side_dim,
            depth=num_layers,
            num_heads=heads,
            mlp_ratio=4.0,
            num_classes=int(num_classes),
            init=side_init,
            layer_norm_eps=layer_norm_eps,
        )
        if side_init == "lpm":
            # the full frozen model (all blocks and the final norm): the extractor may have dropped the tail
            source = (
                lpm.vit
                if frozen_model and lpm.pooled
                else create_vit_backbone(backbone, pretrained, img_size, pos_interp, **(backbone_kwargs or {}))
            )
            select_side_weights(self.side, source, lpm.layers)
            del source
        self.head = head
        self.hybrid = "pooled" in head_parts  # reads the frozen model's pooled features
        self.pooled_head: PooledHead | None = (
            PooledHead(lpm.pooled_dim, int(num_classes), zero_init=True) if self.hybrid else None
        )
        self.prompt_head: PooledHead | None = (
            PooledHead(num_layers * lpm_dim, int(num_classes), zero_init=True) if "prompts" in head_parts else None
        )
        self.token_head: PooledHead | None = (
            PooledHead(num_layers * lpm_dim, int(num_classes), zero_init=True, feature_norm="fixed")
            if "tokens" in head_parts
            else None
        )
        # the pooled features' resolution (img_size: one resolution); the frozen model pools there itself, so the
        # explainer and every other caller of lpm.extract_all get the same features as forward
        self.pooled_img_size = self.img_size if pooled_img_size is None else int(pooled_img_size)
        if self.pooled_img_size != self.img_size:
            if self.pooled_img_size < lpm.patch_size:
                raise ValueError(
                    f"pooled_img_size {self.pooled_img_size} is smaller than the frozen model's {lpm.patch_size} px "
                    "patch."
                )
            if frozen_model:
                from fpt_monai.networks.probe_fusion import position_embedding_at  # it imports this module

                pos = position_embedding_at(lpm, self.pooled_img_size, pretrained, pos_interp, backbone_kwargs)
                lpm.set_pooled_view(self.pooled_img_size, pos)
        self.num_classes = int(num_classes)
        # checkpoints hold the trainable part only: the frozen model always comes from `pretrained`
        keep_frozen_model_out_of_state_dict(self)

    @property
    def token_shape(self) -> tuple[int, int, int, int]:
        """Per-image shape ``(layers, heads, k, head_dim)`` of the keys/values that :meth:`extract` returns."""
        return self._token_shape

    def make_side_view(self, image: torch.Tensor) -> torch.Tensor:
        """Resize the LPM-resolution batch to the side resolution (bilinear with anti-aliasing, like PIL)."""
        return F.interpolate(
            image, size=(self.side_img_size, self.side_img_size), mode="bilinear", align_corners=False, antialias=True
        )

    def extract(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the LPM's selected tokens, ``[B, L, heads, k, head_dim]`` each (no gradients)."""
        if self.lpm is None:
            raise RuntimeError(
                "this FPT was built with frozen_model=False (training from preloaded tokens): pass keys/values, or "
                "build it with frozen_model=True to run the frozen model."
            )
        return self.lpm(image)

    def forward_features(
        self,
        image_side: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits from the side view and (preloaded) keys/values, without running the LPM.

        Args:
            image_side: normalised side view ``[B, 3, side_img_size, side_img_size]``.
            keys: ``[B, L, heads, k, head_dim]`` (any float dtype; cast to the fusion module's).
            values: same shape as ``keys``.
            pooled: the frozen model's pooled features ``[B, 2 * D]``; required by a head with ``pooled``.
        """
        if not torch.jit.is_tracing():  # shapes are fixed in a trace; the checks would only add warnings
            self._check_tokens(keys, values)
        context = self.fusion.context(keys, values)
        logits = self.side(image_side, self.fusion.project(context))
        if self.prompt_head is not None:
            logits = logits + self.prompt_head(context.mean(dim=2).flatten(1))
        if self.token_head is not None:
            logits = logits + self.token_head(token_layer_means(values))
        if self.pooled_head is not None:
            if pooled is None:
                raise ValueError(
                    f"head={self.head!r} needs the pooled features: preload them into the feature store "
                    "(fields tokens and pooled) or pass the image so the frozen model computes them."
                )
            logits = logits + self.pooled_head(pooled)
        return logits

    def _check_tokens(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        expected = self._token_shape
        if keys.ndim != 5 or tuple(keys.shape[1:]) != expected[:2] + keys.shape[3:4] + expected[3:]:
            raise ValueError(
                f"keys of shape {tuple(keys.shape)} do not fit this model: expected [B, {expected[0]}, {expected[1]}, "
                f"k, {expected[3]}]. Were the tokens extracted with other layers or another backbone?"
            )
        if values.shape != keys.shape:
            raise ValueError(f"values {tuple(values.shape)} and keys {tuple(keys.shape)} differ in shape.")

    def forward(
        self,
        image: torch.Tensor,
        image_side: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, num_classes]``.

        Args:
            image: the normalised LPM-resolution batch (with preloaded ``keys``/``values`` it is only used to make
                the side view when ``image_side`` is not given).
            image_side: the side view; made from ``image`` by resizing when ``None``.
            keys, values: preloaded tokens ``[B, L, heads, k, head_dim]``; the frozen model is skipped.
            pooled: preloaded pooled features ``[B, 2 * D]`` (``head="side+pooled"``), at ``pooled_img_size``.
        """
        if self.hybrid and self.lpm is not None and self.lpm.pooled_img_size != self.pooled_img_size:
            raise RuntimeError(
                f"this FPT's hybrid head reads pooled features at {self.pooled_img_size} px but its frozen model pools "
                f"at {self.lpm.pooled_img_size} px: a frozen model set in place of FPT's own needs "
                "lpm.set_pooled_view(pooled_img_size, position_embedding_at(...)) (ProbeFusion does not support "
                "pooled_img_size yet)."
            )
        if keys is None or values is None:
            if self.lpm is None:
                self.extract(image)  # raises the explanation
            assert self.lpm is not None
            keys, values, _, computed = self.lpm.extract_all(image, self.hybrid)
            pooled = computed if pooled is None else pooled
        elif self.hybrid and pooled is None and self.lpm is not None:
            pooled = self.lpm.pool(image)  # given tokens are kept; only the pooled features are computed
        if image_side is None:
            image_side = self.make_side_view(image)
        return self.forward_features(image_side, keys, values, pooled)
