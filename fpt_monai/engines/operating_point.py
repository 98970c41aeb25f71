# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Temperature scaling and the operating point of a trained model, chosen on the validation split and recorded with
the model (the record's ``calibration``), then applied by evaluation, inference, export and Deploy.

- **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the deployed
  probabilities are ``softmax(logits / T)`` with the T that minimises the validation negative log-likelihood. The
  predicted class (argmax) does not change; the probabilities a clinician reads become calibrated.
- **Operating point**: for a binary task, or one class against the rest, the model calls the positive class when
  its (calibrated) probability reaches a threshold chosen on validation: Youden's J, or the most specific threshold
  that reaches a target sensitivity (e.g. 0.95 for a screening rule). Otherwise the class is the argmax.

The choice is made once, when training completes (:class:`OperatingPointChooser`), for ``models/model.pt``; it
names that checkpoint's SHA-256, so weights other than the ones it was chosen for are refused
(:func:`check_calibration`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = [
    "OPERATING_POINT_RULES",
    "CalibrationError",
    "OperatingPointChooser",
    "apply_calibration",
    "check_calibration",
    "check_operating_point_options",
    "choose_calibration",
    "decide",
    "describe_calibration",
    "operating_point_report",
    "write_validation_predictions",
]

OPERATING_POINT_RULES = ("none", "youden", "target_sensitivity")

logger = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """Operating-point or calibration options that cannot work, or a recorded choice that does not fit the model."""


def _positive_index(class_names: Sequence[str], positive_class: str | None) -> int:
    names = list(class_names)
    if positive_class in (None, "", "null", "None"):
        if len(names) != 2:
            raise CalibrationError(
                f"an operating point of a {len(names)}-class model needs the class it calls against the rest: pass "
                f"--positive_class <one of {names}>."
            )
        return 1
    if positive_class not in names:
        raise CalibrationError(f"positive_class {positive_class!r} is not one of the classes {names}.")
    return names.index(str(positive_class))


def check_operating_point_options(
    class_names: Sequence[str],
    operating_point: str = "none",
    target_sensitivity: float | str | None = None,
    positive_class: str | None = None,
    calibrate: bool | str = False,
    validation_labels: Sequence[int] | None = None,
) -> dict:
    """Check the options up front (training's set-up, before anything is written) and return them normalised.

    Args:
        class_names: the model's classes.
        operating_point: ``"none"`` (argmax), ``"youden"`` or ``"target_sensitivity"``; a ``target_sensitivity``
            given with ``"none"`` selects ``"target_sensitivity"``.
        target_sensitivity: the required validation sensitivity in (0, 1].
        positive_class: the class called against the rest; defaults to the second class of a binary task.
        calibrate: fit a temperature on the validation split.
        validation_labels: the validation split's labels: the positive class must be present and absent there.

    Returns:
        ``{"rule", "target_sensitivity", "positive_class", "calibrate"}``.

    Raises:
        CalibrationError: an unknown rule, a target outside (0, 1], an unknown class, a multi-class model without
            ``positive_class``, or a validation split that lacks positive or negative cases.
    """
    from fpt_monai.utils.flags import as_bool

    rule = str(operating_point or "none").strip().lower()
    target = None if target_sensitivity in (None, "", "null", "None") else float(target_sensitivity)
    if target is not None and rule == "none":
        rule = "target_sensitivity"
    if rule not in OPERATING_POINT_RULES:
        raise CalibrationError(
            f"operating_point must be one of {list(OPERATING_POINT_RULES)}, got {operating_point!r}."
        )
    if rule == "target_sensitivity":
        if target is None:
            raise CalibrationError("operating_point target_sensitivity needs --target_sensitivity, e.g. 0.95.")
        if not 0.0 < target <= 1.0:
            raise CalibrationError(f"target_sensitivity must lie in (0, 1], got {target_sensitivity!r}.")
    positive = None
    if rule != "none":
        positive = list(class_names)[_positive_index(class_names, positive_class)]
        if validation_labels is not None:
            k = list(class_names).index(positive)
            labels = [int(v) for v in validation_labels]
            n_pos = sum(v == k for v in labels)
            if n_pos == 0 or n_pos == len(labels):
                raise CalibrationError(
                    f"the operating point is chosen on the validation split, which has {n_pos} of {len(labels)} "
                    f"images of {positive!r}: it needs both {positive!r} and other images. Re-split the datalist, or "
                    "run with --operating_point none."
                )
    return {"rule": rule, "target_sensitivity": target, "positive_class": positive, "calibrate": as_bool(calibrate)}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def choose_calibration(
    logits: Any,
    labels: Any,
    class_names: Sequence[str],
    checkpoint_sha256: str,
    options: Mapping,
) -> dict | None:
    """Fit the temperature and choose the operating point on validation outputs.

    Args:
        logits: ``[N, C]`` validation logits of ``models/model.pt``.
        labels: ``[N]`` validation labels.
        class_names: the model's classes.
        checkpoint_sha256: the SHA-256 of the checkpoint the outputs came from.
        options: :func:`check_operating_point_options`'s result.

    Returns:
        The record's ``calibration`` (``checkpoint_sha256``, ``temperature`` or ``None``, ``operating_point`` or
        ``None``, ``validation``: n, NLL and ECE before and after), or ``None`` when nothing is asked for.
    """
    from fpt_monai.engines.statistics import choose_threshold, expected_calibration_error, fit_temperature

    if not options["calibrate"] and options["rule"] == "none":
        return None
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))
    raw = _softmax(logits)
    temperature = float(fit_temperature(logits, labels, kind="logits")) if options["calibrate"] else None
    probs = _softmax(logits / temperature) if temperature is not None else raw
    validation: dict[str, Any] = {
        "n": int(len(labels)),
        "nll_before": float(-np.log(np.clip(raw[rows, labels], 1e-12, None)).mean()),
        "ece_before": float(expected_calibration_error(raw, labels)),
    }
    if temperature is not None:
        validation["nll_after"] = float(-np.log(np.clip(probs[rows, labels], 1e-12, None)).mean())
        validation["ece_after"] = float(expected_calibration_error(probs, labels))
    operating_point = None
    if options["rule"] != "none":
        k = list(class_names).index(options["positive_class"])
        chosen = choose_threshold(
            (labels == k).astype(int),
            probs[:, k],
            method=options["rule"],
            target_sensitivity=options["target_sensitivity"],
        )
        operating_point = {
            "positive_class": options["positive_class"],
            "rule": options["rule"],
            "target_sensitivity": options["target_sensitivity"],
            "threshold": float(min(1.0, max(0.0, chosen["threshold"]))),
            "validation_sensitivity": chosen["sensitivity"],
            "validation_specificity": chosen["specificity"],
        }
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "temperature": temperature,
        "operating_point": operating_point,
        "validation": validation,
    }


