# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Where the bundle keeps a feature store by default: one folder per store content, shared by sibling bundles.

Preloading costs minutes (120 images at 518 px: 4.5 minutes on 2 CPU cores) and disk, and every method trained on
the same data with the same frozen model reads the same stored features. So the bundle's default store root is a
folder beside the bundle, ``<parent of bundle_root>/feature_stores`` (:func:`default_store_root`): ``runs/my_fpt``
and ``runs/my_probe`` share ``runs/feature_stores``. In it each store is named after what determines its content
(:func:`store_location`), ``<backbone>_<img_size>_<hash>``, the hash covering (:func:`store_key`):

- the dataset: the folder its item ids are relative to (:func:`dataset_identity`). The store keys items by their
  ``id``, so two datasets must never share a folder, while every datalist of the same images does (the folds of a
  study, a re-split, the datalist written again);
- the frozen model: backbone, weights (the file's SHA-256, ``timm-hub`` or ``random``), size, the layers (FPT+:
  the second half, FPT: all), token ratio, LayerNorm eps and any other extractor argument;
- the normalisation (mean, std), the stored dtype and the preload precision.

Not covered: the fields stored (a store gains the pooled features on a later preload) and the method trained from it
(FPT+, the store-based linear probe and FPT's hybrid head read the same store). ``--store_root`` puts the stores
elsewhere, ``--store_dir`` names one folder outright (the settings are still checked against its manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from fpt_monai.data.splits import SPLITS

__all__ = ["STORE_ROOT_NAME", "dataset_identity", "default_store_root", "store_key", "store_location"]

# the default store root's name, beside the bundle folder
STORE_ROOT_NAME = "feature_stores"
_HASH_CHARS = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # kept out of folder names (a backbone is a timm name: never in practice)


def default_store_root(bundle_root: str | os.PathLike) -> str:
    """``<parent of bundle_root>/feature_stores``: the bundle's default store root, shared by its sibling bundles.

    The parent is taken of the absolute path, so ``bundle_root='.'`` gives the current folder's sibling.
    """
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(bundle_root))), STORE_ROOT_NAME)


def _items(datalist: Mapping | Sequence[Mapping]) -> list[Mapping]:
    if isinstance(datalist, Mapping):
        return [item for split in SPLITS for item in datalist.get(split, [])]
    return list(datalist)


def dataset_identity(datalist: Mapping | Sequence[Mapping]) -> dict:
    """What identifies a dataset's images in a store keyed by item id: the folders the ids are relative to.

    An item whose resolved ``image`` is ``<root>/<id>`` (what :mod:`fpt_monai.data.datalist` writes) contributes its
    ``root``; an item whose id is its own absolute path needs none (the id names the file); any other item (an id
    chosen by hand) contributes its ``(id, image)`` pair, hashed. So every datalist of the same images (a subset, a
    re-split, the same file written again) has the same identity, and datalists whose ids could mean other images have
    different ones.

    Args:
        datalist: a datalist (``training``/``validation``/``test`` lists) or a list of items ``{"image", "id"}``.

    Returns:
        ``{"image_roots": [...], "other_items": <sha256 of the other pairs or None>}``.

    Raises:
        ValueError: an item without ``image`` or ``id``.
    """
    roots: set[str] = set()
    others: list[tuple[str, str]] = []
    for item in _items(datalist):
        if "image" not in item or "id" not in item:
            raise ValueError(f"datalist item {dict(item)!r} needs 'image' and 'id' (fpt_monai.data writes both).")
        image = Path(os.path.abspath(os.fspath(item["image"]))).as_posix()
        item_id = PurePosixPath(str(item["id"]).replace(os.sep, "/")).as_posix()
        if item_id == image:
            continue
        if not PurePosixPath(item_id).is_absolute() and image.endswith("/" + item_id):
            roots.add(image[: -len(item_id) - 1] or "/")
        else:
            others.append((item_id, image))
    digest = None
    if others:
        digest = hashlib.sha256(json.dumps(sorted(others)).encode("utf-8")).hexdigest()
    return {"image_roots": sorted(roots), "other_items": digest}


