from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import FrozenViTExtractor, frozen_vit

from ..conftest import TINY


def _reference_tokens(ext: FrozenViTExtractor, x: torch.Tensor, layers, k: int, mode: str, excluded: int = 0):
    """Run timm's own blocks (fused attention) and select tokens from an explicitly computed attention map."""
    vit = ext.vit
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    keys, values, idxs = [], [], []
    for i, blk in enumerate(vit.blocks):
        if i in layers:
            attn = blk.attn
            B, N, C = h.shape
            qkv = attn.qkv(blk.norm1(h)).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, kk, v = qkv.unbind(0)
            probs = torch.softmax(q @ kk.transpose(-2, -1) / attn.head_dim**0.5, dim=-1)
            imp = probs.mean(-2) if mode == "global" else probs[:, :, 0]
            imp[..., :excluded] = -1.0
            order = imp.argsort(dim=-1, descending=True)[..., :k]
            keys.append(
                torch.stack([torch.stack([kk[b, hh, order[b, hh]] for hh in range(attn.num_heads)]) for b in range(B)])
            )
            values.append(
                torch.stack([torch.stack([v[b, hh, order[b, hh]] for hh in range(attn.num_heads)]) for b in range(B)])
            )
            idxs.append(order)
        h = blk(h)  # timm's fused forward: our explicit attention must give the same hidden states
    return torch.stack(keys, 1), torch.stack(values, 1), torch.stack(idxs, 1)


@pytest.mark.parametrize("path", ["tiled", "batched"])
@pytest.mark.parametrize("mode", ["global", "class_token"])
@pytest.mark.parametrize("layers", ["6-11", "0-11", "2,5,9"])
def test_extraction_matches_reference(mode, layers, path):
    ext = FrozenViTExtractor(
        **TINY, pretrained=False, layers=layers, token_ratio=0.3, token_importance=mode, importance_path=path
    )
    x = torch.randn(2, 3, 64, 64)
    keys, values, idx = ext.select(x)
    with torch.no_grad():
        ref_k, ref_v, ref_i = _reference_tokens(ext, x, ext.layers, ext.num_selected, mode)
    assert keys.shape == (2, len(ext.layers), 3, 5, 64)  # k = int(17 * 0.3) = 5
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(keys, ref_k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values, ref_v, rtol=1e-4, atol=1e-5)