def apply_calibration(probs: Any, calibration: Mapping | None) -> np.ndarray:
    """The deployed probabilities: ``probs`` (softmax outputs) temperature-scaled when the calibration has a
    temperature, unchanged otherwise."""
    from fpt_monai.engines.statistics import apply_temperature

    probs = np.asarray(probs, dtype=np.float64)
    temperature = (calibration or {}).get("temperature")
    return apply_temperature(probs, float(temperature)) if temperature is not None else probs


def decide(probs: Any, class_names: Sequence[str], calibration: Mapping | None) -> list[int]:
    """The class index of each row at the recorded operating point: the positive class when its probability reaches
    the threshold, else the most probable other class; the argmax without an operating point.

    Args:
        probs: ``[N, C]`` deployed (already calibrated) probabilities.
        class_names: the model's classes.
        calibration: the record's ``calibration`` (or ``None``).
    """
    probs = np.asarray(probs, dtype=np.float64)
    point = (calibration or {}).get("operating_point")
    if not point:
        return [int(i) for i in probs.argmax(axis=1)]
    k = list(class_names).index(point["positive_class"])
    others = probs.copy()
    others[:, k] = -np.inf
    return [k if row[k] >= point["threshold"] else int(rest.argmax()) for row, rest in zip(probs, others, strict=True)]


def describe_calibration(calibration: Mapping | None) -> list[str]:
    """One line per recorded choice, for logs and summaries."""
    if not calibration:
        return []
    lines = []
    temperature, validation = calibration.get("temperature"), calibration.get("validation", {})
    if temperature is not None:
        lines.append(
            f"temperature scaling T = {temperature:.3f} (chosen on the validation split, n={validation.get('n')}: "
            f"NLL {validation.get('nll_before', math.nan):.3f} -> {validation.get('nll_after', math.nan):.3f}, ECE "
            f"{validation.get('ece_before', math.nan):.3f} -> {validation.get('ece_after', math.nan):.3f})"
        )
    point = calibration.get("operating_point")
    if point:
        rule = (
            "Youden's J"
            if point["rule"] == "youden"
            else f"the most specific threshold with sensitivity >= {point['target_sensitivity']:g}"
        )
        lines.append(
            f"operating point: {point['positive_class']} when p({point['positive_class']}) >= {point['threshold']:.4f} "
            f"({rule} on the validation split: sensitivity {point['validation_sensitivity']:.3f}, specificity "
            f"{point['validation_specificity']:.3f})"
        )
    return lines


