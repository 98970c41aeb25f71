# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""FPT / FPT+ networks as MONAI-style modules built on timm."""

from __future__ import annotations

from fpt_monai.networks.backbone import (
    POS_INTERP_MODES,
    convert_hf_vit_state_dict,
    create_vit_backbone,
    load_state_dict_file,
    resample_pos_embed_legacy,
)
from fpt_monai.networks.baselines import AdaptFormerViT, LoRAViT, PooledLinearProbe, ViTClassifier, VPTDeepViT
from fpt_monai.networks.explain import FPTExplainer, prompt_attention_map
from fpt_monai.networks.factory import INFERENCE_NETWORKS, network_from_model_config
from fpt_monai.networks.fpt import FPT, FPT_HEADS, FPT_VARIANTS, token_layer_means
from fpt_monai.networks.frozen_vit import FrozenViTExtractor
from fpt_monai.networks.fusion import RESIDUAL_MODES, FusionModule
from fpt_monai.networks.layers import parse_layers
from fpt_monai.networks.pooled_head import PooledHead
from fpt_monai.networks.probe_fusion import ProbeFusion
from fpt_monai.networks.side_vit import SIDE_INIT_MODES, SideViT, init_weights_hf_vit
from fpt_monai.networks.spec import RECORDED_NETWORKS, network_from_spec, network_spec, recorded
from fpt_monai.networks.temperature import TemperatureScaled, TemperatureScaledExplainer
from fpt_monai.networks.token_selection import (
    TOKEN_IMPORTANCE_MODES,
    num_selected_tokens,
    select_important_tokens,
    token_importance,
)
from fpt_monai.networks.utils import ParameterCount, count_parameters
from fpt_monai.networks.weight_selection import select_side_weights

__all__ = [
    "AdaptFormerViT",
    "FPT",
    "FPT_HEADS",
    "FPT_VARIANTS",
    "INFERENCE_NETWORKS",
    "FPTExplainer",
    "TemperatureScaled",
    "TemperatureScaledExplainer",
    "POS_INTERP_MODES",
    "RECORDED_NETWORKS",
    "RESIDUAL_MODES",
    "SIDE_INIT_MODES",
    "TOKEN_IMPORTANCE_MODES",
    "FrozenViTExtractor",
    "FusionModule",
    "LoRAViT",
    "ParameterCount",
    "PooledHead",
    "PooledLinearProbe",
    "ProbeFusion",
    "SideViT",
    "VPTDeepViT",
    "ViTClassifier",
    "convert_hf_vit_state_dict",
    "count_parameters",
    "create_vit_backbone",
    "init_weights_hf_vit",
    "load_state_dict_file",
    "network_from_model_config",
    "network_from_spec",
    "network_spec",
    "num_selected_tokens",
    "parse_layers",
    "prompt_attention_map",
    "recorded",
    "resample_pos_embed_legacy",
    "select_important_tokens",
    "select_side_weights",
    "token_importance",
    "token_layer_means",
]
