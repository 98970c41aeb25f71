# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The Deploy app's pre-flight: every file of the input folder, triaged before the app runs.

The SDK's DICOM loader skips what it cannot parse with one WARNING line, which would turn a corrupt file into a
silently smaller study. Here every file gets a verdict that ends up in ``output.json``: an image instance to classify
(grouped by study), skipped (not DICOM, a DICOMDIR, a non-image object such as SR, SEG, RT, PR or KO), or failed
(unparseable, no UIDs, truncated pixel data). Non-image objects are recognised from their header, before any pixel
check, so a 1-bit SEG is never called truncated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fpt_monai.transforms.dicom_objects import frame_count, has_pixel_data, non_image_reason
from fpt_monai.transforms.io import has_dicom_marker

__all__ = [
    "CLASSIFIED",
    "DUPLICATE_REASON",
    "FAILED",
    "IMAGE",
    "SKIPPED",
    "DicomInputError",
    "InputFile",
    "inventory_dicom_folder",
    "loader_blockers",
    "relative_name",
    "summarise",
]

IMAGE, CLASSIFIED, SKIPPED, FAILED = "image", "classified", "skipped", "failed"
DUPLICATE_REASON = "duplicate SOPInstanceUID of"

# Type 2 attributes the SDK's DICOM loader converts with int()/float(): an empty value makes it drop the instance
_SDK_NUMERIC_KEYWORDS = ("SeriesNumber", "AcquisitionNumber", "ImagePositionPatient", "ImageOrientationPatient")


class DicomInputError(ValueError):
    """The input holds no DICOM image at all (the message says what it holds instead)."""


@dataclass
class InputFile:
    """The verdict on one input file.

    Attributes:
        path: the file.
        status: ``"image"`` (to classify), ``"skipped"`` or ``"failed"``; the app turns images into
            ``"classified"``, ``"skipped"`` (series not selected) or ``"failed"``.
        reason: why it was skipped or failed.
        study_instance_uid, series_instance_uid, sop_instance_uid, modality: from the header, when readable.
        frames: the image's number of frames.
        loader_fix: attributes removed from the copy the SDK's loader reads: empty numeric ones it cannot parse,
            and an ``ImagePositionPatient`` shared with another instance of the series (it keeps one per position).
        position: ``ImagePositionPatient`` as text, when present.
        duplicate_of: for a file skipped as a copy of an instance already in the input (the same SOP Instance UID):
            the kept file, relative to the input folder.
    """

    path: Path
    status: str
    reason: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    modality: str = ""
    frames: int = 1
    loader_fix: list[str] = field(default_factory=list)
    position: str = ""
    duplicate_of: str = ""

    def record(self, root: str | os.PathLike) -> dict:
        """The ``output.json`` entry: the file relative to the input folder, without empty fields."""
        internal = ("path", "loader_fix", "position")
        out = {k: v for k, v in asdict(self).items() if v not in ("", [], None) and k not in internal}
        out["file"] = relative_name(self.path, Path(root))
        if out.get("frames") == 1:
            del out["frames"]
        return {"file": out.pop("file"), **out}


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to the input folder ``root`` (or to the folder of the one input file), POSIX style."""
    try:
        return path.relative_to(root if root.is_dir() else root.parent).as_posix()
    except ValueError:
        return str(path)


def _expected_pixel_bytes(ds) -> int:
    bits = int(ds.get("BitsAllocated", 8) or 8)
    values = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * frame_count(ds)
    return (values * bits + 7) // 8  # 1-bit data is packed: a byte holds 8 pixels


def loader_blockers(ds) -> list[str]:
    """Attributes present but empty that the SDK's loader parses as numbers (it drops such an instance)."""
    return [k for k in _SDK_NUMERIC_KEYWORDS if k in ds and ds[k].value in (None, "", [])]


def _read(path: Path):
    """``(header, dataset, lost)``: the header alone (``stop_before_pixels``), the whole dataset with its pixel data
    deferred, and whether the whole read lost elements the header has. pydicom returns an empty dataset for a file
    that ends inside undefined-length (encapsulated) pixel data, so the UIDs come from the header."""
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "End of file reached before delimiter": the verdict says it
        header = pydicom.dcmread(path, stop_before_pixels=True)
        try:
            ds = pydicom.dcmread(path, defer_size=1024)  # deferred: the pixels are checked by size, not loaded
        except Exception:  # the header read, the rest did not: the file is cut or broken after its header
            return header, None, True
    return header, ds, bool(set(header.keys()) - set(ds.keys()))


def _fragments_complete(ds) -> bool:
    """Whether encapsulated pixel data parses into its items (the offset table and at least one fragment)."""
    from pydicom.encaps import generate_fragments

    try:
        return sum(1 for _ in generate_fragments(ds.PixelData)) >= 2
    except Exception:  # an item cut short or a bad item tag
        return False


