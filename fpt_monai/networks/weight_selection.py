# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Weight selection: initialise FPT's side ViT from the frozen large pre-trained model (LPM).

Xu et al., "Initializing Models with Larger Ones", ICLR 2024 <https://arxiv.org/abs/2311.18823>: every weight of the
small model is an evenly spaced selection of the matching weight of the large one, with one selection per shared
dimension (the residual stream, the attention heads) so that the small network computes a consistent sub-network.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import Mlp, resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer

from fpt_monai.networks.backbone import _check_supported
from fpt_monai.networks.side_vit import SideViT

__all__ = ["select_side_weights"]


def _evenly(m: int, n: int) -> torch.Tensor:
    """``m`` evenly spaced indices of ``0 .. n - 1``: ``arange(m) * n // m``."""
    return torch.arange(m) * n // m


def _scale(t: torch.Tensor | None, gamma: torch.Tensor | None) -> torch.Tensor | None:
    """Fold a LayerScale ``gamma`` ``[D]`` into the output rows of a weight ``[D, ...]`` or bias ``[D]``."""
    if t is None or gamma is None:
        return t
    return t * gamma.view(-1, *([1] * (t.ndim - 1)))


def _take(t: torch.Tensor, *index: torch.Tensor | None) -> torch.Tensor:
    """``t`` restricted to the indices ``index[k]`` along dimension ``k`` (``None``: all)."""
    for dim, idx in enumerate(index):
        if idx is not None:
            t = t.index_select(dim, idx.to(t.device))
    return t


def _copy(dst: torch.Tensor, src: torch.Tensor | None, *index: torch.Tensor | None) -> None:
    """``dst <- _take(src, *index)``; a missing frozen bias (``src=None``) gives zeros."""
    if src is None:
        dst.zero_()
        return
    src = _take(src, *index)
    if src.shape != dst.shape:  # internal consistency check: shapes are fixed by the validation
        raise RuntimeError(f"weight selection produced {tuple(src.shape)} for a {tuple(dst.shape)} parameter.")
    dst.copy_(src)


def _copy_norm(dst: nn.LayerNorm, src: nn.LayerNorm, c: torch.Tensor) -> None:
    """LayerNorm affine parameters selected on the residual channels ``c`` (no affine: weight 1, bias 0)."""
    if src.weight is None:
        dst.weight.fill_(1.0)
    else:
        _copy(dst.weight, src.weight, c)
    _copy(dst.bias, src.bias, c)


