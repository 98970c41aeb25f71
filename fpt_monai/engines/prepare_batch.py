# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Batch preparation for MONAI's Ignite engines with FPT's inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from monai.engines.utils import PrepareBatch

if TYPE_CHECKING:
    from fpt_monai.data.resident import ResidentStore

__all__ = ["FPTPrepareBatch"]


class FPTPrepareBatch(PrepareBatch):
    """Turn an FPT batch into ``(inputs, targets, args, kwargs)`` for ``SupervisedTrainer``/``SupervisedEvaluator``.

    - preload mode (the batch has ``keys``/``values`` from the feature store): the network gets the side view as
      its positional input and ``image_side``, ``keys``, ``values`` (and ``pooled`` when stored) as keyword
      arguments, so the frozen model is never run (and the LPM-resolution image never decoded);
    - stored pooled features only (a linear probe): ``pooled`` is the positional input and the keyword argument;
    - online mode: the LPM-resolution ``image`` is the positional input, plus ``image_side`` when the batch has an
      (augmented) side view.

    With a resident copy of the store (``resident``, :func:`fpt_monai.data.resident_store`) the batch carries row
    numbers (``row_key``) and the stored fields are gathered on the resident device, then treated as above; likewise
    the pooled features of a second store (FPT's ``pooled_img_size``) from ``pooled_resident`` by ``pooled_row_key``.

    Targets are ``label`` as ``long`` (absent in inference: ``None``).

    Args:
        image_key, side_key, keys_key, values_key, label_key, pooled_key: batch keys. Defaults to ``"image"``,
            ``"image_side"``, ``"keys"``, ``"values"``, ``"label"``, ``"pooled"``.
        resident: the resident copy the rows refer to. Defaults to ``None``.
        row_key: the batch key of the row numbers. Defaults to ``"token_row"``.
        pooled_resident: the resident copy of the second store's pooled features (FPT's ``pooled_img_size``).
            Defaults to ``None``.
        pooled_row_key: the batch key of its row numbers. Defaults to ``"pooled_row"``.
    """

    def __init__(
        self,
        image_key: str = "image",
        side_key: str = "image_side",
        keys_key: str = "keys",
        values_key: str = "values",
        label_key: str = "label",
        pooled_key: str = "pooled",
        resident: ResidentStore | None = None,
        row_key: str = "token_row",
        pooled_resident: ResidentStore | None = None,
        pooled_row_key: str = "pooled_row",
    ) -> None:
        self.image_key = image_key
        self.side_key = side_key
        self.keys_key = keys_key
        self.values_key = values_key
        self.label_key = label_key
        self.pooled_key = pooled_key
        self.resident = resident
        self.row_key = row_key
        self.pooled_resident = pooled_resident
        self.pooled_row_key = pooled_row_key

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict]:
        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.as_tensor() if hasattr(t, "as_tensor") else t
            return t.to(device=device, non_blocking=non_blocking, **kwargs)

        if self.row_key in batchdata:
            if self.resident is None:
                raise KeyError(f"the batch has row numbers {self.row_key!r} but no resident store was given")
            found = self.resident.gather(torch.as_tensor(batchdata[self.row_key]))
            gathered = {
                key: found[name]
                for key, name in ((self.keys_key, "keys"), (self.values_key, "values"), (self.pooled_key, "pooled"))
                if name in found
            }
            batchdata = {**batchdata, **gathered}
        if self.pooled_row_key in batchdata:
            if self.pooled_resident is None:
                raise KeyError(f"the batch has row numbers {self.pooled_row_key!r} but no pooled_resident was given")
            found = self.pooled_resident.gather(torch.as_tensor(batchdata[self.pooled_row_key]))
            batchdata = {**batchdata, self.pooled_key: found["pooled"]}
        label = batchdata.get(self.label_key)
        targets = move(torch.as_tensor(label)).long().reshape(-1) if label is not None else None
        if self.keys_key in batchdata:
            if self.side_key not in batchdata:
                raise KeyError(f"preloaded tokens need the side view {self.side_key!r} in the batch")
            side = move(batchdata[self.side_key])
            forward_kwargs = {
                "image_side": side,
                "keys": move(batchdata[self.keys_key]),
                "values": move(batchdata[self.values_key]),
            }
            if self.pooled_key in batchdata:
                forward_kwargs["pooled"] = move(batchdata[self.pooled_key])
            return side, targets, (), forward_kwargs
        if self.pooled_key in batchdata:
            pooled = move(batchdata[self.pooled_key])
            return pooled, targets, (), {"pooled": pooled}
        if self.image_key not in batchdata:
            raise KeyError(f"the batch has neither preloaded tokens nor the image {self.image_key!r}")
        forward_kwargs = {"image_side": move(batchdata[self.side_key])} if self.side_key in batchdata else {}
        return move(batchdata[self.image_key]), targets, (), forward_kwargs