def _canonical(value: Any) -> Any:
    """One JSON value per setting, however it was given: ``"0.2"``/``0.2``, ``64``/``64.0``, ``"true"``/``True``,
    tuples/lists (the command line gives text, the presets numbers)."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text.lower() in ("none", "null"):
            return None
        try:
            return float(text)
        except ValueError:
            return text
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch values
        return _canonical(value.tolist())
    return str(value)


def store_key(
    datalist: Mapping | Sequence[Mapping],
    extractor_kwargs: Mapping,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: str = "float16",
    precision: str = "fp32",
) -> dict:
    """Everything that determines a store's content, as hashed by :func:`store_location`.

    Args:
        datalist: the dataset (:func:`dataset_identity`).
        extractor_kwargs: the frozen model's arguments (the bundle's ``extractor_kwargs``: ``backbone``,
            ``pretrained``, ``img_size``, ``layers``, ``token_ratio``, ``layer_norm_eps``); ``pretrained`` is replaced
            by the weights' identity (:func:`fpt_monai.data.weights_id`: a file's SHA-256, hashed once per process),
            ``pooled`` (a field, not a setting) is left out.
        mean, std: the normalisation of the frozen model's view.
        dtype: the stored dtype.
        precision: the preload's compute precision.

    Raises:
        FileNotFoundError: ``pretrained`` names a file that does not exist.
    """
    from fpt_monai.data.preload import weights_id  # the preload module imports the frozen model (torch, timm)

    frozen = {str(k): v for k, v in extractor_kwargs.items() if k not in ("pretrained", "pooled")}
    frozen["weights"] = weights_id(extractor_kwargs.get("pretrained", True))
    return {
        "dataset": dataset_identity(datalist),
        "frozen_model": _canonical(frozen),
        "normalization": {"mean": _canonical(list(mean)), "std": _canonical(list(std))},
        "dtype": str(dtype),
        "precision": str(precision),
    }


def store_location(
    store_root: str | os.PathLike,
    datalist: Mapping | Sequence[Mapping],
    extractor_kwargs: Mapping,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: str = "float16",
    precision: str = "fp32",
) -> str:
    """The store folder for these settings under ``store_root``: ``<store_root>/<backbone>_<img_size>_<hash>``, the
    hash (12 hex digits of a SHA-256) covering :func:`store_key`. Runs that would store the same content get the
    same folder whatever their method; any difference in the dataset or a stored setting gives another folder.

    Args:
        store_root: the folder of the stores (the bundle's ``store_root``, by default :func:`default_store_root`).
        datalist, extractor_kwargs, mean, std, dtype, precision: as :func:`store_key`.

    Returns:
        The folder's path (not created: the preload creates it).

    Example::

        >>> store_location("runs/feature_stores", datalist, {"backbone": "vit_small_patch14_dinov2",
        ...     "pretrained": "dinov2.safetensors", "img_size": 518, "layers": "second_half", "token_ratio": 0.2,
        ...     "layer_norm_eps": None}, mean, std)  # doctest: +SKIP
        'runs/feature_stores/vit_small_patch14_dinov2_518_3f9a0c1b2d4e'
    """
    key = store_key(datalist, extractor_kwargs, mean, std, dtype=dtype, precision=precision)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:_HASH_CHARS]
    size = _canonical(extractor_kwargs.get("img_size"))
    size = int(size) if isinstance(size, float) and size.is_integer() else size
    backbone = _UNSAFE.sub("-", str(extractor_kwargs.get("backbone", "backbone"))).strip(".") or "backbone"
    size_text = _UNSAFE.sub("-", "x".join(str(s) for s in size) if isinstance(size, list) else str(size))
    return os.path.join(os.fspath(store_root), f"{backbone}_{size_text}_{digest}")
