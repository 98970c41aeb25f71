# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Export a trained bundle to TorchScript (``model.ts``, and ``model_explain.ts`` with prompt-attention heatmaps for
FPT) and ONNX (``model.onnx``), each carrying the model's identity, and check that they agree with PyTorch.

The network is rebuilt from the schema-checked record (``models/model_config.json``) in this process: no file of the
bundle is handed to MONAI's ``ConfigParser`` (a record is data; a config would run its ``$`` code). The files are
written with MONAI's own savers: :func:`monai.data.save_net_with_metadata` embeds the trained bundle's
``metadata.json`` (:mod:`fpt_monai.engines.model_card`: real input shape, class names, the MLflow run id and the
checkpoint's SHA-256) and the record without local paths; :func:`monai.networks.utils.convert_to_onnx` writes the ONNX
file, whose ``metadata_props`` carry the class names, normalisation, input size, frozen weights, run id and checkpoint
SHA-256. Then the PyTorch model, the TorchScript files and ONNX Runtime classify the same random batch; the largest
probability difference is written to ``models/export_check.json`` and must stay below ``tolerance``.

``python -m monai.bundle ckpt_export network_def --meta_file <bundle>/models/metadata.json --config_file
bundle/configs/inference.yaml --bundle_root <bundle> ...`` exports the same TorchScript model through MONAI's CLI
(docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from fpt_monai.utils.bundle_files import BUNDLE_CONFIGS

__all__ = ["ExportError", "export_bundle", "onnx_metadata"]

# the bundle's metadata template (configs/metadata.json of the packaged bundle)
_METADATA_TEMPLATE = BUNDLE_CONFIGS / "metadata.json"
_ONNX_NAMES = {"input_names": ["image"], "output_names": ["pred"]}
_ONNX_DYNAMIC = {"image": {0: "batch"}, "pred": {0: "batch"}}


class ExportError(ValueError):
    """The bundle cannot be exported (not trained, or its exports disagree with PyTorch)."""


def onnx_metadata(metadata: dict) -> dict[str, str]:
    """The ONNX ``metadata_props`` of a model from its bundle metadata (text values; lists and objects as JSON)."""
    ident = metadata["fpt_monai"]
    props = {
        "name": metadata.get("name", ""),
        "version": str(metadata.get("version", "")),
        "class_names": json.dumps(list(ident["model_config"]["class_names"])),
        "mean": json.dumps(ident["mean"]),
        "std": json.dumps(ident["std"]),
        "input_size": json.dumps(metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]),
        "frozen_weights": str(ident["frozen_weights"]),
        "run_id": str(ident.get("run_id") or ""),
        "checkpoint_sha256": str(ident.get("checkpoint_sha256") or ""),
        "fpt_monai_version": str(ident.get("version", "")),
    }
    # what training chose on validation: the temperature is inside the exported model (its logits are logits / T),
    # the operating point is for the consumer to apply to the softmax
    calibration = ident["model_config"].get("calibration") or {}
    if calibration.get("temperature") is not None:
        props["temperature_in_model"] = json.dumps(calibration["temperature"])
    if calibration.get("operating_point"):
        props["operating_point"] = json.dumps(calibration["operating_point"])
    return props


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """``write`` to a temporary name next to ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # the suffix kept: savers look at it
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path, extra: dict[str, str]) -> None:
    from monai.data import save_net_with_metadata

    with torch.no_grad():
        traced = torch.jit.trace(module, example)  # the frozen model's token selection does not script

    def write(tmp: str) -> None:
        save_net_with_metadata(
            traced,
            tmp,
            include_config_vals=False,
            append_timestamp=False,
            meta_values=json.loads(extra["metadata.json"]),
            more_extra_files={"model_config.json": extra["model_config.json"]},
        )

    _atomic(path, write)


def _save_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, props: dict[str, str]) -> None:
    import onnx
    from monai.networks.utils import convert_to_onnx

    def write(tmp: str) -> None:
        # the exporter may put the weights in a side file: export into a folder of our own, save one file from it
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as folder:
            first = os.path.join(folder, "model.onnx")
            convert_to_onnx(
                module, [example], dynamic_axes=_ONNX_DYNAMIC, filename=first, use_trace=True, **_ONNX_NAMES
            )
            model = onnx.load(first)
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, tmp)

    _atomic(path, write)


def export_bundle(
    bundle_root: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    onnx: bool = True,
    batch_size: int = 3,
    tolerance: float = 1e-4,
    progress: bool = True,
) -> dict:
    """Export the trained bundle at ``bundle_root`` and check the exports against PyTorch.

    Args:
        bundle_root: the trained bundle (``models/model.pt`` and ``models/model_config.json``).
        pretrained: the frozen model's weight file where it is now, if it moved since training (checked against the
            SHA-256 the record holds; other weights are refused). Defaults to the recorded file.
        onnx: also write ``model.onnx``.
        batch_size: the batch of the agreement check.
        tolerance: the largest allowed difference of a class probability.
        progress: show a progress bar.

    Returns:
        The agreement report (also written to ``models/export_check.json``).

    Raises:
        ExportError: no trained model, or exports that disagree with PyTorch.
        ModelConfigError: a record that is not valid, or weights other than the trained model's.
    """
    from tqdm.auto import tqdm

    from fpt_monai.engines import (
        check_calibration,
        check_model_settings,
        load_checkpoint,
        portable_record,
        read_model_config,
        read_record,
        recorded_weights,
        write_model_identity,
    )
    from fpt_monai.networks import (
        FPTExplainer,
        TemperatureScaled,
        TemperatureScaledExplainer,
        network_from_model_config,
    )

    root = Path(bundle_root).resolve()
    models = root / "models"
    checkpoint = models / "model.pt"
    if not checkpoint.is_file():
        raise ExportError(f"{checkpoint}: model.pt not found: train the bundle first (make demo, or the bundle's run).")
    record = read_model_config(models / "model_config.json", bundle_root=root)
    weights = str(Path(pretrained).resolve()) if pretrained is not None else recorded_weights(record)
    check_model_settings(record, pretrained=weights)  # other frozen weights are refused before anything is written
    state = load_checkpoint(checkpoint)  # checked against checksums.json, weights only
    net = network_from_model_config(record, pretrained=weights, frozen_model=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    # the temperature chosen on validation goes inside the exports (they return logits / T); its record must be
    # model.pt's
    calibration = record.get("calibration")
    check_calibration(calibration, checkpoint, record["class_names"])
    temperature = (calibration or {}).get("temperature")
    exported = net if temperature is None else TemperatureScaled(net, temperature).eval()

    # the descriptive metadata comes from this package's bundle, never from the bundle's own metadata.json (a file
    # that anyone who shared the bundle could have edited, e.g. with '%' macros that MONAI's parser would resolve)
    template = json.loads(_METADATA_TEMPLATE.read_text()) if _METADATA_TEMPLATE.is_file() else {}
    write_model_identity(root, template)  # the identity now: the final checkpoint's SHA-256, the run id
    metadata = json.loads((models / "metadata.json").read_text())
    if temperature is not None:  # Deploy must not divide by T a second time
        metadata["fpt_monai"]["temperature_in_model"] = float(temperature)
    metadata_text = json.dumps(metadata, indent=1)
    raw = read_record(models / "model_config.json")
    extra = {"metadata.json": metadata_text, "model_config.json": json.dumps(portable_record(raw), indent=1)}

    size = int(record["img_size"])
    explain = record["network_name"] == "fpt"  # heatmaps are FPT's prompt attention
    exports: list[tuple[str, Path]] = [("torchscript", models / "model.ts")]
    if explain:
        exports.append(("torchscript_explainer", models / "model_explain.ts"))
    if onnx:
        exports.append(("onnx", models / "model.onnx"))
    for kind, path in tqdm(exports, desc="export", unit="model", disable=not progress):
        if kind == "torchscript":
            _save_torchscript(exported, torch.rand(1, 3, size, size), path, extra)
        elif kind == "torchscript_explainer":
            explainer = FPTExplainer(net).eval()
            if temperature is not None:
                explainer = TemperatureScaledExplainer(explainer, temperature).eval()
            _save_torchscript(explainer, torch.rand(1, 3, size, size), path, extra)
        else:  # torch.export specialises a batch of 1 into the graph: the example batch is 2, the axis dynamic
            _save_onnx(exported, torch.rand(2, 3, size, size), path, onnx_metadata(metadata))

    image = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    probs: dict[str, torch.Tensor] = {}
    heatmap = None
    with torch.no_grad():
        reference = torch.softmax(exported(image), dim=1)
        probs["torchscript"] = torch.softmax(torch.jit.load(str(models / "model.ts"))(image), dim=1)
        if explain:
            logits, heatmap = torch.jit.load(str(models / "model_explain.ts"))(image)
            probs["torchscript_explainer"] = torch.softmax(logits, dim=1)
    if onnx:
        import onnxruntime as ort

        session = ort.InferenceSession(str(models / "model.onnx"), providers=["CPUExecutionProvider"])
        (onnx_logits,) = session.run(None, {"image": image.numpy()})
        probs["onnx"] = torch.softmax(torch.from_numpy(onnx_logits), dim=1)
    report = {
        "batch": list(image.shape),
        "tolerance": tolerance,
        "max_abs_prob_diff": {name: float((p - reference).abs().max()) for name, p in probs.items()},
        "heatmap_shape": None if heatmap is None else list(heatmap.shape),
        "files": {path.name: path.stat().st_size for _, path in exports},
        "identity": {k: metadata["fpt_monai"].get(k) for k in ("name", "version", "run_id", "checkpoint_sha256")},
    }
    from fpt_monai.utils.atomic import atomic_write_text

    atomic_write_text(models / "export_check.json", json.dumps(report, indent=1))
    worst = max(report["max_abs_prob_diff"].values())
    if worst > tolerance:
        raise ExportError(
            f"{models / 'export_check.json'}: the exports disagree with PyTorch ({worst:.2e} > tolerance "
            f"{tolerance:g}); do not deploy them. Report the file with the versions of torch and onnxruntime."
        )
    return report
