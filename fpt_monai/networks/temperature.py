# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Temperature scaling inside an exported model (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017):
the exported ``model.ts``/``model.onnx`` return ``logits / T``, so any consumer's ``softmax`` gives the calibrated
probabilities that training chose on its validation split (:mod:`fpt_monai.engines.operating_point`)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["TemperatureScaled", "TemperatureScaledExplainer"]


def _check(temperature: float) -> float:
    temperature = float(temperature)
    if not 0.0 < temperature < float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
    return temperature


class TemperatureScaled(nn.Module):
    """``network(image) / temperature``.

    Args:
        network: a classifier returning logits ``[B, C]``.
        temperature: T > 0.
    """

    def __init__(self, network: nn.Module, temperature: float) -> None:
        super().__init__()
        self.network = network
        self.temperature = _check(temperature)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image) / self.temperature


class TemperatureScaledExplainer(nn.Module):
    """An :class:`~fpt_monai.networks.FPTExplainer` whose logits are divided by ``temperature`` (the heatmap is
    unchanged).

    Args:
        explainer: returns ``(logits [B, C], heatmap [B, 1, H, W])``.
        temperature: T > 0.
    """

    def __init__(self, explainer: nn.Module, temperature: float) -> None:
        super().__init__()
        self.explainer = explainer
        self.temperature = _check(temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, heatmap = self.explainer(image)
        return logits / self.temperature, heatmap
