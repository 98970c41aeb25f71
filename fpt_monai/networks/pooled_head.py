# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A linear classifier on the frozen model's pooled features (final class token and mean patch token), used by the
store-based linear probe and by FPT's hybrid heads (on the pooled features, and on the fusion prompts' context).

The features pass through a BatchNorm without affine parameters before the linear layer, as in MAE's linear probing
(He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 <https://arxiv.org/abs/2111.06377>):
it standardises features whose scales differ by orders of magnitude across channels, so one learning rate suits
every backbone. It is a fixed per-channel affine map at inference (exportable, no extra parameters).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PooledHead"]


class PooledHead(nn.Module):
    """``Linear(BatchNorm(features, affine=False))``.

    Args:
        in_features: pooled feature width (``2 * D``).
        num_classes: number of logits.
        zero_init: start with zero weights and bias, so the head adds nothing at first (FPT's hybrid head starts as
            the side network alone). Defaults to ``False`` (PyTorch's default initialisation).
        feature_norm: standardise the features with a BatchNorm without affine parameters. Defaults to ``True``.

    Raises:
        ValueError: non-positive sizes.
    """

    def __init__(self, in_features: int, num_classes: int, zero_init: bool = False, feature_norm: bool = True) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"in_features and num_classes must be >= 1, got {in_features} and {num_classes}.")
        self.norm: nn.Module = nn.BatchNorm1d(in_features, affine=False) if feature_norm else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)
        if zero_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(pooled.to(self.fc.weight.dtype)))
