# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Baselines of the FPT papers on the same timm ViT: full fine-tuning (optionally with gradient checkpointing),
linear probing (online, or on stored pooled features), LoRA, VPT-deep and AdaptFormer."""

from __future__ import annotations

from fpt_monai.networks.baselines.adaptformer import AdaptFormerViT, ParallelAdapter
from fpt_monai.networks.baselines.lora import LoRAViT
from fpt_monai.networks.baselines.pooled_probe import PooledLinearProbe
from fpt_monai.networks.baselines.vit_classifier import ViTClassifier
from fpt_monai.networks.baselines.vpt import VPTDeepViT

__all__ = ["AdaptFormerViT", "LoRAViT", "ParallelAdapter", "PooledLinearProbe", "VPTDeepViT", "ViTClassifier"]
