# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The trained model's record, ``models/model_config.json``: written when training starts, read by evaluation,
inference and export, so that they need only ``--bundle_root`` (and the data to run on).

The record holds every setting that defines the trained model (:data:`MODEL_SETTINGS`, the class names, the
normalisation, the network's class and arguments, the identity of the frozen model's weights) and how training fed it
(:data:`STORE_SETTINGS`, the mode, where the feature store and the dataset were). Evaluation and inference take these
as their defaults; :func:`check_model_settings` refuses a value given on the command line that differs from the
record, naming both, instead of evaluating another model or failing late.

The record is untrusted data (a bundle may come from another team): :func:`read_model_config` checks it against
the declared schema (:mod:`fpt_monai.engines.record_schema`) and no code hands it to MONAI's ``ConfigParser``.
The paths it holds are used only inside the bundle folder (:func:`recorded_location`): a feature store or dataset
outside it is used only when the user names it on the command line. Training keeps a copy of its datalist in the
bundle (``models/datalist.json``, image paths absolute), which evaluation reads by default.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from fpt_monai.engines.record_schema import RecordSchemaError, validate_record
from fpt_monai.utils.atomic import atomic_write_text
from fpt_monai.utils.flags import as_weights

__all__ = [
    "DATALIST_COPY",
    "MODEL_CONFIG_FORMAT",
    "MODEL_SETTINGS",
    "STORE_SETTINGS",
    "ModelConfigError",
    "check_model_settings",
    "read_model_config",
    "read_record",
    "recorded_datalist",
    "recorded_location",
    "recorded_path",
    "recorded_weights",
    "write_model_config",
]

logger = logging.getLogger(__name__)

MODEL_CONFIG_FORMAT = 2
# training's copy of its datalist, inside the bundle (relative to the bundle folder)
DATALIST_COPY = "models/datalist.json"
# settings that define the trained model (bundle keys): taken from the record; a different value is refused
MODEL_SETTINGS = (
    "network_name",
    "variant",
    "backbone",
    "img_size",
    "side_img_size",
    "token_ratio",
    "side_init",
    "head",
    "pooled_img_size",
    "fusion_dropout",
    "lpm_layer_norm_eps",
    "normalization",
    "num_classes",
)
# what the model was trained from (the stored tokens' settings): taken from the record; a different value is refused
STORE_SETTINGS = ("store_dtype", "preload_precision", "store_fields", "side_view")
# taken from the record as defaults only: evaluating from images (--mode online), a store or dataset moved elsewhere
_LOCATION_SETTINGS = ("mode", "store_dir", "pooled_store_dir", "dataset_dir")
# the store folders a record names (the second one holds the hybrid head's pooled features at pooled_img_size)
_STORE_DIRS = ("store_dir", "pooled_store_dir")
# what records written before MODEL_CONFIG_FORMAT 2 lack: the bundle's defaults of that time
_LEGACY_DEFAULTS = {
    "network_name": "fpt",
    "side_init": "hf",
    "head": "side",
    "fusion_dropout": 0.5,
    "lpm_layer_norm_eps": None,
    "normalization": "auto",
    "mode": "preload",
    "store_dtype": "float16",
    "preload_precision": "fp32",
    "side_view": True,
}


class ModelConfigError(ValueError):
    """``models/model_config.json`` is missing or unreadable, or a given setting contradicts it."""


def _portable(path: str | os.PathLike, bundle_root: str | os.PathLike | None, beside: bool = False) -> str:
    """A path relative to the bundle folder when it is inside it (the bundle can move), else absolute. With
    ``beside``, one under the store root beside the bundle (train.yaml's default ``store_root``,
    :func:`fpt_monai.data.default_store_root`) is relative too, ``../feature_stores/<name>``: a folder of bundles
    moved as a whole keeps the stores they share."""
    absolute = Path(path).resolve()
    if bundle_root is not None:
        root = Path(bundle_root).resolve()
        if absolute.is_relative_to(root):
            return absolute.relative_to(root).as_posix()
        if beside and _below_default_store_root(absolute, root):
            return Path(os.path.relpath(absolute, root)).as_posix()
    return absolute.as_posix()


def _below_default_store_root(path: str | os.PathLike, bundle_root: str | os.PathLike) -> bool:
    """Whether ``path`` lies inside (not at) the store root beside the bundle, ``<parent>/feature_stores``."""
    from fpt_monai.data.store_location import default_store_root

    stores = Path(default_store_root(Path(bundle_root).resolve())).resolve()
    resolved = Path(path).resolve()
    return resolved != stores and resolved.is_relative_to(stores)


