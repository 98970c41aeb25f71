# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A resident copy of the feature store: the stored tokens of a run's items held in one tensor per field on the
training device (GPU memory, or RAM on a CPU), gathered per batch by row.

FPT+ trains a small network from large inputs: a ViT-B/16 @ 512 px item is 3.8 MB of fp16 tokens. Read from the
store, every step decodes, checks, collates, pins and copies 60 MB per batch of 16; resident, the DataLoader carries a
row number per item and :class:`~fpt_monai.engines.FPTPrepareBatch` gathers the batch where the network runs (an
80 GB card holds the tokens of about 20,000 such images). Every item is read once, with its CRC32 check.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from fpt_monai.data.feature_store import POOLED, TOKENS, FeatureStore

__all__ = ["RESIDENT_MODES", "ResidentStore", "available_memory", "choose_residency", "resident_store"]

logger = logging.getLogger(__name__)

RESIDENT_MODES = ("auto", "true", "false")
# share of the GPU's free memory a resident copy may take in "auto" (the rest is for training)
_GPU_SHARE = 0.5


class ResidentStore:
    """The fields of some items of a :class:`FeatureStore`, stacked on ``device``.

    Args:
        store: the feature store.
        ids: the items to hold (each once; order = row order).
        fields: ``"tokens"`` and/or ``"pooled"``.
        device: where the tensors live.
        progress: show a progress bar while reading.

    Attributes:
        row_index: item id -> row (what :class:`~fpt_monai.data.LoadPreloadedTokensd` adds to each item).
        keys, values: ``[N, L, heads, k, head_dim]`` in the store's dtype (with ``"tokens"``).
        pooled: ``[N, 2 * D]`` (with ``"pooled"``).

    Raises:
        MissingItemsError: the store does not hold an item (the message says how to preload it).
        CorruptStoreError: an item fails its CRC32 check.
    """

    def __init__(
        self,
        store: FeatureStore,
        ids: Iterable[str],
        fields: Sequence[str] = (TOKENS,),
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        fields = (fields,) if isinstance(fields, str) else tuple(fields)
        unique = list(dict.fromkeys(str(i) for i in ids))
        for field in fields:
            store.require(unique, field)
        self.fields = fields
        self.device = torch.device(device)
        self.row_index: dict[str, int] = {item_id: row for row, item_id in enumerate(unique)}
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.pooled: torch.Tensor | None = None
        from tqdm.auto import tqdm

        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[store.dtype]
        n = len(unique)
        if TOKENS in fields:
            shape = store.field_shapes[TOKENS]
            both = torch.empty((n, *shape), dtype=dtype, device=self.device)
        if POOLED in fields:
            self.pooled = torch.empty((n, *store.field_shapes[POOLED]), dtype=dtype, device=self.device)
        for row, item_id in enumerate(tqdm(unique, desc="tokens to " + self.device.type, disable=not progress)):
            if TOKENS in fields:
                keys, values = store.get(item_id)
                both[row, 0].copy_(keys)
                both[row, 1].copy_(values)
            if POOLED in fields:
                self.pooled[row].copy_(store.get_pooled(item_id))
        if TOKENS in fields:
            # views of one allocation: no second copy
            self.keys, self.values = both[:, 0], both[:, 1]

    def __len__(self) -> int:
        return len(self.row_index)

    @property
    def nbytes(self) -> int:
        """Bytes held on the device."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.pooled) if t is not None)

    def gather(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of the given rows: ``keys``/``values`` and/or ``pooled`` on the resident device."""
        rows = rows.to(self.device, non_blocking=True).long().reshape(-1)
        out: dict[str, torch.Tensor] = {}
        if self.keys is not None and self.values is not None:
            out["keys"] = self.keys.index_select(0, rows)
            out["values"] = self.values.index_select(0, rows)
        if self.pooled is not None:
            out["pooled"] = self.pooled.index_select(0, rows)
        return out

    def __getstate__(self) -> dict:
        # DataLoader workers get the row numbers through LoadPreloadedTokensd, never these tensors
        raise TypeError("a ResidentStore stays in the training process; give workers its row_index")


def available_memory(device: str | torch.device) -> int:
    """Free bytes on ``device``: the GPU's free memory, or the machine's available RAM (``MemAvailable``) on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_residency(need: int, free: int, device: str | torch.device, mode: str | bool = "auto") -> tuple[bool, str]:
    """Whether to hold ``need`` bytes resident on ``device`` with ``free`` bytes free, and why.

    ``"auto"``: on a GPU when the copy takes at most half its free memory (the rest is for training); on a CPU never,
    since the operating system's page cache already keeps a store that fits in RAM, and a copy gained nothing there
    (docs/benchmarks.md). ``"true"``: always, unless it exceeds the free memory. ``"false"``: never.

    Raises:
        ValueError: an unknown mode.
        MemoryError: ``"true"`` and the copy exceeds the free memory.
    """
    choice = str(mode).strip().lower()
    if choice not in RESIDENT_MODES:
        raise ValueError(f"resident_store must be one of {RESIDENT_MODES}, got {mode!r}.")
    device = torch.device(device)
    size = f"{need / 1e9:.2f} GB, {free / 1e9:.2f} GB free on {device}"
    if choice == "false":
        return False, f"resident_store false ({size})"
    if choice == "true":
        if need > free:
            raise MemoryError(
                f"a resident copy of the feature store needs {need / 1e9:.2f} GB but {device} has {free / 1e9:.2f} GB "
                "free. Set resident_store auto or false (batches then read the store)."
            )
        return True, f"resident_store true ({size})"
    if device.type != "cuda":
        return False, f"on a CPU the page cache holds the store ({size}; resident_store true copies it into RAM)"
    if need > _GPU_SHARE * free:
        return False, f"more than {_GPU_SHARE:.0%} of the free GPU memory ({size}; resident_store true forces it)"
    return True, f"at most {_GPU_SHARE:.0%} of the free GPU memory ({size})"


def resident_store(
    store: FeatureStore | None,
    items: Iterable[Mapping],
    fields: Sequence[str] = (TOKENS,),
    device: str | torch.device = "cpu",
    mode: str | bool = "auto",
    free_bytes: int | None = None,
) -> ResidentStore | None:
    """A :class:`ResidentStore` of ``items`` when :func:`choose_residency` says so, else ``None`` (batches then read
    the store); the choice is logged.

    Args:
        store: the run's feature store (``None``: online mode, nothing to hold).
        items: datalist items (their ``id``).
        fields: the stored fields the run reads.
        device: the training device.
        mode: ``"auto"``, ``"true"`` or ``"false"`` (:func:`choose_residency`).
        free_bytes: the device's free memory (measured when ``None``).

    Raises:
        ValueError: an unknown mode.
        MemoryError: ``mode`` ``"true"`` and the copy does not fit in the free memory.
    """
    if store is None or str(mode).strip().lower() == "false":
        choose_residency(0, 0, device, mode)  # still refuse an unknown mode
        return None
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    ids = list(dict.fromkeys(str(item["id"]) for item in items))
    need = len(ids) * sum(store.field_bytes_per_item(f) for f in fields)
    free = available_memory(device) if free_bytes is None else int(free_bytes)
    try:
        resident, why = choose_residency(need, free, device, mode)
    except MemoryError as err:
        raise MemoryError(f"{store.path}: {err}") from err
    if not resident:
        logger.info("feature store read per batch: %s", why)
        return None
    copy = ResidentStore(store, ids, fields, device)
    logger.info("feature store resident on %s: %d items, %s", torch.device(device), len(copy), why)
    return copy
