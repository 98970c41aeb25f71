# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Adding preloaded tokens from a :class:`~fpt_monai.data.FeatureStore` to a data item."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

from monai.transforms import Transform

from fpt_monai.data.feature_store import FeatureStore

__all__ = ["LoadPreloadedTokensd"]


class LoadPreloadedTokensd(Transform):
    """Look the item's ``id`` up in a feature store and add its ``keys`` and ``values`` (``[L, heads, k, head_dim]``
    each, in the store's dtype; the network casts them).

    Args:
        store: a :class:`FeatureStore` or its directory.
        id_key: the item key holding the id. Defaults to ``"id"``.
        keys_key: where the keys go. Defaults to ``"keys"``.
        values_key: where the values go. Defaults to ``"values"``.
        verify_reads: check each item's CRC32 (only used when ``store`` is a path). Defaults to ``True``.
    """

    def __init__(
        self,
        store: FeatureStore | str | os.PathLike,
        id_key: str = "id",
        keys_key: str = "keys",
        values_key: str = "values",
        verify_reads: bool = True,
    ) -> None:
        self.store = store if isinstance(store, FeatureStore) else FeatureStore.open(store, verify_reads=verify_reads)
        self.id_key = id_key
        self.keys_key = keys_key
        self.values_key = values_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if self.id_key not in d:
            raise KeyError(f"data item has no {self.id_key!r} key to look its tokens up with: {sorted(map(str, d))}")
        d[self.keys_key], d[self.values_key] = self.store.get(str(d[self.id_key]))
        return d