def _weights_record(pretrained: bool | str | os.PathLike | None) -> dict:
    from fpt_monai.data.preload import weights_id

    pretrained = as_weights(pretrained)  # "true"/"false" as the command line gives them
    source = pretrained if isinstance(pretrained, bool) or pretrained is None else str(Path(pretrained).resolve())
    return {"source": source, "id": weights_id(pretrained)}


def write_model_config(
    path: str | os.PathLike,
    network: nn.Module | None = None,
    pretrained: bool | str | os.PathLike | None = None,
    training_settings: Mapping | None = None,
    bundle_root: str | os.PathLike | None = None,
    resume: bool = False,
    **config: Any,
) -> dict:
    """Write the trained model's record atomically.

    A training that resumes (``resume`` and a ``last.pt`` beside the record) must train the model the record
    describes: another one is refused, naming what differs, before anything is overwritten.

    Args:
        path: the file, ``<bundle_root>/models/model_config.json``.
        network: the network as built for training; its class and constructor arguments are recorded as
            ``network_spec`` (:func:`fpt_monai.networks.network_spec`), and ``network_name`` names the class when it is
            neither FPT nor the linear probe (the baselines).
        pretrained: the frozen model's weights (file, ``True`` for timm's hub, ``False`` for random); recorded as
            ``frozen_weights``: the absolute file path and its SHA-256.
        training_settings: ``mode``, the store settings and the ``store_dir``/``dataset_dir``/``datalist_file`` of the
            run; paths inside ``bundle_root`` are recorded relative to it, and so is a ``store_dir`` in the store root
            beside it (``../feature_stores/<name>``).
        bundle_root: the bundle folder.
        resume: whether the training resumes from ``last.pt`` (the bundle's ``resume``).
        config: the model settings (:data:`MODEL_SETTINGS`), ``class_names``, ``mean``, ``std``.

    Returns:
        The record as written.

    Raises:
        ModelConfigError: ``resume`` into a bundle whose record describes another model.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    from fpt_monai.networks.spec import network_spec

    record: dict[str, Any] = {"format": MODEL_CONFIG_FORMAT, **config}
    if network is not None:
        spec = network_spec(network.module if isinstance(network, (DataParallel, DistributedDataParallel)) else network)
        if spec is not None:
            record["network_spec"] = spec
            if spec["target"] not in ("FPT", "PooledLinearProbe"):
                record["network_name"] = spec["target"]
    if pretrained is not None:
        record["frozen_weights"] = _weights_record(pretrained)
    path = Path(path)
    if training_settings is not None:
        settings = dict(training_settings)
        for key in ("store_dir", "pooled_store_dir", "dataset_dir", "datalist_file"):
            if settings.get(key) is not None:
                settings[key] = _portable(settings[key], bundle_root, beside=key in _STORE_DIRS)
        record["training_settings"] = settings
    network_class = (record.get("network_spec") or {}).get("target") or record.get("network_name", "fpt")
    if record.get("pooled_img_size") is not None and network_class not in ("FPT", "fpt"):
        raise ModelConfigError(
            f"{path}: pooled_img_size {record['pooled_img_size']} is the resolution of FPT's hybrid head (head "
            f"side+pooled), but the network is {network_class}, which does not pool at a second resolution (a linear "
            "probe pools at its own img_size; ProbeFusion does not take a two-resolution FPT yet): leave "
            "pooled_img_size null."
        )
    clean = json.loads(json.dumps(record, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    try:  # a record that evaluation would refuse is refused before training starts
        validate_record(clean, str(path), fix="Fix the setting named (the bundle's options or the datalist).")
    except RecordSchemaError as err:
        raise ModelConfigError(str(err)) from err
    if resume and path.is_file() and (path.parent / "last.pt").is_file():
        _refuse_another_model(path, clean)
    if resume and path.is_file():
        clean.update(_kept_calibration(path))
    settings = clean.get("training_settings") or {}
    if bundle_root is not None and settings.get("datalist_file"):
        settings.update(_copy_datalist(recorded_path(settings["datalist_file"], bundle_root), bundle_root))
    atomic_write_text(path, json.dumps(clean, indent=1))
    return clean


def _copy_datalist(datalist_file: str, bundle_root: str | os.PathLike) -> dict:
    """Keep training's datalist inside the bundle (image paths absolute): evaluation reads this copy by default, so a
    bundle never sends it to a file outside; returns the record's ``datalist_file``/``datalist_source``/
    ``datalist_sha256``."""
    from fpt_monai.data import datalist_from_json
    from fpt_monai.data.feature_store import file_sha256

    copy = Path(bundle_root) / DATALIST_COPY
    source = Path(datalist_file)
    if source.resolve() != copy.resolve():
        datalist = datalist_from_json(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(copy, json.dumps(datalist, indent=1))
    return {
        "datalist_file": DATALIST_COPY,
        "datalist_source": source.resolve().as_posix(),
        "datalist_sha256": file_sha256(copy),
    }


def _kept_calibration(path: Path) -> dict:
    """The earlier record's ``calibration`` (temperature, operating point) while ``model.pt`` is still the checkpoint
    it was chosen for: a finished training that is run again trains nothing and must not lose it."""
    from fpt_monai.data.feature_store import file_sha256

    try:
        calibration = read_record(path).get("calibration")
    except ModelConfigError:
        return {}
    checkpoint = path.parent / "model.pt"
    if calibration and checkpoint.is_file() and file_sha256(checkpoint) == calibration.get("checkpoint_sha256"):
        return {"calibration": calibration}
    return {}


def _refuse_another_model(path: Path, new: Mapping) -> None:
    """Raise when the record at ``path`` (of the training ``last.pt`` resumes) describes another model than ``new``."""
    try:
        old = read_record(path)
    except ModelConfigError:
        return  # an unreadable or invalid record is rewritten; the checkpoint's own checks still apply
    keys = [*MODEL_SETTINGS, "network_spec", "class_names"]
    differ = [
        f"{key} {old[key]!r} -> {new[key]!r}"
        for key in keys
        if key in old and key in new and not _same(new[key], old[key])
    ]
    old_id, new_id = (r.get("frozen_weights", {}).get("id") for r in (old, new))
    if old_id and new_id and old_id != new_id:
        differ.append(f"frozen weights {old_id} -> {new_id}")
    if differ:
        raise ModelConfigError(
            f"{path.parent}: resuming the training there (last.pt) would train another model than its record "
            f"describes: {'; '.join(differ)}. Train into another --bundle_root, set --resume false to start this "
            f"folder afresh, or delete {path.parent} to start over."
        )


def read_record(path: str | os.PathLike) -> dict:
    """The record at ``path`` as written (not flattened), checked against the schema: the one reader of the file.

    Raises:
        ModelConfigError: no such file, not JSON, not a valid record, or no frozen weights' identity.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelConfigError(
            f"{path}: no model record there (training writes it next to model.pt when it starts): train first, or "
            "point --bundle_root at the trained bundle (the folder that holds models/)."
        ) from err
    except (OSError, ValueError) as err:
        raise ModelConfigError(
            f"{path}: cannot read the model record ({err}). Restore it from the training run (MLflow keeps a copy "
            "as an artifact) or train again."
        ) from err
    try:
        validate_record(data, str(path))
    except RecordSchemaError as err:
        raise ModelConfigError(str(err)) from err
    if "frozen_weights" not in data:
        raise ModelConfigError(
            f"{path}: the record does not name the frozen model's weights (key frozen_weights), so nothing can check "
            "that the model is rebuilt on the weights it was trained on. Train again with this fpt_monai, or add "
            '"frozen_weights": {"source": "<the weight file training used>", "id": "sha256:<its sha256sum>"} to '
            "the record."
        )
    return data


