# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Creation of the timm Vision Transformer used as the large pre-trained model (LPM) and loading of its weights.

Weights come from the timm/Hugging Face hub (``pretrained=True``), from a local file (``.safetensors``, ``.pth``,
``.pt``, ``.bin``, ``.npz``), or nowhere (``pretrained=False``, random weights with a warning). Local PyTorch files are
read with ``torch.load(weights_only=True)``: nothing is unpickled. Besides timm state dicts (and everything timm's own
``checkpoint_filter_fn`` converts: original DINOv2, OpenCLIP, ...) Hugging Face ``transformers`` ViT checkpoints, the
format of the reference implementation's default ``google/vit-base-patch16-384``, are converted on the fly.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Attention, Block, VisionTransformer, checkpoint_filter_fn

from fpt_monai.utils.flags import as_weights

__all__ = [
    "POS_INTERP_MODES",
    "WEIGHT_FILE_SUFFIXES",
    "convert_hf_vit_state_dict",
    "create_vit_backbone",
    "load_state_dict_file",
    "resample_pos_embed_legacy",
]

POS_INTERP_MODES = ("legacy", "timm")
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


def resample_pos_embed_legacy(
    pos_embed: torch.Tensor, new_size: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resample absolute position embeddings the way the reference implementation does at run time.

    Hugging Face ``ViTEmbeddings.interpolate_pos_encoding`` (transformers 4.29, used by the official FPT code) calls
    ``F.interpolate`` with a *scale factor* ``(new + 0.1) / old`` (bicubic, ``align_corners=False``), so its sampling
    grid differs slightly from timm's size-based ``resample_abs_pos_embed``. Reproducing it gives feature parity with
    the reference implementation's preloaded tokens.

    Args:
        pos_embed: ``[1, num_prefix_tokens + h * w, dim]`` position embeddings of a square or rectangular grid.
        new_size: target grid ``(height, width)`` in patches.
        num_prefix_tokens: leading entries that belong to class/register tokens and are kept as they are.

    Returns:
        ``[1, num_prefix_tokens + new_h * new_w, dim]`` embeddings.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(math.sqrt(grid.shape[1]))
    if old * old != grid.shape[1]:
        raise ValueError(f"legacy position-embedding interpolation needs a square grid, got {grid.shape[1]} entries.")
    if (old, old) == tuple(new_size):
        return pos_embed
    dim = grid.shape[-1]
    orig_dtype = grid.dtype
    grid = grid.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    scale = ((new_size[0] + 0.1) / old, (new_size[1] + 0.1) / old)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(grid.shape[-2:]) != tuple(new_size):  # the reference code asserts the same
        raise ValueError(f"legacy interpolation produced a {tuple(grid.shape[-2:])} grid instead of {new_size}.")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(orig_dtype)
    return torch.cat([prefix, grid], dim=1)


# Per-block names of Hugging Face ViT checkpoints: files on the hub (transformers < 5) and transformers >= 5 models.
_HF_LAYER_MAP = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}


