# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Where FPT looks: the fine-grained prompts' attention over the frozen model's selected tokens, as an image map.

In FPT (Huang et al., MICCAI 2024 <https://arxiv.org/abs/2403.07576>) the fusion module's prompts attend to the keys
of the tokens that the frozen model selected in each extracted layer and head. Summing those attention weights onto
the selected tokens' patch positions, averaged over prompts, heads and layers, gives one weight per patch: how much of
the information that reached the side network came from there. Patches the frozen model did not select get zero.
It is not a class-specific saliency map (no gradients, no counterfactual): see docs/explainability.md.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FPTExplainer", "prompt_attention_map"]


def prompt_attention_map(
    attention: torch.Tensor,
    indices: torch.Tensor,
    num_prefix_tokens: int,
    grid_size: tuple[int, int],
) -> torch.Tensor:
    """Patch-grid map ``[B, gh, gw]`` of the prompts' attention on the selected tokens (rows sum to <= 1).

    Args:
        attention: prompt-to-token probabilities ``[B, L, H, P, k]`` from :meth:`FusionModule.attention`.
        indices: the selected tokens' positions ``[B, L, H, k]`` from :meth:`FrozenViTExtractor.select`
            (0 .. num_prefix_tokens-1 are the class/register tokens, which have no image position).
        num_prefix_tokens: class and register tokens in front of the patches.
        grid_size: the frozen model's patch grid ``(gh, gw)``.
    """
    if not torch.jit.is_tracing() and (
        attention.ndim != 5 or indices.ndim != 4 or attention.shape[:3] != indices.shape[:3]
    ):
        raise ValueError(
            f"attention [B, L, H, P, k] and indices [B, L, H, k] do not match: {tuple(attention.shape)} and "
            f"{tuple(indices.shape)}."
        )
    B, L, H = indices.shape[:3]
    weights = attention.mean(dim=3)  # over prompts -> [B, L, H, k]
    # zeros from zeros_like, not torch.zeros(..., device=weights.device): FPTExplainer is traced for export, and a
    # traced device is a constant (a model_explain.ts made on the CPU would then mix CPU and CUDA tensors on a GPU)
    tokens = torch.zeros_like(weights[:, 0, 0, :1]).expand(B, num_prefix_tokens + grid_size[0] * grid_size[1])
    tokens = tokens.scatter_add(1, indices.reshape(B, -1), weights.reshape(B, -1)) / (L * H)
    return tokens[:, num_prefix_tokens:].reshape(B, grid_size[0], grid_size[1])


class FPTExplainer(nn.Module):
    """An FPT/FPT+ model that also returns the prompt-attention heatmap of each image.

    ``forward(image)`` returns ``(logits [B, C], heatmap [B, 1, H, W])`` with the heatmap at the input's size,
    bilinearly upsampled from the frozen model's patch grid and scaled to [0, 1] per image (the largest weight is 1).
    Both come from one pass of the frozen model. The wrapper has the wrapped model's state dict (so the training
    checkpoint loads into it, e.g. with ``python -m monai.bundle ckpt_export explainer ...``) and traces to
    TorchScript.

    Args:
        network: an :class:`~fpt_monai.networks.FPT` built with its frozen model.

    Raises:
        ValueError: the network has no frozen model (built with ``frozen_model=False``).

    Examples::

        >>> explainer = FPTExplainer(FPT(num_classes=2, pretrained=False)).eval()
        >>> logits, heatmap = explainer(torch.randn(1, 3, 512, 512))
        >>> heatmap.shape
        torch.Size([1, 1, 512, 512])
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if getattr(network, "lpm", None) is None:
            raise ValueError("FPTExplainer needs an FPT built with its frozen model (frozen_model=True).")
        self.network = network

    # the explainer is a view of the FPT: same checkpoint format, so training checkpoints load as they are
    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.network
        keys, values, indices, pooled = net.lpm.extract_all(image, net.hybrid)
        logits = net.forward_features(net.make_side_view(image), keys, values, pooled)
        grid = prompt_attention_map(
            net.fusion.attention(keys), indices, net.lpm.num_prefix_tokens, net.lpm.grid_size
        ).unsqueeze(1)
        heatmap = F.interpolate(grid, size=image.shape[-2:], mode="bilinear", align_corners=False)
        low = heatmap.amin(dim=(2, 3), keepdim=True)
        high = heatmap.amax(dim=(2, 3), keepdim=True)
        return logits, (heatmap - low) / (high - low).clamp_min(1e-12)