def read_model_config(path: str | os.PathLike, bundle_root: str | os.PathLike | None = None) -> dict:
    """The record at ``path`` as one flat dict (``training_settings`` merged in, paths resolved against
    ``bundle_root``), with ``_file`` (the path) and ``_assumed`` (keys an older record lacked, filled with the
    bundle's defaults and not checked).

    Raises:
        ModelConfigError: no such file (train first, or point ``--bundle_root`` at the trained bundle), or not a
            record.
    """
    path = Path(path)
    data = read_record(path)
    flat = {k: v for k, v in data.items() if k != "training_settings"}
    flat.update(data.get("training_settings") or {})
    flat.setdefault("ordinal_labels", False)  # nominal classes unless training said otherwise
    flat.setdefault("pooled_img_size", None)  # one resolution: what every record before the option trained
    assumed = sorted(k for k in _LEGACY_DEFAULTS if k not in flat)
    for key in assumed:
        flat[key] = _LEGACY_DEFAULTS[key]
    probe = flat["network_name"] == "linear_probe"  # the store-trained probe reads pooled features, no image
    if "store_fields" not in flat:
        flat["store_fields"] = (
            ["pooled"] if probe else ["tokens", "pooled"] if "pooled" in str(flat["head"]).split("+") else ["tokens"]
        )
        assumed.append("store_fields")
    if "side_view" in assumed and probe:
        flat["side_view"] = False
    root = Path(bundle_root) if bundle_root is not None else path.parent.parent
    if "store_dir" not in flat:
        variant = flat.get("variant", "fpt_plus")  # the store's folder name (train.yaml's store_dir)
        flat["store_dir"] = str(root / "tokens" / f"{variant}_{flat['backbone']}_{flat['img_size']}")
        assumed.append("store_dir")
    if "dataset_dir" not in flat:
        flat["dataset_dir"] = str(root / "data")
        assumed.append("dataset_dir")
    if "datalist_file" not in flat:
        flat["datalist_file"] = str(Path(flat["dataset_dir"]) / "datalist.json")
    for key in ("store_dir", "dataset_dir", "datalist_file"):
        flat[key] = recorded_path(flat[key], root)
    if flat.get("pooled_store_dir") is not None:
        flat["pooled_store_dir"] = recorded_path(flat["pooled_store_dir"], root)
    if assumed:
        logger.warning(
            "%s was written by an older fpt_monai without %s; assumed the bundle's defaults %s. If training used "
            "other values, pass them (they are not checked) or add them to the file.",
            path,
            ", ".join(assumed),
            {k: flat[k] for k in assumed},
        )
    flat["_file"] = str(path)
    flat["_assumed"] = sorted(assumed)
    return flat


