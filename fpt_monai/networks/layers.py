# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Parsing of the ``layers`` setting: which frozen-model blocks feed the side network."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["parse_layers"]


def parse_layers(layers: int | str | Sequence[int], depth: int) -> tuple[int, ...]:
    """Turn ``"6-11"`` (inclusive range), ``"0,3,5"``, ``7`` or ``[6, 7]`` into sorted, unique block indices.

    Negative indices count from the end (``-1`` is the last block), as in Python. ``"all"`` selects every block
    (FPT's default) and ``"second_half"`` the blocks ``depth // 2 .. depth - 1`` (FPT+'s default, 6-11 for ViT-B).

    Raises:
        ValueError: malformed strings, empty selections, duplicates or indices outside ``[0, depth)``.
    """
    if isinstance(layers, bool):
        raise ValueError(f"layers must be an int, a string like '6-11' or '0,2,4', or a list, got {layers!r}.")
    if isinstance(layers, int):
        items = [layers]
    elif layers == "all":
        items = list(range(depth))
    elif layers == "second_half":
        items = list(range(depth // 2, depth))
    elif isinstance(layers, str):
        items = []
        for part in filter(None, layers.replace(" ", "").split(",")):
            span = re.fullmatch(r"(-?\d+)-(-?\d+)", part)
            if span is not None and int(span.group(1)) <= int(span.group(2)):
                items.extend(range(int(span.group(1)), int(span.group(2)) + 1))
            elif re.fullmatch(r"-?\d+", part):
                items.append(int(part))
            else:
                raise ValueError(
                    f"cannot parse layers {layers!r}; use 'a-b' (inclusive), 'a,b,c', 'all' or 'second_half'."
                )
    else:
        items = [int(i) for i in layers]
    if not items:
        raise ValueError("layers selects no block.")
    resolved = [i + depth if i < 0 else i for i in items]
    bad = [i for i, r in zip(items, resolved, strict=True) if not 0 <= r < depth]
    if bad:
        raise ValueError(f"layers {bad} are outside the backbone's {depth} blocks (valid: 0..{depth - 1}).")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers {layers!r} lists a block twice.")
    return tuple(sorted(resolved))
