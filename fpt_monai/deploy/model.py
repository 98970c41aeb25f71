# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A self-contained exported FPT model: the TorchScript file plus the bundle configs embedded in it.

``scripts/export_bundle.py`` (``make export``) embeds ``metadata.json``, ``inference.json`` and the training's
``model_config.json`` into ``model.ts``. :class:`ExportedFPT` reads them back and builds the bundle's own inference
``preprocessing`` from ``inference.json``, so deployment preprocesses exactly like ``bundle/configs/inference.yaml``.
Loading runs the embedded config's expressions: load only models from a trusted source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["ExportedFPT", "ModelFileError"]

EMBEDDED = ("metadata.json", "inference.json", "model_config.json")


class ModelFileError(ValueError):
    """The model file is missing or was not exported with its configs."""


def _resolve(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


class ExportedFPT:
    """Classify image files with an exported FPT model, optionally with prompt-attention heatmaps.

    Args:
        model_path: ``model.ts`` or a folder holding it.
        device: where the model runs. Defaults to ``"cpu"``.
        heatmaps: also load ``model_explain.ts`` (next to ``model.ts``) and return heatmaps.
        batch_size: images per forward pass. Defaults to 4.

    Raises:
        ModelFileError: a missing file, or a TorchScript file without the embedded configs.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        heatmaps: bool = False,
        batch_size: int = 4,
    ) -> None:
        from monai.bundle import ConfigParser

        self.path = _resolve(model_path, "model.ts")
        if not self.path.is_file():
            raise ModelFileError(
                f"{self.path}: no TorchScript model there. Export the trained bundle first: "
                "`make export` or `python scripts/export_bundle.py --bundle-root <bundle>` writes models/model.ts."
            )
        self.device = torch.device(device)
        extra = dict.fromkeys(EMBEDDED, "")
        try:  # what monai.data.load_net_with_metadata does, but a missing file is our clear error, not a JSON one
            self.network = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
        except (RuntimeError, ValueError) as err:
            raise ModelFileError(f"{self.path} is not a TorchScript model: {err}") from err
        missing = [name for name in EMBEDDED if not extra.get(name)]
        if missing:
            raise ModelFileError(
                f"{self.path} has no embedded {', '.join(missing)}: export it with scripts/export_bundle.py "
                "(it passes the metadata, inference.yaml and models/model_config.json to `monai.bundle ckpt_export`)."
            )
        self.network.eval()
        self.metadata: dict = json.loads(extra["metadata.json"])
        self.model_config: dict = json.loads(extra["model_config.json"])
        self.class_names: list[str] = list(self.model_config["class_names"])
        self.name: str = self.metadata.get("name", "FPT")
        self.version: str = str(self.metadata.get("version", "unknown"))
        self.batch_size = int(batch_size)
        parser = ConfigParser(json.loads(extra["inference.json"]))
        # the embedded copy, not the bundle folder's file; only the numbers preprocessing reads, since the parser
        # would evaluate any text in the record that looks like config code ("$...", "@...")
        parser["model_config"] = {
            key: self.model_config[key]
            for key in ("img_size", "side_img_size", "mean", "std")
            if key in self.model_config
        }
        parser["bundle_root"] = str(self.path.parent)
        self.preprocessing = parser.get_parsed_content("preprocessing")
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

    def preprocess(self, file: str | os.PathLike, frame: int | None = None) -> torch.Tensor:
        """The bundle's inference preprocessing of one image file (``frame``: of a multi-frame image): the normalised
        LPM view ``[3, S, S]``."""
        item = {"image": str(file)} if frame is None else {"image": str(file), "frame": int(frame)}
        return self.preprocessing(item)["image"]

    def predict(self, images: Sequence[torch.Tensor]) -> list[dict]:
        """Per preprocessed image: ``{"class", "probabilities" {name: p}, "heatmap" (or None)}``."""
        results: list[dict] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([torch.as_tensor(x) for x in chunk]).to(self.device)
            with torch.no_grad():
                if self.explainer is not None:
                    logits, heatmaps = self.explainer(batch)
                else:
                    logits, heatmaps = self.network(batch), None
            probs = torch.softmax(logits.float(), dim=1).cpu()
            for n in range(len(chunk)):
                results.append(
                    {
                        "class": self.class_names[int(probs[n].argmax())],
                        "probabilities": dict(zip(self.class_names, probs[n].tolist(), strict=True)),
                        "heatmap": None if heatmaps is None else heatmaps[n, 0].cpu(),
                    }
                )
        return results

    def __call__(self, files: Sequence[str | os.PathLike]) -> list[dict]:
        """Per file: ``{"file", "class", "probabilities" {name: p}, "image" (network input), "heatmap" or None}``."""
        images = [self.preprocess(f) for f in files]
        return [{"file": str(f), "image": x, **r} for f, x, r in zip(files, images, self.predict(images), strict=True)]
