# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Atomic best/last/final checkpoints and exact resume for MONAI's Ignite trainers.

MONAI's ``CheckpointSaver`` writes non-atomically and keeps the best-metric bookkeeping apart from the last state;
the reference code saves only at epochs 0 and 10 and forgets the best metric on resume (spec §6.19). Here:

- ``last.pt`` after every epoch (after validation): network, optimizer, scheduler, trainer state (epoch,
  iteration), best metric and its epoch;
- ``model.pt`` when the validation key metric improves (strictly, NaN never counts; a tie goes to the lower
  ``tie_metric`` when one is set), ``model_final.pt`` at the end;
- a MONAI validator's best (``state.best_metric`` / ``best_metric_epoch``, which its ``StatsHandler`` prints as "Key
  metric: ... best value: ... at epoch: ...") is the checkpointer's: the epoch of ``model.pt``, ties included;
- every file is written to a temporary file, fsynced and renamed, so a crash or a full disk never leaves a
  half-written checkpoint, and its SHA-256 goes to ``checksums.json``: a file corrupted later is refused
  (:func:`verify_checkpoint`) instead of being loaded;
- every file is read with ``torch.load(weights_only=True)``: one holding pickled objects other than tensors (code
  that would run when unpickled) is refused with an error naming it (:class:`ForeignCheckpointError`), never run;
