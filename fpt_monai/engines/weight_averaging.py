# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Averaged weights for a MONAI ``SupervisedTrainer``: an exponential moving average or stochastic weight averaging.

- ``ema``: an exponential moving average of the weights, updated after every optimizer step (Polyak & Juditsky,
  "Acceleration of stochastic approximation by averaging", SIAM J. Control Optim. 1992). The decay is warmed up as in
  timm's ``ModelEmaV3`` (``min(ema_decay, 1 - (1 + n) ** -3/4)`` at the ``n``-th update), so that the random start
  of a short training (a few hundred steps) does not linger in the average;
- ``swa``: the equal average of the weights at the end of each epoch from ``swa_start_epoch`` on (Izmailov et al.,
  "Averaging weights leads to wider optima and better generalization", UAI 2018);
- ``none``: nothing is attached; the training is exactly the one without this handler.

The update arithmetic is ``torch.optim.swa_utils``' (``get_ema_multi_avg_fn``, ``get_swa_multi_avg_fn``), applied to
the trainable parameters and the floating-point buffers of the trainable part (BatchNorm statistics, as
``AveragedModel(use_buffers=True)``): ``AveragedModel`` would deep-copy the whole network, the frozen model included.

Every validation during training evaluates the averaged weights: they are copied into the network when the validator
starts and the raw training weights are copied back when it completes, so the validation metrics, the
:class:`~fpt_monai.engines.FPTCheckpointer`'s choice of ``model.pt`` and the operating point chosen on it all see the
averaged weights, while training continues from exactly the raw ones. Given to the checkpointer (its ``averager``),
``last.pt`` holds the raw weights and the average (with its count), so a resumed training ends exactly as an
uninterrupted one, and ``model_final.pt`` holds the final average; the network itself holds it when training ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_multi_avg_fn

__all__ = [
    "EMA_WARMUP_POWER",
    "WEIGHT_AVERAGING_MODES",
    "WeightAveraging",
    "check_weight_averaging",
    "default_swa_start_epoch",
]

WEIGHT_AVERAGING_MODES = ("none", "ema", "swa")
# timm ModelEmaV3's warm-up (after @crowsonkb): inv_gamma 1, power 3/4 "for models you plan to train for less" than
# a million steps; the decay reaches 0.99 after ~460 updates and 0.998 after ~4,000
EMA_WARMUP_POWER = 0.75

logger = logging.getLogger(__name__)


def default_swa_start_epoch(epochs: int) -> int:
    """The first epoch of the last third of ``epochs`` (30 -> 21, 20 -> 14, 1 -> 1)."""
    return epochs - math.ceil(epochs / 3) + 1


