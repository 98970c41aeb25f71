from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from fpt_monai.networks import SideViT, create_vit_backbone
from fpt_monai.networks.weight_selection import select_side_weights


def evenly(m: int, n: int) -> torch.Tensor:
    return torch.arange(m) * n // m


def frozen(name: str, img_size: int, **kwargs):
    """A small random timm ViT whose every parameter (biases, norms, LayerScale too) is random, so slices differ."""
    vit = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **kwargs).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return vit


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def side_for(vit, img_size: int, depth: int, embed_dim: int, **kwargs) -> SideViT:
    heads, patch = vit.blocks[0].attn.num_heads, vit.patch_embed.patch_size[0]
    kwargs = {"patch_size": patch, "num_classes": 4, "init": "lpm", **kwargs}
    return SideViT(img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=heads, **kwargs)


def expected_block(src, d: int, hidden: int) -> dict[str, torch.Tensor]:
    """Hand-computed selection of one frozen block, written independently of the module (reshape, not index maths)."""
    D, H, hd = src.attn.qkv.in_features, src.attn.num_heads, src.attn.head_dim
    c, e, h_sel = evenly(d, D), evenly(hidden, src.mlp.fc1.out_features), evenly(d // H, hd)
    g1 = src.ls1.gamma if hasattr(src.ls1, "gamma") else torch.ones(D)
    g2 = src.ls2.gamma if hasattr(src.ls2, "gamma") else torch.ones(D)
    proj = (src.attn.proj.weight * g1[:, None]).reshape(D, H, hd)[c][:, :, h_sel].reshape(d, d)
    qkv_b = src.attn.qkv.bias if src.attn.qkv.bias is not None else torch.zeros(3 * D)
    return {
        "norm1.weight": src.norm1.weight[c],
        "norm2.bias": src.norm2.bias[c],
        "attn.qkv.weight": src.attn.qkv.weight.reshape(3, H, hd, D)[:, :, h_sel][..., c].reshape(3 * d, d),
        "attn.qkv.bias": qkv_b.reshape(3, H, hd)[:, :, h_sel].reshape(3 * d),
        "attn.proj.weight": proj,
        "attn.proj.bias": (src.attn.proj.bias * g1)[c],
        "mlp.fc1.weight": src.mlp.fc1.weight[e][:, c],
        "mlp.fc1.bias": src.mlp.fc1.bias[e],
        "mlp.fc2.weight": (src.mlp.fc2.weight * g2[:, None])[c][:, e],
        "mlp.fc2.bias": (src.mlp.fc2.bias * g2)[c],
    }


@pytest.fixture(scope="module")
def tiny():
    return frozen("vit_tiny_patch16_224", 64, depth=4)  # D=192, 3 heads of 64, 4x4 grid


@pytest.fixture(scope="module")
def dinov2():
    return frozen("vit_small_patch14_dinov2", 56, depth=4)  # D=384, 6 heads, LayerScale, 4x4 grid


@pytest.fixture(scope="module")
def dinov2_reg():
    return frozen("vit_small_patch14_reg4_dinov2", 56, depth=4)  # 4 registers, no_embed_class


def test_side_init_lpm_is_hf_init():
    torch.manual_seed(3)
    hf = SideViT(img_size=32, embed_dim=24, depth=2, num_heads=3, init="hf")
    torch.manual_seed(3)
    lpm = SideViT(img_size=32, embed_dim=24, depth=2, num_heads=3, init="lpm")
    for (name, a), b in zip(hf.state_dict().items(), lpm.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["tiny", "dinov2"])
def test_exact_slices(name, request):
    vit = request.getfixturevalue(name)
    D = vit.embed_dim
    d, layers = D // 8, [1, 3]
    side = side_for(vit, img_size=vit.patch_embed.patch_size[0] * 2, depth=2, embed_dim=d)
    head, count = side.head.weight.clone(), n_params(side)
    assert select_side_weights(side, vit, layers) is side
    c = evenly(d, D)
    hidden = side.blocks[0].mlp.fc1.out_features
    for i, j in enumerate(layers):
        got = dict(side.blocks[i].named_parameters())
        for key, want in expected_block(vit.blocks[j], d, hidden).items():
            torch.testing.assert_close(got[key], want, rtol=0, atol=0, msg=f"block {i} {key}")
    assert torch.equal(side.patch_embed.proj.weight, vit.patch_embed.proj.weight[c])
    assert torch.equal(side.patch_embed.proj.bias, vit.patch_embed.proj.bias[c])
    assert torch.equal(side.cls_token, vit.cls_token[..., c])
    assert torch.equal(side.pos_embed[:, :1], vit.pos_embed[:, :1, c])
    grid = resample_abs_pos_embed(vit.pos_embed[:, 1:, c], new_size=(2, 2), num_prefix_tokens=0)  # 4x4 -> 2x2
    torch.testing.assert_close(side.pos_embed[:, 1:], grid, rtol=0, atol=0)
    assert torch.equal(side.norm.weight, vit.norm.weight[c]) and torch.equal(side.norm.bias, vit.norm.bias[c])
    assert n_params(side) == count and torch.equal(side.head.weight, head)  # head untouched (HF random)
    size = side.patch_embed.img_size
    out = side(torch.randn(2, 3, *size), torch.randn(2, 2, 5, d))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["tiny", "dinov2"])
