# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Evaluation of saved checkpoints on a split, with metric tables, per-image predictions and plots (ROC curves,
confusion matrices) (the model record that evaluation, inference and deployment read: :mod:`.model_record`)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from fpt_monai.engines.checkpoint import load_checkpoint
from fpt_monai.engines.metrics import classification_metrics
from fpt_monai.utils.atomic import atomic_write_text

__all__ = [
    "PredictionCollector",
    "PredictionWriter",
    "checkpoint_report",
    "evaluate_checkpoints",
    "flat_metrics",
    "plot_confusion_matrix",
    "plot_roc",
]


class PredictionCollector:
    """Collect ``pred`` (probabilities), ``label``, the item ``id`` and, for a frame of a multi-frame image, its
    ``frame`` of every sample an evaluator sees."""

    def __init__(self) -> None:
        self.probs: list[np.ndarray] = []
        self.labels: list[int] = []
        self.ids: list[str] = []
        self.frames: list[int | None] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self) -> None:
        self.probs, self.labels, self.ids, self.frames = [], [], [], []

    def __call__(self, engine: Engine) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        for out, item in zip(outputs, batch, strict=True):
            self.probs.append(torch.as_tensor(out["pred"]).detach().float().cpu().numpy())
            label = out.get("label")
            self.labels.append(int(torch.as_tensor(label).reshape(-1)[0]) if label is not None else -1)
            self.ids.append(str(item.get("id", len(self.ids))))
            frame = item.get("frame")
            self.frames.append(int(torch.as_tensor(frame).reshape(-1)[0]) if frame is not None else None)


