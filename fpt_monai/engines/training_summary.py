# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What a training says when it ends, and epoch lines that never contradict it.

:class:`TrainingSummary` (attached to the trainer after the :class:`~fpt_monai.engines.FPTCheckpointer` and the
other handlers that finish ``models/``) logs, on the main process only:

- how far training went (the epochs trained by this run, or that nothing was trained: a finished training run again);
- the best epoch and why: its key metric (``val_auc``), and, when a later epoch tied it, that the tie went to the
  lower ``val_loss``; this is the epoch of ``models/model.pt``, as ``models/last.pt`` records it;
- where ``model.pt`` and ``model_final.pt`` are;
- the MLflow run (``models/mlflow_run.json``: run id, store and the ``mlflow ui`` command that shows it), or that the
  training was not tracked;
- the command that evaluates the trained bundle.

:func:`epoch_metrics_print` is a ``StatsHandler`` ``epoch_print_logger`` for the trainer: MONAI's default epoch
print adds "Key metric: train_acc best value: ... at epoch: ...", an epoch that has nothing to do with the model kept.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events

from fpt_monai.utils.bundle_files import BUNDLE_CONFIGS

__all__ = [
    "EVALUATE_CONFIGS",
    "STATS_LOGGER",
    "TrainingSummary",
    "epoch_metrics_print",
    "evaluate_command",
    "training_summary",
]

EVALUATE_CONFIGS = ("bundle/configs/train.yaml", "bundle/configs/evaluate.yaml")
"""The configs of the evaluation command, relative to the repository root (where the bundle commands run)."""


STATS_LOGGER = "monai.handlers.StatsHandler"
"""The logger of MONAI's ``StatsHandler`` (its default ``name``), which :func:`epoch_metrics_print` writes to."""


def epoch_metrics_print(engine: Engine) -> None:
    """MONAI ``StatsHandler``'s epoch line (``Epoch[N] Metrics -- name: value ...``, on the same logger) without its
    "Key metric ... best value ... at epoch" line: for the trainer that is the best training accuracy, not the epoch
    of ``model.pt``. Use it as the trainer's ``StatsHandler(epoch_print_logger=...)``."""
    from monai.apps import get_logger
    from monai.utils import is_scalar

    metrics = engine.state.metrics or {}
    cells = [f"{k}: {float(v):.4f} " if is_scalar(v) else f"{k}: {v} " for k, v in sorted(metrics.items())]
    if cells:
        get_logger(STATS_LOGGER).info(f"Epoch[{engine.state.epoch}] Metrics -- " + "".join(cells))


def _config_files(configs: Sequence[str] | None) -> list[str]:
    """``configs`` or :data:`EVALUATE_CONFIGS`, relative when they are there from the working directory, else the
    packaged bundle's (a training started from elsewhere, or an installed package)."""
    if configs is not None:
        return [str(c) for c in configs]
    if all(Path(c).is_file() for c in EVALUATE_CONFIGS):
        return list(EVALUATE_CONFIGS)
    packaged = [BUNDLE_CONFIGS / Path(c).name for c in EVALUATE_CONFIGS]
    return [str(c) for c in packaged] if all(c.is_file() for c in packaged) else list(EVALUATE_CONFIGS)


def evaluate_command(
    bundle_root: str | os.PathLike, tracked: bool = False, configs: Sequence[str] | None = None
) -> str:
    """The command that evaluates the bundle at ``bundle_root`` (``--tracking mlflow`` when ``tracked``: the
    evaluation run is then linked to the training run)."""
    files = "[" + ",".join(f"'{c}'" for c in _config_files(configs)) + "]"
    command = f'python -m monai.bundle run --config_file "{files}" --bundle_root {shlex.quote(str(bundle_root))}'
    return command + (" --tracking mlflow" if tracked else "")


