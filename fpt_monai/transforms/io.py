# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Reading 2-D medical images (PNG/JPEG/BMP/TIFF, DICOM, NIfTI) into channel-first float tensors in [0, 1].

Every failure raises :class:`ImageReadError` naming the file and what to do about it.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PIL_SUFFIXES",
    "ImageReadError",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "image_format",
    "read_image",
]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES


class ImageReadError(ValueError):
    """An image that cannot be used: unreadable, unsupported, or of the wrong shape. The message names the file."""


def _is_dicom(path: Path) -> bool:
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
    if p.suffix == "" and _is_dicom(p):
        return "dicom"
    return None


def _scale_integer(arr: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.floating):
        return _min_max(arr.astype(np.float32))
    raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}.")


def _min_max(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, not later in a worker
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img, mode = img.convert("RGB"), "RGB"
            if mode in ("RGBA", "LA"):  # transparency carries no image content
                img, mode = img.convert(mode[:-1]), mode[:-1]
            if mode == "1":
                img, mode = img.convert("L"), "L"
            arr = np.asarray(img)
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{path}: not a readable image ({err}).") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: corrupt or truncated image ({err}). Re-export or remove the file.") from err
    if mode in ("I;16", "I;16B", "I;16L"):
        arr = arr.astype(np.uint16)
    elif mode == "I":  # 32-bit integer PNG/TIFF: scale by the used range
        return _min_max(arr.astype(np.float32))[None]
    elif mode == "F":
        return _min_max(arr.astype(np.float32))[None]
    arr = _scale_integer(arr, path)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _read_dicom(path: Path, frame: int | None, window: Sequence[float] | None) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ImageReadError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err}).") from err
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file without pixel data (a report or a structured document?).")
    try:
        arr = ds.pixel_array
    except Exception as err:  # pixel handlers raise many types for unsupported or broken encodings
        raise ImageReadError(
            f"{path}: cannot decode the DICOM pixel data ({type(err).__name__}: {err}); compressed transfer syntaxes "
            "need the matching decoder plugin (e.g. pylibjpeg)."
        ) from err
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        if frame is None:
            raise ImageReadError(
                f"{path}: multi-frame DICOM with {frames} frames; FPT classifies 2-D images. Pick one with "
                "`frame=<index>` (LoadMedicalImaged(frame=...))."
            )
        if not 0 <= frame < frames:
            raise ImageReadError(f"{path}: frame {frame} out of range (the file has {frames} frames).")
        arr = arr[frame]
    if arr.ndim != (3 if samples > 1 else 2):
        raise ImageReadError(f"{path}: unexpected DICOM pixel array shape {arr.shape}.")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples > 1:  # colour (pydicom converts YBR to RGB)
        return np.moveaxis(_scale_integer(arr, path), -1, 0) if samples == 3 else _bad_channels(path, samples)
    arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)  # rescale slope/intercept or modality LUT
    if window is not None:
        center, width = float(window[0]), float(window[1])
        out = _linear_window(arr, center, width)
    elif "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        out = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64) / float(2**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        out = _linear_window(arr, center, width)
    else:
        out = _min_max(arr)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":  # low values are bright: invert to MONOCHROME2 semantics
        out = 1.0 - out
    return out[None]