class PredictionWriter(PredictionCollector):
    """Write per-image class probabilities and the predicted class name when the engine completes:
    ``predictions.csv`` (``id, prediction, prob_<class>..., heatmap``) and ``predictions.json``, atomically. When the
    items are frames of multi-frame images (bundle inference with ``frames``), a ``frame`` column follows ``id``.
    ``heatmap`` names the row's heatmap file relative to ``output_dir`` (``heatmaps/<name>.png``, written by a
    :class:`~fpt_monai.engines.HeatmapWriter` on the same engine), empty (``null`` in the JSON) without heatmaps.
    Predictions of an earlier run in the same folder are kept, renamed after their time; the first predictions and
    the files written are logged.

    Args:
        output_dir: where the files go.
        class_names: class names in index order.
        calibration: the record's ``calibration`` (:mod:`fpt_monai.engines.operating_point`): the probabilities
            are temperature-scaled and the prediction made at the operating point it holds. Defaults to ``None``
            (the softmax probabilities and their most probable class).
    """

    def __init__(
        self, output_dir: str | os.PathLike, class_names: Sequence[str], calibration: Mapping | None = None
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.calibration = dict(calibration) if calibration else None

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def write(self, engine: Engine | None = None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        records = []
        with_frames = any(f is not None for f in self.frames)  # the column only where frames were chosen
        # the HeatmapWriter's files, relative to its output folder, made relative to ours
        heatmaps = getattr(engine.state, "heatmap_files", None) if engine is not None else None
        heatmap_root = Path(getattr(engine.state, "heatmap_root", self.output_dir)) if engine is not None else None
        from fpt_monai.engines.operating_point import apply_calibration, decide, describe_calibration

        for p in self.probs:
            if len(p) != len(self.class_names):
                raise ValueError(f"the model gives {len(p)} outputs but there are {len(self.class_names)} class names.")
        probs = apply_calibration(np.stack(self.probs), self.calibration) if self.probs else []
        chosen = decide(probs, self.class_names, self.calibration) if self.probs else []
        for item_id, frame, p, k in zip(self.ids, self.frames, probs, chosen, strict=True):
            heatmap = (heatmaps or {}).get((item_id, frame))
            if heatmap is not None and heatmap_root is not None and heatmap_root.resolve() != self.output_dir.resolve():
                heatmap = Path(os.path.relpath(heatmap_root / heatmap, self.output_dir)).as_posix()
            records.append(
                {
                    "id": item_id,
                    **({"frame": frame} if with_frames else {}),
                    "prediction": self.class_names[k],
                    "probabilities": {c: float(v) for c, v in zip(self.class_names, p, strict=True)},
                    "heatmap": heatmap,
                }
            )
        table = io.StringIO()
        writer = csv.writer(table)
        frame_column = ["frame"] if with_frames else []
        writer.writerow(["id", *frame_column, "prediction", *[f"prob_{c}" for c in self.class_names], "heatmap"])
        for r in records:
            frame_value = [r["frame"]] if with_frames else []
            probs = [f"{v:.6f}" for v in r["probabilities"].values()]
            writer.writerow([r["id"], *frame_value, r["prediction"], *probs, r["heatmap"] or ""])
        self._keep_previous()
        atomic_write_text(self.output_dir / "predictions.csv", table.getvalue())
        atomic_write_text(self.output_dir / "predictions.json", json.dumps(records, indent=1))
        import logging

        logger = logging.getLogger(__name__)
        for line in describe_calibration(self.calibration):
            logger.info("predictions with the recorded %s", line)
        for r in records[:5]:
            logger.info("%s: %s (p=%.3f)", r["id"], r["prediction"], r["probabilities"][r["prediction"]])
        if len(records) > 5:
            logger.info("... %d more", len(records) - 5)
        for name in ("predictions.csv", "predictions.json"):
            logger.info("wrote %s", self.output_dir / name)

    def _keep_previous(self) -> None:
        """An earlier run's predictions are never overwritten silently: they are renamed after the time they were
        written (``predictions_<YYYYmmdd-HHMMSS>.csv`` and ``.json``), and the log says so."""
        import datetime
        import logging

        previous = self.output_dir / "predictions.csv"
        if not previous.is_file():
            return
        stamp = datetime.datetime.fromtimestamp(previous.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
        n = 0
        while (self.output_dir / f"predictions_{stamp}{f'_{n}' if n else ''}.csv").exists():
            n += 1
        stem = f"predictions_{stamp}{f'_{n}' if n else ''}"
        for suffix in (".csv", ".json"):
            if (self.output_dir / f"predictions{suffix}").is_file():
                os.replace(self.output_dir / f"predictions{suffix}", self.output_dir / f"{stem}{suffix}")
        logging.getLogger(__name__).info("kept the previous predictions as %s", self.output_dir / f"{stem}.csv")


def plot_roc(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """One-vs-rest ROC curves with their AUC, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    targets = range(1, 2) if len(class_names) == 2 else range(len(class_names))
    for c in targets:
        y = (labels == c).astype(int)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, probs[:, c])
            ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {roc_auc_score(y, probs[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion_matrix(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Confusion matrix (rows = true class) as a PNG: counts beside the row-normalised matrix (each row's share: the
    diagonal is each class's sensitivity), titled ``title`` (e.g. the checkpoint, split and n)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(2.4 * n + 5, 1.2 * n + 2.8))
    preds = probs.argmax(1)
    for ax, normalize, name in ((axes[0], None, "counts"), (axes[1], "true", "share of each true class")):
        ConfusionMatrixDisplay.from_predictions(
            labels,
            preds,
            labels=list(range(n)),
            display_labels=list(class_names),
            ax=ax,
            colorbar=False,
            normalize=normalize,
            values_format=None if normalize is None else ".2f",
        )
        ax.set_title(name)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# bootstrap interval names (fpt_monai.engines.statistics) -> the metric names of metrics.json
_INTERVAL_NAMES = {"macro_auc": "auc", "accuracy": "acc", "balanced_accuracy": "balanced_acc"}
_PER_CLASS_FIGURES = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc", "support")


def checkpoint_report(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    ordinal: bool = False,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Every figure of one evaluated checkpoint, each estimate with its stratified-bootstrap interval.

    Returns:
        The point metrics of :func:`classification_metrics` and ``balanced_acc``, ``n``, ``ece`` (expected
        calibration error); ``ci``: ``{metric: [low, high]}`` for ``auc``, ``acc``, ``balanced_acc`` and, per
        class, ``auc/<class>`` (bootstrap), ``sensitivity/<class>``, ``specificity/<class>`` (Wilson's interval:
        their denominators are fixed by the labels); ``per_class``: ``{class:
        {sensitivity, specificity, ppv, npv, f1, auc, support}}``; ``confusion_matrix`` (rows = true class);
        ``ci_level`` and ``bootstrap_resamples``.
    """
    from fpt_monai.engines.statistics import (
        bootstrap_intervals,
        expected_calibration_error,
        per_class_metrics,
        wilson_interval,
    )

    names = list(class_names)
    point = classification_metrics(probs, labels, len(names), ordinal=ordinal)
    detail = per_class_metrics(probs, labels, names)
    intervals = bootstrap_intervals(
        probs, labels, n_resamples=n_resamples, confidence=confidence, seed=seed, class_names=names
    )
    ci = {}
    for key, interval in intervals.items():
        metric, _, cls = key.partition("/")
        ci[_INTERVAL_NAMES.get(metric, metric) + (f"/{cls}" if cls else "")] = [interval.low, interval.high]
    # a class's sensitivity and specificity are proportions whose denominators the stratified resampling keeps fixed:
    # Wilson's interval is their analytic counterpart and does not collapse on a small class (3 of 3 found: [0.44, 1],
    # where the bootstrap says [1, 1])
    matrix = np.asarray(detail["confusion_matrix"])
    for k, cls in enumerate(names):
        tp, positives = matrix[k, k], matrix[k].sum()
        tn = matrix.sum() - positives - matrix[:, k].sum() + tp
        ci[f"sensitivity/{cls}"] = list(wilson_interval(float(tp), float(positives), confidence))
        ci[f"specificity/{cls}"] = list(wilson_interval(float(tn), float(matrix.sum() - positives), confidence))
    return {
        **point,
        "balanced_acc": detail["balanced_accuracy"],
        "ece": expected_calibration_error(probs, labels),
        "n": int(len(labels)),
        "ci": ci,
        "ci_level": confidence,
        "bootstrap_resamples": int(n_resamples),
        "per_class": {c: {k: detail["per_class"][c][k] for k in _PER_CLASS_FIGURES} for c in names},
        "confusion_matrix": detail["confusion_matrix"],
    }


def flat_metrics(report: Mapping) -> dict[str, float]:
    """One checkpoint's :func:`checkpoint_report` as flat columns: ``auc``, ``auc_ci_low``, ``auc_ci_high``, ...,
    ``sensitivity_<class>`` (and its interval), ``specificity_<class>``, ``ppv_<class>``, ... (metrics.csv, MLflow)."""
    out: dict[str, float] = {}
    for key, value in report.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("ci_level",):
            out[key] = value
            if key in report.get("ci", {}):
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = report["ci"][key]
    point = report.get("operating_point")
    if point:
        for figure in ("threshold", "sensitivity", "specificity", "ppv", "npv"):
            out[f"op_{figure}"] = point[figure]
            if figure in point["ci"]:
                out[f"op_{figure}_ci_low"], out[f"op_{figure}_ci_high"] = point["ci"][figure]
    for cls, figures in report.get("per_class", {}).items():
        for figure, value in figures.items():
            out[f"{figure}_{cls}"] = value
            if f"{figure}/{cls}" in report.get("ci", {}):
                out[f"{figure}_{cls}_ci_low"], out[f"{figure}_{cls}_ci_high"] = report["ci"][f"{figure}/{cls}"]
    return out


def _interval_text(report: Mapping, key: str) -> str:
    """``"auc 0.912 [0.850, 0.962]"``; a per-class key ``"sensitivity/<class>"`` reads ``"<class> 0.500 [...]"``."""
    figure, _, cls = key.partition("/")
    value = report["per_class"][cls][figure] if cls else report.get(key)
    if value is None:
        return f"{cls or key} -"
    low_high = report.get("ci", {}).get(key)
    return f"{cls or key} {value:.3f}" + (f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "")


def evaluate_checkpoints(
    evaluator: Engine,
    network: torch.nn.Module,
    checkpoints: Mapping[str, str | os.PathLike],
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    handlers: Sequence | None = None,
    split: str = "test",
    ordinal: bool = False,
    bootstrap_resamples: int = 2000,
    seed: int = 0,
    calibration: Mapping | None = None,
) -> dict[str, dict]:
    """Run ``evaluator`` once per checkpoint (e.g. ``{"best": models/model.pt, "final": models/model_final.pt}``)
    and write ``metrics.json``, ``metrics.csv``, ``predictions_<name>.csv``, ``roc_<name>.png``,
    ``confusion_<name>.png`` and ``reliability_<name>.png`` to ``output_dir``, saying each file it wrote. Every
    estimate comes with its stratified-bootstrap 95 % interval (:func:`checkpoint_report`), and each class's
    sensitivity, specificity, PPV, NPV and F1. Missing checkpoint files are an error naming the file. With MLflow
    tracking (an ``MLFlowHandler`` among ``handlers``), the files and the flat metrics
    (``<split>_<checkpoint>_<metric>``, e.g. ``test_best_auc``, ``test_best_auc_ci_low``,
    ``test_best_sensitivity_<class>``) are logged to its run.

    Args:
        ordinal: the labels are ordered grades: ``kappa_quadratic`` is reported beside Cohen's ``kappa``.
        bootstrap_resamples: resamples of the intervals (seeded with ``seed``).
        calibration: the record's ``calibration`` (:mod:`fpt_monai.engines.operating_point`): the checkpoint it was
            chosen for (by SHA-256, i.e. ``model.pt``) is reported as deployed, with the temperature applied to its
            probabilities (``ece_uncalibrated`` beside ``ece``) and, with an operating point, the sensitivity,
            specificity, PPV and NPV of its threshold with Wilson intervals (``operating_point``; ``op_*`` columns).

    Returns:
        ``{checkpoint name: checkpoint_report}``.
    """
    import logging

    from fpt_monai.data.feature_store import file_sha256
    from fpt_monai.engines.operating_point import apply_calibration, operating_point_report
    from fpt_monai.engines.statistics import expected_calibration_error, reliability_diagram

    logger = logging.getLogger(__name__)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    collector = PredictionCollector()
    collector.attach(evaluator)
    # the evaluator's own lines ("Got new best metric of val_auc", "Epoch[1] Complete") name test figures val_* and
    # compare the second checkpoint with the first: ours below say which checkpoint each figure is. A logger of its
    # own: ignite's is shared by every SupervisedEvaluator of the process (a training's validator after this one, in
    # the study or a test run, would lose its lines)
    quiet = logging.getLogger(f"{evaluator.logger.name}.checkpoint_evaluation")
    quiet.setLevel(max(evaluator.logger.getEffectiveLevel(), logging.WARNING))
    evaluator.logger = quiet
    results: dict[str, dict] = {}
    files: list[Path] = []
    for name, path in checkpoints.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} ({name}) not found; train first or point ckpt_dir at it.")
        network.load_state_dict(load_checkpoint(path), strict=True)
        evaluator.run()
        probs, labels = np.stack(collector.probs), np.asarray(collector.labels)
        deployed = calibration is not None and file_sha256(path) == calibration.get("checkpoint_sha256")
        raw_ece = expected_calibration_error(probs, labels)
        if deployed:  # what inference and Deploy give: the recorded temperature applied
            probs = apply_calibration(probs, calibration)
        report = checkpoint_report(probs, labels, class_names, ordinal, int(bootstrap_resamples), int(seed))
        if deployed and calibration.get("temperature") is not None:
            report["temperature"] = float(calibration["temperature"])
            report["ece_uncalibrated"] = raw_ece
        point = operating_point_report(probs, labels, class_names, calibration) if deployed else None
        if point is not None:
            report["operating_point"] = point
        results[name] = report
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["id", "label", *[f"prob_{c}" for c in class_names]])
        for item_id, label, p in zip(collector.ids, labels, probs, strict=True):
            writer.writerow([item_id, int(label), *[f"{v:.6f}" for v in p]])
        atomic_write_text(output_dir / f"predictions_{name}.csv", table.getvalue())
        title = f"{name} weights ({Path(path).name}), {split} split, n = {len(labels)}"
        if "temperature" in report:
            title += f", temperature {report['temperature']:.2f}"
        plot_roc(probs, labels, class_names, output_dir / f"roc_{name}.png")
        plot_confusion_matrix(probs, labels, class_names, output_dir / f"confusion_{name}.png", title=title)
        reliability_diagram(probs, labels, output_dir / f"reliability_{name}.png", title=title)
        files += [output_dir / f"{kind}_{name}.{ext}" for kind, ext in _CHECKPOINT_FILES]
        level = f"{100 * report['ci_level']:.0f} % CI"
        logger.info(
            "%s_%s (%s, n=%d): %s; %s",
            split,
            name,
            Path(path).name,
            report["n"],
            ", ".join(_interval_text(report, k) for k in ("auc", "acc", "balanced_acc")),
            level,
        )
        logger.info(
            "%s_%s sensitivity per class: %s",
            split,
            name,
            ", ".join(
                f"{_interval_text(report, f'sensitivity/{c}')} (n={v['support']})"
                for c, v in report["per_class"].items()
            ),
        )
        if "temperature" in report:
            logger.info(
                "%s_%s with the recorded temperature %.3f: ECE %.3f (%.3f without)",
                split,
                name,
                report["temperature"],
                report["ece"],
                report["ece_uncalibrated"],
            )
        if point is not None:
            ci = point["ci"]
            logger.info(
                "%s_%s at the recorded operating point (%s when p >= %.4f, chosen on validation): sensitivity %.3f "
                "[%.3f, %.3f] (%d/%d), specificity %.3f [%.3f, %.3f] (%d/%d); Wilson %s",
                split,
                name,
                point["positive_class"],
                point["threshold"],
                point["sensitivity"],
                *ci["sensitivity"],
                point["tp"],
                point["tp"] + point["fn"],
                point["specificity"],
                *ci["specificity"],
                point["tn"],
                point["tn"] + point["fp"],
                level,
            )
    atomic_write_text(output_dir / "metrics.json", json.dumps(results, indent=1))
    flat = {name: flat_metrics(report) for name, report in results.items()}
    keys = list(dict.fromkeys(k for values in flat.values() for k in values))
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["checkpoint", *keys])
    for name, values in flat.items():
        writer.writerow([name, *[values.get(k, "") for k in keys]])
    atomic_write_text(output_dir / "metrics.csv", table.getvalue())
    files = [output_dir / "metrics.json", output_dir / "metrics.csv", *files]
    for file in files:
        logger.info("wrote %s", file)
    from fpt_monai.engines.tracking import log_mlflow_artifacts

    logged = {
        _mlflow_name(f"{split}_{name}_{k}"): v for name, values in flat.items() for k, v in values.items() if k != "n"
    }
    log_mlflow_artifacts(handlers, files, logged)
    return results


_CHECKPOINT_FILES = (("predictions", "csv"), ("roc", "png"), ("confusion", "png"), ("reliability", "png"))


def _mlflow_name(name: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_ - . /`` and spaces): class names may hold anything else."""
    import re

    return re.sub(r"[^\w\-. /]", "_", name)
