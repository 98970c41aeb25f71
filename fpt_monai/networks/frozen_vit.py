# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The frozen large pre-trained model (LPM) of FPT: a timm ViT that returns the keys and values of its most
important tokens in selected layers.

Huang et al., "Fine-grained Prompt Tuning: A Parameter and Memory Efficient Transfer Learning Method for
High-resolution Medical Image Classification", MICCAI 2024 <https://arxiv.org/abs/2403.07576>;
Huang et al., "FPT+: A Parameter and Memory Efficient Transfer Learning Method for High-resolution Medical Image
Classification", IEEE TNNLS 2025 <https://arxiv.org/abs/2408.02426>.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fpt_monai.networks.backbone import POS_INTERP_MODES, create_vit_backbone
from fpt_monai.networks.layers import parse_layers
from fpt_monai.networks.token_selection import TOKEN_IMPORTANCE_MODES, num_selected_tokens, select_important_tokens

__all__ = ["IMPORTANCE_PATHS", "FrozenViTExtractor"]

IMPORTANCE_PATHS = ("auto", "tiled", "batched")
_LOG2E = 1.4426950408889634  # scores in base 2: exp2 is about twice as fast as exp on CPU, the same softmax
_TILE_BYTES = 2**23  # the tiled path's scores buffer [N, tile] of one head: 8 MB, in the L3 cache


def _tile_width(num_tokens: int) -> int:
    """Queries per tile: a power of two in [64, 1024] (MKL's GEMMs are slower at other widths, e.g. 48) whose fp32
    scores buffer ``[N, width]`` stays within :data:`_TILE_BYTES`. Measured on a 2-core CPU with 2 threads, in time
    relative to the fused attention kernel (importance only): 1,024 best at 1,370 tokens (1.0x against 1.4x at 256),
    256 at 5,477 (0.83x against 1.5x at 64), 64-128 at 21,317; a buffer of L2 size (2 MB) was best on one thread,
    but with two threads every op on it costs more in synchronisation than it computes."""
    width = 64
    while width < 1024 and 2 * width * num_tokens * 4 <= _TILE_BYTES:
        width *= 2
    return width


def _autocast_active(device_type: str) -> bool:
    """Whether autocast (bf16/fp16) is on for ``device_type``: the extractor then takes its reduced-precision path."""
    return torch.is_autocast_enabled(device_type)


