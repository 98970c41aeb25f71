# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Adding preloaded tokens (and pooled features) from a :class:`~fpt_monai.data.FeatureStore` to a data item."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

from monai.transforms import Transform

from fpt_monai.data.feature_store import POOLED, STORE_FIELDS, TOKENS, FeatureStore, MissingItemsError

if TYPE_CHECKING:
    from fpt_monai.data.resident import ResidentStore

__all__ = ["LoadPreloadedTokensd"]


class LoadPreloadedTokensd(Transform):
    """Look the item's ``id`` up in a feature store and add its stored fields: ``keys`` and ``values``
    (``[L, heads, k, head_dim]`` each) for ``"tokens"``, ``pooled`` (``[2 * D]``) for ``"pooled"``; in the store's
    dtype (the network casts them).

    Args:
        store: a :class:`FeatureStore` or its directory.
        fields: what to add, any of ``"tokens"`` and ``"pooled"``. Defaults to ``("tokens",)``.
        id_key: the item key holding the id. Defaults to ``"id"``.
        keys_key: where the keys go. Defaults to ``"keys"``.
        values_key: where the values go. Defaults to ``"values"``.
        pooled_key: where the pooled features go. Defaults to ``"pooled"``.
        verify_reads: check each item's CRC32 (only used when ``store`` is a path). Defaults to ``True``.
        resident: a :class:`~fpt_monai.data.ResidentStore` holding the fields on the training device: the item then
            gets its row number (``row_key``) instead of the tensors, and
            :class:`~fpt_monai.engines.FPTPrepareBatch` gathers the batch there. Only the id -> row table is kept,
            so DataLoader workers never copy the tensors.
        row_key: where the row number goes. Defaults to ``"token_row"``.
        store_id_key: the item key holding the id of a drawn stored view (set by
            :class:`~fpt_monai.transforms.frozen_views.RandFrozenViewd` with ``store_views`` > 1); looked up instead
            of ``id_key`` when present. Defaults to ``"store_id"``.

    Raises:
        ValueError: unknown fields.
        MissingItemsError: the store does not hold a requested field (the message says how to add it).
    """

    def __init__(
        self,
        store: FeatureStore | str | os.PathLike,
        fields: Sequence[str] = (TOKENS,),
        id_key: str = "id",
        keys_key: str = "keys",
        values_key: str = "values",
        pooled_key: str = "pooled",
        verify_reads: bool = True,
        resident: ResidentStore | None = None,
        row_key: str = "token_row",
        store_id_key: str = "store_id",
    ) -> None:
        fields = (fields,) if isinstance(fields, str) else tuple(fields)
        if not fields or any(f not in STORE_FIELDS for f in fields):
            raise ValueError(f"fields must be a non-empty selection of {STORE_FIELDS}, got {fields!r}.")
        self.store = store if isinstance(store, FeatureStore) else FeatureStore.open(store, verify_reads=verify_reads)
        for field in fields:
            self.store.require_field(field)
        self.fields = fields
        self.id_key = id_key
        self.keys_key = keys_key
        self.values_key = values_key
        self.pooled_key = pooled_key
        self.row_key = row_key
        self.store_id_key = store_id_key
        self.row_index: dict[str, int] | None = None
        if resident is not None:
            absent = [f for f in fields if f not in resident.fields]
            if absent:
                raise ValueError(f"the resident copy holds {resident.fields}, not {absent}: build it with them.")
            self.row_index = resident.row_index

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if self.id_key not in d:
            raise KeyError(f"data item has no {self.id_key!r} key to look its tokens up with: {sorted(map(str, d))}")
        # a drawn augmented view (store_views > 1) reads its own stored tokens; otherwise the item's plain view
        item_id = str(d[self.store_id_key] if self.store_id_key in d else d[self.id_key])
        if self.row_index is not None:
            if item_id not in self.row_index:
                raise MissingItemsError(
                    f"item {item_id!r} is not in the resident copy of {self.store.path}; build the copy from the "
                    "items this run reads (fpt_monai.data.resident_store)."
                )
            d[self.row_key] = self.row_index[item_id]
            return d
        if TOKENS in self.fields:
            d[self.keys_key], d[self.values_key] = self.store.get(item_id)
        if POOLED in self.fields:
            d[self.pooled_key] = self.store.get_pooled(item_id)
        return d