def check_calibration(calibration: Mapping | None, checkpoint: str | os.PathLike, class_names: Sequence[str]) -> None:
    """Refuse a recorded calibration chosen for other weights than ``checkpoint`` or naming an unknown class.

    Raises:
        CalibrationError: naming the checkpoint, both SHA-256 prefixes and the fix.
    """
    if not calibration:
        return
    from fpt_monai.data.feature_store import file_sha256

    point = calibration.get("operating_point")
    if point and point.get("positive_class") not in list(class_names):
        raise CalibrationError(
            f"the record's operating point names the class {point.get('positive_class')!r}, which is not one of "
            f"{list(class_names)}: the record was edited. Train again (or restore models/model_config.json)."
        )
    expected = calibration.get("checkpoint_sha256")
    actual = file_sha256(checkpoint)
    if expected != actual:
        raise CalibrationError(
            f"{checkpoint}: the record's temperature and operating point were chosen on validation for a checkpoint "
            f"with SHA-256 {str(expected)[:16]}..., this one is {actual[:16]}...: they do not belong to these weights. "
            "Run the training again into this bundle (it chooses them again when it completes), or restore model.pt."
        )


def operating_point_report(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], calibration: Mapping, confidence: float = 0.95
) -> dict | None:
    """Test figures of the recorded operating point: sensitivity, specificity, PPV and NPV of the rule, each with
    Wilson's interval (its denominator is fixed by the labels, so the interval stays honest on a handful of cases),
    and the counts.

    Args:
        probs: ``[N, C]`` deployed (calibrated) probabilities.
        labels: ``[N]`` labels.
        class_names: the model's classes.
        calibration: the record's ``calibration``.
        confidence: the intervals' level.

    Returns:
        ``None`` without an operating point, else ``{positive_class, threshold, rule, sensitivity, specificity,
        ppv, npv, tp, fp, tn, fn, ci: {figure: [low, high]}}``.
    """
    from fpt_monai.engines.statistics import metrics_at_threshold, wilson_interval

    point = (calibration or {}).get("operating_point")
    if not point:
        return None
    k = list(class_names).index(point["positive_class"])
    figures = metrics_at_threshold((np.asarray(labels) == k).astype(int), np.asarray(probs)[:, k], point["threshold"])
    tp, fp, tn, fn = (figures[c] for c in ("tp", "fp", "tn", "fn"))
    ci = {
        name: list(wilson_interval(hit, total, confidence))
        for name, hit, total in (
            ("sensitivity", tp, tp + fn),
            ("specificity", tn, tn + fp),
            ("ppv", tp, tp + fp),
            ("npv", tn, tn + fn),
        )
    }
    return {
        "positive_class": point["positive_class"],
        "threshold": point["threshold"],
        "rule": point["rule"],
        **{name: figures[name] for name in ("sensitivity", "specificity", "ppv", "npv")},
        **{name: int(figures[name]) for name in ("tp", "fp", "tn", "fn")},
        "ci": ci,
    }


