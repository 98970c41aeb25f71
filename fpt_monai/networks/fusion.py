# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Fusion module of FPT/FPT+: learnable prompts cross-attend to the frozen model's selected keys and values and
become the side network's fine-grained prompts (Huang et al., MICCAI 2024 <https://arxiv.org/abs/2403.07576>;
FPT+, IEEE TNNLS 2025 <https://arxiv.org/abs/2408.02426>)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RESIDUAL_MODES", "FusionModule"]

RESIDUAL_MODES = ("pre_proj", "post_proj", "none")


class FusionModule(nn.Module):
    """Per-layer cross-attention from learnable prompts to the LPM's selected tokens.

    For every extracted layer ``l``, ``P`` learnable prompts (optionally layer-normed and projected to the LPM
    width ``D``) are the queries; the LPM's own keys and values ``[B, H, k, head_dim]`` of that layer are keys and
    values (no extra projections). The per-head context ``[P, D]`` is projected to the side width ``d``.

    The residual connection has changed across the reference code's history (spec §1.4); all versions are
    available:

    - ``"pre_proj"`` (FPT+, needs ``prompt_dim == lpm_dim``): ``F = out_proj(ctx + prompts)``;
    - ``"post_proj"`` (FPT at HEAD, needs ``prompt_dim == side_dim``): ``F = out_proj(ctx) + prompts``;
    - ``"none"`` (MICCAI-era code): ``F = out_proj(ctx)``.

    Dropout is applied to the sum (reference at HEAD) or, for ``"post_proj"`` with ``residual_after_dropout=True``
    (commit ``ed3aa74``), before the residual is added.

    Args:
        num_layers: number of extracted LPM layers ``L``.
        lpm_dim: LPM width ``D``. Defaults to 768.
        num_heads: LPM attention heads ``H`` (``D`` must be divisible by it). Defaults to 12.
        side_dim: side-network width ``d``. Defaults to 96.
        num_prompts: prompts per layer ``P``. Defaults to 16.
        prompt_dim: prompt width ``p``. Defaults to 768 (FPT+); FPT uses ``D / 8``.
        prompt_norm: apply ``LayerNorm(p)`` to the prompts before they become queries (FPT+). Defaults to ``True``.
        prompt_proj: project prompts ``p -> D`` with a ``Linear`` (FPT). Required when ``p != D``.
            Defaults to ``False``.
        residual: ``"pre_proj"``, ``"post_proj"`` or ``"none"``. Defaults to ``"pre_proj"``.
        residual_after_dropout: add the ``"post_proj"`` residual after dropout. Defaults to ``False``.
        dropout: dropout on the fine-grained prompts. Defaults to 0.5.
        prompt_init_std: std of the normal initialisation of the prompts. Defaults to 1e-6.

    Raises:
        ValueError: incompatible widths or unknown options.
    """

    def __init__(
        self,
        num_layers: int,
        lpm_dim: int = 768,
        num_heads: int = 12,
        side_dim: int = 96,
        num_prompts: int = 16,
        prompt_dim: int = 768,
        prompt_norm: bool = True,
        prompt_proj: bool = False,
        residual: str = "pre_proj",
        residual_after_dropout: bool = False,
        dropout: float = 0.5,
        prompt_init_std: float = 1e-6,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_layers", num_layers),
            ("lpm_dim", lpm_dim),
            ("num_heads", num_heads),
            ("side_dim", side_dim),
            ("num_prompts", num_prompts),
            ("prompt_dim", prompt_dim),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if lpm_dim % num_heads:
            raise ValueError(f"lpm_dim {lpm_dim} is not divisible by num_heads {num_heads}.")
        if residual not in RESIDUAL_MODES:
            raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}.")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}.")
        if prompt_init_std < 0:
            raise ValueError(f"prompt_init_std must be >= 0, got {prompt_init_std}.")
        if prompt_dim != lpm_dim and not prompt_proj:
            raise ValueError(f"prompt_dim {prompt_dim} != lpm_dim {lpm_dim}: set prompt_proj=True to project prompts.")
        if residual == "pre_proj" and prompt_dim != lpm_dim:
            raise ValueError(
                f"residual='pre_proj' adds the prompts to the {lpm_dim}-wide context; prompt_dim is {prompt_dim}."
            )
        if residual == "post_proj" and prompt_dim != side_dim:
            raise ValueError(
                f"residual='post_proj' adds the prompts to the {side_dim}-wide output; prompt_dim is {prompt_dim} "
                "(the reference code only type-checks because both reduction ratios are 8)."
            )
        if residual_after_dropout and residual != "post_proj":
            raise ValueError("residual_after_dropout=True exists only with residual='post_proj' (commit ed3aa74).")

        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.head_dim = lpm_dim // num_heads
        self.lpm_dim = int(lpm_dim)
        self.residual = residual
        self.residual_after_dropout = bool(residual_after_dropout)
        self.prompts = nn.Parameter(torch.zeros(num_layers, num_prompts, prompt_dim))
        nn.init.normal_(self.prompts, mean=0.0, std=prompt_init_std)
        self.prompt_norm: nn.LayerNorm | nn.Identity = nn.LayerNorm(prompt_dim) if prompt_norm else nn.Identity()
        self.prompt_proj: nn.Linear | nn.Identity = nn.Linear(prompt_dim, lpm_dim) if prompt_proj else nn.Identity()
        self.out_proj = nn.Linear(lpm_dim, side_dim)
        self.dropout = nn.Dropout(dropout)

    def queries(self) -> torch.Tensor:
        """Per-head queries ``[L, H, P, head_dim]`` (shared by the whole batch)."""
        q = self.prompt_proj(self.prompt_norm(self.prompts))
        L, P, _ = q.shape
        return q.reshape(L, P, self.num_heads, self.head_dim).transpose(1, 2)

    def attention(self, keys: torch.Tensor) -> torch.Tensor:
        """Prompt-to-token attention probabilities ``[B, L, H, P, k]`` (for explanations; not used in forward)."""
        q = self.queries().to(keys.dtype)
        return torch.softmax(q.unsqueeze(0) @ keys.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)

    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Fine-grained prompts ``[B, L, P, side_dim]`` from keys/values ``[B, L, H, k, head_dim]``
        (:meth:`project` of :meth:`context`)."""
        return self.project(self.context(keys, values))

    def context(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The prompts' attention over the tokens, heads merged: ``[B, L, P, D]`` (before the residual and the
        projection to the side width).

        Half-precision tokens (as read from the feature store) are never copied to fp32 for the whole batch: on CUDA
        the attention runs in their dtype (the prompts are cast, fp32 softmax inside the fused kernel); on CPU a
        layer-by-layer kernel upcasts one layer at a time and keeps only the fp16 tokens and the ``[B, L, H, P, k]``
        probabilities for backward.
        """
        B = keys.shape[0]
        q = self.queries()
        L, H, P = q.shape[0], q.shape[1], q.shape[2]
        hs = keys.shape[4]
        if keys.dtype != q.dtype and keys.is_cuda:
            ctx = self._sdpa(q.to(keys.dtype), keys, values.to(keys.dtype)).to(q.dtype)
        elif keys.dtype != q.dtype and torch.is_grad_enabled() and q.requires_grad and not torch.jit.is_tracing():
            ctx = _LayerwisePromptAttention.apply(q, keys, values, self.head_dim**-0.5)
        else:
            ctx = self._sdpa(q, keys.to(q.dtype), values.to(q.dtype))
        return ctx.reshape(B, L, H, P, hs).transpose(2, 3).reshape(B, L, P, self.lpm_dim)

    def project(self, ctx: torch.Tensor) -> torch.Tensor:
        """Fine-grained prompts ``[B, L, P, side_dim]`` from the :meth:`context` ``[B, L, P, D]``: the residual, the
        projection to the side width and the dropout."""
        if self.residual == "pre_proj":
            out = self.out_proj(ctx + self.prompts)
        else:
            out = self.out_proj(ctx)
        if self.residual == "post_proj":
            if self.residual_after_dropout:
                return self.dropout(out) + self.prompts
            out = out + self.prompts
        return self.dropout(out)

    @staticmethod
    def _sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Prompt attention ``[B, L, H, P, head_dim]`` as 4-D SDPA over (batch x layer): the same maths, and what
        every kernel and the ONNX exporter support."""
        B, L, H, k, hs = keys.shape
        P = q.shape[2]
        ctx = F.scaled_dot_product_attention(
            q.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(B * L, H, P, hs),
            keys.reshape(B * L, H, k, hs),
            values.reshape(B * L, H, k, hs),
        )
        return ctx.reshape(B, L, H, P, hs)


class _LayerwisePromptAttention(torch.autograd.Function):
    """``softmax(q K^T * scale) V`` for batch-shared prompts ``q [L, H, P, d]`` and constant half-precision tokens
    ``K, V [B, L, H, k, d]``: each layer's tokens are upcast only while that layer is computed, and backward keeps the
    half tensors and the probabilities ``[B, L, H, P, k]`` (P = 16 prompts against d = 64 per token: a quarter of the
    elements of K) instead of fp32 copies of K and V.

    Forward and backward run with autocast off for the tokens' device and compute in the prompts' dtype (fp32, or the
    dtype autocast gave the projected prompts): under CPU autocast ``matmul`` would otherwise compute in bf16/fp16 and
    refuse the ``out=`` buffers, and the result is that of the computation without autocast."""

    @staticmethod
    def forward(ctx, q, keys, values, scale):  # type: ignore[override]
        dtype = q.dtype
        probs = keys.new_empty(keys.shape[:3] + (q.shape[2], keys.shape[3]), dtype=dtype)
        out = keys.new_empty(keys.shape[:3] + (q.shape[2], keys.shape[4]), dtype=dtype)
        with torch.autocast(keys.device.type, enabled=False):
            for layer in range(keys.shape[1]):
                scores = torch.matmul(q[layer], keys[:, layer].to(dtype).transpose(-2, -1)).mul_(scale)
                torch.softmax(scores, dim=-1, out=probs[:, layer])
                torch.matmul(probs[:, layer], values[:, layer].to(dtype), out=out[:, layer])
        ctx.save_for_backward(keys, values, probs)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        keys, values, probs = ctx.saved_tensors
        dtype = probs.dtype
        grad_q = grad_out.new_empty(probs.shape[1:4] + (keys.shape[4],))
        with torch.autocast(keys.device.type, enabled=False):  # backward may run inside the caller's autocast
            for layer in range(keys.shape[1]):
                p = probs[:, layer]
                dp = torch.matmul(grad_out[:, layer], values[:, layer].to(dtype).transpose(-2, -1))
                ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True))
                # the prompts are shared by the batch: sum the per-sample gradients
                grad_q[layer] = torch.matmul(ds, keys[:, layer].to(dtype)).sum(dim=0).mul_(ctx.scale)
        return grad_q, None, None, None