- ``resume=True`` restores everything from ``last.pt`` when the trainer starts;
- under ``torch.distributed`` every rank resumes from the same files but only rank 0 writes, and a
  ``DistributedDataParallel`` network is saved unwrapped (the same keys as a single-process checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from ignite.engine import Engine, Events

from fpt_monai.data.feature_store import file_sha256
from fpt_monai.utils.atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from fpt_monai.engines.weight_averaging import WeightAveraging

__all__ = [
    "CHECKSUMS",
    "CorruptCheckpointError",
    "ForeignCheckpointError",
    "FPTCheckpointer",
    "atomic_torch_save",
    "load_checkpoint",
    "verify_checkpoint",
]


CHECKSUMS = "checksums.json"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint does not match the checksum recorded when it was written."""


class ForeignCheckpointError(CorruptCheckpointError):
    """A file given as a checkpoint is not one: ``torch.load(weights_only=True)`` refuses it (it holds pickled objects
    other than tensors, never run) or cannot parse it."""


def _read_checksums(folder: Path) -> dict[str, list[str]]:
    try:
        return json.loads((folder / CHECKSUMS).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise CorruptCheckpointError(f"{folder / CHECKSUMS} is unreadable ({err}); delete it to skip checks.") from err


def _record_checksum(path: Path, digests: list[str]) -> None:
    sums = _read_checksums(path.parent)
    sums[path.name] = digests
    atomic_write_text(path.parent / CHECKSUMS, json.dumps(sums, indent=1))


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`fpt_monai.utils.atomic.atomic_write`, the previous file surviving any failure
    (a full disk included), with the file's SHA-256 recorded in ``checksums.json`` next to it.

    The record lists the new and the previous digest while the file is being replaced, then only the new one, so
    a crash at any point leaves a file that matches its record."""
    path = Path(path)
    previous = _read_checksums(path.parent).get(path.name, [])[:1]

    def write(f) -> None:
        torch.save(obj, f)
        f.flush()
        digest = file_sha256(f.name)
        written.append(digest)
        _record_checksum(path, [digest, *previous])

    written: list[str] = []
    atomic_write(path, write)
    _record_checksum(path, written)


def _check_checksum(path: Path) -> bool:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train first, or set the checkpoint path.")
    expected = _read_checksums(path.parent).get(path.name)
    if not expected:
        warnings.warn(f"{path} has no recorded checksum (not written by fpt_monai); used unverified.", stacklevel=3)
        return False
    digest = file_sha256(path)
    if digest not in expected:
        raise CorruptCheckpointError(
            f"{path} is corrupt or was modified after it was saved: SHA-256 {digest[:16]}... differs from the "
            f"recorded {expected[0][:16]}... ({path.parent / CHECKSUMS}). Restore it from a backup, or delete it to "
            "train again; it is never loaded as it is."
        )
    return True


def _tensors_only_load(
    path: Path, map_location: str | torch.device = "cpu", mmap: bool = False, context: str = "", fix: str = ""
) -> object:
    """``torch.load(weights_only=True)``, its failures turned into :class:`ForeignCheckpointError` naming ``path``
    (after ``context``, and with ``fix`` in place of the default advice).

    torch's own message ends with advice to load the file with code execution enabled; it is not passed on (the
    error is raised ``from None``): a file that holds other objects than tensors is refused, never run."""
    try:
        # mmap reads no tensor data (a cheap check); only the zip format written by torch.save supports it
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except OSError as err:
        if err.errno is not None:  # the system could not read it (permissions, I/O): its own message says so
            raise
        reason = f"cannot be read as a PyTorch checkpoint ({type(err).__name__})"
    except Exception as err:  # the unpickler raises many types for files it refuses or cannot parse
        text = str(err)
        if "Weights only load failed" in text or isinstance(err, pickle.UnpicklingError) and "GLOBAL" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
            if found:
                what = f"holds pickled objects other than tensors ({found.group(1)})"
            else:
                what = "holds pickled data that is not only tensors" + (f" ({detail.group(1)[:120]})" if detail else "")
            reason = f"{what}, which a checkpoint written by fpt_monai never does. It was not loaded: nothing in it ran"
        else:
            reason = (
                f"cannot be read as a PyTorch checkpoint ({type(err).__name__}: {(text.splitlines() or [''])[0][:120]})"
            )
    fix = fix or (
        f"Use the {path.name} that training wrote (restore it from the training's output or a backup), or train again"
    )
    raise ForeignCheckpointError(
        f"{context}{path}: not a checkpoint written by fpt_monai: it {reason}. {fix}."
    ) from None


def verify_checkpoint(path: str | os.PathLike) -> bool:
    """Check ``path`` against ``checksums.json`` and that it holds only tensors and plain containers.

    Raises :class:`CorruptCheckpointError` on a checksum mismatch and :class:`ForeignCheckpointError` for a file that
    ``torch.load(weights_only=True)`` refuses (pickled objects: nothing in it is run) or cannot read. Returns
    ``False`` (and warns) for a file without a checksum record, e.g. one written by other tools."""
    path = Path(path)
    recorded = _check_checksum(path)
    _tensors_only_load(path, mmap=True)
    return recorded


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", context: str = "", fix: str = ""
) -> object:
    """The checksum check of :func:`verify_checkpoint`, then ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint.
        map_location: where the tensors go.
        context: words before the file's name in the error of a file that is not a checkpoint.
        fix: the advice of that error (default: use the file training wrote, or train again).

    Raises:
        CorruptCheckpointError: ``path`` differs from its recorded checksum.
        ForeignCheckpointError: ``path`` holds other objects than tensors (never run) or is not a torch file.
    """
    path = Path(path)
    _check_checksum(path)
    return _tensors_only_load(path, map_location=map_location, context=context, fix=fix)


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
        tie_metric: validation metric (lower is better) that breaks ties of ``key_metric``, e.g. ``"val_loss"``: with
            a small validation split several epochs often reach the same AUC (1.0), and the first of them is rarely
            the best model. ``None`` keeps the first. Defaults to ``None``.
        resume: restore from ``last.pt`` when the trainer starts, if it exists. Defaults to ``True``.
        averager: a :class:`~fpt_monai.engines.weight_averaging.WeightAveraging` of ``network`` (EMA/SWA), attached to
            the trainer with this checkpointer: ``last.pt`` holds the raw weights and its average (restored on
            resume), ``model_final.pt`` the averaged weights; ``model.pt`` holds the weights validated, which it
            makes the averaged ones. ``None`` or its mode ``none``: no averaging. Defaults to ``None``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: object | None = None,
        validator: Engine | None = None,
        key_metric: str = "val_auc",
        tie_metric: str | None = None,
        resume: bool = True,
        averager: WeightAveraging | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.validator = validator
        self.key_metric = key_metric
        self.resume = resume
        self.tie_metric = tie_metric
        self.averager = averager
        self.best_metric = -math.inf
        self.best_tie = math.inf
        self.best_epoch = -1
        # the first epoch that reached best_metric and its tie_metric: a later best_epoch won the tie on tie_metric
        self.best_first_epoch = -1
        self.best_first_tie = math.inf
        self.trainer: Engine | None = None
        self._before_save: list[Callable[[Engine], None]] = []

    @property
    def last_path(self) -> Path:
        return self.save_dir / "last.pt"

    @property
    def _averaging(self) -> WeightAveraging | None:
        return self.averager if self.averager is not None and self.averager.enabled else None

    @property
    def _model(self) -> torch.nn.Module:
        net = self.network
        return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        if self._averaging is not None:
            self._averaging.attach(engine)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load_last)
        if self.validator is not None:
            if self._shares_best(self.validator):
                # MONAI compares the key metric (its "Got new best metric" line and state.best_metric_epoch) on the
                # validator's EPOCH_COMPLETED before the validation handlers run (its StatsHandler prints the best
                # there), and this checkpointer's update_best runs after them: MONAI's comparison asks ours, so its
                # state names model.pt's epoch in the same epoch, a tie won on tie_metric included
                self.validator.metric_cmp_fn = self._monai_metric_cmp
                self._sync_validator_best()
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self.update_best)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_last)
        engine.add_event_handler(Events.COMPLETED, self.save_final)

    def _shares_best(self, validator: Engine) -> bool:
        """Whether ``validator`` is a MONAI workflow that tracks the best of this checkpointer's key metric."""
        return (
            hasattr(validator, "metric_cmp_fn") and getattr(validator.state, "key_metric_name", None) == self.key_metric
        )

    def _sync_validator_best(self) -> None:
        """The validator's ``state.best_metric`` / ``best_metric_epoch`` set to this checkpointer's best."""
        if self.validator is None or not self._shares_best(self.validator):
            return
        state = self.validator.state
        state.best_metric = self.best_metric
        # no best yet: epoch 0, not MONAI's -1, which takes the next value unasked (NaN included, never a model.pt)
        state.best_metric_epoch = max(self.best_epoch, 0)

    def _candidate(self, validator: Engine) -> tuple[float, float]:
        """The validation's ``(key_metric, tie_metric)``; a NaN tie metric never wins a tie."""
        value = validator.state.metrics.get(self.key_metric)
        if value is None:
            raise KeyError(f"validation metric {self.key_metric!r} not found; have {sorted(validator.state.metrics)}")
        tie = math.inf
        if self.tie_metric is not None:
            if self.tie_metric not in validator.state.metrics:
                raise KeyError(
                    f"validation metric {self.tie_metric!r} (tie_metric) not found; "
                    f"have {sorted(validator.state.metrics)}"
                )
            tie = float(validator.state.metrics[self.tie_metric])
            tie = math.inf if math.isnan(tie) else tie
        return float(value), tie

    def _is_better(self, value: float, tie: float) -> bool:
        if math.isnan(value):
            return False
        return value > self.best_metric or (value == self.best_metric and tie < self.best_tie)

    def _monai_metric_cmp(self, current: object, best: object) -> bool:
        """MONAI's ``metric_cmp_fn(current, best)`` of the validator, answered by :meth:`_is_better` (``best`` is
        the validator's copy of this checkpointer's)."""
        return self._is_better(*self._candidate(self.validator))

    def update_best(self, validator: Engine) -> None:
        value, tie = self._candidate(validator)
        if self._is_better(value, tie):
            won_tie = value == self.best_metric
            self.best_metric = value
            self.best_tie = tie
            self.best_epoch = self.trainer.state.epoch if self.trainer is not None else validator.state.epoch
            if not won_tie:
                self.best_first_epoch, self.best_first_tie = self.best_epoch, tie
            if _is_main_process():
                atomic_torch_save(self._model.state_dict(), self.save_dir / "model.pt")
                tie_note = f", {self.tie_metric} {tie:.4f}" if self.tie_metric is not None else ""
                why = "the best so far"
                if won_tie:
                    why += (
                        f"; {self.key_metric} ties epoch {self.best_first_epoch}'s, "
                        f"tie broken by the lower {self.tie_metric}"
                    )
                validator.logger.info(
                    f"model.pt <- epoch {self.best_epoch}: {self.key_metric} {value:.4f}{tie_note} ({why})"
                )
        self._sync_validator_best()

    def add_before_save(self, callback: Callable[[Engine], None]) -> None:
        """Call ``callback(trainer)`` at the end of every epoch just before ``last.pt`` is written (on the process
        that writes it), after the epoch's validation: what it commits is never behind the checkpoint a resumed
        training starts from (e.g. the MLflow curve points of :func:`fpt_monai.engines.configure_mlflow`)."""
        self._before_save.append(callback)

    def save_last(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        for callback in self._before_save:
            callback(engine)
        averaging = self._averaging
        with averaging.raw() if averaging is not None else nullcontext():  # training resumes from the raw weights
            network_state = self._model.state_dict()
        state = {
            "network": network_state,
            "trainer": {
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "epoch_length": engine.state.epoch_length,
            },
            "best_metric": self.best_metric,
            "best_tie": self.best_tie,
            "best_epoch": self.best_epoch,
            "best_first_epoch": self.best_first_epoch,
            "best_first_tie": self.best_first_tie,
            "key_metric": self.key_metric,
            "tie_metric": self.tie_metric,
        }
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if averaging is not None:
            state["weight_averaging"] = averaging.state_dict()
        atomic_torch_save(state, self.last_path)

    def save_final(self, engine: Engine) -> None:
        if _is_main_process():
            averaging = self._averaging
            with averaging.averaged() if averaging is not None else nullcontext():
                atomic_torch_save(self._model.state_dict(), self.save_dir / "model_final.pt")

    def _load_averaging(self, state: dict) -> None:
        """The average of ``last.pt`` restored into the averager; a change of ``weight_averaging`` is refused (the
        resumed training would not be the one started)."""
        averaging = self._averaging
        recorded = state.get("weight_averaging")
        saved_mode = recorded.get("mode", "none") if isinstance(recorded, dict) else "none"
        mode = averaging.mode if averaging is not None else "none"
        if saved_mode != mode:
            raise RuntimeError(
                f"cannot resume from {self.last_path}: it was trained with weight_averaging {saved_mode}, this "
                f"training uses {mode}. Resume with --weight_averaging {saved_mode}, or move it away to start from "
                "scratch."
            )
        if averaging is not None:
            try:
                averaging.load_state_dict(recorded)
            except ValueError as err:
                raise RuntimeError(f"cannot resume from {self.last_path}: {err}") from err

    def load_last(self, engine: Engine) -> None:
        if not self.last_path.is_file():
            return
        try:
            state = load_checkpoint(
                self.last_path, context="cannot resume from ", fix="Move it away to start from scratch"
            )
            self._model.load_state_dict(state["network"])
        except CorruptCheckpointError:
            raise
        except Exception as err:
            raise RuntimeError(
                f"cannot resume from {self.last_path} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); it is "
                "corrupt or from another model. Move it away to start from scratch."
            ) from err
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self._load_averaging(state)
        self.best_metric = float(state["best_metric"])
        self.best_tie = float(state.get("best_tie", math.inf))
        self.best_epoch = int(state["best_epoch"])
        # a last.pt of an older version has no first epoch: the tie history is unknown, best_epoch stands for it
        self.best_first_epoch = int(state.get("best_first_epoch", self.best_epoch))
        self.best_first_tie = float(state.get("best_first_tie", self.best_tie))
        self._sync_validator_best()
        trainer_state = state["trainer"]
        engine.state.epoch = int(trainer_state["epoch"])
        engine.state.iteration = int(trainer_state["iteration"])
        engine.logger.info(
            f"resumed from {self.last_path}: epoch {engine.state.epoch}, best {self.key_metric} "
            f"{self.best_metric:.4f} (epoch {self.best_epoch})"
        )
