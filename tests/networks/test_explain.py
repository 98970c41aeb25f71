"""FPTExplainer and prompt_attention_map: where the fine-grained prompts look."""

from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import FPT, FPTExplainer, prompt_attention_map

from ..conftest import TINY


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = FPT(num_classes=3, pretrained=False, include_cls=False, prompt_init_std=1.0, **TINY).eval()
    return model


def test_map_is_the_attention_mass_per_patch(net):
    x = torch.randn(2, 3, 64, 64)
    keys, _, idx = net.lpm.select(x)
    attn = net.fusion.attention(keys)
    grid = prompt_attention_map(attn, idx, net.lpm.num_prefix_tokens, net.lpm.grid_size)
    assert grid.shape == (2, 4, 4)
    # prefix tokens cannot be selected (include_cls=False): all attention lands on patches, averaged to 1
    torch.testing.assert_close(grid.sum(dim=(1, 2)), torch.ones(2))
    # a patch nobody selected gets nothing; one patch by hand
    b, layer, head = 1, 0, 2
    patch = int(idx[b, layer, head, 0]) - net.lpm.num_prefix_tokens
    selected = idx - net.lpm.num_prefix_tokens
    total = sum(
        float(attn[b, i, h].mean(0)[selected[b, i, h] == patch].sum())
        for i in range(idx.shape[1])
        for h in range(idx.shape[2])
    ) / (idx.shape[1] * idx.shape[2])
    assert grid[b].flatten()[patch].item() == pytest.approx(total, rel=1e-5)


def test_explainer_logits_equal_the_model_and_heatmap_is_an_image(net):
    explainer = FPTExplainer(net).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, heat = explainer(x)
        torch.testing.assert_close(logits, net(x))
    assert heat.shape == (2, 1, 64, 64)
    assert heat.min() >= 0 and heat.max() <= 1
    assert heat.amax(dim=(1, 2, 3)).allclose(torch.ones(2)) and (heat.std(dim=(1, 2, 3)) > 0.01).all()
    # the explainer carries the FPT's checkpoint format and traces like it
    assert explainer.state_dict().keys() == net.state_dict().keys()
    explainer.load_state_dict(net.state_dict())
    traced = torch.jit.trace(explainer, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x)[1], heat)


def test_explainer_needs_the_frozen_model():
    with pytest.raises(ValueError, match="frozen_model=True"):
        FPTExplainer(FPT(num_classes=2, pretrained=False, frozen_model=False, **TINY))
    with pytest.raises(ValueError, match="do not match"):
        prompt_attention_map(torch.rand(1, 2, 3, 4, 5), torch.zeros(1, 2, 2, 5, dtype=torch.long), 1, (2, 2))
