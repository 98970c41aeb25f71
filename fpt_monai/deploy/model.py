# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A self-contained exported FPT model: the TorchScript file plus what is embedded in it.

``fpt_monai.export`` (``make export``) embeds the trained bundle's ``metadata.json`` (with the model's identity: MLflow
run id, checkpoint SHA-256) and its record without local paths (``model_config.json``) into ``model.ts``; a file
exported with ``python -m monai.bundle ckpt_export ... --meta_file <bundle>/models/metadata.json`` carries the same
record inside the metadata. :class:`ExportedFPT` reads them back as data, checks the record against its schema, and
builds the inference preprocessing from it (the same transforms as ``bundle/configs/inference.yaml``). Nothing in the
file is handed to MONAI's ``ConfigParser``, so a model file runs no code of a config; TorchScript itself is code:
deploy only model files from a trusted source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["ExportedFPT", "ModelFileError"]

EMBEDDED = ("metadata.json", "model_config.json")


class ModelFileError(ValueError):
    """The model file is missing or was not exported with its configs."""


def _resolve(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def _embedded_model(path: Path, extra: dict) -> tuple[dict, dict]:
    """The metadata and the schema-checked record embedded in the model file at ``path``."""
    from fpt_monai.engines.record_schema import RecordSchemaError, validate_record

    fix = (
        "Export the trained bundle again with this fpt_monai (`make export BUNDLE=<bundle>`), which embeds its "
        "metadata and record."
    )
    try:
        metadata = json.loads(extra["metadata.json"]) if extra.get("metadata.json") else None
        record = json.loads(extra["model_config.json"]) if extra.get("model_config.json") else None
    except ValueError as err:
        raise ModelFileError(f"{path}: its embedded metadata or record is not JSON ({err}). {fix}") from err
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path} has no embedded metadata.json. {fix}")
    if record is None and isinstance(metadata.get("fpt_monai"), dict):
        record = metadata["fpt_monai"].get("model_config")  # a file from `monai.bundle ckpt_export`
    if record is None:
        raise ModelFileError(f"{path} has no embedded model record (model_config.json). {fix}")
    try:
        validate_record(record, f"{path} (its embedded model_config.json)")
    except RecordSchemaError as err:
        raise ModelFileError(str(err)) from err
    return metadata, record


def _identity(path: Path, metadata: dict) -> dict:
    """The model's identity from its metadata, each value checked (reports and DICOM SRs print them)."""
    section = metadata.get("fpt_monai") if isinstance(metadata.get("fpt_monai"), dict) else {}
    identity = {
        "name": section.get("name") or metadata.get("name") or "FPT",
        "version": str(section.get("version") or metadata.get("version") or "unknown"),
        "run_id": section.get("run_id"),
        "checkpoint_sha256": section.get("checkpoint_sha256"),
    }
    from fpt_monai.engines.record_schema import IDENTITY_FORMS

    for key, form in IDENTITY_FORMS.items():
        value = identity[key]
        if value is not None and not (isinstance(value, str) and form.fullmatch(value)):
            raise ModelFileError(
                f"{path}: its embedded metadata's {key} {str(value)[:80]!r} is not a valid {key}; the file was edited "
                "or not exported by fpt_monai. Export the trained bundle again (`make export BUNDLE=<bundle>`)."
            )
    return identity


