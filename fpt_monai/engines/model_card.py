# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A trained bundle's identity, written next to its weights so that every report can say which model wrote it.

Training writes, per trained bundle (at its start, and again when it completes and when it is evaluated):

- ``models/metadata.json``: MONAI bundle metadata (accepted by MONAI's schema) with the trained model's real input
  shape, class names and number of outputs, so ``python -m monai.bundle verify_net_in_out`` and ``ckpt_export`` work
  on the bundle without shape overrides, plus an ``fpt_monai`` section: the identity (:func:`model_identity`: MLflow
  run id, checkpoint SHA-256, frozen weights, datalist hash, code version) and the model record without local paths
  (:func:`portable_record`), which the exported files carry to MONAI Deploy;
- ``models/model_card.md``: the same for people: data per split and class, settings, identity, test metrics.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fpt_monai.utils.atomic import atomic_write_text

__all__ = [
    "ModelCardWriter",
    "bundle_metadata",
    "model_identity",
    "portable_record",
    "write_model_identity",
]

logger = logging.getLogger(__name__)

# the training machine's paths are left out of what travels with the model (exports, MLflow, the metadata)
_LOCAL_PATHS = ("store_dir", "dataset_dir", "datalist_file", "datalist_source")
_VARIANT_NAMES = {"fpt": "FPT", "fpt_plus": "FPT+"}


def portable_record(record: Mapping) -> dict:
    """The model record (as written, not flattened) without the training machine's paths; the frozen weights are
    still named by their SHA-256 and file name."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    weights = out.get("frozen_weights")
    if isinstance(weights, Mapping) and isinstance(weights.get("source"), str):
        out["frozen_weights"] = {**weights, "source": Path(weights["source"]).name}
    settings = out.get("training_settings")
    if isinstance(settings, Mapping):
        out["training_settings"] = {k: v for k, v in settings.items() if k not in _LOCAL_PATHS}
    return out


def _git_commit() -> str | None:
    """The commit of the fpt_monai code when it runs from a git checkout (``-dirty`` with local changes)."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not top or Path(top).resolve() != here.parents[1]:  # an installed package inside another checkout
            return None
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit or None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _run_id(run: Any) -> str | None:
    """The MLflow run id of a run record, when it has the form reports accept (32 hex digits)."""
    from fpt_monai.engines.record_schema import IDENTITY_FORMS

    value = run.get("run_id") if isinstance(run, dict) else None
    return value if isinstance(value, str) and IDENTITY_FORMS["run_id"].fullmatch(value) else None


def model_identity(bundle_root: str | os.PathLike) -> dict:
    """Who the trained model in ``bundle_root`` is: ``name``, ``version`` (of fpt_monai), ``run_id`` (the MLflow
    run, ``None`` without tracking), ``checkpoint_sha256`` (of ``models/model.pt``, ``None`` before the first
    validation), ``frozen_weights`` (their id), ``datalist_sha256`` and ``git_commit`` (when known)."""
    import fpt_monai
    from fpt_monai.data.feature_store import file_sha256
    from fpt_monai.engines.model_record import read_model_config

    models = Path(bundle_root) / "models"
    record = read_model_config(models / "model_config.json", bundle_root=bundle_root)
    run = _read_json(models / "mlflow_run.json")
    checkpoint = models / "model.pt"
    variant = (
        _VARIANT_NAMES.get(record.get("variant"), record.get("variant")) if record["network_name"] == "fpt" else None
    )
    name = f"{variant or record['network_name']} {record['backbone']} {record['img_size']}px"
    return {
        "name": name,
        "version": fpt_monai.__version__,
        "run_id": _run_id(run),
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint.is_file() else None,
        "frozen_weights": record["frozen_weights"]["id"],
        "datalist_sha256": record.get("datalist_sha256"),
        "git_commit": _git_commit(),
    }


def bundle_metadata(record: Mapping, identity: Mapping, template: Mapping | None = None) -> dict:
    """MONAI bundle metadata for the trained model: ``template`` (the bundle's ``configs/metadata.json``) with the
    real input shape, outputs and class names, and an ``fpt_monai`` section holding ``identity`` and the
    :func:`portable_record`."""
    meta = json.loads(json.dumps(dict(template or {})))  # a deep copy of plain JSON
    size, classes = int(record["img_size"]), list(record["class_names"])
    formats = meta.setdefault("network_data_format", {})
    image = formats.setdefault("inputs", {}).setdefault("image", {})
    image.update(
        {
            "type": "image",
            "format": "magnitude",
            "modality": "regular",
            "num_channels": 3,
            "spatial_shape": [size, size],
            "dtype": "float32",
            "value_range": [],
            "is_patch_data": False,
            "channel_def": {"0": "R", "1": "G", "2": "B"},
        }
    )
    pred = formats.setdefault("outputs", {}).setdefault("pred", {})
    pred.update(
        {
            "type": "probabilities",
            "format": "classes",
            "num_channels": len(classes),
            "spatial_shape": [1, len(classes)],
            "dtype": "float32",
            "value_range": [0, 1],
            "is_patch_data": False,
            "channel_def": {str(i): name for i, name in enumerate(classes)},
        }
    )
    for key, default in (
        (
            "schema",
            "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        ),
        ("version", identity["version"]),
        ("task", "High-resolution medical image classification"),
        ("description", "An FPT/FPT+ classifier trained with fpt_monai"),
        ("authors", "fpt_monai contributors"),
        ("copyright", "Copyright (c) fpt_monai contributors"),
        ("required_packages_version", {}),
    ):
        meta.setdefault(key, default)
    for key, module in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        meta.setdefault(key, __import__(module).__version__)
    meta["name"] = identity["name"]
    meta["fpt_monai"] = {
        **identity,
        "mean": list(record["mean"]),
        "std": list(record["std"]),
        "model_config": portable_record(record),
    }
    return meta


def _card(record: Mapping, identity: Mapping, bundle_root: Path) -> str:
    models = bundle_root / "models"
    settings = record.get("training_settings") or {}
    weights = record["frozen_weights"]
    weights_name = Path(weights["source"]).name if isinstance(weights["source"], str) else weights["source"]
    lines = [
        f"# Model card: {identity['name']} ({bundle_root.name})",
        "",
        "Written by fpt_monai when the model was trained (and again when it was evaluated). Research use only; not a "
        "medical device.",
        "",
        "| | |",
        "|---|---|",
        f"| model | {record['network_name']} ({record.get('variant')}) on {record['backbone']}, input "
        f"{record['img_size']} px, side view {record.get('side_img_size')} px, token ratio {record.get('token_ratio')}"
        f", head {record.get('head', 'side')} |",
        f"| classes | {', '.join(record['class_names'])} |",
        f"| normalisation | mean {record['mean']}, std {record['std']} ({record.get('normalization', 'auto')}) |",
        f"| frozen weights | {weights_name} `{weights['id']}` |",
        f"| checkpoint | models/model.pt `{identity['checkpoint_sha256'] or 'not written yet'}` |",
        f"| MLflow run | {identity['run_id'] or 'not tracked (train with --tracking mlflow)'} |",
        f"| code | fpt_monai {identity['version']}, git commit {identity['git_commit'] or 'unknown'} |",
        f"| datalist | {settings.get('datalist_file', '?')} `sha256:{identity['datalist_sha256'] or '?'}` |",
        "",
    ]
    datalist = _read_json(models / "datalist.json")
    if isinstance(datalist, dict):
        classes = list(record["class_names"])
        lines += ["## Data", "", "| split | " + " | ".join(classes) + " | total |", "|---" * (len(classes) + 2) + "|"]
        for split in ("training", "validation", "test"):
            items = datalist.get(split) or []
            counts = [sum(1 for i in items if isinstance(i, dict) and i.get("label") == c) for c in range(len(classes))]
            lines.append(f"| {split} | " + " | ".join(str(c) for c in counts) + f" | {len(items)} |")
        lines.append("")
    lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
    shown = {k: v for k, v in settings.items() if k not in ("datalist_sha256",)}
    run = _read_json(models / "mlflow_run.json")
    if isinstance(run, dict) and isinstance(run.get("params"), dict):
        shown.update({k: v for k, v in run["params"].items() if k not in shown})
    lines += [f"| {k} | {v} |" for k, v in sorted(shown.items())]
    from fpt_monai.engines.operating_point import describe_calibration

    lines += ["", "## Decision rule", ""]
    rule = describe_calibration(record.get("calibration"))
    lines += [f"- {line}" for line in rule] or ["- the most probable class (no operating point chosen on validation)"]
    metrics = _read_json(bundle_root / "eval" / "metrics.json")
    if isinstance(metrics, dict) and metrics:
        keys = [
            k
            for k in ("n", "auc", "acc", "balanced_acc", "f1", "kappa", "ece")
            if k in next(iter(metrics.values()), {})
        ]
        lines += [
            "",
            "## Test metrics (eval/metrics.json, 95 % intervals)",
            "",
            "| weights | " + " | ".join(keys) + " |",
        ]
        lines.append("|---" * (len(keys) + 1) + "|")
        for which, values in metrics.items():
            if isinstance(values, dict):
                lines.append(f"| {which} | " + " | ".join(_cell(values, k) for k in keys) + " |")
        for which, values in metrics.items():
            if not isinstance(values, dict):
                continue
            per_class = values.get("per_class") if isinstance(values.get("per_class"), dict) else {}
            if per_class:
                lines.append(
                    f"\n{which} weights, sensitivity per class: "
                    + ", ".join(f"{c} {_cell(values, f'sensitivity/{c}')}" for c in per_class)
                )
            point = values.get("operating_point")
            if isinstance(point, dict) and isinstance(point.get("ci"), dict):
                lines.append(
                    f"\n{which} weights at the operating point ({point.get('positive_class')} when p >= "
                    f"{point.get('threshold', float('nan')):.3f}): sensitivity {_cell(point, 'sensitivity')}, "
                    f"specificity {_cell(point, 'specificity')}"
                )
    return "\n".join(lines) + "\n"


def _cell(values: Mapping, key: str) -> str:
    """``"0.912 [0.850, 0.962]"`` for ``key`` of a metrics.json entry (``"<figure>/<class>"`` for per-class ones)."""
    figure, _, cls = key.partition("/")
    value = values.get("per_class", {}).get(cls, {}).get(figure) if cls else values.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    low_high = values.get("ci", {}).get(key) if isinstance(values.get("ci"), dict) else None
    if isinstance(low_high, list) and len(low_high) == 2 and all(isinstance(v, (int, float)) for v in low_high):
        text += f" [{low_high[0]:.3f}, {low_high[1]:.3f}]"
    return text


def write_model_identity(bundle_root: str | os.PathLike, template: Mapping | None = None) -> dict:
    """Write ``models/metadata.json`` and ``models/model_card.md`` of the trained bundle at ``bundle_root``
    (atomically) and return the identity. Only the rank that writes checkpoints calls it under torchrun."""
    from fpt_monai.engines.model_record import read_record

    root = Path(bundle_root)
    models = root / "models"
    record = read_record(models / "model_config.json")
    identity = model_identity(root)
    metadata = bundle_metadata(record, identity, template)
    atomic_write_text(models / "metadata.json", json.dumps(metadata, indent=1))
    atomic_write_text(models / "model_card.md", _card(record, identity, root))
    return identity


class ModelCardWriter:
    """Ignite handler: rewrite the bundle's identity (:func:`write_model_identity`) when training completes, after
    the final checkpoints are written, so that the metadata and the card name the MLflow run and ``model.pt``'s
    SHA-256.

    Args:
        bundle_root: the bundle folder.
        template: the bundle's metadata (``configs/metadata.json``) the trained metadata starts from.
    """

    def __init__(self, bundle_root: str | os.PathLike, template: Mapping | None = None) -> None:
        self.bundle_root = bundle_root
        self.template = dict(template or {})

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine=None) -> None:
        from fpt_monai.engines.checkpoint import _is_main_process

        if _is_main_process():
            identity = write_model_identity(self.bundle_root, self.template)
            _tag_mlflow_run(Path(self.bundle_root) / "models", identity)


def _tag_mlflow_run(models: Path, identity: Mapping) -> None:
    """Give the training's MLflow run (``models/mlflow_run.json``) the checkpoint's SHA-256 as the tag
    ``fpt.checkpoint_sha256`` and the final metadata and model card as artifacts: the run, the exports and the
    reports then name the same model."""
    run = _read_json(models / "mlflow_run.json")
    if not isinstance(run, dict) or not identity.get("run_id") or run.get("run_id") != identity["run_id"]:
        return
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or run.get("tracking_uri") or None
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        if identity.get("checkpoint_sha256"):
            client.set_tag(identity["run_id"], "fpt.checkpoint_sha256", identity["checkpoint_sha256"])
        for name in ("metadata.json", "model_card.md"):
            client.log_artifact(identity["run_id"], str(models / name))
    except Exception as err:  # tracking must not fail a finished training: say what is missing from the run
        logger.warning("could not tag the MLflow run %s with the model's identity (%s)", identity["run_id"], err)
