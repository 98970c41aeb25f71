from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import num_selected_tokens, select_important_tokens, token_importance


def _reference_selection(attn, keys, values, k, mode, excluded=0):
    """Plain loops over samples and heads, as a reader of the paper would write it."""
    B, H, N, _ = attn.shape
    out_k = torch.zeros(B, H, k, keys.shape[-1])
    out_v = torch.zeros_like(out_k)
    out_i = torch.zeros(B, H, k, dtype=torch.long)
    for b in range(B):
        for h in range(H):
            scores = []
            for j in range(N):
                if mode == "global":
                    s = sum(float(attn[b, h, i, j]) for i in range(N)) / N
                else:
                    s = float(attn[b, h, 0, j])
                scores.append(s)
            order = sorted((j for j in range(excluded, N)), key=lambda j: -scores[j])[:k]
            for r, j in enumerate(order):
                out_k[b, h, r] = keys[b, h, j]
                out_v[b, h, r] = values[b, h, j]
                out_i[b, h, r] = j
    return out_k, out_v, out_i


@pytest.mark.parametrize("mode", ["global", "class_token"])
@pytest.mark.parametrize("excluded", [0, 1])
def test_selection_matches_plain_reference(mode, excluded):
    B, H, N, hs, k = 2, 3, 11, 4, 4
    attn = torch.randn(B, H, N, N).softmax(-1)
    keys, values = torch.randn(B, H, N, hs), torch.randn(B, H, N, hs)
    got_k, got_v, got_i = select_important_tokens(token_importance(attn, mode), keys, values, k, excluded)
    ref_k, ref_v, ref_i = _reference_selection(attn, keys, values, k, mode, excluded)
    assert torch.equal(got_i, ref_i)
    torch.testing.assert_close(got_k, ref_k)
    torch.testing.assert_close(got_v, ref_v)
    if excluded:
        assert (got_i >= excluded).all()


def test_class_token_can_be_selected_by_default():
    attn = torch.full((1, 1, 5, 5), 0.01)
    attn[..., 0] = 0.96  # every query attends to the class token
    _, _, idx = select_important_tokens(
        token_importance(attn, "global"), torch.randn(1, 1, 5, 2), torch.randn(1, 1, 5, 2), 2
    )
    assert 0 in idx.flatten().tolist()
    _, _, idx = select_important_tokens(
        token_importance(attn, "global"), torch.randn(1, 1, 5, 2), torch.randn(1, 1, 5, 2), 2, 1
    )
    assert 0 not in idx.flatten().tolist()


def test_heads_select_different_tokens():
    attn = torch.zeros(1, 2, 4, 4)
    attn[0, 0, :, 1] = 1.0
    attn[0, 1, :, 3] = 1.0
    _, _, idx = select_important_tokens(
        token_importance(attn, "global"), torch.randn(1, 2, 4, 2), torch.randn(1, 2, 4, 2), 1
    )
    assert idx[0, :, 0].tolist() == [1, 3]


def test_num_selected_tokens():
    assert num_selected_tokens(1025, 0.2) == 205  # ViT-B/16 at 512 px, spec §1.3
    assert num_selected_tokens(1370, 0.2) == 274  # ViT-S/14 at 518 px
    assert num_selected_tokens(10, 1.0) == 10
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="token_ratio"):
            num_selected_tokens(100, bad)
    with pytest.raises(ValueError, match="selects no token"):
        num_selected_tokens(3, 0.2)


def test_unknown_importance_mode():
    with pytest.raises(ValueError, match="token importance must be one of"):
        token_importance(torch.rand(1, 1, 3, 3), "mean")
