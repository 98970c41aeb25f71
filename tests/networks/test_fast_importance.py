"""The tiled importance path (the CPU default) selects the same tokens as the batched path it replaced (issue 21)."""

from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import FrozenViTExtractor, frozen_vit
from fpt_monai.networks.frozen_vit import _fused_attention_with_importance, _tiled_attention
from fpt_monai.networks.token_selection import select_important_tokens, token_importance

from ..conftest import SHARED_DIR, TINY

ISIC_IMAGE = SHARED_DIR / "data" / "isic_uda1" / "images" / "ISIC_0000000.jpg"
FLASH_CPU = frozen_vit._flash_cpu


def _peaked(ext: FrozenViTExtractor) -> FrozenViTExtractor:
    """Peaked attention, as in trained models: random weights make near-uniform importance, full of near-ties."""
    with torch.no_grad():
        for blk in ext.vit.blocks:
            blk.attn.qkv.weight[: 2 * ext.vit.embed_dim] *= 4
    return ext


def _pair(**kwargs) -> tuple[FrozenViTExtractor, FrozenViTExtractor]:
    tiled = _peaked(FrozenViTExtractor(**kwargs, pretrained=False, importance_path="tiled"))
    batched = FrozenViTExtractor(**kwargs, pretrained=False, importance_path="batched")
    batched.load_state_dict(tiled.state_dict())
    return tiled, batched


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 130])
@pytest.mark.parametrize("tile", [1, 7, 64])
def test_tiled_attention_is_softmax_attention_and_its_column_means(n, tile):
    q, k, v = torch.randn(3, 2, 2, n, 16).unbind(0)
    q = q * 3  # peaked rows
    out, imp = _tiled_attention(q, k, v, need_output=True, tile=tile)
    probs = torch.softmax(q.double() @ k.double().transpose(-2, -1), dim=-1)
    torch.testing.assert_close(out, (probs @ v.double()).float(), rtol=1e-5, atol=1e-5)  # fp32 rounding
    torch.testing.assert_close(imp, token_importance(probs, "global").float(), rtol=1e-5, atol=1e-7)
    assert imp.dtype == torch.float32 and imp.shape == (2, 2, n)
    none, imp_only = _tiled_attention(q, k, v, need_output=False, tile=tile)
    assert none is None and torch.equal(imp_only, imp)