def test_query_chunking_gives_identical_tokens():
    full = FrozenViTExtractor(**TINY, pretrained=False, layers="0-11")
    chunked = FrozenViTExtractor(**TINY, pretrained=False, layers="0-11", query_chunk_size=5)
    chunked.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(full.select(x), chunked.select(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_registers_are_prefix_tokens():
    ext = FrozenViTExtractor(
        backbone="vit_small_patch14_reg4_dinov2", img_size=56, pretrained=False, layers="10-11", include_cls=False
    )
    assert ext.num_prefix_tokens == 5 and ext.num_tokens == 21
    _, _, idx = ext.select(torch.randn(1, 3, 56, 56))
    assert (idx >= 5).all()


def test_frozen_eval_no_grad_and_early_exit():
    ext = FrozenViTExtractor(**TINY, pretrained=False, layers="2-4")
    assert len(ext.vit.blocks) == 5  # blocks 5..11 are never needed
    assert not any(p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.training and not ext.vit.training
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    keys, values = ext(x)
    assert keys.grad_fn is None and values.grad_fn is None
    assert ext.token_shape == (3, 3, 3, 64)


def test_lpm_position_embeddings_resized_to_input():
    ext = FrozenViTExtractor(backbone="vit_base_patch16_384", img_size=512, pretrained=False)
    assert ext.vit.pos_embed.shape == (1, 1025, 768)
    assert ext.num_selected == 205 and ext.token_shape == (6, 12, 205, 64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"token_importance": "mean"}, "token_importance"),
        ({"pos_interp": "nearest"}, "pos_interp"),
        ({"token_ratio": 0.0}, "token_ratio"),
        ({"token_ratio": 1.2}, "token_ratio"),
        ({"layers": "12"}, "outside"),
        ({"layers": "x"}, "cannot parse"),
        ({"query_chunk_size": -1}, "query_chunk_size"),
        ({"importance_path": "fused"}, "importance_path"),
        ({"backbone": "vit_does_not_exist"}, "unknown timm model"),
        ({"backbone": "resnet18"}, "VisionTransformer"),
        ({"img_size": 0}, "img_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {**TINY, "pretrained": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        FrozenViTExtractor(**args)


def test_bad_input_shape():
    ext = FrozenViTExtractor(**TINY, pretrained=False)
    with pytest.raises(ValueError, match="expected an image batch"):
        ext(torch.randn(1, 1, 64, 64))


def test_pooled_features_are_the_final_class_and_mean_patch_tokens():
    from fpt_monai.networks import create_vit_backbone

    vit = create_vit_backbone("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56)
    lpm = FrozenViTExtractor("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, layers="6-9", pooled=True)
    lpm.vit.load_state_dict(vit.state_dict())
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        tokens = vit.forward_features(x)  # timm's own path: every block and the final norm
    expected = torch.cat([tokens[:, 0], tokens[:, vit.num_prefix_tokens :].mean(1)], dim=-1)  # registers excluded
    keys, values, pooled = lpm.forward_pooled(x)
    assert pooled.shape == (2, 2 * 384) and lpm.pooled_dim == 768
    assert torch.allclose(pooled, expected, atol=1e-4)
    assert torch.allclose(lpm.pool(x), expected, atol=1e-4)
    early = FrozenViTExtractor("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, layers="6-9")
    early.vit.load_state_dict(vit.state_dict(), strict=False)
    k2, v2 = early(x)  # the same tokens as the early-exit extractor
    assert torch.equal(keys, k2) and torch.equal(values, v2)
    assert len(early.vit.blocks) == 10 and len(lpm.vit.blocks) == 12
    with pytest.raises(RuntimeError, match="pooled=True"):
        early.forward_pooled(x)


@pytest.mark.parametrize("path", ["tiled", "batched"])
@pytest.mark.parametrize("mode", ["global", "class_token"])
def test_the_reduced_precision_path_computes_the_same_tokens(mode, path, monkeypatch):
    """Under autocast the block output comes from the fused kernel and the importance from separate fp32 scores
    (tiled, or in query chunks): on fp32 inputs that path must select exactly the reference's tokens."""
    ext = FrozenViTExtractor(
        **TINY, pretrained=False, layers="2,7,11", token_ratio=0.3, token_importance=mode, importance_path=path
    )
    ext.query_chunk_size = 7
    with torch.no_grad():  # peaked attention, as in trained models: random weights make near-uniform importance ties
        for blk in ext.vit.blocks:
            blk.attn.qkv.weight[: 2 * ext.vit.embed_dim] *= 4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_k, ref_v, ref_i = _reference_tokens(ext, x, ext.layers, ext.num_selected, mode)
    calls = []
    original = FrozenViTExtractor._reduced_precision_attention
    monkeypatch.setattr(frozen_vit, "_autocast_active", lambda device_type: True)  # the autocast path, in fp32
    monkeypatch.setattr(
        FrozenViTExtractor, "_reduced_precision_attention", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    keys, values, idx = ext.select(x)
    assert len(calls) == 3
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(keys, ref_k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values, ref_v, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_extraction_keeps_fp32_importance():
    ext = FrozenViTExtractor(**TINY, pretrained=False, layers="6-11", token_ratio=0.3)
    x = torch.randn(2, 3, 64, 64)
    k32, v32, _ = ext.select(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k16, v16, idx = ext.select(x)
    assert k16.dtype == torch.bfloat16 and k16.shape == k32.shape and idx.shape == (2, 6, 3, 5)
    assert bool(torch.isfinite(k16.float()).all()) and bool(torch.isfinite(v16.float()).all())
