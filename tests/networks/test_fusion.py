from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import FusionModule

FPT_PLUS = dict(
    num_layers=6,
    lpm_dim=768,
    num_heads=12,
    side_dim=96,
    num_prompts=16,
    prompt_dim=768,
    prompt_norm=True,
    prompt_proj=False,
    residual="pre_proj",
)
FPT = dict(
    num_layers=12,
    lpm_dim=768,
    num_heads=12,
    side_dim=96,
    num_prompts=16,
    prompt_dim=96,
    prompt_norm=False,
    prompt_proj=True,
    residual="post_proj",
)
SMALL = dict(num_layers=2, lpm_dim=16, num_heads=2, side_dim=4, num_prompts=3)


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_spec():
    assert _count(FusionModule(**FPT_PLUS)) == 149_088  # prompts 73,728 + LayerNorm 1,536 + out_proj 73,824
    assert _count(FusionModule(**FPT)) == 166_752  # prompts 18,432 + proj 74,496 + out_proj 73,824


def test_shapes():
    m = FusionModule(**FPT_PLUS).eval()
    keys, values = torch.randn(2, 6, 12, 205, 64), torch.randn(2, 6, 12, 205, 64)
    assert m(keys, values).shape == (2, 6, 16, 96)
    assert m.attention(keys).shape == (2, 6, 12, 16, 205)


def test_fpt_plus_attention_is_uniform_at_init():
    m = FusionModule(**FPT_PLUS)
    probs = m.attention(torch.randn(2, 6, 12, 205, 64))
    assert (probs.amax(-1) - probs.amin(-1)).max() < 1e-3


def _reference(m, keys, values):
    """Per layer and head, explicit softmax(q k^T / sqrt(d)) v with the prompts as queries."""
    B, L, H, k, hs = keys.shape
    prompts = m.prompts
    q_full = m.prompt_proj(m.prompt_norm(prompts))  # [L, P, D]
    P = prompts.shape[1]
    ctx = torch.zeros(B, L, P, H * hs)
    for b in range(B):
        for layer in range(L):
            for h in range(H):
                q = q_full[layer, :, h * hs : (h + 1) * hs]
                a = torch.softmax(q @ keys[b, layer, h].T / hs**0.5, dim=-1)
                ctx[b, layer, :, h * hs : (h + 1) * hs] = a @ values[b, layer, h]
    return ctx


@pytest.mark.parametrize("residual", ["pre_proj", "post_proj", "none"])
def test_residual_variants_follow_the_reference_formulas(residual):
    prompt_dim = {"pre_proj": 16, "post_proj": 4, "none": 16}[residual]
    m = FusionModule(
        **SMALL,
        prompt_dim=prompt_dim,
        prompt_proj=prompt_dim != 16,
        prompt_norm=residual == "pre_proj",
        residual=residual,
        dropout=0.0,
        prompt_init_std=1.0,
    ).eval()
    keys, values = torch.randn(2, 2, 2, 5, 8), torch.randn(2, 2, 2, 5, 8)
    ctx = _reference(m, keys, values)
    with torch.no_grad():
        if residual == "pre_proj":
            expected = m.out_proj(ctx + m.prompts)
        elif residual == "post_proj":
            expected = m.out_proj(ctx) + m.prompts
        else:
            expected = m.out_proj(ctx)
        torch.testing.assert_close(m(keys, values), expected, rtol=1e-5, atol=1e-5)


def test_dropout_placement():
    common = dict(
        **SMALL,
        prompt_dim=4,
        prompt_proj=True,
        prompt_norm=False,
        residual="post_proj",
        dropout=1.0,
        prompt_init_std=1.0,
    )
    keys, values = torch.randn(2, 2, 2, 5, 8), torch.randn(2, 2, 2, 5, 8)
    head = FusionModule(**common).train()  # HEAD: dropout(out_proj(ctx) + prompts) -> all zero at p=1
    assert torch.count_nonzero(head(keys, values)) == 0
    old = FusionModule(**common, residual_after_dropout=True).train()  # ed3aa74: dropout(out_proj(ctx)) + prompts
    torch.testing.assert_close(old(keys, values), old.prompts.expand(2, -1, -1, -1))


def test_low_precision_tokens_are_accepted():
    m = FusionModule(**SMALL, prompt_dim=16).eval()
    keys = torch.randn(1, 2, 2, 5, 8)
    out16 = m(keys.half(), keys.half())
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, m(keys.half().float(), keys.half().float()))


@pytest.mark.parametrize("variant", [FPT_PLUS, FPT])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_tokens_train_like_fp32_copies_without_keeping_them(variant, dtype):
    """Training from half-precision store tokens: outputs and every gradient equal those of the fp32 copies (the old
    path), and backward keeps the half tokens themselves, not fp32 copies."""
    torch.manual_seed(0)
    cfg = {**variant, "num_layers": 3, "dropout": 0.0}
    m = FusionModule(**cfg).train()
    with torch.no_grad():
        m.prompts.normal_(0, 0.5)  # peaked attention, not the uniform one at init
    keys = (torch.randn(4, 3, 12, 40, 64) * 2).to(dtype)
    values = torch.randn(4, 3, 12, 40, 64).to(dtype)

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = m(keys, values)
    grads = torch.autograd.grad(out.square().sum(), list(m.parameters()))
    assert any(t is keys for t in saved) and any(t is values for t in saved)
    token_bytes = keys.numel() * keys.element_size()
    assert all(t.numel() < keys.numel() or t.dtype == dtype for t in saved)  # no fp32 token copies kept
    assert sum(t.numel() * t.element_size() for t in saved if t.ndim == 5 and t.dtype == torch.float32) < token_bytes

    ref = m(keys.float(), values.float())  # the old path: fp32 copies, SDPA
    ref_grads = torch.autograd.grad(ref.square().sum(), list(m.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # inference and export keep the one SDPA path
        torch.testing.assert_close(m.eval()(keys, values), m(keys.float(), values.float()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt_dim": 8}, "prompt_proj"),
        ({"prompt_dim": 8, "prompt_proj": True, "residual": "pre_proj"}, "pre_proj"),
        ({"prompt_dim": 8, "prompt_proj": True, "residual": "post_proj"}, "post_proj"),
        ({"prompt_dim": 16, "residual": "add"}, "residual must be"),
        ({"prompt_dim": 16, "residual_after_dropout": True}, "residual_after_dropout"),
        ({"prompt_dim": 16, "dropout": 1.5}, "dropout"),
        ({"prompt_dim": 16, "lpm_dim": 15}, "divisible"),
        ({"prompt_dim": 16, "num_prompts": 0}, "num_prompts"),
        ({"prompt_dim": 16, "prompt_init_std": -1.0}, "prompt_init_std"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusionModule(**{**SMALL, **kwargs})