def check_weight_averaging(
    mode: str = "none", ema_decay: float = 0.998, swa_start_epoch: int | None = None, epochs: int | None = None
) -> dict:
    """Check the bundle's averaging settings and return them resolved (``swa_start_epoch`` filled in for ``swa``).

    Args:
        mode: ``none``, ``ema`` or ``swa`` (the bundle's ``weight_averaging``).
        ema_decay: the EMA's decay per optimizer step, in (0, 1) (e.g. 0.998).
        swa_start_epoch: the first epoch averaged by SWA, 1 to ``epochs``; ``None``: the last third of the epochs.
        epochs: the training's epochs (needed to check or fill in ``swa_start_epoch``).

    Returns:
        ``{"mode", "ema_decay", "swa_start_epoch"}``; ``swa_start_epoch`` is ``None`` unless ``mode`` is ``swa``.

    Raises:
        ValueError: an unknown mode, a decay outside (0, 1), a start epoch outside 1..epochs; the message names the
            bundle setting.
    """
    mode = str(mode).strip().lower()
    if mode not in WEIGHT_AVERAGING_MODES:
        raise ValueError(
            f"weight_averaging: {mode!r} is not one of {', '.join(WEIGHT_AVERAGING_MODES)}; set --weight_averaging "
            "none (the raw weights), ema (a moving average every step) or swa (the mean of the epoch-end weights)."
        )
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 < ema_decay < 1.0:
        raise ValueError(
            f"ema_decay: {ema_decay!r} must be a number in (0, 1), the weight of the average kept at each step "
            "(e.g. --ema_decay 0.998)."
        )
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs: {epochs!r} must be a positive integer.")
    start = None
    if mode == "swa":
        if swa_start_epoch is None:
            # without the epochs (a handler before it is attached) the start is filled in later
            start = None if epochs is None else default_swa_start_epoch(epochs)
        else:
            if isinstance(swa_start_epoch, bool) or not isinstance(swa_start_epoch, int) or swa_start_epoch < 1:
                raise ValueError(
                    f"swa_start_epoch: {swa_start_epoch!r} must be an epoch number from 1 (or null: the last third)."
                )
            if epochs is not None and swa_start_epoch > epochs:
                raise ValueError(
                    f"swa_start_epoch: {swa_start_epoch} is beyond the training's {epochs} epochs, so SWA would "
                    f"average nothing; set --swa_start_epoch to at most {epochs} (or null: epoch "
                    f"{default_swa_start_epoch(epochs)}, the last third)."
                )
            start = swa_start_epoch
    return {"mode": mode, "ema_decay": float(ema_decay), "swa_start_epoch": start}


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def _grouped(*lists: list[torch.Tensor]) -> Iterator[tuple[list[torch.Tensor], ...]]:
    """The parallel ``lists`` split by device and dtype (torch's ``_foreach`` kernels take one of each)."""
    groups: dict[tuple, tuple[list[torch.Tensor], ...]] = {}
    for items in zip(*lists, strict=True):
        group = groups.setdefault((items[0].device, items[0].dtype), tuple([] for _ in lists))
        for bucket, item in zip(group, items, strict=True):
            bucket.append(item)
    yield from groups.values()


