# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What a DICOM object is, before anything looks at its pixels: an image FPT can classify, or a non-image object
(DICOMDIR, SR, SEG, RT, presentation state, key object selection, encapsulated document, waveform), and which of a
multi-frame image's frames to classify.

Clinical folders mix both kinds: a SEG carries 1-bit pixel data, an RT Dose a float grid, a DICOMDIR the ``DICM``
marker. They are skipped by their SOP class (and modality), never by failing a pixel check.
"""

from __future__ import annotations

from fpt_monai.transforms.errors import MultiFrameError

__all__ = [
    "DICOMDIR_SOP_CLASS",
    "FRAME_POLICIES",
    "MultiFrameError",
    "frame_count",
    "frame_indices",
    "has_pixel_data",
    "non_image_reason",
]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
FRAME_POLICIES = ("refuse", "first", "middle", "every")

# SOP classes (exact, or a prefix ending with ".") that carry no image to classify, even when they hold pixel data
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.2": "Spatial Fiducials",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation (SEG)",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.6": "Tractography Results",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.4": "RT Beams Treatment Record",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.481.": "RT object",
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report (SR) / Key Object Selection (KO)",
    "1.2.840.10008.5.1.4.1.1.11.": "Presentation State (PR)",
    "1.2.840.10008.5.1.4.1.1.104.": "Encapsulated Document",
    "1.2.840.10008.5.1.4.1.1.9.": "Waveform",
}
_RT_IMAGE = "1.2.840.10008.5.1.4.1.1.481.1"  # an RT portal image is an image
_NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "DOC", "REG", "RWV"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _non_image_class(sop_class: str) -> str | None:
    if sop_class == _RT_IMAGE:
        return None
    for uid, name in _NON_IMAGE_SOP_CLASSES.items():
        if sop_class == uid or (uid.endswith(".") and sop_class.startswith(uid)):
            return name
    return None


def has_pixel_data(ds) -> bool:
    """Whether a dataset holds pixel data (integer, float or double float)."""
    return any(k in ds for k in _PIXEL_KEYWORDS)


def non_image_reason(ds) -> str | None:
    """Why a DICOM dataset is not an image to classify, or ``None`` for an image.

    Decided from the header only (SOP class, media storage SOP class, modality, presence of pixel data), so a
    non-image object is skipped before any pixel check could call it corrupt.

    Args:
        ds: a ``pydicom.Dataset`` read with its pixel data element (``dcmread(path, defer_size=1024)`` avoids loading
            the pixels; ``stop_before_pixels=True`` drops the element and every file looks pixel-less).
    """
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return "a DICOMDIR (a media directory index)"
    name = _non_image_class(sop_class)
    if name is not None:
        return f"{name} object ({sop_class}), not an image"
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in _NON_IMAGE_MODALITIES:
        return f"a non-image object (Modality {modality})"
    if not has_pixel_data(ds):
        label = UID(sop_class).name if sop_class else "no SOP class"
        if "Image Storage" in label:  # an image without its pixels is a broken image, not another kind of object
            return None
        return f"no pixel data ({label})"
    return None


def frame_count(ds) -> int:
    """``NumberOfFrames`` of a dataset (1 when absent or empty)."""
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def frame_indices(num_frames: int, policy: str | int = "refuse", source: object = "") -> list[int]:
    """The frames of an image to classify under a multi-frame policy.

    Args:
        num_frames: frames in the image (1 for a single-frame image).
        policy: ``"refuse"`` (a multi-frame image is an error), ``"first"``, ``"middle"`` (``num_frames // 2``),
            ``"every"`` (one prediction per frame), or a frame index.
        source: the file, named in errors.

    Raises:
        MultiFrameError: a multi-frame image under ``"refuse"``, or an index out of range.
        ValueError: an unknown policy.
    """
    if isinstance(policy, str) and policy.lstrip("-").isdigit():
        policy = int(policy)
    if not isinstance(policy, int) and policy not in FRAME_POLICIES:
        raise ValueError(f"unknown multi-frame policy {policy!r}; use one of {', '.join(FRAME_POLICIES)} or an index.")
    if isinstance(policy, int):
        if not 0 <= policy < num_frames:
            raise MultiFrameError(
                f"{source}: frame {policy} out of range (the image has {num_frames} frame(s)). Choose a frame from 0 "
                f"to {num_frames - 1}."
            )
        return [policy]
    if num_frames <= 1:
        return [0]
    if policy == "refuse":
        raise MultiFrameError(
            f"{source}: multi-frame image with {num_frames} frames; FPT classifies 2-D images. Choose a frame policy "
            "(bundle inference `--frames`, the Deploy app `--frames`, the reader `frame=`): first, middle, every (one "
            "prediction per frame) or a frame index."
        )
    return {"first": [0], "middle": [num_frames // 2], "every": list(range(num_frames))}[policy]
