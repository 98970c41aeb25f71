# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""On/off settings that arrive as text: the bundle CLI passes ``--heatmaps true`` as the string ``"true"`` (python-fire
parses only ``True``), and environment variables are always strings."""

from __future__ import annotations

__all__ = ["as_bool", "as_weights"]


def as_bool(value: bool | str | None) -> bool:
    """``True`` for ``True`` and the strings ``1/true/yes/on`` (any case); ``False`` otherwise, ``"false"`` included."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def as_weights(value):
    """A ``pretrained`` value as the networks take it: ``True``/``False`` for the texts ``true``/``false`` (any case;
    ``none``/``null`` give ``False``), anything else (a weight file's path, a bool) unchanged."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "none", "null"):
        return value.strip().lower() == "true"
    return value
