# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Checkpoints that hold only the trainable part of a model whose frozen model lives in ``self.lpm``.

The frozen model's weights always come from ``pretrained``; saving them in every checkpoint would cost hundreds of
MB and, for training from stored features, the frozen model is not even built (``lpm`` is ``None``).
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["keep_frozen_model_out_of_state_dict"]


def _drop_frozen_weights(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> dict:
    for key in [k for k in state_dict if k.startswith(prefix + "lpm.")]:
        del state_dict[key]
    return state_dict


def keep_frozen_model_out_of_state_dict(module: nn.Module) -> None:
    """Make ``module.state_dict()`` skip ``module.lpm`` and ``load_state_dict`` fill it from the module itself, so
    trainable-only checkpoints load with ``strict=True`` (and full ones, with ``lpm.*`` keys, still load)."""

    def fill(state_dict: dict, prefix: str, *args) -> None:
        lpm = getattr(module, "lpm", None)
        if lpm is not None and not any(k.startswith(prefix + "lpm.") for k in state_dict):
            for key, value in lpm.state_dict().items():
                state_dict[f"{prefix}lpm.{key}"] = value

    module._register_state_dict_hook(_drop_frozen_weights)
    module._register_load_state_dict_pre_hook(fill, with_module=False)
