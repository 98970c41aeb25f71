# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The store-based linear probe's weight decay and learning rate, chosen on the validation split.

A preset tuned on one dataset makes the probe a straw man on another: weight decay 5 (chosen on ISIC) under-fitted a
120-image breast-ultrasound set (train accuracy 0.70, test AUC 0.755, where weight decay 0.1 reached 0.872). The
probe trains from the stored pooled features in a fraction of a second per setting, so the bundle trains copies of
it for every point of a small grid, with its own recipe (AdamW on the trainable parameters, the warm-up cosine
schedule stepped per iteration, gradient clipping, the batch size and the epochs), and keeps the setting with the
highest validation AUC. The test split is never read.

:func:`choose_probe_settings` writes the table of every setting to ``models/probe_selection.json``; a training
that resumes (or an evaluation merged over the same preset) finds the choice there, made on the same data with the
same settings, and reuses it instead of searching again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from fpt_monai.engines.metrics import classification_metrics
from fpt_monai.engines.training import warmup_cosine_schedule
from fpt_monai.utils.atomic import atomic_write_text

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_WEIGHT_DECAYS",
    "PROBE_SELECTION_FORMAT",
    "choose_probe_settings",
    "recorded_probe_choice",
]

logger = logging.getLogger(__name__)

PROBE_SELECTION_FORMAT = "fpt_monai.probe_selection"
_VERSION = 1
# AdamW's decoupled decay shrinks the weights by lr * wd per step: the grid spans from almost none (0.01) to the
# ISIC preset (5) and beyond (20); lr * wd stays below 0.2, so no step shrinks a weight by more than a fifth.
DEFAULT_WEIGHT_DECAYS = (0.01, 0.1, 1.0, 5.0, 20.0)
# The probe sees standardised features (its BatchNorm): 1e-2 was chosen on most ISIC folds (docs/benchmarks.md),
# 1e-4 (FPT's rate) suits longer trainings, and a few hundred items give only a few hundred steps in all.
DEFAULT_LEARNING_RATES = (1e-4, 1e-3, 1e-2)
_AUTO = "auto"
_CRITERION = (
    "validation AUC (macro one-vs-rest for more than two classes) after the last epoch; ties: the lower validation "
    "cross-entropy, then the larger weight decay, then the smaller learning rate"
)


def _setting(value: float | str | None, name: str) -> float | None:
    """``None`` for ``"auto"`` (or ``None``), else the number (a number given as text from the CLI included)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == _AUTO):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number or 'auto' (choose it on the validation split), got {value!r}."
        ) from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return number


def _grid(values: Sequence[float] | float, name: str, setting: str) -> list[float]:
    values = [values] if isinstance(values, (int, float, str)) else list(values)
    if not values:
        raise ValueError(
            f"{name} is empty: give at least one value to choose from, or a number for {setting} (no search)."
        )
    out: list[float] = []
    for v in values:
        number = _setting(v, name)
        if number is None:
            raise ValueError(f"{name} holds {v!r}; give numbers.")
        if number not in out:
            out.append(number)
    return out


def _check_item(item: Any, split: str) -> tuple[str, int]:
    if not isinstance(item, Mapping) or "id" not in item or "label" not in item:
        raise ValueError(
            f"every {split} item needs an 'id' (its key in the feature store) and a 'label'; got {item!r}. Build the "
            "datalist with fpt_monai.data (it writes both)."
        )
    return str(item["id"]), int(item["label"])


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _unwrap(network: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (their copies would not train alone)."""
    return network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network


def _json_number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _rank_key(row: Mapping) -> tuple:
    """Larger is better: AUC, then lower loss, then larger weight decay, then smaller learning rate (NaN: worst)."""
    auc = row["val_auc"] if row["val_auc"] is not None else -math.inf
    loss = row["val_loss"] if row["val_loss"] is not None else math.inf
    return (auc, -loss, row["weight_decay"], -row["learning_rate"])


def _rows(points: list[tuple[float, float]], val: list[dict], train: list[dict]) -> list[dict[str, float | None]]:
    nan = math.nan
    return [
        {
            "weight_decay": wd,
            "learning_rate": lr,
            **{
                f"{split}_{name}": _json_number(m.get(name, nan))
                for split, m in (("val", v), ("train", t))
                for name in ("auc", "loss", "acc")
            },
        }
        for (lr, wd), v, t in zip(points, val, train, strict=True)
    ]