def _validation_outputs(
    network: torch.nn.Module, validator: Engine, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits, labels and item ids of the whole validation split (a plain loader over the validator's dataset: under
    ``torchrun`` each rank's loader holds only its share). An item without an ``id`` gets its row number."""
    from monai.data import DataLoader

    loader = DataLoader(validator.data_loader.dataset, batch_size=validator.data_loader.batch_size or 1, shuffle=False)
    outputs, targets, ids = [], [], []
    network.eval()
    with torch.no_grad():
        for batch in loader:
            inputs, labels, args, kwargs = validator.prepare_batch(batch, device, False)
            outputs.append(network(inputs, *args, **kwargs).float().cpu())
            targets.append(labels.cpu())
            batch_ids = batch.get("id") if isinstance(batch, Mapping) else None
            if batch_ids is None:
                batch_ids = range(len(ids), len(ids) + len(labels))
            elif isinstance(batch_ids, torch.Tensor):
                batch_ids = batch_ids.reshape(-1).tolist()
            ids.extend(str(i) for i in batch_ids)
    return torch.cat(outputs).numpy(), torch.cat(targets).numpy(), ids


def write_validation_predictions(
    path: str | os.PathLike, ids: Sequence[str], labels: Any, probs: Any, class_names: Sequence[str]
) -> Path:
    """``path`` (the bundle's ``eval/predictions_validation.csv``) in the format of the evaluation's
    ``predictions_best.csv``: ``id, label, prob_<class>...``, six decimals, written atomically.

    Raises:
        ValueError: ids, labels and probabilities differ in length, or the columns are not the classes.
    """
    import csv
    import io

    from fpt_monai.utils.atomic import atomic_write_text

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if not len(ids) == len(labels) == len(probs) or probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(
            f"{path}: {len(ids)} ids, {len(labels)} labels and probabilities of shape {probs.shape} for "
            f"{len(class_names)} classes do not match."
        )
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["id", "label", *[f"prob_{c}" for c in class_names]])
    for item_id, label, p in zip(ids, labels, probs, strict=True):
        writer.writerow([item_id, int(label), *[f"{v:.6f}" for v in p]])
    return atomic_write_text(path, table.getvalue())


class OperatingPointChooser:
    """When training completes, fit the temperature and choose the operating point of ``models/model.pt`` on the
    validation split, and record them in ``models/model_config.json`` (``calibration``); log what was chosen. Also
    write model.pt's validation probabilities (temperature-scaled when a temperature was chosen, as evaluation
    reports model.pt's test probabilities) to ``predictions_validation.csv`` in ``output_dir``, the format of the
    evaluation's ``predictions_best.csv``: a study or a blend with another model chooses on them without touching
    the test split (:mod:`fpt_monai.engines.probability_blend`).

    Attach it after :class:`~fpt_monai.engines.FPTCheckpointer` (model.pt is final) and before the model card and
    MLflow handlers (they publish the record). Only the main process writes.

    Args:
        network: the trained network (a ``DistributedDataParallel`` is unwrapped); model.pt's weights are scored in
            it, then its final weights (and train/eval mode) are put back.
        validator: the validation evaluator (its dataset, ``prepare_batch`` and device are reused).
        ckpt_dir: the bundle's ``models`` folder.
        class_names: the model's classes.
        options: :func:`check_operating_point_options`'s result.
        output_dir: the folder of ``predictions_validation.csv``. Defaults to ``eval`` beside ``ckpt_dir`` (the
            bundle's ``output_dir``).
        write_predictions: write the validation probabilities. Defaults to ``True``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        validator: Engine,
        ckpt_dir: str | os.PathLike,
        class_names: Sequence[str],
        options: Mapping,
        output_dir: str | os.PathLike | None = None,
        write_predictions: bool = True,
    ) -> None:
        self.network = network
        self.validator = validator
        self.ckpt_dir = Path(ckpt_dir)
        self.class_names = list(class_names)
        self.options = dict(options)
        self.output_dir = Path(output_dir) if output_dir is not None else self.ckpt_dir.parent / "eval"
        self.write_predictions = bool(write_predictions)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> dict | None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return None
        record_file = self.ckpt_dir / "model_config.json"
        checkpoint = self.ckpt_dir / "model.pt"
        if not checkpoint.is_file() or not record_file.is_file():
            return None
        asked = self.options["calibrate"] or self.options["rule"] != "none"
        if not asked:
            record_calibration(record_file, None)  # nothing asked for: no choice of earlier weights stays
            if not self.write_predictions:
                return None
        from fpt_monai.data.feature_store import file_sha256
        from fpt_monai.engines.checkpoint import load_checkpoint

        net = self.network.module if hasattr(self.network, "module") else self.network
        # model.pt's weights scored in the network itself and the final ones put back: no copy of the network (online,
        # that would be a second frozen model on the device at the end of a long training); its state_dict is the
        # trainable part only (the frozen model is kept out of it), so the copy of the final weights is small
        final = {k: v.detach().clone() for k, v in net.state_dict().items()}
        device = self.validator.state.device or "cpu"
        was_training = net.training
        try:
            net.load_state_dict(load_checkpoint(checkpoint), strict=True)
            logits, labels, ids = _validation_outputs(net, self.validator, device)
        finally:
            net.load_state_dict(final, strict=True)
            net.train(was_training)
        del final
        calibration = None
        if asked:
            calibration = choose_calibration(logits, labels, self.class_names, file_sha256(checkpoint), self.options)
            record_calibration(record_file, calibration)
            for line in describe_calibration(calibration):
                logger.info("%s", line)
        if self.write_predictions:
            temperature = (calibration or {}).get("temperature")
            probs = _softmax(np.asarray(logits, dtype=np.float64) / (temperature or 1.0))
            write_validation_predictions(
                self.output_dir / "predictions_validation.csv", ids, labels, probs, self.class_names
            )
        return calibration


def record_calibration(record_file: str | os.PathLike, calibration: Mapping | None) -> None:
    """Set (or, with ``None``, remove) the record's ``calibration``, checked against the schema, atomically."""
    import json

    from fpt_monai.engines.model_record import read_record
    from fpt_monai.engines.record_schema import validate_record
    from fpt_monai.utils.atomic import atomic_write_text

    record = read_record(record_file)
    record.pop("calibration", None)
    if calibration is not None:
        record["calibration"] = json.loads(json.dumps(calibration))
    validate_record(record, str(record_file))
    atomic_write_text(record_file, json.dumps(record, indent=1))