def _read_last(ckpt_dir: Path) -> tuple[dict | None, str]:
    """``last.pt``'s bookkeeping (no weights kept), or None and why."""
    from fpt_monai.engines.checkpoint import load_checkpoint

    path = ckpt_dir / "last.pt"
    if not path.is_file():
        return None, f"{path} not found"
    try:
        state = load_checkpoint(path)
    except Exception as err:  # the summary reports, it never fails a finished training
        return None, f"{path} unreadable ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
    return {k: v for k, v in state.items() if k not in ("network", "optimizer", "lr_scheduler")}, ""


def _best_lines(last: dict | None, why_not: str, ckpt_dir: Path, key_metric: str, tie_metric: str | None) -> list[str]:
    model = ckpt_dir.resolve() / "model.pt"
    if last is None:
        return [f"Best epoch: unknown ({why_not}).", f"Best weights: {model}" + ("" if model.is_file() else " (none)")]
    key_metric = str(last.get("key_metric") or key_metric)
    tie_metric = last.get("tie_metric", tie_metric)
    epoch = int(last.get("best_epoch", -1))
    if epoch < 0:
        return [
            f"Best epoch: none: {key_metric} was never a number at validation (NaN each time), so no model.pt was "
            "saved; check the validation split (every class present?).",
            f"Best weights: none ({model} not written by this training).",
        ]
    value = float(last["best_metric"])
    tie = float(last.get("best_tie", math.inf))
    first = int(last.get("best_first_epoch", epoch))
    why = f"{key_metric} {value:.4f}, the highest"
    if first != epoch and tie_metric:
        first_tie = float(last.get("best_first_tie", math.inf))
        earlier = f"{first_tie:.4f} at epoch {first}" if math.isfinite(first_tie) else f"none at epoch {first}"
        why += (
            f"; tie broken by the lower {tie_metric}: {key_metric} {value:.4f} was first reached at epoch {first}, "
            f"and of the epochs with it epoch {epoch} has the lowest {tie_metric} ({tie:.4f}; {earlier})"
        )
    elif tie_metric and math.isfinite(tie):
        why += f" ({tie_metric} {tie:.4f})"
    missing = "" if model.is_file() else " (missing: moved or deleted since)"
    return [f"Best epoch: {epoch} ({why}).", f"Best weights (epoch {epoch}): {model}{missing}"]


def _mlflow_lines(ckpt_dir: Path) -> tuple[list[str], bool]:
    from fpt_monai.engines.tracking import RUN_RECORD_NAME, read_run_record

    path = ckpt_dir / RUN_RECORD_NAME
    try:
        record = read_run_record(path)
    except ValueError as err:
        return [f"MLflow: run record unreadable ({err})."], False
    if record is None:
        return ["MLflow: not tracked (add --tracking mlflow to the training command to track it)."], False
    uri = str(record.get("tracking_uri") or "")
    experiment = record.get("experiment_name")
    where = f" in experiment {experiment!r}" if experiment else ""
    lines = [f"MLflow: run {record['run_id']}{where} at {uri or 'the default store'} (recorded in {path.resolve()})."]
    if uri:
        lines.append(f"  browse it with: mlflow ui --backend-store-uri {shlex.quote(uri)}")
    return lines, True


