# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Rebuild a trained network from the ``models/model_config.json`` that training wrote."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch.nn as nn

from fpt_monai.networks.baselines.pooled_probe import PooledLinearProbe
from fpt_monai.networks.fpt import FPT
from fpt_monai.networks.spec import network_from_spec

__all__ = ["INFERENCE_NETWORKS", "network_from_model_config"]

# what records written before network_spec existed could name
INFERENCE_NETWORKS = ("fpt", "linear_probe")


def network_from_model_config(
    model_config: Mapping, pretrained: bool | str | os.PathLike = True, frozen_model: bool = True
) -> nn.Module:
    """The network that training recorded in ``model_config``.

    Records hold the network's class and arguments (``network_spec``, :func:`fpt_monai.networks.spec.network_spec`):
    FPT/FPT+ with any head, the store-trained linear probe and every baseline are rebuilt exactly. Older records
    name ``network_name`` (``"fpt"``, the default, or ``"linear_probe"``) and the few settings they held.

    Args:
        model_config: the parsed ``model_config.json``.
        pretrained: the frozen model's weights (a file, ``True`` for timm's hub, ``False`` for random weights).
        frozen_model: build the frozen model (one-tensor inference); ``False`` for networks fed from the feature
            store (FPT and the linear probe in ``mode: preload``).

    Raises:
        ValueError: a network this package cannot rebuild.
    """
    spec = model_config.get("network_spec")
    if spec is not None:
        return network_from_spec(spec, pretrained=pretrained, frozen_model=frozen_model)
    name = model_config.get("network_name", "fpt")
    common = dict(
        num_classes=int(model_config["num_classes"]),
        backbone=model_config["backbone"],
        pretrained=pretrained,
        img_size=int(model_config["img_size"]),
        frozen_model=frozen_model,
    )
    if name == "fpt":
        return FPT(
            variant=model_config["variant"],
            side_img_size=int(model_config["side_img_size"]),
            token_ratio=float(model_config["token_ratio"]),
            head=model_config.get("head", "side"),
            pooled_img_size=model_config.get("pooled_img_size"),
            lpm_layer_norm_eps=model_config.get("lpm_layer_norm_eps"),
            **common,
        )
    if name == "linear_probe":
        return PooledLinearProbe(layer_norm_eps=model_config.get("lpm_layer_norm_eps"), **common)
    raise ValueError(
        f"model_config names network_name {name!r} without a network_spec, which cannot be rebuilt; "
        f"expected one of {INFERENCE_NETWORKS}."
    )
