# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Attention-based selection of the frozen model's most important tokens (FPT, Huang et al., MICCAI 2024, §2.2)."""

from __future__ import annotations

import torch

__all__ = ["TOKEN_IMPORTANCE_MODES", "num_selected_tokens", "token_importance", "select_important_tokens"]

TOKEN_IMPORTANCE_MODES = ("global", "class_token")


def num_selected_tokens(num_tokens: int, token_ratio: float) -> int:
    """``k = int(N * token_ratio)`` with ``N`` counting the prefix (class/register) tokens, as the reference code does.

    Raises:
        ValueError: when the ratio is outside ``(0, 1]`` or selects no token.
    """
    if not 0.0 < token_ratio <= 1.0:
        raise ValueError(f"token_ratio must be in (0, 1], got {token_ratio}.")
    k = int(num_tokens * token_ratio)
    if k < 1:
        raise ValueError(f"token_ratio {token_ratio} selects no token out of {num_tokens}; increase it.")
    return k


def token_importance(attn: torch.Tensor, mode: str = "global") -> torch.Tensor:
    """Importance of every key token from post-softmax attention ``attn`` ``[B, H, N_query, N_key]``.

    ``global``: mean attention each token receives over all queries (the class token's query included).
    ``class_token``: attention of the class token's query (row 0). Returns ``[B, H, N_key]``.
    """
    if mode == "global":
        return attn.mean(dim=-2)
    if mode == "class_token":
        return attn[:, :, 0]
    raise ValueError(f"token importance must be one of {TOKEN_IMPORTANCE_MODES}, got {mode!r}.")


def select_important_tokens(
    importance: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    k: int,
    num_excluded_prefix: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``k`` most important tokens per sample and head (different heads may keep different tokens).

    Args:
        importance: ``[B, H, N]`` scores from :func:`token_importance`.
        keys: ``[B, H, N, head_dim]``.
        values: ``[B, H, N, head_dim]``.
        k: number of tokens to keep.
        num_excluded_prefix: leading tokens (class/registers) that may not be selected; 0 keeps the reference
            behaviour, where the class token competes like any other token.

    Returns:
        ``(keys [B, H, k, head_dim], values [B, H, k, head_dim], indices [B, H, k])``, ordered by decreasing score.
    """
    if num_excluded_prefix > 0:
        importance = importance.clone()
        importance[..., :num_excluded_prefix] = float("-inf")
    idx = importance.topk(k, dim=-1).indices
    gather_idx = idx.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
    return keys.gather(2, gather_idx), values.gather(2, gather_idx), idx
