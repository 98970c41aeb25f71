# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Pieces of the reference training recipe (spec §2.1-2.2): class-balanced loss weights, the per-iteration cosine
schedule with warm-up, and gradient-norm clipping as an Ignite handler."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = [
    "GradientClipHandler",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "class_weights",
    "warmup_cosine_schedule",
]


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``n / (C * n_c)`` per class (scikit-learn's "balanced"), for ``CrossEntropyLoss(weight=...)``.

    The reference's ``loss_weight: balance`` is assigned to a wrapper and never reaches the loss (spec §6.12); these
    weights are passed to the loss itself.

    Raises:
        ValueError: a class without any sample, or labels out of range.
    """
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"labels go up to {len(counts) - 1} but num_classes is {num_classes}.")
    if (counts == 0).any():
        raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no training sample.")
    return counts.sum() / (num_classes * counts.float())


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The reference schedule, stepped every iteration: linear warm-up for ``warmup_epochs``, then
    ``0.5 * (1 + cos(pi * (t - w) / (E - w)))`` down to 0 at the end (``t`` in fractional epochs)."""
    if epochs < 1 or steps_per_epoch < 1 or not 0 <= warmup_epochs < epochs:
        raise ValueError(
            f"invalid schedule: epochs={epochs}, steps_per_epoch={steps_per_epoch}, warmup_epochs={warmup_epochs}."
        )

    def factor(step: int) -> float:
        t = step / steps_per_epoch
        if t < warmup_epochs:
            return t / warmup_epochs
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (t - warmup_epochs) / (epochs - warmup_epochs))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GradientClipHandler:
    """Clip the gradient norm after ``backward`` and before the optimizer step of a MONAI ``SupervisedTrainer``
    (reference: ``clip_grad_norm_(model.parameters(), 1.0)`` every step). Unscales first under AMP.

    Args:
        max_norm: the norm to clip to. Defaults to 1.0.
    """

    def __init__(self, max_norm: float = 1.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}.")
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        engine.state.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm))


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss:
    """Stop training with :class:`NonFiniteLossError` when the loss is NaN or infinite, before ``backward``: the
    weights are not touched, and the checkpoints of the last completed epoch stay the last good state.

    Ignite's ``TerminateOnNan`` ends the run quietly, which would still fire ``COMPLETED`` (and save the final
    weights); this handler raises, so the run fails loudly and nothing more is saved.

    Args:
        checkpoint_dir: named in the message (where the last good ``last.pt`` is).
    """

    def __init__(self, checkpoint_dir: str | None = None) -> None:
        self.checkpoint_dir = checkpoint_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output.get("loss") if isinstance(engine.state.output, dict) else None
        if loss is None or bool(torch.isfinite(torch.as_tensor(loss)).all()):
            return
        batch = engine.state.batch
        ids = batch.get("id") if isinstance(batch, dict) else None
        where = f" {self.checkpoint_dir}/last.pt" if self.checkpoint_dir else " last.pt"
        raise NonFiniteLossError(
            f"training loss is {float(torch.as_tensor(loss).float().mean())} at epoch {engine.state.epoch}, iteration "
            f"{engine.state.iteration}{f' (batch {list(ids)[:8]})' if ids is not None else ''}; stopped before this "
            f"step changed the weights. The last good state is{where} (the last completed epoch), and a rerun "
            "resumes from it. Lower learning_rate, check these images, or disable AMP."
        )
