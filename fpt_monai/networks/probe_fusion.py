# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""FPT+ and the store-based linear probe as one model: their class probabilities blended (issue 22).

On small data the average of FPT+'s and a linear probe's probabilities beat either alone (docs/benchmarks.md);
:mod:`fpt_monai.engines.probability_blend` chooses the weight on validation. :class:`ProbeFusion` puts both behind the
one-tensor forward of every network of this package, sharing ONE frozen model: its logits are ``log(w p_fpt +
(1 - w) p_probe)``, so that ``softmax(logits)`` is the blend and evaluation, temperature calibration, operating points,
export and Deploy treat it like any other classifier. The probe may have been trained at another resolution (FPT+ at
518 px, the probe at 224 px): it then sees the image resized inside the network, through the same frozen weights with
the position embeddings of its own grid (:meth:`FrozenViTExtractor.pool_at`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fpt_monai.networks.baselines.pooled_probe import PooledLinearProbe
from fpt_monai.networks.fpt import FPT
from fpt_monai.networks.frozen_vit import FrozenViTExtractor
from fpt_monai.networks.spec import recorded

__all__ = ["ProbeFusion", "position_embedding_at"]


def position_embedding_at(
    lpm: FrozenViTExtractor,
    img_size: int,
    pretrained: bool | str | os.PathLike,
    pos_interp: str = "legacy",
    backbone_kwargs: dict | None = None,
) -> torch.Tensor:
    """The position embeddings an extractor of ``lpm``'s backbone built at ``img_size`` would have: resampled from
    the weight file (``pretrained``) the way :func:`~fpt_monai.networks.create_vit_backbone` does, so that
    ``lpm.pool_at(image, pos)`` equals that extractor's ``pool(image)``. With random weights (``pretrained=False``)
    ``lpm``'s own embeddings are resampled (there is no file to read)."""
    from fpt_monai.networks.backbone import create_vit_backbone, resample_pos_embed_legacy
    from fpt_monai.utils.flags import as_weights

    weights = as_weights(pretrained)
    if weights is False or weights is None:
        from timm.layers import resample_abs_pos_embed

        vit = lpm.vit
        grid = (int(img_size) // lpm.patch_size,) * 2
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        pos = vit.pos_embed.detach()
        if pos_interp == "legacy":
            return resample_pos_embed_legacy(pos, grid, prefix).clone()
        return resample_abs_pos_embed(pos, new_size=grid, num_prefix_tokens=prefix).clone()
    # the whole backbone is built once to read its position embeddings, then dropped
    vit = create_vit_backbone(lpm.backbone, weights, int(img_size), pos_interp, **(backbone_kwargs or {}))
    return vit.pos_embed.detach().clone()


def _arguments(cls: type, kwargs: Mapping) -> dict[str, Any]:
    """``kwargs`` completed with ``cls``'s defaults: the settings a network was built with."""
    params = inspect.signature(cls.__init__).parameters
    return {**{k: p.default for k, p in params.items() if k != "self"}, **kwargs}


@recorded
class ProbeFusion(nn.Module):
    """A probability-level blend of a trained FPT/FPT+ network and a trained pooled-feature linear probe that share
    one frozen model.

    Args:
        fpt: the FPT network's constructor arguments (its record's ``network_spec["kwargs"]``).
        probe: the :class:`PooledLinearProbe`'s constructor arguments (same backbone, LayerNorm epsilon, backbone
            arguments and number of classes; any ``img_size``).
        weight: FPT's weight ``w`` in ``[0, 1]`` (the probe's is ``1 - w``); a buffer, saved in the checkpoint.
            Defaults to 0.5.
        pretrained: the frozen model's weights (a file, ``True`` for timm's hub, ``False`` for random).
        frozen_model: must be ``True``: the blend runs from images (the probe may read another resolution than any
            feature store of FPT holds).

    ``forward(image, image_side=None, ...)``: ``log(w softmax(fpt(image)) + (1 - w) softmax(probe(image')))`` where
    ``image'`` is ``image`` resized to the probe's ``img_size`` (bilinear, anti-aliased) when that differs.
    ``state_dict()`` holds both trainable parts and the weight, never the frozen model.

    Raises:
        ValueError: the two networks do not share a frozen model (backbone, LayerNorm epsilon, backbone arguments) or
            classes, a weight outside ``[0, 1]``, or ``frozen_model=False``.
    """

    def __init__(
        self,
        fpt: Mapping,
        probe: Mapping,
        weight: float = 0.5,
        pretrained: bool | str | os.PathLike = True,
        frozen_model: bool = True,
    ) -> None:
        super().__init__()
        if not frozen_model:
            raise ValueError(
                "ProbeFusion runs from images (its probe may read another resolution than FPT's feature store): "
                "build it with frozen_model=True; evaluate a fused bundle with --mode online (its record's default)."
            )
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"the blend weight must be in [0, 1], got {weight}.")
        fpt_kwargs, probe_kwargs = dict(fpt), dict(probe)
        for key in ("pretrained", "frozen_model"):
            fpt_kwargs.pop(key, None)
            probe_kwargs.pop(key, None)
        # the side network's initialisation does not matter (the checkpoint replaces it): "lpm" would read the weights
        self.fpt = FPT(**{**fpt_kwargs, "side_init": "hf"}, pretrained=False, frozen_model=False)
        self.probe = PooledLinearProbe(**probe_kwargs, pretrained=False, frozen_model=False)
        shared = self.fpt.lpm_kwargs
        probe_args = _arguments(PooledLinearProbe, probe_kwargs)
        differ = [
            f"{k} {shared[k]!r} vs {probe_args[k]!r}"
            for k in ("backbone", "layer_norm_eps", "backbone_kwargs")
            if (shared[k] or None) != (probe_args[k] or None)
        ]
        if self.fpt.num_classes != self.probe.num_classes:
            differ.append(f"num_classes {self.fpt.num_classes} vs {self.probe.num_classes}")
        if differ:
            raise ValueError(
                f"FPT and the probe do not share a frozen model and classes ({'; '.join(differ)}): fuse a probe "
                "trained on FPT's backbone and weights, with the same classes."
            )
        # one frozen model with the whole network (the probe needs the final norm), shared by both parts
        lpm = FrozenViTExtractor(**{**shared, "pretrained": pretrained, "pooled": True})
        self.fpt.lpm = lpm
        self.probe_img_size = int(probe_args["img_size"])
        # the probe's own grid when it differs: its position embeddings, derived from the weights (not saved)
        self.resized = self.probe_img_size != lpm.img_size or probe_args["pos_interp"] != lpm.pos_interp
        pos = (
            position_embedding_at(
                lpm, self.probe_img_size, pretrained, probe_args["pos_interp"], probe_args["backbone_kwargs"]
            )
            if self.resized
            else torch.zeros(0)
        )
        self.register_buffer("probe_pos_embed", pos, persistent=False)
        self.register_buffer("weight", torch.tensor(float(weight)))
        self.num_classes = self.fpt.num_classes
        self.img_size = lpm.img_size

    def branch_logits(
        self, image: torch.Tensor, image_side: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two networks' own logits ``(fpt, probe)``, each ``[B, num_classes]``."""
        lpm = self.fpt.lpm
        assert lpm is not None  # built in __init__
        if self.resized:
            small = F.interpolate(
                image,
                size=(self.probe_img_size, self.probe_img_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            return self.fpt(image, image_side=image_side), self.probe.head(lpm.pool_at(small, self.probe_pos_embed))
        # one pass of the frozen model gives FPT's tokens and the probe's pooled features
        keys, values, _, pooled = lpm.extract_all(image, True)
        assert pooled is not None
        return self.fpt(image, image_side=image_side, keys=keys, values=values, pooled=pooled), self.probe.head(pooled)

    def forward(
        self,
        image: torch.Tensor,
        image_side: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-probabilities of the blend ``[B, num_classes]`` (``keys``, ``values``, ``pooled`` are accepted and
        ignored, so every FPT pipeline can feed this network; the image is always used)."""
        fpt_logits, probe_logits = self.branch_logits(image, image_side)
        w = self.weight
        p = w * torch.softmax(fpt_logits.float(), dim=1) + (1.0 - w) * torch.softmax(probe_logits.float(), dim=1)
        # a probability that underflowed to 0 would give -inf (an infinite loss); the blend is otherwise unchanged
        return torch.log(p.clamp_min(torch.finfo(torch.float32).tiny))