def _triage(path: Path) -> InputFile:
    if path.is_symlink() and not path.exists():
        return InputFile(path, FAILED, f"broken symbolic link to {os.readlink(path)}")
    if not has_dicom_marker(path):
        if not os.access(path, os.R_OK):
            return InputFile(path, FAILED, "cannot be opened (no read permission); fix its permissions")
        return InputFile(path, SKIPPED, "not a DICOM file (no DICM marker)")
    try:
        header, ds, lost = _read(path)
        uids = {k: str(header.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
        item = InputFile(
            path,
            IMAGE,
            study_instance_uid=uids["StudyInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            modality=str(header.get("Modality", "") or ""),
        )
        meta = getattr(header, "file_meta", None) or {}
        if not (header.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")):
            item.status, item.reason = FAILED, "no SOPClassUID: unparseable, or not a DICOM instance"
            return item
        if lost:  # the file goes on past its header (its pixel data), where it is cut: judge the kind by the header
            header.PixelData = b""
            ds = header
        reason = non_image_reason(ds)
        if reason is not None:  # before any pixel check: SEG, SR, DICOMDIR... are not broken images
            item.status, item.reason = SKIPPED, reason
            return item
        missing = [k for k, v in uids.items() if not v]
        if missing:
            item.status, item.reason = FAILED, f"no {', '.join(missing)}: not a usable image instance"
            return item
        if lost:
            item.status = FAILED
            item.reason = "incomplete pixel data: the file ends inside its (encapsulated) pixel data (truncated)"
            return item
        if not has_pixel_data(ds):
            item.status, item.reason = FAILED, "an image without pixel data (truncated or broken file)"
            return item
        item.frames = frame_count(ds)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if "PixelData" in ds and syntax is not None and not syntax.is_compressed:
            expected, size = _expected_pixel_bytes(ds), len(ds.PixelData)
            if size < expected:
                item.status, item.reason = FAILED, f"pixel data has {size} bytes, {expected} expected (truncated)"
                return item
        elif "PixelData" in ds and syntax is not None and syntax.is_encapsulated and not _fragments_complete(ds):
            item.status, item.reason = FAILED, "incomplete pixel data: an encapsulated fragment is cut (truncated)"
            return item
        item.loader_fix = loader_blockers(ds)
        if "ImagePositionPatient" not in item.loader_fix and ds.get("ImagePositionPatient"):
            item.position = "\\".join(str(v) for v in ds.ImagePositionPatient)
        return item
    except Exception as err:  # pydicom raises many types on malformed files: each is a failed file, named
        return InputFile(path, FAILED, f"not a readable DICOM file ({type(err).__name__}: {err})")


def _mark_duplicates(inventory: Sequence[InputFile], root: Path) -> None:
    # A SOP Instance UID names one instance: copies of it (re-exports, the same file twice) are analysed once, as
    # the first of them in the inventory's (sorted) order.
    kept: dict[str, InputFile] = {}
    for item in inventory:
        if item.status != IMAGE:
            continue
        first = kept.setdefault(item.sop_instance_uid, item)
        if first is not item:
            item.status = SKIPPED
            item.duplicate_of = relative_name(first.path, root)
            item.reason = f"{DUPLICATE_REASON} {item.duplicate_of}"


def _mark_shared_positions(inventory: Sequence[InputFile]) -> None:
    # The SDK's loader keeps one instance per ImagePositionPatient in a series (slices of a volume); 2-D images
    # such as DX views often share one, and each must be classified.
    groups: dict[tuple[str, str, str], list[InputFile]] = {}
    for item in inventory:
        if item.status == IMAGE and item.position:
            groups.setdefault((item.study_instance_uid, item.series_instance_uid, item.position), []).append(item)
    for group in groups.values():
        if len(group) > 1:
            for item in group:
                item.loader_fix.append("ImagePositionPatient")


def inventory_dicom_folder(folder: str | os.PathLike) -> list[InputFile]:
    """Triage every file under ``folder`` (recursively; or the one file ``folder`` names). A symbolic link whose
    target does not exist fails with that reason. Files with the SOP Instance UID of an earlier image (in sorted
    order) are skipped as duplicates of it (``InputFile.duplicate_of``): each instance is analysed once.

    Raises:
        DicomInputError: the folder does not exist, or holds no DICOM image instance (the message counts what it
            holds instead).
    """
    folder = Path(folder)
    if not folder.exists():
        raise DicomInputError(f"{folder}: the DICOM input does not exist. Pass the study folder with -i.")
    if folder.is_file():
        files = [folder]
    else:  # a dangling link is not a file, but it was meant to be one: it is reported, not left out
        files = sorted(p for p in folder.rglob("*") if p.is_file() or (p.is_symlink() and not p.exists()))
    inventory = [_triage(p) for p in files]
    _mark_duplicates(inventory, folder)
    _mark_shared_positions(inventory)
    if not any(f.status == IMAGE for f in inventory):
        failed = [f"{f.path}: {f.reason}" for f in inventory if f.status == FAILED]
        listing = "".join(f"\n  {line}" for line in failed[:20]) + ("\n  ..." if len(failed) > 20 else "")
        raise DicomInputError(
            f"{folder}: no DICOM image to classify ({summarise(inventory) or 'no files'}). Pass a folder with DICOM "
            f"image instances (files with the DICM marker); re-export or remove the failed files.{listing}"
        )
    return inventory


def summarise(inventory: Sequence[InputFile]) -> str:
    """``"3 image, 1 skipped, 2 failed"``: counts by status."""
    counts: dict[str, int] = {}
    for item in inventory:
        counts[item.status] = counts.get(item.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())
