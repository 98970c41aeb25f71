# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A linear classifier on the frozen model's pooled features (final class token and mean patch token), used by the
store-based linear probe and by FPT's hybrid heads (on the pooled features, on the fusion prompts' context, and on
the stored tokens' layer means).

The features pass through a BatchNorm without affine parameters before the linear layer, as in MAE's linear probing
(He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 <https://arxiv.org/abs/2111.06377>):
it standardises features whose scales differ by orders of magnitude across channels, so one learning rate suits
every backbone. It is a fixed per-channel affine map at inference (exportable, no extra parameters).

A head initialised from a fitted logistic regression (FPT's token head, :mod:`fpt_monai.engines.token_head`) needs
the fit's standardisation itself, in training too: ``feature_norm="fixed"`` subtracts a stored mean and divides by a
stored scale (buffers, saved in the checkpoint), which :meth:`PooledHead.load_linear_model` sets.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["FixedStandardization", "PooledHead"]


class FixedStandardization(nn.Module):
    """``(x - mean) / scale`` with ``mean`` and ``scale`` buffers (saved in the checkpoint, never trained): the
    standardisation of a fit (scikit-learn's ``StandardScaler``), the same in training and at inference. Starts as
    the identity (mean 0, scale 1).

    Args:
        num_features: the feature width.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(int(num_features)))
        self.register_buffer("scale", torch.ones(int(num_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class PooledHead(nn.Module):
    """``Linear(BatchNorm(features, affine=False))``, or ``Linear(FixedStandardization(features))``.

    Args:
        in_features: pooled feature width (``2 * D``).
        num_classes: number of logits.
        zero_init: start with zero weights and bias, so the head adds nothing at first (FPT's hybrid head starts as
            the side network alone). Defaults to ``False`` (PyTorch's default initialisation).
        feature_norm: standardise the features: ``True`` with a BatchNorm without affine parameters (batch
            statistics in training, running ones at inference), ``"fixed"`` with a stored mean and scale
            (:class:`FixedStandardization`, set with the weights by :meth:`load_linear_model`), ``False`` not at all.
            Defaults to ``True``.

    Raises:
        ValueError: non-positive sizes, an unknown ``feature_norm``.
    """

    def __init__(
        self, in_features: int, num_classes: int, zero_init: bool = False, feature_norm: bool | str = True
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"in_features and num_classes must be >= 1, got {in_features} and {num_classes}.")
        if feature_norm not in (True, False, "fixed"):
            raise ValueError(f"feature_norm must be True, False or 'fixed', got {feature_norm!r}.")
        self.norm: nn.Module = (
            FixedStandardization(in_features)
            if feature_norm == "fixed"
            else nn.BatchNorm1d(in_features, affine=False)
            if feature_norm
            else nn.Identity()
        )
        self.fc = nn.Linear(in_features, num_classes)
        if zero_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    @torch.no_grad()
    def load_linear_model(
        self, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> None:
        """Set the head to a fitted linear model on standardised features: ``fc(x) = weight @ ((x - mean) / scale)
        + bias`` (``feature_norm="fixed"`` only). ``weight`` is ``[num_classes, in_features]``, ``bias``
        ``[num_classes]`` (:meth:`fpt_monai.engines.logistic_probe.LogisticProbeFit.linear_model` gives them).

        Raises:
            ValueError: the head does not standardise with stored statistics, or a shape does not fit.
        """
        if not isinstance(self.norm, FixedStandardization):
            raise ValueError("load_linear_model needs a head built with feature_norm='fixed'.")
        weight, bias = torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)
        classes, width = self.fc.out_features, self.fc.in_features
        mean, scale = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
        if (
            weight.shape != (classes, width)
            or bias.shape != (classes,)
            or mean.shape != (width,)
            or scale.shape != (width,)
        ):
            raise ValueError(
                f"a linear model of weight {tuple(weight.shape)}, bias {tuple(bias.shape)}, mean {tuple(mean.shape)} "
                f"and scale {tuple(scale.shape)} does not fit this head ({classes} classes, {width} features)."
            )
        if not bool((scale > 0).all()):
            raise ValueError("every scale of the standardisation must be positive.")
        self.norm.mean.copy_(mean)
        self.norm.scale.copy_(scale)
        self.fc.weight.copy_(weight.to(self.fc.weight.dtype))
        self.fc.bias.copy_(bias.to(self.fc.bias.dtype))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(pooled.to(self.fc.weight.dtype)))