def _validate(side: SideViT, vit: VisionTransformer, layers: Sequence[int]) -> list[int]:
    if not isinstance(side, SideViT):
        raise ValueError(f"side must be a SideViT, got {type(side).__name__}.")
    _check_supported(vit, type(vit).__name__)
    layers = list(layers)
    try:  # ints, numpy or torch integers; not bools, floats or strings
        if any(isinstance(i, bool) for i in layers):
            raise TypeError("bool")
        layers = [operator.index(i) for i in layers]
    except TypeError as err:
        raise ValueError(f"layers must be a sequence of block indices (ints), got {layers!r}.") from err
    if len(layers) != len(side.blocks):
        raise ValueError(
            f"the side ViT has {len(side.blocks)} blocks but {len(layers)} frozen layers were given; side block i "
            "starts from frozen block layers[i], so build SideViT(depth=len(layers))."
        )
    bad = [i for i in layers if not 0 <= i < len(vit.blocks)]
    if bad:
        raise ValueError(
            f"layers {bad} are outside the frozen model's {len(vit.blocks)} blocks (0..{len(vit.blocks) - 1})."
        )
    D, d = vit.embed_dim, side.embed_dim
    if d > D:
        raise ValueError(f"side width {d} exceeds the frozen width {D}; weight selection can only shrink widths.")
    if side.patch_embed.proj.in_channels != vit.patch_embed.proj.in_channels:
        raise ValueError(
            f"side in_chans {side.patch_embed.proj.in_channels} != frozen in_chans {vit.patch_embed.proj.in_channels}."
        )
    if vit.pos_embed is None:
        raise ValueError("the frozen model has no absolute position embeddings (pos_embed=None) to select from.")
    unsupported = [
        n
        for n, m in (("norm_pre", vit.norm_pre), ("patch_embed.norm", vit.patch_embed.norm))
        if not isinstance(m, nn.Identity)
    ]
    if not isinstance(vit.norm, (nn.LayerNorm, nn.Identity)):
        unsupported.append(f"norm ({type(vit.norm).__name__})")
    for i, j in enumerate(layers):
        src, dst = vit.blocks[j], side.blocks[i]
        if src.attn.num_heads != dst.attn.num_heads:
            raise ValueError(
                f"side block {i} has {dst.attn.num_heads} heads but frozen block {j} has {src.attn.num_heads}; weight "
                "selection keeps the heads, so build SideViT(num_heads=<frozen heads>)."
            )
        if dst.attn.head_dim > src.attn.head_dim:
            raise ValueError(f"side head dim {dst.attn.head_dim} exceeds the frozen head dim {src.attn.head_dim}.")
        if not isinstance(src.mlp, Mlp) or dst.mlp.fc1.out_features > src.mlp.fc1.out_features:
            raise ValueError(
                f"frozen block {j} MLP ({type(src.mlp).__name__}) cannot provide the side's {dst.mlp.fc1.out_features} "
                "hidden units: weight selection needs a plain timm Mlp at least as wide (lower the side mlp_ratio)."
            )
        modules = {"attn.q_norm": src.attn.q_norm, "attn.k_norm": src.attn.k_norm, "attn.norm": src.attn.norm}
        modules["mlp.norm"] = src.mlp.norm
        unsupported += [f"blocks.{j}.{n}" for n, m in modules.items() if not isinstance(m, nn.Identity)]
        if getattr(src.attn, "gate", None) is not None:
            unsupported.append(f"blocks.{j}.attn.gate")
        unsupported += [f"blocks.{j}.{n}" for n in ("norm1", "norm2") if not isinstance(getattr(src, n), nn.LayerNorm)]
    if unsupported:
        raise ValueError(
            f"weight selection does not support frozen-model parts the side ViT lacks: {unsupported} (QK-norm, "
            "pre-norm, attention/MLP scale norms, gates and non-LayerNorm norms); use init='hf' for this backbone."
        )
    return layers


