# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Rebuild a trained network for inference from the ``models/model_config.json`` that training wrote."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch.nn as nn

from fpt_monai.networks.baselines.pooled_probe import PooledLinearProbe
from fpt_monai.networks.fpt import FPT

__all__ = ["INFERENCE_NETWORKS", "network_from_model_config"]

INFERENCE_NETWORKS = ("fpt", "linear_probe")


def network_from_model_config(model_config: Mapping, pretrained: bool | str | os.PathLike = True) -> nn.Module:
    """The network that training recorded in ``model_config`` (``network_name``: ``"fpt"``, the default for configs
    written before the key existed, or ``"linear_probe"``), built with its frozen model for one-tensor inference.

    Raises:
        ValueError: an unknown ``network`` name.
    """
    name = model_config.get("network_name", "fpt")
    common = dict(
        num_classes=int(model_config["num_classes"]),
        backbone=model_config["backbone"],
        pretrained=pretrained,
        img_size=int(model_config["img_size"]),
        lpm_layer_norm_eps=model_config.get("lpm_layer_norm_eps"),
    )
    if name == "fpt":
        return FPT(
            variant=model_config["variant"],
            side_img_size=int(model_config["side_img_size"]),
            token_ratio=float(model_config["token_ratio"]),
            head=model_config.get("head", "side"),
            **common,
        )
    if name == "linear_probe":
        common["layer_norm_eps"] = common.pop("lpm_layer_norm_eps")
        return PooledLinearProbe(**common)
    raise ValueError(
        f"model_config names network_name {name!r}, which inference cannot rebuild; "
        f"expected one of {INFERENCE_NETWORKS}."
    )
