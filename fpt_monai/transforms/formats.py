# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Which files are images, and of which kind, from their names (and the DICOM marker of a file without a suffix).

Nothing here reads pixels or imports numpy, torch or MONAI: the datalist builders and the command line's checks use it
before any image is read; :mod:`fpt_monai.transforms.io` reads them (and re-exports these names).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "NIFTI_SUFFIXES", "PIL_SUFFIXES", "has_dicom_marker", "image_format"]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES


def has_dicom_marker(path: str | os.PathLike) -> bool:
    """Whether a file carries the DICOM Part 10 marker (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def image_format(path: str | os.PathLike) -> str | None:
    """``"pil"``, ``"dicom"`` or ``"nifti"`` from the file name (or the DICOM magic for files without a suffix)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(PIL_SUFFIXES):
        return "pil"
    if p.suffix == "" and has_dicom_marker(p):
        return "dicom"
    return None