def _linear_window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI function, output in [0, 1]."""
    if width < 1:
        raise ValueError(f"window width must be >= 1, got {width}")
    return np.clip((arr - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _bad_channels(path: Path, channels: int) -> np.ndarray:
    raise ImageReadError(f"{path}: {channels} channels; only grayscale (1) and RGB (3) images are supported.")


def _read_nifti(path: Path, slice_index: int | None) -> np.ndarray:
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib errors, ...
        raise ImageReadError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err}).") from err
    data = np.squeeze(data)
    if data.ndim == 3:
        if slice_index is None:
            raise ImageReadError(
                f"{path}: 3-D volume of shape {data.shape}; FPT classifies 2-D images. Choose a slice with "
                "`slice_index=<k>` (along the last axis) or export 2-D slices."
            )
        if not 0 <= slice_index < data.shape[-1]:
            raise ImageReadError(f"{path}: slice {slice_index} out of range (the volume has {data.shape[-1]}).")
        data = data[..., slice_index]
    elif data.ndim != 2:
        raise ImageReadError(f"{path}: NIfTI data of shape {data.shape} is not a 2-D image.")
    return _min_max(np.asarray(data, dtype=np.float32))[None]


def read_image(
    path: str | os.PathLike,
    channels: int = 3,
    frame: int | None = None,
    slice_index: int | None = None,
    window: Sequence[float] | None = None,
) -> np.ndarray:
    """Read a 2-D image as a float32 array ``[channels, H, W]`` with values in ``[0, 1]``.

    - PNG/JPEG/BMP/TIFF (PIL): EXIF orientation applied, palette images to RGB, alpha dropped, integer images
      divided by their type's maximum (8- and 16-bit).
    - DICOM (pydicom): modality LUT (rescale slope/intercept), then the VOI transform: ``window=(center, width)``
      if given, else the file's VOI LUT or first window, else min-max; MONOCHROME1 is inverted. Multi-frame files
      need ``frame``.
    - NIfTI (nibabel): 2-D data (singleton axes squeezed), min-max scaled; 3-D volumes need ``slice_index``.

    Args:
        path: image file.
        channels: 3 (grayscale is repeated, the FPT backbones are RGB models) or 1 (RGB is refused).
        frame: frame of a multi-frame DICOM.
        slice_index: slice (last axis) of a 3-D NIfTI volume.
        window: DICOM VOI window ``(center, width)`` overriding the file's.

    Raises:
        ImageReadError: missing, unreadable, unsupported or wrongly shaped images; the message names the file.
    """
    p = Path(path)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    if not p.is_file():
        raise ImageReadError(f"{p}: no such file. Check the datalist paths (relative to the datalist's folder).")
    kind = image_format(p)
    readers = {"pil": lambda: _read_pil(p), "dicom": lambda: _read_dicom(p, frame, window)}
    readers["nifti"] = lambda: _read_nifti(p, slice_index)
    if kind not in readers:
        raise ImageReadError(
            f"{p}: unsupported file type; supported: {', '.join(IMAGE_SUFFIXES)} and DICOM files without suffix."
        )
    try:
        arr = readers[kind]()
    except ImageReadError:
        raise
    except Exception as err:  # libraries raise anything on malformed files (found by fuzzing): one clear error type
        raise ImageReadError(
            f"{p}: corrupt or unsupported {kind} file ({type(err).__name__}: {err}). Re-export or remove it."
        ) from err
    if min(arr.shape[1:]) < 2:
        raise ImageReadError(f"{p}: image of size {arr.shape[1:]} is too small.")
    if arr.shape[0] == channels:
        return np.ascontiguousarray(arr)
    if arr.shape[0] == 1 and channels == 3:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=0))
    if arr.shape[0] == 3 and channels == 1:
        raise ImageReadError(f"{p}: RGB image where a grayscale one (channels=1) is expected.")
    return _bad_channels(p, arr.shape[0])


class LoadMedicalImage(Transform):
    """Array transform around :func:`read_image`; returns a ``MetaTensor`` ``[C, H, W]`` with the file name in its
    metadata (``filename_or_obj``), as MONAI loaders do."""

    def __init__(
        self,
        channels: int = 3,
        frame: int | None = None,
        slice_index: int | None = None,
        window: Sequence[float] | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        self.channels = channels
        self.frame = frame
        self.slice_index = slice_index
        self.window = window

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        arr = read_image(path, self.channels, self.frame, self.slice_index, self.window)
        meta = {"filename_or_obj": str(path), "spatial_shape": np.asarray(arr.shape[1:]), "original_channel_dim": 0}
        return MetaTensor(torch.from_numpy(arr), meta=meta)


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage` (replaces the path under each key by the image).

    Args:
        keys: keys holding image paths. Defaults to ``"image"``.
        channels, frame, slice_index, window: see :func:`read_image`.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        channels: int = 3,
        frame: int | None = None,
        slice_index: int | None = None,
        window: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(channels, frame, slice_index, window)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
