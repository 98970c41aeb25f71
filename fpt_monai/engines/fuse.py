# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``fpt-monai fuse``: a trained FPT/FPT+ bundle and a trained store-based linear probe bundle as one bundle whose
network (:class:`~fpt_monai.networks.ProbeFusion`) blends their probabilities, the weight chosen on the validation
split (:func:`~fpt_monai.engines.probability_blend.choose_blend_weight`), never on test.

The two bundles must share the frozen model (backbone, weight file by SHA-256, LayerNorm epsilon), the normalisation,
the classes and the validation split; the probe may use another ``img_size``. The validation probabilities are those
of the fused network's own two parts on the validation images, preprocessed as Deploy and inference do (the image
at FPT's ``img_size``; the network makes the side view and the probe's view): the weight is chosen for the model that
is deployed. The written folder is a bundle like any other: ``models/model.pt`` (both trainable parts and the
weight; ``model_final.pt`` from both bundles' final weights when they have them), ``models/model_config.json``
(network_spec ``ProbeFusion``, the two bundles' records and the validation table under ``fusion``), the model card
and a copy of the datalist, so that evaluate.yaml, ``fpt-monai export`` and Deploy read it unchanged.

Both records are untrusted data: read through the schema (:func:`~fpt_monai.engines.model_record.read_record`),
never handed to ``ConfigParser``; checkpoints load with ``weights_only=True`` against their checksums. No output path
is built from a record.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpt_monai.engines.probability_blend import DEFAULT_BLEND_WEIGHTS, choose_blend_weight

__all__ = ["FuseError", "fuse_bundles"]

logger = logging.getLogger(__name__)

# the fused record takes these of FPT's record (MODEL_SETTINGS and what describes the data)
_FROM_FPT = ("class_names", "mean", "std", "ordinal_labels")


class FuseError(ValueError):
    """The two bundles cannot be fused (another frozen model, other classes or validation split, not trained)."""


def _bundle(root: Path, role: str, target: str) -> tuple[dict, dict]:
    """``(flat record, record as written)`` of the trained bundle at ``root``, which must hold a ``target``."""
    from fpt_monai.engines.model_record import read_model_config, read_record

    models = root / "models"
    if not (models / "model.pt").is_file():
        raise FuseError(f"{models / 'model.pt'}: no trained model in the {role} bundle {root}: train it first.")
    raw = read_record(models / "model_config.json")
    spec = raw.get("network_spec")
    found = spec.get("target") if isinstance(spec, Mapping) else raw.get("network_name")
    if found != target or "fusion" in raw:
        wanted = (
            "an FPT/FPT+ bundle" if target == "FPT" else "a linear probe bundle (configs/methods/linear_probe.yaml)"
        )
        raise FuseError(
            f"{root}: --{role} must be {wanted}, this one holds a {found}"
            + ("" if isinstance(spec, Mapping) else " recorded without its network_spec (train it again)")
            + "."
        )
    return read_model_config(models / "model_config.json", bundle_root=root), raw


def _check_compatible(fpt_root: Path, fpt: Mapping, probe_root: Path, probe: Mapping) -> None:
    """Refuse two bundles that do not share the frozen model, the normalisation and the classes."""
    checks = [
        ("backbone", fpt["backbone"], probe["backbone"]),
        ("frozen weights", fpt["frozen_weights"]["id"], probe["frozen_weights"]["id"]),
        ("lpm_layer_norm_eps", fpt.get("lpm_layer_norm_eps"), probe.get("lpm_layer_norm_eps")),
        ("normalisation (mean, std)", (fpt["mean"], fpt["std"]), (probe["mean"], probe["std"])),
        ("class names", list(fpt["class_names"]), list(probe["class_names"])),
    ]
    differ = [f"{name}: {a!r} (FPT) vs {b!r} (probe)" for name, a, b in checks if a != b]
    if differ:
        raise FuseError(
            f"cannot fuse {fpt_root} (FPT) and {probe_root} (probe): {'; '.join(differ)}. Both must run on one frozen "
            "model with the same input normalisation and classes: train the probe with the FPT bundle's --backbone, "
            "--pretrained and --lpm_layer_norm_eps on the same datalist (its --img_size may differ), and with "
            "--normalization '[<mean>, <std>]' as the FPT bundle's record holds them (auto statistics depend on "
            "img_size)."
        )


def _datalist(record: Mapping, root: Path) -> dict:
    from fpt_monai.data import datalist_from_json
    from fpt_monai.engines.model_record import recorded_datalist

    datalist = datalist_from_json(recorded_datalist(record, record["dataset_dir"], bundle_root=root))
    if not datalist.get("validation"):
        raise FuseError(f"{root}: its datalist has no validation split to choose the blend weight on.")
    return datalist


def _images(items: Sequence[Mapping]) -> list[tuple[str, int]]:
    return [(str(Path(str(i["image"])).resolve()), int(i.get("label", -1))) for i in items]


def _same_split(fpt_list: Mapping, probe_list: Mapping, fpt_root: Path, probe_root: Path) -> None:
    """The two bundles' validation splits are one, and the probe never trained on the images the fused bundle is
    tested on (its datalist is FPT's)."""
    fpt_items, probe_items = fpt_list["validation"], probe_list["validation"]
    if _images(fpt_items) != _images(probe_items):
        raise FuseError(
            f"{fpt_root} and {probe_root} were trained on different validation splits ({len(fpt_items)} vs "
            f"{len(probe_items)} items, or other images or labels): the blend weight would be chosen on images one of "
            "them trained on. Train both on the same datalist."
        )
    tested = {image for image, _ in _images(fpt_list.get("test") or [])}
    seen = [image for image, _ in _images(probe_list.get("training") or []) if image in tested]
    if seen:
        raise FuseError(
            f"{probe_root} trained on {len(seen)} image(s) of the test split of {fpt_root} (e.g. {seen[0]}), which "
            "the fused bundle is evaluated on: its test figures would be inflated. Train both on the same datalist."
        )


def _validation_probabilities(
    network: torch.nn.Module,
    items: Sequence[Mapping],
    record: Mapping,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p_fpt, p_probe, labels)`` of the fused network's two parts on ``items``, preprocessed as Deploy does."""
    from monai.data import DataLoader, Dataset
    from tqdm.auto import tqdm

    from fpt_monai.transforms.pipeline import fpt_transforms

    transform = fpt_transforms(
        "inference",
        False,
        img_size=int(record["img_size"]),
        side_img_size=int(record["side_img_size"]),
        mean=record["mean"],
        std=record["std"],
    )
    loader = DataLoader(Dataset(list(items), transform), batch_size=batch_size, num_workers=num_workers)
    p_fpt, p_probe, labels = [], [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc="validation", unit="batch", disable=not progress):
            image = torch.as_tensor(batch["image"]).to(device)
            fpt_logits, probe_logits = network.branch_logits(image)
            p_fpt.append(torch.softmax(fpt_logits.float(), dim=1).cpu().numpy())
            p_probe.append(torch.softmax(probe_logits.float(), dim=1).cpu().numpy())
            labels.append(torch.as_tensor(batch["label"]).reshape(-1).numpy())
    return np.concatenate(p_fpt), np.concatenate(p_probe), np.concatenate(labels)


def _fused_state(fpt_state: Mapping, probe_state: Mapping, weight: float) -> dict[str, torch.Tensor]:
    """A :class:`ProbeFusion` state dict from the two bundles' checkpoints."""
    state = {f"fpt.{k}": v for k, v in fpt_state.items()}
    state.update({f"probe.{k}": v for k, v in probe_state.items()})
    state["weight"] = torch.tensor(float(weight))
    return state


def fuse_bundles(
    fpt_root: str | os.PathLike,
    probe_root: str | os.PathLike,
    out: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    weights: Sequence[float] = DEFAULT_BLEND_WEIGHTS,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fuse a trained FPT/FPT+ bundle and a trained linear probe bundle into the bundle ``out``.

    Args:
        fpt_root: the FPT/FPT+ bundle (any head).
        probe_root: the store-based linear probe bundle (``network_name: linear_probe``), same frozen model.
        out: the fused bundle's folder (created); not one of the two.
        pretrained: the frozen model's weight file where it is now, if it moved since training (checked against
            both records' SHA-256). Defaults to the FPT record's file.
        weights: the candidate weights of FPT. Defaults to 0, 0.1, ..., 1.
        batch_size, num_workers: of the validation pass.
        device: where the validation pass runs. Defaults to CUDA when available.
        overwrite: replace a fused model already in ``out``.
        progress: show a progress bar.

    Returns:
        ``{"out", "weight", "val_auc", "val_loss", "table", "fpt_alone", "probe_alone"}`` (the AUCs of the parts alone
        when the grid holds 1 and 0).

    Raises:
        FuseError: bundles that are not trained, not of the right kind, or do not share the frozen model, the
            normalisation, the classes or the validation split; ``out`` is one of them or holds a model.
        ModelConfigError: a record that is not valid, or other frozen weights than the trained ones.
    """
    from fpt_monai.engines.checkpoint import atomic_torch_save, load_checkpoint
    from fpt_monai.engines.model_card import portable_record, write_model_identity
    from fpt_monai.engines.model_record import (
        DATALIST_COPY,
        MODEL_SETTINGS,
        check_model_settings,
        recorded_datalist,
        recorded_weights,
        write_model_config,
    )
    from fpt_monai.networks.probe_fusion import ProbeFusion
    from fpt_monai.utils.bundle_files import BUNDLE_CONFIGS

    fpt_root, probe_root, out = (Path(p).resolve() for p in (fpt_root, probe_root, out))
    if out in (fpt_root, probe_root):
        raise FuseError(f"--out {out} is one of the fused bundles: name a new folder for the fused bundle.")
    if (out / "models" / "model.pt").exists() and not overwrite:
        raise FuseError(f"{out / 'models' / 'model.pt'} exists: name another --out, or pass --overwrite to replace it.")
    fpt, fpt_raw = _bundle(fpt_root, "fpt", "FPT")
    if fpt.get("pooled_img_size") is not None:  # refused before any weight is read (ProbeFusion's frozen model
        # pools at FPT's img_size only: its FPT would stop at the first batch)
        raise FuseError(
            f"{fpt_root / 'models' / 'model_config.json'}: the FPT bundle was trained with pooled_img_size "
            f"{fpt['pooled_img_size']} (two resolutions), which fpt-monai fuse does not support yet: fuse an FPT "
            "bundle trained with pooled_img_size null."
        )
    probe, probe_raw = _bundle(probe_root, "probe", "PooledLinearProbe")
    _check_compatible(fpt_root, fpt, probe_root, probe)
    weights_file = str(Path(pretrained).resolve()) if pretrained is not None else recorded_weights(fpt)
    check_model_settings(fpt, pretrained=weights_file)  # other frozen weights are refused, naming both
    check_model_settings(probe, pretrained=weights_file)
    fpt_list = _datalist(fpt, fpt_root)
    _same_split(fpt_list, _datalist(probe, probe_root), fpt_root, probe_root)
    items = fpt_list["validation"]

    fpt_state = load_checkpoint(fpt_root / "models" / "model.pt")  # checksums, weights only
    probe_state = load_checkpoint(probe_root / "models" / "model.pt")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = ProbeFusion(
        fpt_raw["network_spec"]["kwargs"], probe_raw["network_spec"]["kwargs"], weight=0.5, pretrained=weights_file
    )
    network.load_state_dict(_fused_state(fpt_state, probe_state, 0.5), strict=True)
    network.to(device).eval()
    p_fpt, p_probe, labels = _validation_probabilities(network, items, fpt, device, batch_size, num_workers, progress)
    choice = choose_blend_weight(p_fpt, p_probe, labels, weights)
    weight = float(choice["weight"])

    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(_fused_state(fpt_state, probe_state, weight), models / "model.pt")
    finals = [root / "models" / "model_final.pt" for root in (fpt_root, probe_root)]
    if all(f.is_file() for f in finals):  # evaluation reports the best and the final weights
        state = _fused_state(load_checkpoint(finals[0]), load_checkpoint(finals[1]), weight)
    else:
        state = _fused_state(fpt_state, probe_state, weight)
    atomic_torch_save(state, models / "model_final.pt")

    by_weight = {round(r["weight"], 9): r["auc"] for r in choice["table"]}
    fusion = {
        "weight": weight,
        "val_auc": float(choice["val_auc"]),
        "val_loss": float(choice["val_loss"]),
        "split": "validation",
        "probabilities_from": "images",
        "table": [{k: float(v) for k, v in r.items()} for r in choice["table"]],
        "members": {"fpt": portable_record(fpt_raw), "probe": portable_record(probe_raw)},
    }
    config = {k: fpt_raw[k] for k in (*MODEL_SETTINGS, *_FROM_FPT) if k in fpt_raw}
    config["fusion"] = fusion
    settings = {
        "mode": "online",  # the probe may read another resolution than any store of FPT: from images
        "side_view": True,
        "store_fields": ["tokens"],
        "store_dtype": fpt["store_dtype"],
        "preload_precision": fpt["preload_precision"],
        "dataset_dir": fpt["dataset_dir"],
        "datalist_file": recorded_datalist(fpt, fpt["dataset_dir"], bundle_root=fpt_root),
    }
    # the network as network_from_model_config rebuilds it: both parts' recorded arguments and the chosen weight
    config["network_name"] = "ProbeFusion"
    config["network_spec"] = {
        "target": "ProbeFusion",
        "kwargs": {
            "fpt": fpt_raw["network_spec"]["kwargs"],
            "probe": probe_raw["network_spec"]["kwargs"],
            "weight": weight,
        },
    }
    write_model_config(
        models / "model_config.json",
        pretrained=weights_file,
        training_settings=settings,
        bundle_root=out,
        **config,
    )
    template_file = BUNDLE_CONFIGS / "metadata.json"
    template = json.loads(template_file.read_text()) if template_file.is_file() else {}
    write_model_identity(out, template)
    logger.info(
        "fused %s and %s into %s with weight %.2f (validation AUC %.4f)",
        fpt_root,
        probe_root,
        out,
        weight,
        choice["val_auc"],
    )
    return {
        "out": str(out),
        "weight": weight,
        "val_auc": float(choice["val_auc"]),
        "val_loss": float(choice["val_loss"]),
        "table": fusion["table"],
        "fpt_alone": by_weight.get(1.0),
        "probe_alone": by_weight.get(0.0),
        "datalist": str(out / DATALIST_COPY),
    }
