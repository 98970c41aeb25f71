from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import SideViT


def test_parameter_count_matches_spec():
    fpt_plus = SideViT(img_size=128, patch_size=16, embed_dim=96, depth=6, num_heads=12, num_classes=5)
    fpt = SideViT(img_size=224, patch_size=16, embed_dim=96, depth=12, num_heads=12, num_classes=5)
    assert sum(p.numel() for p in fpt_plus.parameters()) == 751_877
    assert sum(p.numel() for p in fpt.parameters()) == 1_435_589
    assert sum(p.numel() for p in fpt.blocks[0].parameters()) == 111_840


def test_shapes_and_prompts_are_dropped_after_each_block():
    net = SideViT(img_size=128, num_classes=3).eval()
    prompts = torch.randn(2, 6, 16, 96)
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1])) for blk in net.blocks]
    feats = net.forward_features(torch.randn(2, 3, 128, 128), prompts)
    for h in hooks:
        h.remove()
    assert seen == [65 + 16] * 6  # 8x8 patches + CLS, plus 16 prompts per block
    assert feats.shape == (2, 65, 96)
    assert net(torch.randn(2, 3, 128, 128), prompts).shape == (2, 3)


def test_each_layer_uses_its_own_prompts():
    net = SideViT(img_size=32, patch_size=16, embed_dim=24, depth=3, num_heads=3, num_classes=2).eval()
    x, prompts = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 4, 24)
    base = net(x, prompts)
    for layer in range(3):
        changed = prompts.clone()
        changed[:, layer] += torch.randn_like(changed[:, layer])
        assert not torch.allclose(net(x, changed), base)


def test_other_input_sizes_work():
    net = SideViT(img_size=128, num_classes=2).eval()
    assert net(torch.randn(1, 3, 160, 160), torch.randn(1, 6, 16, 96)).shape == (1, 2)


def test_hf_initialisation():
    torch.manual_seed(0)
    hf = SideViT(img_size=224, depth=12, init="hf")
    timm_init = SideViT(img_size=224, depth=12, init="timm")
    # HF: class token trunc_normal(0.02) (timm: normal(1e-6)); conv weights trunc_normal(0.02), zero biases
    assert 0.01 < hf.cls_token.std() < 0.04 and timm_init.cls_token.abs().max() < 1e-4
    assert abs(hf.patch_embed.proj.weight.std().item() - 0.02) < 0.002
    assert (
        torch.count_nonzero(hf.patch_embed.proj.bias) == 0 and torch.count_nonzero(timm_init.patch_embed.proj.bias) > 0
    )
    assert abs(hf.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(hf.pos_embed.std().item() - 0.02) < 0.002
    assert hf.norm.eps == 1e-12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init": "xavier"}, "init must be"),
        ({"embed_dim": 100, "num_heads": 12}, "divisible"),
        ({"img_size": 8}, "smaller than patch_size"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SideViT(**kwargs)
