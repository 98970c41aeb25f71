# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Atomic best/last/final checkpoints and exact resume for MONAI's Ignite trainers.

MONAI's ``CheckpointSaver`` writes non-atomically and keeps the best-metric bookkeeping apart from the last state;
the reference code saves only at epochs 0 and 10 and forgets the best metric on resume (spec §6.19). Here:

- ``last.pt`` after every epoch (after validation): network, optimizer, scheduler, trainer state (epoch,
  iteration), best metric and its epoch;
- ``model.pt`` when the validation key metric improves (strictly, NaN never counts), ``model_final.pt`` at the end;
- every file is written to a temporary file, fsynced and renamed, so a crash never leaves a half-written checkpoint;
- ``resume=True`` restores everything from ``last.pt`` when the trainer starts;
- under ``torch.distributed`` every rank resumes from the same files but only rank 0 writes, and a
  ``DistributedDataParallel`` network is saved unwrapped (the same keys as a single-process checkpoint).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from fpt_monai.atomic import atomic_write

__all__ = ["FPTCheckpointer", "atomic_torch_save"]


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`fpt_monai.atomic.atomic_write`: the previous file survives any failure."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _is_main_process() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class FPTCheckpointer:
    """Best, last and final checkpoints with resume; attach it to the trainer after the ``ValidationHandler``.

    Args:
        save_dir: checkpoint folder.
        network: the model (its ``state_dict``: FPT's holds only the trainable part).
        optimizer: saved in ``last.pt`` and restored on resume.
        lr_scheduler: likewise.
        validator: the evaluator whose ``key_metric`` selects ``model.pt``; ``None`` saves no best model.
        key_metric: name of the validation metric (higher is better). Defaults to ``"val_auc"``.
        resume: restore from ``last.pt`` when the trainer starts, if it exists. Defaults to ``True``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: object | None = None,
        validator: Engine | None = None,
        key_metric: str = "val_auc",
        resume: bool = True,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.validator = validator
        self.key_metric = key_metric
        self.resume = resume
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.trainer: Engine | None = None

    @property
    def last_path(self) -> Path:
        return self.save_dir / "last.pt"

    @property
    def _model(self) -> torch.nn.Module:
        return self.network.module if isinstance(self.network, torch.nn.parallel.DistributedDataParallel) else self.network

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load_last)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self.update_best)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_last)
        engine.add_event_handler(Events.COMPLETED, self.save_final)

    def update_best(self, validator: Engine) -> None:
        value = validator.state.metrics.get(self.key_metric)
        if value is None:
            raise KeyError(f"validation metric {self.key_metric!r} not found; have {sorted(validator.state.metrics)}")
        value = float(value)
        if not math.isnan(value) and value > self.best_metric:
            self.best_metric = value
            self.best_epoch = self.trainer.state.epoch if self.trainer is not None else validator.state.epoch
            if _is_main_process():
                atomic_torch_save(self._model.state_dict(), self.save_dir / "model.pt")

    def save_last(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        state = {
            "network": self._model.state_dict(),
            "trainer": {
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "epoch_length": engine.state.epoch_length,
            },
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
        }
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        atomic_torch_save(state, self.last_path)

    def save_final(self, engine: Engine) -> None:
        if _is_main_process():
            atomic_torch_save(self._model.state_dict(), self.save_dir / "model_final.pt")

    def load_last(self, engine: Engine) -> None:
        if not self.last_path.is_file():
            return
        try:
            state = torch.load(self.last_path, map_location="cpu", weights_only=True)
            self._model.load_state_dict(state["network"])
        except Exception as err:
            raise RuntimeError(
                f"cannot resume from {self.last_path} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); it is "
                "corrupt or from another model. Move it away to start from scratch."
            ) from err
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        trainer_state = state["trainer"]
        engine.state.epoch = int(trainer_state["epoch"])
        engine.state.iteration = int(trainer_state["iteration"])
        engine.logger.info(
            f"resumed from {self.last_path}: epoch {engine.state.epoch}, best {self.key_metric} "
            f"{self.best_metric:.4f} (epoch {self.best_epoch})"
        )