@pytest.mark.parametrize("n", [5, 300, 600])  # one block, blocks with a tail, two query blocks and a tail
def test_fused_output_and_lse_column_sums_are_softmax_attention_and_its_column_means(n):
    q, k, v = torch.randn(3, 2, 3, n, 64).unbind(0)
    q = q * 0.5  # peaked rows (logits of a few units)
    out, imp = _fused_attention_with_importance(q, k, v)
    probs = torch.softmax(q.double() @ k.double().transpose(-2, -1), dim=-1)
    torch.testing.assert_close(out, (probs @ v.double()).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(imp, token_importance(probs, "global").float(), rtol=2e-5, atol=1e-9)
    assert imp.dtype == torch.float32 and imp.shape == (2, 3, n)


def test_blocks_with_output_take_the_fused_output_and_lse_path(monkeypatch):
    """On CPU the tiled path's output and importance come from the fused kernel and its log-sum-exp: the same
    tokens as the batched path; the deepest block (importance only) takes the one-pass tiles."""
    tiled, batched = _pair(backbone="vit_tiny_patch16_224", img_size=128, layers="6-11", token_ratio=0.3)
    calls = []
    monkeypatch.setattr(
        frozen_vit,
        "_fused_attention_with_importance",
        lambda *a: calls.append(1) or _fused_attention_with_importance(*a),
    )
    x = torch.randn(2, 3, 128, 128)
    k_t, v_t, i_t = tiled.select(x)
    k_b, v_b, i_b = batched.select(x)
    assert len(calls) == 5  # blocks 6-10; block 11 needs no output
    assert torch.equal(i_t, i_b)
    torch.testing.assert_close(k_t, k_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v_t, v_b, rtol=1e-4, atol=1e-5)
    assert not tiled._fused_lse(torch.device("meta"))  # a CPU kernel


@pytest.mark.parametrize("mode", ["global", "class_token"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {**TINY, "layers": "0-11"},  # 17 tokens: one tile
        {"backbone": "vit_tiny_patch16_224", "img_size": 128, "layers": "6-11"},  # 65 tokens: a tile and a tail
        {"backbone": "vit_tiny_patch16_224", "img_size": 176, "layers": "2,7,11", "query_chunk_size": 32},
        {"backbone": "vit_small_patch14_reg4_dinov2", "img_size": 112, "layers": "8-11", "include_cls": False},
        {"backbone": "vit_small_patch14_reg4_dinov2", "img_size": 112, "layers": "8-11"},
    ],
    ids=["tiny64", "tiny128-tail", "tiny176-chunk32", "reg4-no-prefix", "reg4"],
)
def test_tiled_path_selects_the_batched_paths_tokens(mode, kwargs):
    tiled, batched = _pair(**kwargs, token_ratio=0.3, token_importance=mode)
    x = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    k_t, v_t, i_t = tiled.select(x)
    k_b, v_b, i_b = batched.select(x)
    assert torch.equal(i_t, i_b)
    torch.testing.assert_close(k_t, k_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v_t, v_b, rtol=1e-4, atol=1e-5)
    if not kwargs.get("include_cls", True):
        assert (i_t >= tiled.num_prefix_tokens).all()


@pytest.mark.parametrize("mode", ["global", "class_token"])
def test_tiled_importance_and_block_output_match_the_batched_path(mode):
    tiled, batched = _pair(backbone="vit_tiny_patch16_224", img_size=128, layers="3-5", token_importance=mode)
    blk = tiled.vit.blocks[4]
    h = torch.randn(2, tiled.num_tokens, tiled.embed_dim)
    with torch.no_grad():
        out_t, k_t, v_t, imp_t = tiled._attention_with_importance(blk, h, need_output=True)
        out_b, k_b, v_b, imp_b = batched._attention_with_importance(batched.vit.blocks[4], h, need_output=True)
        same, _, _, imp_last = tiled._attention_with_importance(blk, h, need_output=False)
    assert torch.equal(k_t, k_b) and torch.equal(v_t, v_b)
    torch.testing.assert_close(imp_t, imp_b, rtol=2e-5, atol=1e-8)
    torch.testing.assert_close(out_t, out_b, rtol=1e-5, atol=1e-5)  # the block output, as timm's blk(h)
    torch.testing.assert_close(out_t, blk(h), rtol=1e-5, atol=1e-5)
    assert same is h
    # without the output (the deepest block) the importance comes from one-pass tiles instead of the fused kernel's
    # log-sum-exp: the same values up to fp32 rounding
    torch.testing.assert_close(imp_last, imp_t, rtol=2e-5, atol=1e-8)
    if mode == "global":
        torch.testing.assert_close(imp_t.sum(-1), torch.ones(2, tiled.num_heads))  # a mean of probability rows


@pytest.mark.parametrize("mode", ["global", "class_token"])
def test_bf16_autocast_tiled_path_selects_the_batched_paths_tokens(mode):
    """Under autocast both paths run the same bf16 fused block output: only the fp32 importance differs in its
    summation order, so keys, values and token sets are identical."""
    tiled, batched = _pair(
        backbone="vit_tiny_patch16_224", img_size=128, layers="6-11", token_ratio=0.3, token_importance=mode
    )
    x = torch.randn(2, 3, 128, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k_t, v_t, i_t = tiled.select(x)
        k_b, v_b, i_b = batched.select(x)
    assert k_t.dtype == torch.bfloat16
    assert torch.equal(i_t, i_b) and torch.equal(k_t, k_b) and torch.equal(v_t, v_b)


def test_auto_path_is_tiled_on_cpu_and_batched_when_traced(monkeypatch):
    ext = _peaked(FrozenViTExtractor(**TINY, pretrained=False, layers="6-11"))
    assert ext.importance_path == "auto" and ext._tiled(torch.device("cpu"))
    assert not ext._tiled(torch.device("meta"))  # elsewhere (CUDA): the batched path
    calls = []
    monkeypatch.setattr(frozen_vit, "_tiled_attention", lambda *a, **k: calls.append(1) or _tiled_attention(*a, **k))
    monkeypatch.setattr(
        frozen_vit,
        "_fused_attention_with_importance",
        lambda *a: calls.append(2) or _fused_attention_with_importance(*a),
    )
    x1, x3 = torch.randn(1, 3, 64, 64), torch.randn(3, 3, 64, 64)
    eager = ext(x3)
    assert calls == [2] * 5 + [1]  # blocks 6-10 with their output from the fused kernel, block 11 importance only
    calls.clear()
    with torch.no_grad():
        # (check_trace=False: the check re-runs the forward eagerly, which takes the tiled path)
        traced = torch.jit.trace(ext, x1, check_trace=False)  # tiled loops would be unrolled for one sample
    assert not calls
    for got, want in zip(traced(x3), eager, strict=True):  # the traced graph holds for another batch size
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    ext.importance_path = "batched"
    ext(x1)
    assert not calls


# --- real weights: DINOv2 ViT-S/14 on an ISIC image --------------------------------------------------------------


def _isic_image(size: int) -> torch.Tensor:
    from PIL import Image

    img = Image.open(ISIC_IMAGE).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).float()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((x / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)).unsqueeze(0)


def _extract(ext: FrozenViTExtractor, h: torch.Tensor, path: str, monkeypatch):
    """The extracted blocks (from the first) on hidden state ``h`` with one path: importance and selected tokens
    (``"tiled"``: the CPU default, the fused output and its log-sum-exp for the blocks with an output;
    ``"onepass"``: the tiled path's one-pass tiles for every block, forced)."""
    # without the fused CPU kernel (as on a torch that lacks it) the tiled path takes the one-pass tiles
    monkeypatch.setattr(frozen_vit, "_flash_cpu", None if path == "onepass" else FLASH_CPU)
    ext.importance_path = "tiled" if path == "onepass" else path
    imps, idxs, keys = [], [], []
    for i in ext.layers:
        h, k, v, imp = ext._attention_with_importance(ext.vit.blocks[i], h, need_output=i < ext.layers[-1])
        k_sel, _, idx = select_important_tokens(imp, k, v, ext.num_selected)
        imps.append(imp)
        idxs.append(idx)
        keys.append(k_sel)
    return torch.stack(imps, 1), torch.stack(idxs, 1), torch.stack(keys, 1)


@pytest.mark.parametrize("size, paths", [(518, ("tiled", "onepass")), (1036, ("tiled",))])
def test_dinov2_tiled_path_selects_the_batched_paths_tokens(size, paths, dinov2_weights, record_property, monkeypatch):
    """Real weights, a real image: at 518 px (1,370 tokens) and 1,036 px (5,477) the tiled path selects the batched
    path's tokens through all six extracted blocks (each path feeding its own block outputs forward); at 518 px also
    its one-pass tiles for every block, forced (30 s more at 1,036 px)."""
    if not ISIC_IMAGE.is_file():
        pytest.skip(f"shared ISIC image not found at {ISIC_IMAGE} (../shared is absent)")
    ext = FrozenViTExtractor("vit_small_patch14_dinov2", pretrained=str(dinov2_weights), img_size=size)
    x = _isic_image(size)
    vit = ext.vit
    with torch.no_grad():
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for blk in vit.blocks[: ext.layers[0]]:  # the blocks before the first extracted one: the same for all
            h = blk(h)
        imp_b, idx_b, keys_b = _extract(ext, h, "batched", monkeypatch)
        results = {path: _extract(ext, h, path, monkeypatch) for path in paths}
        if size == 518:  # the helper above is the extractor's own loop
            monkeypatch.setattr(frozen_vit, "_flash_cpu", FLASH_CPU)
            ext.importance_path = "tiled"
            assert torch.equal(ext.select(x)[2], results["tiled"][1])
    assert ext.num_tokens == (size // 14) ** 2 + 1 and idx_b.shape == (1, 6, 6, ext.num_selected)
    stats = {}
    for path, (imp, idx, keys) in results.items():
        rel = float(((imp - imp_b).abs() / imp_b).max())
        differing = (idx.sort(-1).values != idx_b.sort(-1).values).any(-1)
        # a differing set swaps tokens whose batched-path importance ties within rounding: the best token this path
        # leaves out is at most that much more important than the worst one it takes
        taken = imp_b.gather(-1, idx).min(-1).values
        left_out = imp_b.masked_fill(torch.zeros_like(imp_b, dtype=torch.bool).scatter(-1, idx, True), -1.0)
        swap = float(((left_out.max(-1).values - taken) / taken).clamp_min(0).max())
        stats[path] = {"max_rel_importance": rel, "differing_sets": int(differing.sum()), "max_rel_swap": swap}
        assert rel <= 1e-4, path  # measured: 5e-6 or less
        assert swap <= 1e-4 and float(differing.float().mean()) <= 0.05, path  # measured: no set differs
        # the keys of the same token set (in token order: ties may order them differently) agree within rounding
        by_token = keys.gather(-2, idx.argsort(-1).unsqueeze(-1).expand_as(keys))
        by_token_b = keys_b.gather(-2, idx_b.argsort(-1).unsqueeze(-1).expand_as(keys_b))
        torch.testing.assert_close(by_token[~differing], by_token_b[~differing], rtol=1e-4, atol=1e-4)
    record_property("against_batched", stats)
    print(f"{size} px, {ext.num_tokens} tokens, against the batched path: {stats}")
