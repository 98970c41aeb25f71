# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Output paths built from untrusted input values (DICOM UIDs, datalist ids, file names).

A value read from an input file can be anything, ``../../etc/x`` included. Every output file named after one goes
through :func:`output_path`: the value becomes one harmless file-name component, and the resolved path must lie
inside the output folder, else :class:`UnsafeOutputPathError` is raised before anything is written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["UnsafeOutputPathError", "output_path", "safe_file_name"]

_MAX_NAME = 200  # bytes left for the suffix and a numbering under the usual 255-byte limit


class UnsafeOutputPathError(ValueError):
    """An output path would leave its output folder."""


def safe_file_name(value: str, default: str = "item") -> str:
    """One file-name component from an untrusted ``value``: path separators become ``__``, anything but letters,
    digits, ``.``, ``_`` and ``-`` becomes ``_``, leading dots and underscores are dropped (no ``..``, no hidden
    files), and the result is at most 200 characters (``default`` when nothing is left)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(value).replace("/", "__").replace("\\", "__"))
    name = name.lstrip("._").rstrip("_")[:_MAX_NAME]
    return name or default


def output_path(root: str | os.PathLike, value: str, suffix: str = "", subfolder: str = "") -> Path:
    """``root/subfolder/<safe_file_name(value)><suffix>``, checked to resolve inside ``root``.

    Raises:
        UnsafeOutputPathError: the path resolves outside ``root`` (e.g. through a symbolic link planted there).
    """
    root = Path(root)
    path = root / subfolder / f"{safe_file_name(value)}{suffix}"
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved_root not in resolved.parents:
        raise UnsafeOutputPathError(
            f"{path}: output for {value!r} would be written outside {root} ({resolved}); refusing to write it. "
            "Check the input file's metadata and the output folder for links."
        )
    return path
