# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Check a DICOM input folder before the app runs: the SDK's loader skips unreadable files with a log line, which
would turn a corrupt file into a silently smaller study. Here every file that claims to be DICOM must parse."""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["DicomInputError", "check_dicom_folder"]


class DicomInputError(ValueError):
    """The input has no DICOM files, or some of them are corrupt."""


def _has_dicom_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def check_dicom_folder(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files under ``folder`` (recursively); raises :class:`DicomInputError` naming every corrupt one.

    A file with the ``DICM`` marker must parse with pydicom, have its SOP class, SOP instance and study UIDs, and
    (uncompressed) all of its pixel data; other files are ignored (logged).
    """
    import pydicom

    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    dicom, corrupt = [], []
    for path in files:
        if not _has_dicom_magic(path):
            logging.getLogger(__name__).info("ignoring %s: not a DICOM file (no DICM marker)", path)
            continue
        try:
            ds = pydicom.dcmread(path)
            missing = [key for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID") if key not in ds]
            if missing:
                raise ValueError(f"no {', '.join(missing)} (unparseable or not an instance)")
            if "PixelData" in ds:
                expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                expected *= int(ds.get("NumberOfFrames", 1) or 1) * ((int(ds.BitsAllocated) + 7) // 8)
                if not ds.file_meta.TransferSyntaxUID.is_compressed and len(ds.PixelData) < expected:
                    raise ValueError(f"pixel data has {len(ds.PixelData)} bytes, {expected} expected (truncated)")
        except Exception as err:  # any parse failure is a corrupt file; name it with its reason
            corrupt.append(f"{path}: {type(err).__name__}: {err}")
            continue
        dicom.append(path)
    if corrupt:
        raise DicomInputError(
            f"{len(corrupt)} corrupt DICOM file(s) in {folder}; remove or re-export them and run again:\n  "
            + "\n  ".join(corrupt)
        )
    if not dicom:
        raise DicomInputError(f"no DICOM files (with the DICM marker) under {folder}.")
    return dicom