def _finish_block(blk: nn.Module, x: torch.Tensor, y: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
    """The rest of a timm block after its attention heads ``[B, H, N, head_dim]``: head merge, attention norm and
    gate, projection, residuals and MLP (``y`` is the block's normalised input, which the gate reads)."""
    attn = blk.attn
    B, _, N, _ = heads_out.shape
    out = attn.norm(heads_out.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(y).sigmoid()
    x = x + blk.drop_path1(blk.ls1(attn.proj(out)))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def _portable_graph() -> bool:
    """Whether the forward is being traced, compiled or exported: the per-(sample, head) loops of the tiled path
    would be unrolled into the graph for one batch size, so the batched path is used there."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or exporting()


def _tiled_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_output: bool, tile: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Exact attention output and global importance (mean over queries of the softmax rows), fp32, one pass.

    Per sample and head, the scores of ``tile`` queries are computed transposed (``[N_keys, tile]``, ``k @ q^T``:
    MKL's GEMM into that layout is about twice as fast on CPU as ``q @ k^T`` into ``[tile, N]``) into one buffer
    that is reused, so it stays in cache, and the same exponentials give the attention output and the column sums.
    The batched path instead materialises ``[B, H, chunk, N]`` scores for all heads at once (tens of MB at 1,036
    px), which streams through memory several times per chunk. ``q`` is already scaled; all fp32.

    Returns:
        ``(output [B, H, N, head_dim] or None, importance [B, H, N])``.
    """
    B, H, N, hd = q.shape
    qs = (q * _LOG2E).reshape(B * H, N, hd)
    kk, vv = k.reshape(B * H, N, hd), v.reshape(B * H, N, hd)
    importance = torch.zeros(B * H, N, device=q.device, dtype=torch.float32)
    out = torch.empty(B * H, N, hd, device=q.device, dtype=torch.float32) if need_output else None
    width = max(1, min(tile, N))
    buf = torch.empty(N, width, device=q.device, dtype=torch.float32)
    tail = torch.empty(N, N % width, device=q.device, dtype=torch.float32)
    for bh in range(B * H):
        k_bh, v_bh, q_bh, imp_bh = kk[bh], vv[bh], qs[bh], importance[bh]
        for start in range(0, N, width):
            cols = min(width, N - start)
            s = buf if cols == width else tail
            torch.mm(k_bh, q_bh[start : start + cols].t(), out=s)  # [keys, queries], log2 units
            s.sub_(s.amax(dim=0, keepdim=True)).exp2_()
            inv_sum = s.sum(dim=0).reciprocal_()  # [queries]
            imp_bh.addmv_(s, inv_sum)  # column sums of the softmax rows of these queries
            if out is not None:
                o = out[bh, start : start + cols]
                torch.mm(s.t(), v_bh, out=o)
                o.mul_(inv_sum.unsqueeze(1))
    return (None if out is None else out.view(B, H, N, hd)), importance.view(B, H, N) / N


# On CPU the tiled path takes the block output and its log-sum-exp from the fused kernel and sums the columns of
# exp(QK^T - lse) in key x query blocks. Measured on a 2-core CPU with 2 threads, in time relative to the fused kernel:
# the column sums cost 0.6-0.7x at 5,477 and 21,317 tokens in 1,024 x 2,048 blocks, 1.6-1.7x in 512 x 256 blocks
# (the L2 size; each op on them pays the threads' synchronisation: GEMM 78 against 163 GFLOP/s, exp2 1.0 against
# 0.22 ns per score), and the block's attention with its importance 1.7-1.8x against 2.3x for one-pass tiles.
_LSE_BLOCK = (1024, 2048)  # keys x queries: 8 MB of fp32 scores, in the L3 cache
_flash_cpu = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _fused_attention_with_importance(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and global importance (CPU, fp32, ``q`` already scaled): the output and the row
    log-sum-exp from the fused kernel, then the column sums of ``2^(q k log2(e) - lse log2(e))`` with the ``-lse``
    term folded into the GEMM as a 65th column, in ``_LSE_BLOCK`` blocks. The augmented queries and keys are built
    per head (``[N, 65]`` each), not for the whole batch, so that the extra memory stays that of one head."""
    B, H, N, hd = q.shape
    out, lse = _flash_cpu(q, k, v, 0.0, False, scale=1.0)
    qs, ks = q.reshape(B * H, N, hd), k.reshape(B * H, N, hd)
    neg_lse = (lse.float() * -_LOG2E).reshape(B * H, N, 1)
    qa = torch.empty(N, hd + 1, device=q.device, dtype=torch.float32)
    ka = torch.empty(N, hd + 1, device=q.device, dtype=torch.float32)
    ka[:, hd:].fill_(1.0)
    importance = torch.zeros(B * H, N, device=q.device, dtype=torch.float32)
    kb, qb = _LSE_BLOCK
    buf = torch.empty(kb, qb, device=q.device, dtype=torch.float32)
    for bh in range(B * H):
        torch.mul(qs[bh], _LOG2E, out=qa[:, :hd])
        qa[:, hd:].copy_(neg_lse[bh])
        ka[:, :hd].copy_(ks[bh])
        for j in range(0, N, kb):
            keys, col_sums = ka[j : j + kb], importance[bh, j : j + kb]
            for start in range(0, N, qb):
                queries = qa[start : start + qb]
                full = keys.shape[0] == kb and queries.shape[0] == qb
                p = torch.mm(keys, queries.t(), out=buf) if full else keys @ queries.t()
                col_sums.add_(p.exp2_().sum(dim=1))
    return out, importance.view(B, H, N) / N


def _class_token_importance(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The class token's attention row ``[B, H, N]`` in fp32 (``q`` already scaled)."""
    with torch.autocast(q.device.type, enabled=False):
        return torch.softmax(q[:, :, :1].float() @ k.float().transpose(-2, -1), dim=-1)[:, :, 0]


class FrozenViTExtractor(nn.Module):
    """Frozen timm Vision Transformer that extracts the keys and values of its top-k tokens.

    In every extracted block the self-attention is evaluated explicitly (timm's fused attention hides the
    probabilities; on CPU in cache-sized tiles per head that give the block output and the importance in one pass,
    ``importance_path``), token importance is computed from the post-softmax attention map and, per sample and head, the
    ``k = int(N * token_ratio)`` most important tokens keep their keys and values (after the key/value projection,
    bias included; after ``k_norm`` for models that have one). The model stops after the deepest extracted block
    (its MLP, the final norm and the head are never run) and is always in ``eval()`` mode without gradients.

    Works with timm's plain ViTs: ``vit_base_patch16_384`` (the paper's default LPM), ``vit_large_patch16_384``,
    DINO (``vit_base_patch16_224.dino``, ``vit_base_patch8_224.dino``), DINOv2 with or without registers
    (``vit_small_patch14_dinov2``, ``vit_base_patch14_reg4_dinov2``) and DeiT.

    Args:
        backbone: timm model name (optionally with a pretrained tag). Defaults to ``"vit_base_patch16_384"``.
        pretrained: ``True`` (download through timm), a local weight file (``.safetensors``, ``.pth``, ``.pt``,
            ``.bin``, ``.npz``; Hugging Face ViT checkpoints are converted) or ``False`` (random, with a warning).
            Defaults to ``True``.
        img_size: LPM input resolution; position embeddings are resampled to it once. Defaults to 512.
        layers: blocks to extract from, ``"a-b"`` (inclusive), ``"a,b,c"``, an int or a sequence. Defaults to
            ``"6-11"`` (FPT+).
        token_ratio: fraction of the ``N`` tokens (prefix tokens included) to keep. Defaults to 0.2.
        token_importance: ``"global"`` (mean attention received over all queries) or ``"class_token"`` (attention
            of the class token's query). Defaults to ``"global"``.
        include_cls: whether the class (and register) tokens may be selected; the reference code allows it.
            Defaults to ``True``.
        pos_interp: ``"legacy"`` (reference implementation's Hugging Face interpolation) or ``"timm"``.
            Defaults to ``"legacy"``.
        query_chunk_size: if > 0, evaluate the attention map in chunks of this many queries to bound memory
            (``[B, H, chunk, N]`` instead of ``[B, H, N, N]``) on the batched path; 0 means one chunk. The tiled path
            bounds its memory by itself (one head's scores for 64-1,024 queries, 8 MB). Defaults to 256.
        importance_path: how the extracted blocks compute their attention and token importance, with the same
            math and the same selected tokens up to fp32 rounding (``scripts/bench_importance.py`` measures them):
            ``"tiled"`` (CPU): per sample and head, in the global mode, the output and its log-sum-exp from the
            fused kernel and the column sums of the softmax from cache-sized blocks of ``exp(QK^T - lse)`` (a
            block whose output is not needed, or without the fused CPU kernel: transposed fp32 score tiles that
            give the output and the column sums in one pass); in class_token mode the block output from the
            fused attention kernel and the importance from the class token's row alone; ``"batched"``: the
            whole batch's attention map in query chunks (``query_chunk_size``), one kernel per step for all heads
            (the only path before, and the one used when tracing or exporting); ``"auto"``: tiled on CPU,
            batched elsewhere and in traced or exported graphs. Defaults to ``"auto"``.
        backbone_kwargs: extra keyword arguments for ``timm.create_model``.
        pooled: also keep the blocks after the deepest extracted one and the final norm, so that
            :meth:`forward_pooled` can return the pooled features ``[B, 2 * D]``: the final class token and the mean
            patch token after the final norm (what a linear probe uses). They are run only when asked for.
            Defaults to ``False`` (early exit, as in the paper).
        layer_norm_eps: epsilon of every LayerNorm of the frozen model; ``None`` keeps the backbone's own (1e-6 for
            timm ViTs). The reference's Hugging Face ViT uses 1e-12, which changes a few per cent of the selected
            token sets of peaked attention maps (docs/deviations.md #2). Defaults to ``None``.

    Raises:
        ValueError: invalid option values, unsupported backbones, weights that do not fit.

    Examples::

        >>> lpm = FrozenViTExtractor("vit_base_patch16_384", pretrained=False, img_size=512, layers="6-11")
        >>> keys, values = lpm(torch.randn(2, 3, 512, 512))
        >>> keys.shape  # [B, L, heads, k, head_dim]
        torch.Size([2, 6, 12, 205, 64])
    """

    def __init__(
        self,
        backbone: str = "vit_base_patch16_384",
        pretrained: bool | str | os.PathLike = True,
        img_size: int = 512,
        layers: int | str | Sequence[int] = "6-11",
        token_ratio: float = 0.2,
        token_importance: str = "global",
        include_cls: bool = True,
        pos_interp: str = "legacy",
        query_chunk_size: int = 256,
        importance_path: str = "auto",
        backbone_kwargs: dict | None = None,
        pooled: bool = False,
        layer_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        if token_importance not in TOKEN_IMPORTANCE_MODES:
            raise ValueError(f"token_importance must be one of {TOKEN_IMPORTANCE_MODES}, got {token_importance!r}.")
        if pos_interp not in POS_INTERP_MODES:
            raise ValueError(f"pos_interp must be one of {POS_INTERP_MODES}, got {pos_interp!r}.")
        if not 0.0 < token_ratio <= 1.0:
            raise ValueError(f"token_ratio must be in (0, 1], got {token_ratio}.")
        if query_chunk_size < 0:
            raise ValueError(f"query_chunk_size must be >= 0, got {query_chunk_size}.")
        if importance_path not in IMPORTANCE_PATHS:
            raise ValueError(f"importance_path must be one of {IMPORTANCE_PATHS}, got {importance_path!r}.")
        if layer_norm_eps is not None and not layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {layer_norm_eps}.")
        vit = create_vit_backbone(
            backbone, pretrained=pretrained, img_size=img_size, pos_interp=pos_interp, **(backbone_kwargs or {})
        )
        if layer_norm_eps is not None:
            for module in vit.modules():
                if isinstance(module, nn.LayerNorm):
                    module.eps = float(layer_norm_eps)
        self.layers = parse_layers(layers, len(vit.blocks))
        self.pooled = bool(pooled)
        if not self.pooled:
            # early exit: the blocks after the deepest extracted one, the final norm and the head are never needed
            vit.blocks = vit.blocks[: self.layers[-1] + 1]
            vit.norm = nn.Identity()
        vit.requires_grad_(False)
        self.vit = vit.eval()

        self.backbone = backbone
        self.pretrained = pretrained if isinstance(pretrained, bool) else str(pretrained)
        self.img_size = int(img_size)
        self.token_ratio = float(token_ratio)
        self.importance_mode = token_importance
        self.include_cls = bool(include_cls)
        self.pos_interp = pos_interp
        norm = next((m for m in vit.modules() if isinstance(m, nn.LayerNorm)), None)
        self.layer_norm_eps: float = float(norm.eps) if norm is not None else 0.0
        self.layer_norm_eps_set: bool = layer_norm_eps is not None
        self.query_chunk_size = int(query_chunk_size)
        self.importance_path = importance_path
        attn = vit.blocks[0].attn
        self.embed_dim: int = vit.embed_dim
        self.num_heads: int = attn.num_heads
        self.head_dim: int = attn.head_dim
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.grid_size: tuple[int, int] = tuple(vit.patch_embed.grid_size)
        self.num_prefix_tokens: int = vit.num_prefix_tokens
        self.num_tokens: int = vit.patch_embed.num_patches + vit.num_prefix_tokens
        self.num_selected: int = num_selected_tokens(self.num_tokens, self.token_ratio)
        self.pooled_dim: int = 2 * self.embed_dim
        # where the pooled features are taken (set_pooled_view): the image at img_size unless a network asks for
        # another resolution; the position embeddings of that grid are derived from the weights, never saved
        self.pooled_img_size: int = self.img_size
        self.register_buffer("pooled_pos_embed", torch.zeros(0), persistent=False)

    @classmethod
    def skeleton(cls, **kwargs) -> FrozenViTExtractor:
        """The architecture only, built on the meta device: no memory, no weight file read (``pretrained`` is
        ignored). Enough for shapes and settings, e.g. when training from stored features."""
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(**{**kwargs, "pretrained": False})

    @property
    def token_shape(self) -> tuple[int, int, int, int]:
        """Per-image shape of the extracted keys (and values): ``(layers, heads, k, head_dim)``."""
        return (len(self.layers), self.num_heads, self.num_selected, self.head_dim)

    def train(self, mode: bool = True) -> FrozenViTExtractor:
        """The LPM stays in eval mode whatever the parent module does (dropout/drop-path off, as in the paper)."""
        return super().train(False)

    def _tiled(self, device: torch.device) -> bool:
        """Whether this forward takes the tiled path (``importance_path``; never in a traced or exported graph)."""
        if self.importance_path == "batched" or _portable_graph():
            return False
        return self.importance_path == "tiled" or device.type == "cpu"

    @staticmethod
    def _fused_lse(device: torch.device) -> bool:
        """Whether the tiled path takes the block output and log-sum-exp from the fused CPU kernel (on CPU, when
        this torch has it; otherwise the one-pass tiles)."""
        return device.type == "cpu" and _flash_cpu is not None

    def _attention_with_importance(
        self, blk: nn.Module, x: torch.Tensor, need_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Explicit self-attention of one timm block: returns (block output or input, keys, values, importance)."""
        attn = blk.attn
        B, N, _ = x.shape
        y = blk.norm1(x)
        qkv = attn.qkv(y).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * attn.scale
        chunk = self.query_chunk_size if self.query_chunk_size > 0 else N
        tiled = self._tiled(x.device)
        if q.dtype != torch.float32 or _autocast_active(x.device.type):
            return self._reduced_precision_attention(blk, x, y, q, k, v, need_output, chunk, tiled)
        if tiled:
            heads_out: torch.Tensor | None = None
            if self.importance_mode == "global" and need_output and self._fused_lse(x.device):
                heads_out, importance = _fused_attention_with_importance(q, k, v)
            elif self.importance_mode == "global":
                heads_out, importance = _tiled_attention(q, k, v, need_output, _tile_width(N))
            else:  # one row of the attention map; the block output from the fused kernel
                importance = _class_token_importance(q, k)
                if need_output:
                    heads_out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # q is already scaled
            if heads_out is not None:
                x = _finish_block(blk, x, y, heads_out)
            return x, k, v, importance
        # the importance starts from the first chunk's sum, not from torch.zeros(..., device=x.device): this is the
        # path that is traced for export, and a traced device is a constant (a model exported on the CPU would then
        # add CPU and CUDA tensors when it runs on a GPU)
        importance: torch.Tensor | None = None
        outs = []
        for start in range(0, N, chunk):
            # softmax written out so that normalisation folds into the importance and output products (about 10%
            # faster than softmax + sum + matmul on CPU); fp32 because fp16 scores would create top-k ties
            scores = (q[:, :, start : start + chunk] @ k.transpose(-2, -1)).float()
            scores = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
            inv_sum = scores.sum(dim=-1, keepdim=True).reciprocal_()  # [B, H, chunk, 1]
            if self.importance_mode == "global":
                with torch.autocast(x.device.type, enabled=False):  # keep the ranking scores in fp32 under AMP
                    part = (inv_sum.transpose(-2, -1) @ scores).squeeze(-2)
                importance = part if importance is None else importance + part
            elif start == 0:
                importance = scores[:, :, 0] * inv_sum[:, :, 0]  # the class token's attention row
            if need_output:
                outs.append((scores.to(v.dtype) @ v) * inv_sum.to(v.dtype))
        assert importance is not None  # N >= 1: the loop ran
        if self.importance_mode == "global":
            importance = importance / N
        if need_output:
            x = _finish_block(blk, x, y, torch.cat(outs, dim=2))
        return x, k, v, importance

    def _reduced_precision_attention(
        self,
        blk: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        need_output: bool,
        chunk: int,
        tiled: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """bf16/fp16 (autocast) variant: the block output through the fused attention kernel, the importance
        separately from fp32 scores (half-precision scores would turn near-ties into flips): tiled, or in query
        chunks of the batch on the batched path."""
        N = x.shape[1]
        qf, kf = q.float(), k.float()
        importance: torch.Tensor | None = None
        if tiled and self.importance_mode == "global":
            with torch.autocast(x.device.type, enabled=False):
                importance = _tiled_attention(qf, kf, kf, False, _tile_width(N))[1]
        elif tiled:
            importance = _class_token_importance(qf, kf)
        else:
            # the sum starts from the first chunk: no traced device constant (as on the fp32 batched path)
            with torch.autocast(x.device.type, enabled=False):
                for start in range(0, N, chunk):
                    probs = torch.softmax(qf[:, :, start : start + chunk] @ kf.transpose(-2, -1), dim=-1)
                    if self.importance_mode == "global":
                        part = probs.sum(dim=-2)
                        importance = part if importance is None else importance.add_(part)
                    elif start == 0:
                        importance = probs[:, :, 0]
            assert importance is not None  # N >= 1: the loop ran
            if self.importance_mode == "global":
                importance = importance / N
        if need_output:
            x = _finish_block(blk, x, y, F.scaled_dot_product_attention(q, k, v, scale=1.0))  # q is already scaled
        return x, k, v, importance

    def extract_all(
        self, x: torch.Tensor, want_pooled: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys, values, selected indices and (with ``want_pooled``) the pooled features, in one pass (two with
        :meth:`set_pooled_view`: the tokens' pass stops after the deepest extracted block, the pooled features come
        from the resized image)."""
        if not torch.jit.is_tracing() and (x.ndim != 4 or x.shape[1] != 3):
            raise ValueError(f"expected an image batch [B, 3, H, W], got shape {tuple(x.shape)}.")
        if want_pooled and not self.pooled:
            raise RuntimeError(
                "pooled features need the whole frozen model: build the extractor with pooled=True "
                "(FPT(head='side+pooled') and the preload of pooled features do)."
            )
        pooled: torch.Tensor | None = None
        if want_pooled and self.pooled_img_size != self.img_size:
            pooled = self._pool_resized(x)
            want_pooled = False
        vit = self.vit
        with torch.no_grad():
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
            keys, values, indices = [], [], []
            last = self.layers[-1]
            excluded = 0 if self.include_cls else self.num_prefix_tokens
            for i, blk in enumerate(vit.blocks):
                if i > last and not want_pooled:
                    break
                if i in self.layers:
                    x, k, v, imp = self._attention_with_importance(blk, x, need_output=want_pooled or i < last)
                    k_sel, v_sel, idx = select_important_tokens(imp, k, v, self.num_selected, excluded)
                    keys.append(k_sel)
                    values.append(v_sel)
                    indices.append(idx)
                else:
                    x = blk(x)
            if want_pooled:
                pooled = self._pool_tokens(vit.norm(x))
        return torch.stack(keys, dim=1), torch.stack(values, dim=1), torch.stack(indices, dim=1), pooled

    def _pool_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final class token and mean patch token (prefix tokens: class and registers excluded) ``[B, 2 * D]``."""
        return torch.cat([x[:, 0], x[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, also returning the selected token indices ``[B, L, heads, k]`` (0 = class token)."""
        keys, values, indices, _ = self.extract_all(x, False)
        return keys, values, indices

    def forward_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values (as :meth:`forward`) and the pooled features ``[B, 2 * D]``: the final class token and the
        mean patch token (register tokens excluded) after the final norm. Needs ``pooled=True``."""
        keys, values, _, pooled = self.extract_all(x, True)
        assert pooled is not None
        return keys, values, pooled

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Only the pooled features ``[B, 2 * D]`` (plain blocks with fused attention, no token selection): what a
        linear probe needs at inference. Needs ``pooled=True``."""
        if not self.pooled:
            raise RuntimeError("pooled features need the whole frozen model: build the extractor with pooled=True.")
        if self.pooled_img_size != self.img_size:
            return self._pool_resized(x)
        vit = self.vit
        with torch.no_grad():
            x = vit.blocks(vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x)))))
            return self._pool_tokens(vit.norm(x))

    def set_pooled_view(self, img_size: int, pos_embed: torch.Tensor | None = None) -> None:
        """Take the pooled features (:meth:`extract_all` with ``want_pooled``, :meth:`forward_pooled`, :meth:`pool`)
        from the image resized to ``img_size`` (bilinear, anti-aliased) through the same frozen weights, while the
        keys and values stay at the extractor's own ``img_size``: FPT's hybrid head at a second, lower resolution
        (``FPT(pooled_img_size=...)``). ``pos_embed`` holds the position embeddings of that size's grid
        (:func:`fpt_monai.networks.probe_fusion.position_embedding_at`; a non-persistent buffer: checkpoints never
        hold it). ``img_size`` equal to the extractor's own restores one resolution. A feature store's extractor
        never sets it: its pooled features are those of its own size.

        Raises:
            RuntimeError: the extractor was built without ``pooled=True``.
            ValueError: no ``pos_embed`` for another size, or one of another width than the model's.
        """
        if not self.pooled:
            raise RuntimeError("pooled features need the whole frozen model: build the extractor with pooled=True.")
        img_size = int(img_size)
        if img_size == self.img_size:
            self.pooled_img_size = img_size
            self.pooled_pos_embed = torch.zeros(0, device=self.pooled_pos_embed.device)
            return
        if img_size < self.patch_size:
            raise ValueError(
                f"pooled img_size {img_size} is smaller than the frozen model's {self.patch_size} px patch."
            )
        if pos_embed is None or pos_embed.ndim != 3 or pos_embed.shape[-1] != self.embed_dim:
            shape = None if pos_embed is None else tuple(pos_embed.shape)
            raise ValueError(
                f"pooling at {img_size} px needs the position embeddings of that grid, [1, N, {self.embed_dim}] "
                f"(fpt_monai.networks.probe_fusion.position_embedding_at), got {shape}."
            )
        self.pooled_img_size = img_size
        self.pooled_pos_embed = pos_embed.detach().to(self.vit.pos_embed.device, self.vit.pos_embed.dtype)

    def _pool_resized(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features of ``x`` resized to :attr:`pooled_img_size` (:meth:`set_pooled_view`)."""
        size = self.pooled_img_size
        small = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.pool_at(small, self.pooled_pos_embed)

    def pool_at(self, x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, 2 * D]`` of images at another resolution than ``img_size``, through the same frozen
        weights: ``pos_embed`` holds the position embeddings of that resolution's patch grid (resampled from the
        weight file as an extractor built at that size resamples them, :func:`fpt_monai.networks.probe_fusion.
        position_embedding_at`), so the result equals that extractor's :meth:`pool` without a second copy of the
        weights. Needs ``pooled=True``."""
        if not self.pooled:
            raise RuntimeError("pooled features need the whole frozen model: build the extractor with pooled=True.")
        vit = self.vit
        embed = vit.patch_embed
        with torch.no_grad():
            # timm's PatchEmbed and _pos_embed without their fixed-size checks: the same operations, another grid
            x = embed.norm(embed.proj(x).flatten(2).transpose(1, 2))
            prefix = []
            if vit.cls_token is not None:
                prefix.append(vit.cls_token.expand(x.shape[0], -1, -1))
            if vit.reg_token is not None:
                prefix.append(vit.reg_token.expand(x.shape[0], -1, -1))
            if vit.no_embed_class:
                x = torch.cat(prefix + [x + pos_embed], dim=1) if prefix else x + pos_embed
            else:
                x = (torch.cat(prefix + [x], dim=1) if prefix else x) + pos_embed
            x = vit.blocks(vit.norm_pre(vit.patch_drop(vit.pos_drop(x))))
            return self._pool_tokens(vit.norm(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the selected tokens, each ``[B, L, heads, k, head_dim]`` (batch first).

        Args:
            x: normalised images ``[B, 3, img_size, img_size]``.
        """
        keys, values, _, _ = self.extract_all(x, False)
        return keys, values