def _schedule(epochs: int, steps: int, warmup_epochs: float) -> list[float]:
    """The lr factor of every step of :func:`warmup_cosine_schedule` (stepped after each optimizer step)."""
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine_schedule(dummy, epochs, steps, warmup_epochs)
    factors = []
    for _ in range(epochs * steps):
        factors.append(dummy.param_groups[0]["lr"])
        dummy.step()  # no gradient: nothing changes (PyTorch warns when the schedule steps first)
        scheduler.step()
    return factors


def _fit(
    base: nn.Module,
    data: dict[str, Any],
    points: list[tuple[float, float]],
    *,
    epochs: int,
    batch_size: int,
    grad_clip: float | None,
    warmup_epochs: float,
    loss_function: nn.Module,
    seed: int,
    device: torch.device,
) -> list[dict[str, float | None]]:
    """Train one copy of ``base`` per ``(lr, wd)`` point as the bundle's trainer does (any probe network)."""
    rows_val, rows_train = [], []
    x, y = data["x_train"], data["y_train"]
    n = len(x)
    steps = n // batch_size if n > batch_size else 1  # the bundle's DataLoader drops the last partial batch
    for lr, wd in points:
        net = copy.deepcopy(base).to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        scheduler = warmup_cosine_schedule(optimizer, epochs, steps, warmup_epochs)
        # every point sees the same batches; the global random state (the bundle's own training) is not touched
        generator = torch.Generator().manual_seed(seed)
        finite = True
        for _ in range(epochs):
            net.train()
            order = torch.randperm(n, generator=generator).to(device)
            for step in range(steps):
                idx = order[step * batch_size : (step + 1) * batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_function(net(x[idx], pooled=x[idx]), y[idx])
                if not torch.isfinite(loss):  # the bundle would stop (StopOnNonFiniteLoss): this point fails
                    finite = False
                    break
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
                optimizer.step()
                scheduler.step()
            if not finite:
                break
        net.eval()
        for rows, (xs, ys) in ((rows_val, (data["x_val"], data["y_val"])), (rows_train, (x, y))):
            if not finite:
                rows.append({})
                continue
            with torch.no_grad():
                logits = torch.cat(
                    [net(xs[i : i + batch_size], pooled=xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)]
                )
            rows.append(_metrics(logits, ys, data["num_classes"]))
    return _rows(points, rows_val, rows_train)


def _metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()
    if not np.isfinite(probs).all():
        return {}
    return classification_metrics(probs, labels.cpu().numpy(), num_classes=num_classes)


def _stackable(base: nn.Module, loss_function: nn.Module) -> bool:
    """Whether ``base`` is the bundle's probe: a feature norm without parameters, then the linear layer, trained
    with a mean cross-entropy, so that every point of the grid can train at once (:func:`_fit_stacked`)."""
    from fpt_monai.networks.baselines.pooled_probe import PooledLinearProbe

    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    return (
        type(base) is PooledLinearProbe
        and trainable == {"head.fc.weight", "head.fc.bias"}
        and not any(True for _ in base.head.norm.parameters())
        and type(loss_function) is nn.CrossEntropyLoss
        and loss_function.reduction == "mean"
    )


def _fit_stacked(
    base: nn.Module,
    data: dict[str, Any],
    points: list[tuple[float, float]],
    *,
    epochs: int,
    batch_size: int,
    grad_clip: float | None,
    warmup_epochs: float,
    loss_function: nn.Module,
    seed: int,
    device: torch.device,
) -> list[dict[str, float | None]]:
    """:func:`_fit` of the bundle's probe for all points at once: the same batches, the same feature norm (its
    statistics depend on the batches only, so one copy serves every point), one linear layer per point stacked
    ``[G, C, D]``, and AdamW (PyTorch's update, defaults betas (0.9, 0.999), eps 1e-8) with per-point lr and weight
    decay and per-point gradient clipping. One step costs what a single point's costs; the tests check it against
    :func:`_fit`."""
    head = base.head
    norm = copy.deepcopy(head.norm).to(device)
    g = len(points)
    weight = head.fc.weight.detach().to(device).unsqueeze(0).repeat(g, 1, 1).requires_grad_()
    bias = head.fc.bias.detach().to(device).unsqueeze(0).repeat(g, 1).requires_grad_()
    lrs = torch.tensor([lr for lr, _ in points], dtype=weight.dtype, device=device)
    wds = torch.tensor([wd for _, wd in points], dtype=weight.dtype, device=device)
    moments = {p: (torch.zeros_like(p), torch.zeros_like(p)) for p in (weight, bias)}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    failed = torch.zeros(g, dtype=torch.bool, device=device)
    x, y = data["x_train"], data["y_train"]
    n = len(x)
    steps = n // batch_size if n > batch_size else 1
    factors = _schedule(epochs, steps, warmup_epochs)
    generator = torch.Generator().manual_seed(seed)
    t = 0
    for _ in range(epochs):
        norm.train()
        order = torch.randperm(n, generator=generator).to(device)
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            with torch.no_grad():
                z = norm(x[idx].to(weight.dtype))
            logits = torch.einsum("bd,gcd->gbc", z, weight) + bias[:, None, :]
            failed |= ~torch.isfinite(logits).flatten(1).all(1)
            logits = torch.where(failed[:, None, None], torch.zeros_like(logits), logits)
            # a mean loss over the G x B rows, times G: the sum of the points' own losses (each label once per point)
            loss = loss_function(logits.flatten(0, 1), y[idx].repeat(g)) * g
            grads = torch.autograd.grad(loss, (weight, bias))
            with torch.no_grad():
                if grad_clip:
                    total = (grads[0].square().sum((1, 2)) + grads[1].square().sum(1)).sqrt()
                    coef = (grad_clip / (total + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
                    grads = (grads[0] * coef[:, None, None], grads[1] * coef[:, None])
                t += 1
                lr = lrs * factors[t - 1]
                for p, grad in zip((weight, bias), grads, strict=True):
                    shape = (g,) + (1,) * (p.dim() - 1)
                    exp_avg, exp_avg_sq = moments[p]
                    p.mul_(1 - (lr * wds).view(shape))
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                    p.sub_((lr / (1 - beta1**t)).view(shape) * exp_avg / denom)
    norm.eval()
    out = {}
    with torch.no_grad():
        for split, xs in (("val", data["x_val"]), ("train", x)):
            z = norm(xs.to(weight.dtype))
            out[split] = torch.einsum("nd,gcd->gnc", z, weight) + bias[:, None, :]
    val, train = [], []
    for i in range(g):
        bad = bool(failed[i])
        val.append({} if bad else _metrics(out["val"][i], data["y_val"], data["num_classes"]))
        train.append({} if bad else _metrics(out["train"][i], y, data["num_classes"]))
    return _rows(points, val, train)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        logger.warning("%s: unreadable (%s); the linear probe's settings are chosen again.", path, e)
        return None
    if not isinstance(record, dict) or record.get("format") != PROBE_SELECTION_FORMAT:
        logger.warning("%s: not a probe selection record; the linear probe's settings are chosen again.", path)
        return None
    return record


def recorded_probe_choice(
    path: str | os.PathLike, weight_decay: float | str | None = None, learning_rate: float | str | None = None
) -> dict:
    """The weight decay and learning rate a trained probe's bundle chose (``models/probe_selection.json``), for
    evaluation's MLflow parameters: evaluation never searches. Values given as numbers win; a setting neither given
    nor recorded (a bundle trained before the search existed) is ``None``.

    The file is the bundle's data: only finite numbers are taken from it.
    """
    given = {"weight_decay": _setting(weight_decay, "weight_decay"), "learning_rate": _setting(learning_rate, "lr")}
    record = _read_record(Path(path)) if Path(path).is_file() else None
    chosen = record.get("chosen", {}) if isinstance(record, dict) and isinstance(record.get("chosen"), dict) else {}
    out: dict[str, Any] = {"searched": []}
    for key, value in given.items():
        stored = chosen.get(key)
        ok = isinstance(stored, (int, float)) and not isinstance(stored, bool) and math.isfinite(stored)
        out[key] = value if value is not None else (float(stored) if ok else None)
        if value is None and ok and key in (record.get("searched") or []):
            out["searched"].append(key)
    return out


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def choose_probe_settings(
    network: nn.Module,
    feature_store: Any,
    datalist: Mapping,
    *,
    weight_decay: float | str = _AUTO,
    learning_rate: float | str = _AUTO,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
    epochs: int = 20,
    batch_size: int = 16,
    grad_clip: float | None = 1.0,
    warmup_epochs: float = 0.0,
    loss_function: nn.Module | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    output_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Choose the linear probe's weight decay and learning rate on the validation split.

    Copies of ``network`` (the bundle's :class:`~fpt_monai.networks.PooledLinearProbe` built with
    ``frozen_model=False``, before training) are trained on the training split's stored pooled features for every
    grid point, with the bundle's recipe: AdamW on the trainable parameters, :func:`warmup_cosine_schedule` stepped
    every iteration, gradient-norm clipping, ``batch_size`` with the last partial batch dropped, ``epochs``; the batch
    order is seeded by ``seed`` and the same for every point. Each is scored on the validation split after its last
    epoch: the highest AUC wins; ties go to the lower validation cross-entropy, then to the larger weight decay (the
    simpler model), then to the smaller learning rate. The global random state is left as it was.

    Args:
        network: the probe network (``forward(x, pooled=features) -> logits``); never modified.
        feature_store: the :class:`~fpt_monai.data.FeatureStore` holding the pooled features of the training and
            validation items (``@feature_store``: the bundle's preload builds it first).
        datalist: with ``training`` and ``validation`` lists of items (``id``, ``label``).
        weight_decay: ``"auto"`` to choose from ``weight_decays``, or a number (no search over it).
            Defaults to ``"auto"``.
        learning_rate: ``"auto"`` to choose from ``learning_rates``, or a number. Defaults to ``"auto"``.
        weight_decays: the weight decays tried. Defaults to :data:`DEFAULT_WEIGHT_DECAYS`.
        learning_rates: the learning rates tried. Defaults to :data:`DEFAULT_LEARNING_RATES`.
        epochs: epochs per setting (the bundle's ``epochs``). Defaults to 20.
        batch_size: the bundle's batch size. Defaults to 16.
        grad_clip: maximal gradient norm, ``None`` or 0 for none. Defaults to 1.0.
        warmup_epochs: the schedule's linear warm-up. Defaults to 0.
        loss_function: the training loss (``@loss``, class weights included). Defaults to cross-entropy.
        seed: seeds the batch order. Defaults to 0.
        device: where the copies train. Defaults to the network's device.
        output_file: the JSON record (``models/probe_selection.json``), written atomically; when it already holds
            a choice made with the same grid, recipe, store settings and data, that choice is returned without a
            search. Defaults to ``None`` (nothing written, nothing reused).

    Returns:
        ``{"weight_decay", "learning_rate"}`` (what the optimizer gets), ``"searched"`` (the names chosen on
        validation), ``"chosen_on"`` (``"validation"``, or ``"given"`` when both were numbers), ``"reused"``
        (read from ``output_file``), ``"val_auc"`` of the choice and ``"table"`` (one row per setting: validation
        AUC, loss and accuracy, and training AUC, loss and accuracy after the last epoch, ``None`` where undefined).

    Raises:
        ValueError: an empty grid, a value that is not a number, ``lr * weight_decay >= 1`` (AdamW would flip the
            weights' signs), an empty or malformed split, no feature store, bad recipe values.
        MissingItemsError: the store lacks the pooled features (the message says how to add them).
    """
    from fpt_monai.data.feature_store import POOLED, MissingItemsError

    given_wd, given_lr = _setting(weight_decay, "weight_decay"), _setting(learning_rate, "learning_rate")
    wds = [given_wd] if given_wd is not None else _grid(weight_decays, "weight_decays", "weight_decay")
    lrs = [given_lr] if given_lr is not None else _grid(learning_rates, "learning_rates", "learning_rate")
    if any(v < 0 for v in wds) or any(v <= 0 for v in lrs):
        raise ValueError(f"weight decays must be >= 0 and learning rates > 0, got {wds} and {lrs}.")
    too_strong = [(lr, wd) for lr in lrs for wd in wds if lr * wd >= 1]
    if too_strong:
        raise ValueError(
            f"learning rate x weight decay must stay below 1 (AdamW shrinks the weights by lr * wd per step), got "
            f"(lr, wd) {too_strong}; lower the weight decays or learning rates."
        )
    if int(epochs) < 1 or int(batch_size) < 1 or not 0 <= float(warmup_epochs) < int(epochs):
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1 and 0 <= warmup_epochs < epochs; got epochs={epochs}, "
            f"batch_size={batch_size}, warmup_epochs={warmup_epochs}."
        )
    epochs, batch_size, warmup_epochs, seed = int(epochs), int(batch_size), float(warmup_epochs), int(seed)
    grad_clip = float(grad_clip) if grad_clip else None
    searched = [name for name, given in (("weight_decay", given_wd), ("learning_rate", given_lr)) if given is None]
    if not searched:  # nothing to choose: the record still says what the optimizer got
        logger.info("linear probe: weight decay %g and lr %g given; no search on the validation split.", wds[0], lrs[0])
        result = {"weight_decay": wds[0], "learning_rate": lrs[0], "searched": [], "chosen_on": "given"}
        result.update(reused=False, val_auc=None, table=[])
        if output_file is not None and _is_rank0():
            _write(Path(output_file), result, settings=None)
        return result

    splits: dict[str, list[tuple[str, int]]] = {}
    for split in ("training", "validation"):
        items = datalist.get(split) if isinstance(datalist, Mapping) else None
        if not items:
            raise ValueError(
                f"the datalist has no {split} items: the linear probe's weight decay and lr are chosen on the "
                f"validation split after training on the training split. Add them, or give numbers for "
                f"{' and '.join(searched)} (e.g. --weight_decay 0.1)."
            )
        splits[split] = [_check_item(item, split) for item in items]
    if feature_store is None:
        raise ValueError(
            "choosing the linear probe's weight decay and lr needs the feature store with pooled features (mode "
            "preload, store_fields [pooled], as configs/methods/linear_probe.yaml sets); got none (mode online?). "
            f"Use mode preload, or give numbers for {' and '.join(searched)} (e.g. --weight_decay 0.1)."
        )
    if not hasattr(feature_store, "get_pooled"):
        raise ValueError(f"feature_store must be a fpt_monai.data.FeatureStore, got {type(feature_store).__name__}.")
    try:
        feature_store.require_field(POOLED)
    except MissingItemsError as e:
        raise MissingItemsError(f"choosing the linear probe's weight decay and lr: {e}") from e
    base = _unwrap(network)
    num_classes = int(getattr(base, "num_classes", 0)) or 1 + max(label for s in splits.values() for _, label in s)
    loss_function = loss_function if loss_function is not None else nn.CrossEntropyLoss()
    loss_weight = getattr(loss_function, "weight", None)
    settings = {
        "weight_decays": wds,
        "learning_rates": lrs,
        "searched": searched,
        "epochs": epochs,
        "batch_size": batch_size,
        "grad_clip": grad_clip,
        "warmup_epochs": warmup_epochs,
        "seed": seed,
        "loss": {
            "class": type(loss_function).__name__,
            "weight": None if loss_weight is None else loss_weight.tolist(),
        },
        "network": {
            "class": f"{type(base).__module__}.{type(base).__qualname__}",
            "num_classes": num_classes,
            "trainable": [[n, list(p.shape)] for n, p in base.named_parameters() if p.requires_grad],
        },
        "store": {
            "settings_sha256": _digest(getattr(feature_store, "settings", None)),
            "dtype": getattr(feature_store, "dtype", None),
            "pooled_shape": list(getattr(feature_store, "field_shapes", {}).get(POOLED, ())),
        },
        "data": {
            "training": len(splits["training"]),
            "validation": len(splits["validation"]),
            "sha256": _digest({k: [list(i) for i in v] for k, v in splits.items()}),
        },
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from the record
    if output_file is not None and Path(output_file).is_file():
        record = _read_record(Path(output_file))
        if record is not None and record.get("version") == _VERSION and record.get("settings") == settings:
            chosen = record["chosen"]
            logger.info(
                "linear probe: weight decay %g, lr %g as chosen before on this validation split (%s).",
                chosen["weight_decay"],
                chosen["learning_rate"],
                output_file,
            )
            return {
                "weight_decay": float(chosen["weight_decay"]),
                "learning_rate": float(chosen["learning_rate"]),
                "searched": list(record["searched"]),
                "chosen_on": "validation",
                "reused": True,
                "val_auc": record.get("val_auc"),
                "table": record.get("table", []),
            }
        if record is not None:
            logger.info(
                "%s: made with other settings or data; the linear probe's settings are chosen again.", output_file
            )

    if _distributed():  # one search, on rank 0, shared: every rank trains with the same settings
        import torch.distributed as dist

        box = [
            _search(base, feature_store, splits, settings, wds, lrs, loss_function, device, output_file)
            if dist.get_rank() == 0
            else None
        ]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return _search(base, feature_store, splits, settings, wds, lrs, loss_function, device, output_file)


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _search(
    base: nn.Module,
    store: Any,
    splits: dict[str, list[tuple[str, int]]],
    settings: dict,
    wds: list[float],
    lrs: list[float],
    loss_function: nn.Module,
    device: str | torch.device | None,
    output_file: str | os.PathLike | None,
) -> dict[str, Any]:
    from fpt_monai.data.feature_store import POOLED, MissingItemsError

    ids = [i for s in splits.values() for i, _ in s]
    try:
        store.require(ids, POOLED)
    except MissingItemsError as e:
        raise MissingItemsError(f"choosing the linear probe's weight decay and lr: {e}") from e
    if device is None:
        device = next((p.device for p in base.parameters()), torch.device("cpu"))
    device = torch.device(device)
    data: dict[str, Any] = {"num_classes": settings["network"]["num_classes"]}
    for split, key in (("training", "train"), ("validation", "val")):
        data[f"x_{key}"] = torch.stack([store.get_pooled(i) for i, _ in splits[split]]).float().to(device)
        data[f"y_{key}"] = torch.tensor([label for _, label in splits[split]], dtype=torch.long, device=device)
    loss_function = copy.deepcopy(loss_function).to(device)
    points = [(lr, wd) for lr in lrs for wd in wds]
    fit = _fit_stacked if _stackable(base, loss_function) else _fit
    start = time.perf_counter()
    table = fit(
        base,
        data,
        points,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        grad_clip=settings["grad_clip"],
        warmup_epochs=settings["warmup_epochs"],
        loss_function=loss_function,
        seed=settings["seed"],
        device=device,
    )
    for row in table:
        logger.info(
            "linear probe: weight decay %g, lr %g: validation AUC %s, loss %s; training accuracy %s",
            row["weight_decay"],
            row["learning_rate"],
            _fmt(row["val_auc"]),
            _fmt(row["val_loss"]),
            _fmt(row["train_acc"]),
        )
    best = max(table, key=_rank_key)
    if all(r["val_auc"] is None for r in table):
        logger.warning(
            "linear probe: the validation AUC is undefined for every setting (one class in the validation split, or "
            "non-finite outputs); chosen by the validation loss."
        )
    result = {
        "weight_decay": best["weight_decay"],
        "learning_rate": best["learning_rate"],
        "searched": list(settings["searched"]),
        "chosen_on": "validation",
        "reused": False,
        "val_auc": best["val_auc"],
        "table": table,
    }
    logger.info(
        "linear probe: chose weight decay %g, lr %g on the validation split (val AUC %s, %d settings, %.1f s)",
        result["weight_decay"],
        result["learning_rate"],
        _fmt(best["val_auc"]),
        len(table),
        time.perf_counter() - start,
    )
    if output_file is not None:
        _write(Path(output_file), result, settings)
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _write(path: Path, result: Mapping, settings: Mapping | None) -> None:
    record = {
        "format": PROBE_SELECTION_FORMAT,
        "version": _VERSION,
        "chosen": {"weight_decay": result["weight_decay"], "learning_rate": result["learning_rate"]},
        "chosen_on": result["chosen_on"],
        "searched": list(result["searched"]),
        "criterion": _CRITERION if result["searched"] else None,
        "val_auc": result["val_auc"],
        "settings": settings,
        "table": list(result["table"]),
    }
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