def recorded_path(path: str | os.PathLike, bundle_root: str | os.PathLike) -> str:
    """A recorded path resolved: relative ones are relative to the bundle folder."""
    path = Path(path)
    return str(path if path.is_absolute() else Path(bundle_root) / path)


def recorded_location(
    record: Mapping,
    key: str,
    bundle_root: str | os.PathLike,
    named: Sequence[str | os.PathLike | None] = (),
) -> str:
    """A folder or file the record names (``store_dir``, ``dataset_dir``, ``datalist_file``), used as a default only
    when it lies inside the bundle folder (or inside a folder the user ``named`` on the command line, such as
    ``--store_root``; a ``store_dir`` also inside the store root beside the bundle, ``<parent>/feature_stores``,
    where training puts its stores by default): a record is data that anyone who shared the bundle could have
    edited, and the store is written to.

    Raises:
        ModelConfigError: the recorded path leads outside, naming the key, the path and the option that uses it.
    """
    value = Path(record[key])
    inside = [Path(bundle_root), *(Path(n) for n in named if n is not None)]
    resolved = value.resolve()
    if any(resolved == r.resolve() or resolved.is_relative_to(r.resolve()) for r in inside):
        return str(value)
    if key in _STORE_DIRS and _below_default_store_root(resolved, bundle_root):
        return str(value)  # a store shared with the bundles beside this one (train.yaml's default store_root)
    option = f"{key} <{'file' if key == 'datalist_file' else 'folder'}>"
    source = record.get("_file", "models/model_config.json")
    raise ModelConfigError(
        f"{source}: the record's {key} {str(value)!r} is outside the bundle {str(bundle_root)!r}; a folder outside "
        f"the bundle is used only when you name it. Pass --{option} (the one training used, if it is yours), or move "
        "it into the bundle."
    )


def recorded_datalist(
    record: Mapping, dataset_dir: str | os.PathLike, bundle_root: str | os.PathLike | None = None
) -> str:
    """The datalist to evaluate: the training's own file (its copy in the bundle, ``models/datalist.json``) when
    ``dataset_dir`` is the training's, else ``<dataset_dir>/datalist.json`` (a folder the user named).

    Raises:
        ModelConfigError: the record's datalist lies outside ``bundle_root`` (records written before training kept a
            copy) and no other ``dataset_dir`` was named.
    """
    if Path(dataset_dir).resolve() != Path(record["dataset_dir"]).resolve():
        return str(Path(dataset_dir) / "datalist.json")
    if bundle_root is None:
        return str(record["datalist_file"])
    datalist = recorded_location(record, "datalist_file", bundle_root)
    expected = record.get("datalist_sha256")
    if expected is not None and Path(datalist).is_file():
        from fpt_monai.data.feature_store import file_sha256

        if file_sha256(datalist) != expected:
            raise ModelConfigError(
                f"{datalist}: training's copy of its datalist was changed after training (SHA-256 differs from the "
                f"record's {expected[:16]}...); its images would not be the ones the model card describes. Pass "
                "--dataset_dir <folder> with the datalist to evaluate, or restore the bundle."
            )
    return datalist