@torch.no_grad()
def select_side_weights(side: SideViT, vit: VisionTransformer, layers: Sequence[int]) -> SideViT:
    """Initialise the side ViT in place by weight selection from the frozen ViT (Xu et al., ICLR 2024).

    Every side weight is an evenly spaced selection (``arange(m) * n // m``, ``m`` of ``n``) of the frozen one:

    - one residual-stream selection ``c`` (``d`` of ``D`` channels) for the patch-embedding output channels, the
      class token, the position-embedding channels, every LayerNorm, the qkv/fc1 input columns, the proj/fc2 output
      rows and the final norm;
    - attention: per head (side and frozen model have the same heads), ``side_head_dim`` of ``frozen_head_dim``
      channels inside that head's slice of q, k and v; the proj input columns use the same per-head selection;
    - MLP: ``side_hidden`` of ``frozen_hidden`` units (fc1 rows and bias, fc2 columns);
    - LayerScale (DINOv2 ``ls1``/``ls2``) is folded into the proj/fc2 output rows and biases, as the side ViT has
      none; missing frozen biases (``qkv_bias=False``) become zeros.

    Side block ``i`` starts from frozen block ``layers[i]``, the block whose keys and values it receives. Position
    embeddings: the grid part of the frozen table (after dropping its prefix entries: class and register tokens;
    ``no_embed_class`` models have none) is channel-selected and resampled to the side grid with timm's
    ``resample_abs_pos_embed`` (bicubic, anti-aliased); the side's class entry is the frozen class entry, or zeros
    when the frozen model has none (``no_embed_class``, e.g. DINOv2 with registers: its class token gets no position
    embedding, which a zero entry reproduces). Register tokens have no side counterpart and are dropped. A frozen
    model without class token leaves the side's class token as initialised, and a frozen ``norm`` that is
    ``Identity`` (an early-exit :class:`~fpt_monai.networks.FrozenViTExtractor`) leaves the side's final norm as
    initialised. Patch sizes may differ: the selected kernel is then resampled with timm's ``resample_patch_embed``
    (FlexiViT pseudo-inverse resize). The classification head, attention scale and LayerNorm epsilon are not touched.

    Args:
        side: the side network (``SideViT(init="lpm")``), modified in place.
        vit: the frozen timm ``VisionTransformer`` (any device; the blocks named in ``layers`` must exist).
        layers: frozen block index for every side block, ``len(layers) == side depth``.

    Returns:
        ``side``, with its weights replaced.

    Raises:
        ValueError: incompatible sizes (side wider than the frozen model, different head counts, depth
            ``!= len(layers)``, wider MLP, other input channels), layers out of range, or frozen-model parts the side
            ViT cannot represent (QK-norm, pre-norm, scale norms, gated attention, SwiGLU MLPs).
    """
    layers = _validate(side, vit, layers)
    D, d = vit.embed_dim, side.embed_dim
    c = _evenly(d, D)

    kernel = _take(vit.patch_embed.proj.weight, c)
    if kernel.shape[-2:] != side.patch_embed.proj.weight.shape[-2:]:
        kernel = resample_patch_embed(kernel, list(side.patch_embed.proj.weight.shape[-2:]))
    _copy(side.patch_embed.proj.weight, kernel)
    _copy(side.patch_embed.proj.bias, vit.patch_embed.proj.bias, c)
    if vit.cls_token is not None:
        _copy(side.cls_token, vit.cls_token, None, None, c)
    pos = _take(vit.pos_embed, None, None, c)
    num_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    grid = resample_abs_pos_embed(
        pos[:, num_prefix:],
        new_size=side.patch_embed.grid_size,
        old_size=vit.patch_embed.grid_size,
        num_prefix_tokens=0,
    )
    cls_pos = pos[:, :1] if num_prefix and vit.cls_token is not None else pos.new_zeros(1, 1, d)
    _copy(side.pos_embed, torch.cat([cls_pos, grid], dim=1))

    for i, j in enumerate(layers):
        src, dst = vit.blocks[j], side.blocks[i]
        heads, hd_f, hd_s = src.attn.num_heads, src.attn.head_dim, dst.attn.head_dim
        per_head = (torch.arange(heads)[:, None] * hd_f + _evenly(hd_s, hd_f)).flatten()
        qkv_rows = torch.cat([per_head + part * heads * hd_f for part in range(3)])
        g1, g2 = getattr(src.ls1, "gamma", None), getattr(src.ls2, "gamma", None)
        _copy_norm(dst.norm1, src.norm1, c)
        _copy(dst.attn.qkv.weight, src.attn.qkv.weight, qkv_rows, c)
        _copy(dst.attn.qkv.bias, src.attn.qkv.bias, qkv_rows)
        _copy(dst.attn.proj.weight, _scale(src.attn.proj.weight, g1), c, per_head)
        _copy(dst.attn.proj.bias, _scale(src.attn.proj.bias, g1), c)
        hidden = _evenly(dst.mlp.fc1.out_features, src.mlp.fc1.out_features)
        _copy_norm(dst.norm2, src.norm2, c)
        _copy(dst.mlp.fc1.weight, src.mlp.fc1.weight, hidden, c)
        _copy(dst.mlp.fc1.bias, src.mlp.fc1.bias, hidden)
        _copy(dst.mlp.fc2.weight, _scale(src.mlp.fc2.weight, g2), c, hidden)
        _copy(dst.mlp.fc2.bias, _scale(src.mlp.fc2.bias, g2), c)
    if isinstance(vit.norm, nn.LayerNorm):
        _copy_norm(side.norm, vit.norm, c)
    return side