def convert_hf_vit_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a Hugging Face ``transformers`` ``ViTModel``/``ViTForImageClassification`` state dict to timm keys.

    Accepts the names of checkpoints on the hub (``encoder.layer.i.attention.attention.query``, the reference
    implementation's ``google/vit-base-patch16-384``) and of transformers >= 5 (``layers.i.attention.q_proj``). The
    separate query/key/value projections are concatenated into timm's fused ``qkv``; the pooler is dropped (FPT never
    uses it); the classifier becomes ``head``.

    Raises:
        ValueError: a key that is not part of a Hugging Face ViT.
    """
    sd = {re.sub(r"^vit\.", "", k): v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.startswith("pooler.") or key == "embeddings.mask_token":
            continue
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("classifier."):
            out["head." + key.rsplit(".", 1)[1]] = value
        else:
            match = re.fullmatch(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)", key)
            if match is None or (match.group(2) not in _HF_QKV and match.group(2) not in _HF_LAYER_MAP):
                raise ValueError(f"unexpected key {key!r} in a Hugging Face ViT state dict.")
            idx, name, kind = match.groups()
            if name in _HF_QKV:
                qkv.setdefault(f"blocks.{idx}.attn.qkv.{kind}", {})[_HF_QKV[name]] = value
            else:
                out[f"blocks.{idx}.{_HF_LAYER_MAP[name]}.{kind}"] = value
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"Hugging Face ViT state dict lacks part of the query/key/value of {key!r}.")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside common checkpoint containers (``{"state_dict": ...}``, ``{"model": ...}``)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in ("state_dict", "model", "module", "network") if k in obj), None)
            if inner is not None:
                obj = inner
                continue
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{path} does not contain a state dict of tensors (found: {found}). Save the backbone with "
            "`torch.save(model.state_dict(), path)` or safetensors `save_file`."
        )
    sd = {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}  # DDP-wrapped checkpoints
    return sd


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a PyTorch file without unpickling arbitrary objects.

    Args:
        path: a ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file (``.npz`` files are handled by
            :func:`create_vit_backbone`, which needs the model to interpret them).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file cannot be read as a state dict (corrupt, not a weight file, pickled objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist; pass an existing file or pretrained=True/False.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin"):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise ValueError(
                f"unsupported weight file suffix {suffix!r} (supported: {', '.join(WEIGHT_FILE_SUFFIXES)})."
            )
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # safetensors/pickle raise many types for corrupt or unsafe files
        raise ValueError(
            f"cannot read weights from {path}: {type(err).__name__}: {err}. The file is corrupt, truncated or not a "
            "weight file; pickled objects other than tensors are refused on purpose (torch.load weights_only=True)."
        ) from err
    return _unwrap(obj, path)


def _check_supported(model: VisionTransformer, name: str) -> None:
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"backbone {name!r} is a {type(model).__name__}; FPT needs a timm VisionTransformer (plain ViT)."
        )
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise ValueError(
                f"backbone {name!r} block {i} is {type(blk).__name__}/{type(getattr(blk, 'attn', None)).__name__}; "
                "FPT reads keys/values from timm's standard pre-norm Block and Attention (ViT, DeiT, DINO, DINOv2)."
            )


def create_vit_backbone(
    name: str = "vit_base_patch16_384",
    pretrained: bool | str | os.PathLike = True,
    img_size: int = 512,
    pos_interp: str = "legacy",
    **kwargs,
) -> VisionTransformer:
    """Create a headless timm ViT at ``img_size`` and load pre-trained weights into it.

    Args:
        name: timm model name, optionally with a pretrained tag (``vit_base_patch16_384.orig_in21k_ft_in1k``).
        pretrained: ``True`` to download through timm (needs network access), a path to a local weight file,
            or ``False`` for random weights (a warning is issued: FPT without a pre-trained LPM is meaningless).
        img_size: input resolution the LPM will see; position embeddings are resampled to its patch grid.
        pos_interp: ``"legacy"`` (the reference implementation's Hugging Face scale-factor interpolation) or
            ``"timm"`` (timm's size-based bicubic resampling with anti-aliasing).
        kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``dynamic_img_size``).

    Raises:
        ValueError: unknown model name or interpolation mode, unsupported architecture, weights that do not match.
        FileNotFoundError: the weight file does not exist.
        RuntimeError: ``pretrained=True`` but the weights cannot be downloaded.
    """
    if pos_interp not in POS_INTERP_MODES:
        raise ValueError(f"pos_interp must be one of {POS_INTERP_MODES}, got {pos_interp!r}.")
    if int(img_size) <= 0:
        raise ValueError(f"img_size must be positive, got {img_size}.")
    base = name.split(".")[0]
    if base not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models('vit_*') for plain ViTs.")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **kwargs)
    except TypeError as err:  # e.g. CNNs do not take img_size
        raise ValueError(
            f"backbone {name!r} cannot be built as a ViT at img_size={img_size} ({err}); FPT needs a timm "
            "VisionTransformer (plain ViT, DeiT, DINO, DINOv2)."
        ) from err
    _check_supported(model, name)

    pretrained = as_weights(pretrained)  # "--pretrained false" arrives as text from the bundle CLI
    if pretrained is False or pretrained is None:
        warnings.warn(
            f"FPT backbone {name!r} is randomly initialised (pretrained=False); use pretrained=True or a weight "
            "file for real training.",
            stacklevel=2,
        )
        return model

    if pretrained is True:
        try:
            source = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
        except Exception as err:
            raise RuntimeError(
                f"cannot download pre-trained weights for {name!r} ({type(err).__name__}: {err}). Offline? Download "
                "the weights elsewhere and pass the file path as `pretrained`."
            ) from err
        state_dict, origin = source.state_dict(), f"timm hub weights of {name!r}"
    else:
        path = Path(pretrained)
        origin = str(path)
        if path.suffix.lower() == ".npz":
            if not path.is_file():
                raise FileNotFoundError(f"weight file {path} does not exist.")
            source = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
            try:
                source.load_pretrained(str(path))
            except Exception as err:
                raise ValueError(
                    f"cannot load the big_vision .npz checkpoint {path} into {name!r} ({type(err).__name__}: {err})."
                ) from err
            state_dict = source.state_dict()
        else:
            state_dict = load_state_dict_file(path)
            if any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings")) for k in state_dict):
                state_dict = convert_hf_vit_state_dict(state_dict)
    _load_into(model, state_dict, pos_interp=pos_interp, origin=origin, name=name)
    return model


def _load_into(
    model: VisionTransformer, state_dict: dict[str, torch.Tensor], pos_interp: str, origin: str, name: str
) -> None:
    state_dict = {k: v.float() for k, v in state_dict.items() if not k.startswith("head.")}
    pos = state_dict.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape:
        num_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        if pos_interp == "legacy":
            state_dict["pos_embed"] = resample_pos_embed_legacy(pos, model.patch_embed.grid_size, num_prefix)
        else:
            state_dict["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=model.patch_embed.grid_size, num_prefix_tokens=num_prefix
            )
    try:
        state_dict = checkpoint_filter_fn(state_dict, model)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"weights from {origin} do not fit backbone {name!r}: {err}. "
            "Pass the backbone name the file was saved from."
        ) from err
    if missing or unexpected:
        raise ValueError(
            f"weights from {origin} do not fit backbone {name!r}: missing keys {_preview(missing)}, unexpected keys "
            f"{_preview(unexpected)}. Pass the backbone name the file was saved from (e.g. 'vit_small_patch14_dinov2')."
        )


def _preview(keys: list[str], limit: int = 6) -> str:
    return str(keys[:limit])[:-1] + (", ...]" if len(keys) > limit else "]")
