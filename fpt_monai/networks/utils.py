# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Parameter accounting, computed from the module definitions (the reference code only counts without preloading)."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn as nn

__all__ = ["ParameterCount", "count_parameters"]


class ParameterCount(NamedTuple):
    """Trainable and frozen parameter counts; ``ratio`` is trainable / (trainable + frozen), in percent."""

    trainable: int
    frozen: int
    total: int
    ratio: float

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / total {self.total:,} ({self.ratio:.2f}%), frozen {self.frozen:,}"


def count_parameters(net: nn.Module) -> ParameterCount:
    """Count trainable (``requires_grad``) and frozen parameters of ``net`` (shared parameters counted once).

    For FPT the frozen part is the LPM *as used*: position embeddings at the LPM resolution, no ImageNet head and no
    blocks after the deepest extracted one, so the ratio is slightly above the paper's, whose denominator is the
    Hugging Face checkpoint as loaded (577 position embeddings and a 1000-class head; docs/deviations.md).
    """
    trainable = frozen = 0
    for p in net.parameters():  # parameters() already de-duplicates shared tensors
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    total = trainable + frozen
    return ParameterCount(trainable, frozen, total, 100.0 * trainable / total if total else 0.0)