class ExportedFPT:
    """Classify image files with an exported FPT model, optionally with prompt-attention heatmaps.

    Args:
        model_path: ``model.ts`` or a folder holding it.
        device: where the model runs. Defaults to ``"cpu"``.
        heatmaps: also load ``model_explain.ts`` (next to ``model.ts``) and return heatmaps.
        batch_size: images per forward pass. Defaults to 4.

    Raises:
        ModelFileError: a missing file, or a TorchScript file without a valid embedded metadata and record.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        heatmaps: bool = False,
        batch_size: int = 4,
    ) -> None:
        self.path = _resolve(model_path, "model.ts")
        if not self.path.is_file():
            raise ModelFileError(
                f"{self.path}: no TorchScript model there. Export the trained bundle first: "
                "`make export BUNDLE=<bundle>` or `python scripts/export_bundle.py --bundle-root <bundle>` writes "
                "models/model.ts."
            )
        self.device = torch.device(device)
        extra = dict.fromkeys(EMBEDDED, "")
        try:  # what monai.data.load_net_with_metadata does, but a missing file is our clear error, not a JSON one
            self.network = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
        except (RuntimeError, ValueError) as err:
            raise ModelFileError(f"{self.path} is not a TorchScript model: {err}") from err
        self.network.eval()
        self.metadata, self.model_config = _embedded_model(self.path, extra)
        self.class_names: list[str] = list(self.model_config["class_names"])
        # which trained model this is: reports name it, its MLflow run and its checkpoint's SHA-256 (None: not recorded)
        ident = _identity(self.path, self.metadata)
        self.name: str = ident["name"]
        self.version: str = ident["version"]
        self.run_id: str | None = ident["run_id"]
        self.checkpoint_sha256: str | None = ident["checkpoint_sha256"]
        self.batch_size = int(batch_size)
        self.calibration, self.temperature = self._calibration()
        from fpt_monai.transforms.pipeline import fpt_transforms

        record = self.model_config
        self.preprocessing = fpt_transforms(
            "inference",
            False,
            img_size=int(record["img_size"]),
            side_img_size=int(record["side_img_size"]),
            mean=record["mean"],
            std=record["std"],
        )
        self.explainer = None
        if heatmaps:
            network_name = self.model_config.get("network_name", "fpt")
            if network_name != "fpt":
                raise ModelFileError(
                    f"{self.path}: heatmaps show FPT's prompt attention, but this model is a {network_name}; run "
                    "without --heatmaps."
                )
            explain_path = self.path.with_name(self.path.stem + "_explain" + self.path.suffix)
            if not explain_path.is_file():
                raise ModelFileError(
                    f"heatmaps need {explain_path} (the model that also returns prompt attention): export it with "
                    "`python -m monai.bundle ckpt_export explainer ...` or scripts/export_bundle.py."
                )
            self.explainer = torch.jit.load(str(explain_path), map_location=self.device).eval()

    def _calibration(self) -> tuple[dict | None, float | None]:
        """The record's temperature and operating point (chosen on validation by training) and the temperature this
        class still has to apply: none when the export put it inside the model (its logits are logits / T)."""
        calibration = self.model_config.get("calibration") or None
        if not calibration:
            return None, None
        if self.checkpoint_sha256 is not None and calibration["checkpoint_sha256"] != self.checkpoint_sha256:
            raise ModelFileError(
                f"{self.path}: its record's temperature and operating point were chosen for the checkpoint "
                f"{calibration['checkpoint_sha256'][:16]}..., the model is {self.checkpoint_sha256[:16]}...: the file "
                "was edited. Export the trained bundle again (`make export BUNDLE=<bundle>`)."
            )
        section = self.metadata.get("fpt_monai") if isinstance(self.metadata.get("fpt_monai"), dict) else {}
        inside = section.get("temperature_in_model") is not None
        temperature = calibration.get("temperature")
        return calibration, (None if inside or temperature is None else float(temperature))

    def decide(self, probabilities: dict[str, float]) -> str:
        """The class of (mean) probabilities ``{name: p}`` at the recorded operating point (else the most probable)."""
        from fpt_monai.engines.operating_point import decide

        row = np.array([[float(probabilities[c]) for c in self.class_names]])
        return self.class_names[decide(row, self.class_names, self.calibration)[0]]

    @property
    def identity(self) -> dict:
        """``{"name", "version", "run_id", "checkpoint_sha256"}`` of the model, as reports name it."""
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "checkpoint_sha256": self.checkpoint_sha256,
        }

    @property
    def device_uid(self) -> str:
        """A DICOM UID of the trained model (``2.25.<first 128 bits of the checkpoint's SHA-256>``; empty when the
        checkpoint is not recorded), for the Device UID of the SR's contributing equipment."""
        return f"2.25.{int(self.checkpoint_sha256[:32], 16)}" if self.checkpoint_sha256 else ""

    def preprocess(self, file: str | os.PathLike, frame: int | None = None) -> torch.Tensor:
        """The bundle's inference preprocessing of one image file (``frame``: of a multi-frame image): the normalised
        LPM view ``[3, S, S]``."""
        item = {"image": str(file)} if frame is None else {"image": str(file), "frame": int(frame)}
        return self.preprocessing(item)["image"]

    def predict(self, images: Sequence[torch.Tensor]) -> list[dict]:
        """Per preprocessed image: ``{"class", "probabilities" {name: p}, "heatmap" (or None)}``: the calibrated
        probabilities and the class at the operating point that training recorded (else the most probable one)."""
        from fpt_monai.engines.operating_point import decide

        results: list[dict] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([torch.as_tensor(x) for x in chunk]).to(self.device)
            with torch.no_grad():
                if self.explainer is not None:
                    logits, heatmaps = self.explainer(batch)
                else:
                    logits, heatmaps = self.network(batch), None
            logits = logits.float() / (self.temperature or 1.0)
            probs = torch.softmax(logits, dim=1).cpu()
            chosen = decide(probs.numpy(), self.class_names, self.calibration)  # at the recorded operating point
            for n in range(len(chunk)):
                results.append(
                    {
                        "class": self.class_names[chosen[n]],
                        "probabilities": dict(zip(self.class_names, probs[n].tolist(), strict=True)),
                        "heatmap": None if heatmaps is None else heatmaps[n, 0].cpu(),
                    }
                )
        return results

    def __call__(self, files: Sequence[str | os.PathLike]) -> list[dict]:
        """Per file: ``{"file", "class", "probabilities" {name: p}, "image" (network input), "heatmap" or None}``."""
        images = [self.preprocess(f) for f in files]
        return [{"file": str(f), "image": x, **r} for f, x, r in zip(files, images, self.predict(images), strict=True)]
