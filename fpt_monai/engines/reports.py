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

from fpt_monai.atomic import atomic_write_text
from fpt_monai.engines.checkpoint import load_checkpoint
from fpt_monai.engines.metrics import classification_metrics

__all__ = [
    "PredictionCollector",
    "PredictionWriter",
    "evaluate_checkpoints",
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

    Args:
        output_dir: where the files go.
        class_names: class names in index order.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str]) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)

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
        for item_id, frame, p in zip(self.ids, self.frames, self.probs, strict=True):
            if len(p) != len(self.class_names):
                raise ValueError(f"the model gives {len(p)} outputs but there are {len(self.class_names)} class names.")
            heatmap = (heatmaps or {}).get((item_id, frame))
            if heatmap is not None and heatmap_root is not None and heatmap_root.resolve() != self.output_dir.resolve():
                heatmap = Path(os.path.relpath(heatmap_root / heatmap, self.output_dir)).as_posix()
            records.append(
                {
                    "id": item_id,
                    **({"frame": frame} if with_frames else {}),
                    "prediction": self.class_names[int(np.argmax(p))],
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
        atomic_write_text(self.output_dir / "predictions.csv", table.getvalue())
        atomic_write_text(self.output_dir / "predictions.json", json.dumps(records, indent=1))


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
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | os.PathLike
) -> None:
    """Confusion matrix (counts, rows = true class) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 3, 1.2 * n + 2.5))
    ConfusionMatrixDisplay.from_predictions(
        labels, probs.argmax(1), labels=list(range(n)), display_labels=list(class_names), ax=ax, colorbar=False
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_checkpoints(
    evaluator: Engine,
    network: torch.nn.Module,
    checkpoints: Mapping[str, str | os.PathLike],
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    handlers: Sequence | None = None,
    split: str = "test",
) -> dict[str, dict[str, float]]:
    """Run ``evaluator`` once per checkpoint (e.g. ``{"best": models/model.pt, "final": models/model_final.pt}``)
    and write ``metrics.json``, ``metrics.csv``, ``predictions_<name>.csv``, ``roc_<name>.png`` and
    ``confusion_<name>.png`` to ``output_dir``. Missing checkpoint files are an error naming the file. With MLflow
    tracking (an ``MLFlowHandler`` among ``handlers``), the files and the metrics (``<split>_<checkpoint>_<metric>``,
    e.g. ``test_best_auc``) are logged to its run.

    Returns:
        ``{checkpoint name: {metric: value}}``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    collector = PredictionCollector()
    collector.attach(evaluator)
    results: dict[str, dict[str, float]] = {}
    for name, path in checkpoints.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} ({name}) not found; train first or point ckpt_dir at it.")
        network.load_state_dict(load_checkpoint(path), strict=True)
        evaluator.run()
        probs, labels = np.stack(collector.probs), np.asarray(collector.labels)
        results[name] = {**classification_metrics(probs, labels, len(class_names)), "n": int(len(labels))}
        with open(output_dir / f"predictions_{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label", *[f"prob_{c}" for c in class_names]])
            for item_id, label, p in zip(collector.ids, labels, probs, strict=True):
                writer.writerow([item_id, int(label), *[f"{v:.6f}" for v in p]])
        plot_roc(probs, labels, class_names, output_dir / f"roc_{name}.png")
        plot_confusion_matrix(probs, labels, class_names, output_dir / f"confusion_{name}.png")
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=1))
    keys = list(next(iter(results.values())))
    with open(output_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", *keys])
        for name, values in results.items():
            writer.writerow([name, *[values[k] for k in keys]])
    from fpt_monai.engines.tracking import log_mlflow_artifacts

    files = [output_dir / n for n in ("metrics.json", "metrics.csv")] + [
        output_dir / f"{kind}_{name}.{ext}"
        for name in results
        for kind, ext in (("predictions", "csv"), ("roc", "png"), ("confusion", "png"))
    ]
    flat = {f"{split}_{name}_{k}": v for name, values in results.items() for k, v in values.items() if k != "n"}
    log_mlflow_artifacts(handlers, files, flat)
    return results