def recorded_weights(record: Mapping) -> bool | str:
    """The frozen model's weights training used (the default of ``pretrained``): the recorded file, or ``True``
    (timm's hub) / ``False`` (random).

    Raises:
        ModelConfigError: the record does not name them (:func:`read_record` refuses such records).
    """
    weights = record.get("frozen_weights")
    if not isinstance(weights, Mapping) or weights.get("source") is None:
        raise ModelConfigError(
            f"{record.get('_file', 'models/model_config.json')}: the record does not name the frozen model's weights "
            "(frozen_weights). Train again with this fpt_monai."
        )
    return weights["source"]


def _same(given: Any, recorded: Any) -> bool:
    """Whether a value given on the command line (perhaps as text) equals the recorded JSON value."""

    def norm(value: Any) -> Any:
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
            return {str(k): norm(v) for k, v in value.items()}
        if isinstance(value, Sequence):
            return [norm(v) for v in value]
        return value

    a, b = norm(given), norm(recorded)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check_model_settings(
    record: Mapping,
    pretrained: bool | str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    **given: Any,
) -> None:
    """Refuse settings that contradict the trained model's record.

    Args:
        record: :func:`read_model_config`'s result.
        pretrained: the frozen model's weights to be used: a different file is accepted when its SHA-256 equals the
            recorded one (the same weights moved), any other weights are refused.
        class_names: the class names of the data to evaluate (its datalist's ``classes``), when it names them.
        given: the current value of each setting (:data:`MODEL_SETTINGS`, :data:`STORE_SETTINGS`); equal to the
            record unless the command line gave another.

    Raises:
        ModelConfigError: naming every conflicting setting with both values, the record's file and the fix.
    """
    source = record.get("_file", "models/model_config.json")
    assumed = set(record.get("_assumed", ()))
    conflicts = [
        f"--{key} {value!r} (the trained model has {record[key]!r})"
        for key, value in given.items()
        if key in record and key not in assumed and not _same(value, record[key])
    ]
    if class_names is not None and list(class_names) != list(record["class_names"]):
        conflicts.append(
            f"the datalist's classes {list(class_names)} (the trained model's are {list(record['class_names'])}, in "
            "this order: labels would mean other classes)"
        )
    weights = record.get("frozen_weights")
    pretrained = as_weights(pretrained)
    if pretrained is not None and weights and weights.get("id"):
        from fpt_monai.data.preload import weights_id

        if not isinstance(weights.get("source"), bool) and str(pretrained) == str(weights["source"]):
            if not Path(str(pretrained)).is_file():
                raise ModelConfigError(
                    f"{pretrained}: the frozen model's weight file that training used (recorded in {source}) is not "
                    "there. Pass --pretrained with the same file where it is now."
                )
        try:
            given_id = weights_id(pretrained)
        except FileNotFoundError as err:
            raise ModelConfigError(f"{err} The trained model used {weights['source']} ({weights['id']}).") from err
        if given_id != weights["id"] and str(pretrained) == str(weights["source"]):
            # the record's own file (no --pretrained given): it changed since training, or the record was edited
            raise ModelConfigError(
                f"{source}: the frozen model's weight file it names, {weights['source']!r}, has {given_id} but the "
                f"record says {weights['id']}: the file changed since training, or the record was edited. Restore the "
                f"weights training used, or pass --pretrained with the file whose SHA-256 is {weights['id']}."
            )
        if given_id != weights["id"]:
            conflicts.append(
                f"--pretrained {str(pretrained)!r} ({given_id}; the trained model's frozen weights are "
                f"{weights['source']!r}, {weights['id']})"
            )
    if conflicts:
        raise ModelConfigError(
            f"{source}: {'; '.join(conflicts)}. Evaluation and inference take every setting of the trained model from "
            "this record: drop the conflicting options (or point --bundle_root at the bundle trained with them)."
        )