def training_summary(
    ckpt_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    final_epoch: int | None = None,
    max_epochs: int | None = None,
    trained_epochs: Sequence[int] = (),
    key_metric: str = "val_auc",
    tie_metric: str | None = "val_loss",
    configs: Sequence[str] | None = None,
) -> list[str]:
    """The lines of the end-of-training summary, from the files in ``ckpt_dir`` (``last.pt``, ``model.pt``,
    ``model_final.pt``, ``mlflow_run.json``).

    Args:
        ckpt_dir: the checkpoint folder (``<bundle_root>/models``).
        bundle_root: the bundle folder, as the evaluation command should name it.
        final_epoch: the trainer's epoch at the end (default: ``last.pt``'s).
        max_epochs: the epochs asked for.
        trained_epochs: the epochs this run trained (none: a finished training run again).
        key_metric: the metric that chose ``model.pt``, when ``last.pt`` does not name it.
        tie_metric: the metric that broke its ties (lower is better), likewise.
        configs: the evaluation command's config files (default :data:`EVALUATE_CONFIGS`).
    """
    ckpt_dir = Path(ckpt_dir)
    last, why_not = _read_last(ckpt_dir)
    if final_epoch is None and last is not None:
        final_epoch = int(last.get("trainer", {}).get("epoch", 0))
    of = f" of {max_epochs}" if max_epochs else ""
    if trained_epochs:
        span = (
            f"epoch {trained_epochs[0]}"
            if len(trained_epochs) == 1
            else f"epochs {trained_epochs[0]}-{trained_epochs[-1]}"
        )
        stopped = " (stopped early)" if max_epochs and final_epoch is not None and final_epoch < max_epochs else ""
        lines = [f"Training finished at epoch {final_epoch}{of}{stopped}; this run trained {span}."]
    else:
        lines = [
            f"Nothing trained: {ckpt_dir.resolve() / 'last.pt'} is already at epoch {final_epoch}{of} (a finished "
            "training run again; --epochs <more> trains on from it, --resume false trains again from scratch)."
        ]
    lines += _best_lines(last, why_not, ckpt_dir, key_metric, tie_metric)
    final = ckpt_dir.resolve() / "model_final.pt"
    lines.append(f"Final weights (epoch {final_epoch}): {final}" + ("" if final.is_file() else " (not written)"))
    mlflow_lines, tracked = _mlflow_lines(ckpt_dir)
    lines += mlflow_lines
    lines.append("Next, evaluate the best and final weights on the test split:")
    lines.append("  " + evaluate_command(bundle_root, tracked=tracked, configs=configs))
    return lines


class TrainingSummary:
    """Ignite handler: log :func:`training_summary` when the trainer completes, on the main process only.

    Attach it to the trainer after the ``FPTCheckpointer`` (and whatever else finishes ``models/``): its ``COMPLETED``
    handler then runs after ``model_final.pt`` is written.

    Args:
        bundle_root: the bundle folder. Defaults to ``"."``.
        ckpt_dir: the checkpoint folder. Defaults to ``<bundle_root>/models``.
        key_metric: the metric that chose ``model.pt`` (when ``last.pt`` does not name it). Defaults to ``"val_auc"``.
        tie_metric: the metric that broke its ties, likewise. Defaults to ``"val_loss"``.
        configs: the evaluation command's config files. Defaults to :data:`EVALUATE_CONFIGS`.
        name: the logger's name. Defaults to the trainer's logger.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike = ".",
        ckpt_dir: str | os.PathLike | None = None,
        key_metric: str = "val_auc",
        tie_metric: str | None = "val_loss",
        configs: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        if not str(bundle_root):
            raise ValueError("TrainingSummary: bundle_root is empty; give the bundle folder.")
        self.bundle_root = bundle_root
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else Path(bundle_root) / "models"
        self.key_metric = key_metric
        self.tie_metric = tie_metric
        self.configs = configs
        self.logger = logging.getLogger(name) if name else None
        self.trained_epochs: list[int] = []

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self.trained_epochs = []

    def _epoch_completed(self, engine: Engine) -> None:
        self.trained_epochs.append(engine.state.epoch)

    def __call__(self, engine: Engine) -> None:
        from fpt_monai.engines.checkpoint import _is_main_process

        if not _is_main_process():
            return
        lines = training_summary(
            self.ckpt_dir,
            self.bundle_root,
            final_epoch=engine.state.epoch,
            max_epochs=engine.state.max_epochs,
            trained_epochs=self.trained_epochs,
            key_metric=self.key_metric,
            tie_metric=self.tie_metric,
            configs=self.configs,
        )
        logger = self.logger or engine.logger
        for line in lines:
            logger.info(line)