class WeightAveraging:
    """An Ignite handler keeping averaged weights of ``network`` (EMA or SWA) that validation and the saved models use.

    Give it to the :class:`~fpt_monai.engines.FPTCheckpointer` as ``averager`` (the bundle does): the checkpointer
    attaches it to the trainer and ``last.pt`` holds its state. Without a checkpointer, attach it to the trainer. Its
    place among the handlers does not matter: SWA folds an epoch's end weights in at the first of the trainer's epoch
    end, the validator's start or the checkpointer's save, and validation swaps the average in at its start. The
    handler only copies tensors: the raw weights, the optimizer and the random numbers follow the same course as
    without it.

    Args:
        network: the trained network (a ``DistributedDataParallel`` is unwrapped). What is averaged: its parameters
            that require gradients and the floating-point buffers of its ``state_dict`` (FPT's holds only the
            trainable part); frozen parameters are not.
        mode: ``"none"`` (attach nothing), ``"ema"`` or ``"swa"``. Defaults to ``"none"``.
        ema_decay: the EMA's decay per optimizer step, in (0, 1). Defaults to 0.998.
        swa_start_epoch: SWA's first averaged epoch; ``None``: the last third of the trainer's epochs.
            Defaults to ``None``.
        validator: the evaluator run during training (e.g. by ``ValidationHandler``): it evaluates the averaged
            weights. ``None``: validation sees the raw weights. Defaults to ``None``.
        ema_warmup: warm the EMA's decay up (``min(ema_decay, 1 - (1 + n) ** -0.75)`` at update ``n``); ``False``
            uses ``ema_decay`` from the second update on. Defaults to ``True``.

    Raises:
        ValueError: a setting :func:`check_weight_averaging` refuses (at construction, and ``swa_start_epoch``
            against the trainer's epochs when attached).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        mode: str = "none",
        ema_decay: float = 0.998,
        swa_start_epoch: int | None = None,
        validator: Engine | None = None,
        ema_warmup: bool = True,
    ) -> None:
        options = check_weight_averaging(mode, ema_decay, swa_start_epoch)
        self.network = network
        self.mode = options["mode"]
        self.ema_decay = options["ema_decay"]
        self.swa_start_epoch = options["swa_start_epoch"]
        self.validator = validator
        self.ema_warmup = bool(ema_warmup)
        self.n_averaged = 0
        self.trainer: Engine | None = None
        self._averaged: dict[str, torch.Tensor] = {}
        self._tracked_cache: dict[str, torch.Tensor] | None = None
        self._raw: list[torch.Tensor] | None = None  # the raw weights while the averaged ones are in the network
        self._updated_epoch = 0  # SWA: the last epoch whose end weights are in the average

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def attach(self, engine: Engine) -> None:
        if not self.enabled or self.trainer is engine:  # attached once (by the checkpointer, or directly)
            return
        if self.trainer is not None:
            raise RuntimeError("a WeightAveraging handler averages one trainer's network; build one per trainer.")
        self.trainer = engine
        if self.mode == "swa":
            checked = check_weight_averaging("swa", self.ema_decay, self.swa_start_epoch, engine.state.max_epochs)
            self.swa_start_epoch = checked["swa_start_epoch"]
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.STARTED, self._validation_started)
            self.validator.add_event_handler(Events.COMPLETED, self._validation_completed)

    # --- what is averaged ---------------------------------------------------------------------------------------

    def _tracked(self) -> dict[str, torch.Tensor]:
        """Name -> the network's tensor, for every averaged tensor (found once per run: ``module.to`` after training
        started would replace the buffers)."""
        if self._tracked_cache is None:
            tracked, seen = {}, set()
            for name, tensor in _unwrap(self.network).state_dict(keep_vars=True).items():
                frozen = isinstance(tensor, torch.nn.Parameter) and not tensor.requires_grad
                if frozen or not torch.is_floating_point(tensor) or id(tensor) in seen:
                    continue
                seen.add(id(tensor))  # tied weights are averaged once
                tracked[name] = tensor
            if not tracked:
                raise ValueError(f"weight_averaging: {self.mode}, but the network has no trainable weights to average.")
            self._tracked_cache = tracked
        return self._tracked_cache

    def describe(self) -> str:
        tracked = self._tracked()
        params = sum(isinstance(t, torch.nn.Parameter) for t in tracked.values())
        values = sum(t.numel() for t in tracked.values())
        if self.mode == "ema":
            how = f"EMA (decay {self.ema_decay:g} per step{', warmed up' if self.ema_warmup else ''})"
        else:
            how = f"SWA (the mean of the epoch-end weights from epoch {self.swa_start_epoch} on)"
        return (
            f"weight averaging: {how} of {values:,} values in {params} trainable parameter tensors and "
            f"{len(tracked) - params} buffers (frozen weights excluded); validation, model.pt and model_final.pt use "
            "the averaged weights, training continues from the raw ones"
        )

    # --- updates ------------------------------------------------------------------------------------------------

    def ema_decay_at(self, n: int) -> float:
        """The decay of the update that follows ``n`` earlier ones (0 for the first: it copies the weights)."""
        if n <= 0:
            return 0.0
        if not self.ema_warmup:
            return self.ema_decay
        return min(self.ema_decay, 1.0 - (1.0 + n) ** -EMA_WARMUP_POWER)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the network's current (raw) weights into the average."""
        if self._raw is not None:
            raise RuntimeError("weight averaging: update while the averaged weights are in the network.")
        tracked = self._tracked()
        if self.n_averaged == 0 or not self._averaged:
            self._averaged = {name: t.detach().clone() for name, t in tracked.items()}
        else:
            names = list(tracked)
            if self.mode == "ema":
                fn = get_ema_multi_avg_fn(self.ema_decay_at(self.n_averaged))
            else:
                fn = get_swa_multi_avg_fn()
            averaged = [self._averaged[n] for n in names]
            current = [tracked[n].detach() for n in names]
            for avg_group, cur_group in _grouped(averaged, current):
                fn(avg_group, cur_group, self.n_averaged)
        self.n_averaged += 1

    def _iteration_completed(self, engine: Engine) -> None:
        self.update()

    def _epoch_done(self) -> bool:
        """Whether the trainer stands at the end of an epoch it has not yet folded into the SWA average."""
        state = self.trainer.state if self.trainer is not None else None
        if state is None or self.mode != "swa" or state.epoch < self.swa_start_epoch:
            return False
        at_end = state.epoch_length is None or state.iteration >= state.epoch * state.epoch_length
        return at_end and state.epoch > self._updated_epoch

    def _catch_up(self) -> None:
        """SWA: the current epoch's end weights folded in once, whichever handler (the trainer's epoch end, the
        validator's start, the checkpointer's save) comes first."""
        if self._epoch_done():
            self.update()
            self._updated_epoch = self.trainer.state.epoch

    def _epoch_completed(self, engine: Engine) -> None:
        self._catch_up()

    # --- swapping the averaged weights in and out ---------------------------------------------------------------

    @torch.no_grad()
    def swap_in(self) -> None:
        """Copy the averaged weights into the network, keeping the raw ones (no-op before the first update)."""
        if self._raw is not None or not self._averaged:
            return
        tracked = self._tracked()
        self._raw = [t.detach().clone() for t in tracked.values()]
        for name, tensor in tracked.items():
            tensor.detach().copy_(self._averaged[name])

    @torch.no_grad()
    def swap_out(self) -> None:
        """Copy the raw weights back into the network (no-op when they are in it)."""
        if self._raw is None:
            return
        for tensor, raw in zip(self._tracked().values(), self._raw, strict=True):
            tensor.detach().copy_(raw)
        self._raw = None

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """The averaged weights in the network within the block (as they were after it)."""
        was_in = self._raw is not None
        self.swap_in()
        try:
            yield
        finally:
            if not was_in:
                self.swap_out()

    @contextmanager
    def raw(self) -> Iterator[None]:
        """The raw training weights in the network within the block (as they were after it)."""
        was_in = self._raw is not None
        self.swap_out()
        try:
            yield
        finally:
            if was_in:
                self.swap_in()

    def _started(self, engine: Engine) -> None:
        self._tracked_cache = None
        self.swap_out()  # a second run of the same trainer continues from the raw weights
        logger.info("%s", self.describe())

    def _validation_started(self, validator: Engine) -> None:
        self._catch_up()
        self.swap_in()

    def _validation_completed(self, validator: Engine) -> None:
        self.swap_out()

    def _completed(self, engine: Engine) -> None:
        self._catch_up()
        self.swap_in()  # the trained network holds the final average, as model_final.pt

    # --- checkpoints --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The average and its count for ``last.pt`` (SWA: the current epoch's end weights folded in first)."""
        self._catch_up()
        return {
            "mode": self.mode,
            "n_averaged": self.n_averaged,
            "updated_epoch": self._updated_epoch,
            "ema_decay": self.ema_decay,
            "swa_start_epoch": self.swa_start_epoch,
            "averaged": {name: t.detach().clone() for name, t in self._averaged.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`'s average (the network's raw weights are loaded by the caller)."""
        if state.get("mode") != self.mode:
            raise ValueError(
                f"the checkpoint's weights were averaged with weight_averaging {state.get('mode')!r}, this training "
                f"uses {self.mode!r}; resume with the same setting, or move last.pt away to start from scratch."
            )
        self._raw = None  # the caller loaded the raw weights into the network
        self._tracked_cache = None
        tracked = self._tracked()
        averaged = dict(state.get("averaged") or {})
        if averaged and set(averaged) != set(tracked):
            missing, extra = sorted(set(tracked) - set(averaged)), sorted(set(averaged) - set(tracked))
            raise ValueError(
                f"the checkpoint's averaged weights are not this network's (missing {missing[:5]}, unexpected "
                f"{extra[:5]}); move last.pt away to start from scratch."
            )
        self._averaged = {
            name: value.to(device=tracked[name].device, dtype=tracked[name].dtype).clone()
            for name, value in averaged.items()
        }
        self.n_averaged = int(state.get("n_averaged", 0)) if self._averaged else 0
        self._updated_epoch = int(state.get("updated_epoch", 0))