def test_full_width_selection_reproduces_frozen_model(name, request):
    """Selecting everything (d = D, same hidden, all blocks, no prompts) must give the frozen model's features:
    checks the qkv/head layout, LayerScale folding and position embeddings end to end."""
    vit = request.getfixturevalue(name)
    img = vit.patch_embed.img_size[0]
    side = side_for(vit, img_size=img, depth=4, embed_dim=vit.embed_dim, layer_norm_eps=vit.norm.eps)
    select_side_weights(side, vit, range(4)).eval()
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        got = side.forward_features(x, torch.zeros(2, 4, 0, vit.embed_dim))
        torch.testing.assert_close(got, vit.forward_features(x), rtol=1e-4, atol=1e-4)


def test_registers_and_no_embed_class(dinov2_reg):
    vit = dinov2_reg
    assert vit.no_embed_class and vit.num_prefix_tokens == 5 and vit.pos_embed.shape[1] == 16
    side = select_side_weights(side_for(vit, img_size=28, depth=2, embed_dim=48), vit, [0, 2])
    c = evenly(48, 384)
    assert torch.count_nonzero(side.pos_embed[:, 0]) == 0  # the frozen class token had no position embedding
    grid = resample_abs_pos_embed(vit.pos_embed[..., c], new_size=(2, 2), num_prefix_tokens=0)
    torch.testing.assert_close(side.pos_embed[:, 1:], grid, rtol=0, atol=0)
    assert torch.equal(side.cls_token, vit.cls_token[..., c])
    out = side(torch.randn(1, 3, 28, 28), torch.randn(1, 2, 3, 48))
    assert torch.isfinite(out).all()


def test_patch_size_mismatch_resamples_kernel_and_missing_bias_is_zero():
    vit = frozen("vit_tiny_patch16_224", 64, depth=2, qkv_bias=False)
    side = select_side_weights(side_for(vit, img_size=32, depth=1, embed_dim=24, patch_size=8), vit, [1])
    c = evenly(24, 192)
    torch.testing.assert_close(
        side.patch_embed.proj.weight, resample_patch_embed(vit.patch_embed.proj.weight[c], [8, 8])
    )
    assert torch.count_nonzero(side.blocks[0].attn.qkv.bias) == 0
    grid = resample_abs_pos_embed(vit.pos_embed[:, 1:, c], new_size=(4, 4), num_prefix_tokens=0)  # 4x4 grid: copy
    torch.testing.assert_close(side.pos_embed[:, 1:], grid, rtol=0, atol=0)


def test_works_with_create_vit_backbone():
    with pytest.warns(UserWarning, match="randomly initialised"):
        vit = create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=64)
    side = select_side_weights(side_for(vit, img_size=32, depth=2, embed_dim=24), vit, [10, 11])
    assert torch.equal(side.blocks[1].norm1.bias, vit.blocks[11].norm1.bias[evenly(24, 192)])


@pytest.mark.parametrize(
    "kwargs, layers, match",
    [
        ({"depth": 2}, [1, 2, 3], "build SideViT\\(depth=len\\(layers\\)\\)"),
        ({"depth": 2, "num_heads": 4}, [1, 2], "heads"),
        ({"depth": 2, "embed_dim": 384}, [1, 2], "exceeds the frozen width"),
        ({"depth": 2}, [1, 4], "outside the frozen model"),
        ({"depth": 2}, [1, True], "block indices"),
        ({"depth": 2, "mlp_ratio": 40.0}, [1, 2], "hidden units"),
    ],
)
def test_bad_inputs(tiny, kwargs, layers, match):
    kwargs = {"img_size": 32, "embed_dim": 24, **kwargs}
    side = SideViT(patch_size=16, num_heads=kwargs.pop("num_heads", 3), **kwargs)
    with pytest.raises(ValueError, match=match):
        select_side_weights(side, tiny, layers)


def test_qk_norm_is_rejected():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=1, qk_norm=True)
    side = SideViT(img_size=32, embed_dim=24, depth=1, num_heads=3)
    with pytest.raises(ValueError, match="q_norm"):
        select_side_weights(side, vit, [0])
