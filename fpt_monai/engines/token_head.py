# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""FPT's token head (``head: side+tokens``) started from the strongest probe of what FPT reads (issue 22).

On a few hundred images a logistic regression on the mean of every extracted layer's stored values (the study's
token probe, ``logreg_sklearn_tokens``) is the strongest reference measured, and FPT+'s side network, trained from
scratch beside it, does not beat it. Linear probing then fine-tuning (Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022 <https://arxiv.org/abs/2202.10054>) starts the
fine-tuned model from the fitted probe instead: :func:`init_token_head` fits that logistic regression on the training
split's stored tokens (standardised; C from a grid, chosen by validation AUC: the test split is never read) and
writes it into FPT's token head, standardisation included, before the first epoch. Training then starts where the
probe is and the side network (and, unless frozen, the head) learns what the probe misses; the checkpoint is still
chosen on validation.

The fit reads the plain view of each item (the item's own id; augmented views are not fitted), as the study's probe
does, and is recorded in ``models/token_head.json``.
"""

from __future__ import annotations

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

from fpt_monai.utils.atomic import atomic_write_text

__all__ = [
    "DEFAULT_TOKEN_HEAD_CS",
    "TOKEN_HEAD_INITS",
    "TokenHeadError",
    "check_token_head",
    "init_token_head",
    "token_head_features",
]

logger = logging.getLogger(__name__)

# the study's grid (fpt_monai.study.runs.LOGREG_CS): 2,304 features of ViT-S/14 chose C down to 1e-3 on ISIC
DEFAULT_TOKEN_HEAD_CS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
# "logreg": the fitted logistic regression; "none": the zero-initialised head (trained from zero)
TOKEN_HEAD_INITS = ("logreg", "none")
TOKEN_HEAD_FORMAT = "fpt_monai.token_head"


class TokenHeadError(ValueError):
    """The token head cannot be initialised as asked; the message names the setting and the fix."""


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(getattr(network, "module", None), nn.Module) else network


def token_head_features(feature_store: Any, items: Sequence[Mapping], split: str) -> tuple[np.ndarray, np.ndarray]:
    """The token head's features of ``items`` (their stored values' layer means, ``[N, L * D]``, fp32) and labels.

    Raises:
        TokenHeadError: an item without ``id`` and ``label``; the store's own errors name a missing item.
    """
    from fpt_monai.networks.fpt import token_layer_means

    features, labels = [], []
    for item in items:
        if not isinstance(item, Mapping) or "id" not in item or "label" not in item:
            raise TokenHeadError(
                f"every {split} item needs an 'id' (its key in the feature store) and a 'label'; got {item!r}. Build "
                "the datalist with fpt_monai.data (it writes both)."
            )
        _, values = feature_store.get(str(item["id"]))  # [L, heads, k, head_dim]
        features.append(token_layer_means(values[None])[0].numpy())
        labels.append(int(item["label"]))
    return np.stack(features), np.asarray(labels, dtype=int)


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _check(init: str, cs: Sequence[float]) -> list[float]:
    if init not in TOKEN_HEAD_INITS:
        raise TokenHeadError(f"token_head_init must be one of {TOKEN_HEAD_INITS}, got {init!r}.")
    try:
        grid = [float(c) for c in cs]
    except (TypeError, ValueError):
        raise TokenHeadError(f"token_head_cs must be a list of positive numbers, got {cs!r}.") from None
    if not grid or not all(math.isfinite(c) and c > 0 for c in grid):
        raise TokenHeadError(f"token_head_cs must be a non-empty list of positive numbers, got {cs!r}.")
    return sorted(set(grid))


def check_token_head(
    head: str, init: str = "logreg", cs: Sequence[float] = DEFAULT_TOKEN_HEAD_CS, mode: str = "preload"
) -> None:
    """The bundle's token-head settings, checked before anything is written (``setup``): a known ``init``, a grid of
    positive Cs, and ``mode preload`` when a token head is fitted (the fit reads the feature store).

    Raises:
        TokenHeadError: the setting at fault and the fix.
    """
    _check(init, cs)
    if "tokens" in str(head).split("+") and init == "logreg" and mode != "preload":
        raise TokenHeadError(
            f"head {head} with token_head_init logreg fits the token head on the stored tokens, but mode is {mode!r}: "
            "train with --mode preload (store_fields [tokens]), or set --token_head_init none (the head then trains "
            "from zero)."
        )


def init_token_head(
    network: nn.Module,
    feature_store: Any,
    datalist: Mapping,
    *,
    init: str = "logreg",
    cs: Sequence[float] = DEFAULT_TOKEN_HEAD_CS,
    trainable: bool = True,
    max_iter: int = 5000,
    output_file: str | os.PathLike | None = None,
) -> dict[str, Any] | None:
    """Set FPT's token head to a logistic regression fitted on the stored tokens, C chosen on validation.

    For each C of ``cs`` a scikit-learn ``LogisticRegression`` (lbfgs, L2, on ``StandardScaler``-standardised
    features) is fitted on the training split's features (:func:`token_head_features`) and scored by its validation
    AUC (macro one-vs-rest for more than two classes); the best (ties: the smaller C, the stronger regularisation)
    is written into ``network.token_head`` (:meth:`PooledHead.load_linear_model`). A network without a token head is
    left alone (``None`` is returned): the bundle calls this for every training.

    Args:
        network: the FPT network (``DistributedDataParallel`` is unwrapped); changed in place.
        feature_store: the :class:`~fpt_monai.data.FeatureStore` holding the training and validation items' tokens.
        datalist: with ``training`` and ``validation`` lists of items (``id``, ``label``).
        init: ``"logreg"`` (the fit) or ``"none"`` (the zero-initialised head; nothing is fitted). Defaults to
            ``"logreg"``.
        cs: the inverse regularisation strengths tried. Defaults to :data:`DEFAULT_TOKEN_HEAD_CS`.
        trainable: whether training goes on updating the head (``False``: it stays the fitted probe and only the rest
            of FPT learns). Defaults to ``True``.
        max_iter: lbfgs iterations per fit. Defaults to 5000.
        output_file: the JSON record of every C's validation AUC and the choice (``models/token_head.json``),
            written atomically. Defaults to ``None``.

    Returns:
        ``{"init", "C", "val_auc", "table", ...}`` (what the record holds), or ``None`` without a token head.

    Raises:
        TokenHeadError: an unknown ``init``, a bad grid, no feature store (mode online), an empty split, or a split
            with fewer than two classes.
    """
    base = _unwrap(network)
    head = getattr(base, "token_head", None)
    if head is None:
        return None
    grid = _check(init, cs)
    head.fc.weight.requires_grad_(bool(trainable))
    head.fc.bias.requires_grad_(bool(trainable))
    if init == "none":
        logger.info("token head: zero-initialised (token_head_init none).")
        return {"init": "none", "trainable": bool(trainable)}
    if feature_store is None:
        raise TokenHeadError(
            "token_head_init logreg fits the token head on the stored tokens, but this training has no feature store "
            "(mode online?): train with mode preload (store_fields [tokens]), or set token_head_init none."
        )
    from fpt_monai.engines.logistic_probe import fit_logistic_probe

    data = {}
    for split in ("training", "validation"):
        items = datalist.get(split) if isinstance(datalist, Mapping) else None
        if not items:
            raise TokenHeadError(
                f"the datalist has no {split} items: the token head's logistic regression is fitted on the training "
                "split and its C chosen on the validation split. Add them, or set token_head_init none."
            )
        data[split] = token_head_features(feature_store, items, split)
    (x_train, y_train), (x_val, y_val) = data["training"], data["validation"]
    start = time.monotonic()
    try:
        fit = fit_logistic_probe(x_train, y_train, x_val, y_val, grid, head.fc.out_features, max_iter)
    except ValueError as err:
        raise TokenHeadError(
            f"the token head's fit: {err} Check the datalist's labels, or set token_head_init none."
        ) from err
    head.load_linear_model(*(torch.from_numpy(a) for a in fit.linear_model()))
    c, val_auc = fit.C, fit.val_auc
    result = {
        "format": TOKEN_HEAD_FORMAT,
        "init": "logreg",
        "trainable": bool(trainable),
        "C": c,
        "val_auc": val_auc,
        "chosen_on": "validation AUC; ties: the smaller C",
        "training_items": int(len(y_train)),
        "validation_items": int(len(y_val)),
        "features": int(x_train.shape[1]),
        "seconds": round(time.monotonic() - start, 3),
        "table": fit.table,
    }
    logger.info("token head: logistic regression C %g, validation AUC %.4f (%d Cs tried).", c, val_auc, len(grid))
    if output_file is not None and _is_rank0():
        atomic_write_text(Path(output_file), json.dumps(result, indent=1))
    return result
