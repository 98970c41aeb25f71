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

from fpt_monai.transforms.dicom_objects import frame_count, frame_indices, has_pixel_data, non_image_reason
from fpt_monai.transforms.errors import ImageReadError
from fpt_monai.transforms.formats import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    PIL_SUFFIXES,
    has_dicom_marker,
    image_format,
)

# ImageReadError (fpt_monai.transforms.errors) and the file-name rules (fpt_monai.transforms.formats) keep their names
# here, where they were first defined
__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PIL_SUFFIXES",
    "DICOM_PHOTOMETRIC_INTERPRETATIONS",
    "ImageReadError",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "image_format",
    "has_dicom_marker",
    "image_frame_count",
    "read_image",
]


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


# Photometric interpretations read as grey or RGB (PS3.3 C.7.6.3.1.2). pydicom's decoders turn YBR_FULL(_422) and
# the JPEG 2000 YBR_ICT/YBR_RCT into RGB; YBR_PARTIAL_420 only occurs in MPEG video, which pydicom cannot decode. The
# retired HSV, ARGB, CMYK and YBR_PARTIAL_422 have no conversion and are refused.
DICOM_PHOTOMETRIC_INTERPRETATIONS = (
    "MONOCHROME1",
    "MONOCHROME2",
    "PALETTE COLOR",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "YBR_PARTIAL_420",
)
_DECODER_PACKAGES = "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls"
_TRANSCODE = "Re-export it uncompressed (e.g. `gdcmconv --raw in.dcm out.dcm` or dcmtk's `dcmdjpeg`/`dcmdrle`)."


def _frame_policy(frame: int | str | None) -> int | str:
    """``frame`` as a policy of :func:`~fpt_monai.transforms.dicom_objects.frame_indices` (``None``: ``"refuse"``)."""
    if frame is None:
        return "refuse"
    if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool):
        return int(frame)
    if isinstance(frame, str):
        if frame == "every":
            raise ValueError(
                "frame='every' cannot read one image: 'every' is expanded by the datalist / Deploy app into one item "
                "per frame ({'image': path, 'frame': k}). Use frame='refuse', 'first', 'middle' or a frame index."
            )
        if frame.lstrip("-").isdigit():
            return int(frame)
        if frame in ("refuse", "first", "middle"):
            return frame
    raise ValueError(f"frame must be None, 'refuse', 'first', 'middle' or a frame index, got {frame!r}.")


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _read_dicom_dataset(path: Path, **kwargs):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), **kwargs)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ImageReadError(f"{path}: not a readable DICOM file ({_one_line(err)}). Re-export or remove it.") from err


def _check_photometric(ds, path: Path) -> tuple[str, int]:
    """The header's photometric interpretation and samples per pixel, refused before decoding when unusable."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        samples = -1
    if photometric not in DICOM_PHOTOMETRIC_INTERPRETATIONS:
        raise ImageReadError(
            f"{path}: unsupported photometric interpretation {photometric or '(missing)'!r}; readable: "
            f"{', '.join(DICOM_PHOTOMETRIC_INTERPRETATIONS)}. Re-export the image as MONOCHROME2 or RGB."
        )
    expected = 1 if photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") else 3
    if samples != expected:
        raise ImageReadError(
            f"{path}: {photometric} with SamplesPerPixel {ds.get('SamplesPerPixel')} (expected {expected}); the "
            "header is inconsistent. Re-export the image."
        )
    return photometric, samples


def _decode_frame(ds, path: Path, index: int) -> tuple[np.ndarray, dict]:
    """One frame's pixels as pydicom decodes them (YBR converted to RGB), and the header values the decoder changed
    (``photometric_interpretation`` among them)."""
    from pydicom.pixels import get_decoder

    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsyntax:
        raise ImageReadError(f"{path}: no Transfer Syntax UID in the DICOM file meta. Re-export the file.")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as err:
        raise ImageReadError(
            f"{path}: pixel data in transfer syntax {tsyntax.name} ({tsyntax}) cannot be decoded (video and other "
            f"syntaxes without a pydicom decoder). {_TRANSCODE}"
        ) from err
    if not decoder.is_available:
        raise ImageReadError(
            f"{path}: no decoder installed for {tsyntax.name}. Install the reader's dependencies: pip install "
            f"{_DECODER_PACKAGES}."
        )
    try:
        # only the frame asked for is decoded: a cine clip is not decompressed whole
        return decoder.as_array(ds, index=index)
    except Exception as err:  # decoder plugins raise many types for damaged or non-conformant data
        raise ImageReadError(
            f"{path}: cannot decode the {tsyntax.name} pixel data ({_one_line(err)}); it is damaged or "
            f"non-conformant. {_TRANSCODE}"
        ) from err


def _scale_colour(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """RGB samples to [0, 1]: unsigned integers by their stored bit depth (a 12-bit image is not 16 times too dark)."""
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        dtype_bits = arr.dtype.itemsize * 8
        bits = bits_stored if 1 <= bits_stored <= dtype_bits else dtype_bits
        return np.clip(arr.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)
    return _min_max(arr.astype(np.float32))  # signed or float colour: no nominal range


def _palette_to_rgb(arr: np.ndarray, ds, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(arr, ds)[..., :3]  # an alpha LUT is dropped, like a PNG's alpha channel
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])  # entries are 8 or 16 bits
    except Exception as err:  # missing, segmented-but-broken or mis-sized lookup tables
        raise ImageReadError(
            f"{path}: PALETTE COLOR image with a missing or invalid colour lookup table ({_one_line(err)}). "
            "Re-export the image as RGB."
        ) from err
    if bits not in (8, 16):
        raise ImageReadError(f"{path}: palette entries of {bits} bits (8 or 16 expected). Re-export the image as RGB.")
    return np.clip(rgb.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)


def _read_dicom(path: Path, frame: int | str, window: Sequence[float] | None) -> tuple[np.ndarray, int]:
    """The image ``[C, H, W]`` in [0, 1] and the frame read, under the policy ``frame``."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # the pixel data stays on disk until decoded: non-image objects are recognised from the header alone
    ds = _read_dicom_dataset(path, defer_size=1024)
    reason = non_image_reason(ds)
    if reason is not None:
        raise ImageReadError(
            f"{path}: {reason}; a DICOM object with no image to classify. Remove it from the datalist or the "
            "input folder."
        )
    # an image SOP class without its pixels is a broken image, not another kind of object
    if not has_pixel_data(ds):
        raise ImageReadError(f"{path}: DICOM image without pixel data (a broken export?). Re-export or remove it.")
    index = frame_indices(frame_count(ds), frame, path)[0]
    photometric, samples = _check_photometric(ds, path)
    arr, changes = _decode_frame(ds, path, index)
    decoded = str(changes.get("photometric_interpretation", photometric))
    if arr.shape[:2] != (ds.get("Rows"), ds.get("Columns")) or arr.ndim != (2 if samples == 1 else 3):
        raise ImageReadError(
            f"{path}: decoded frame of shape {arr.shape} does not match the header ({ds.get('Rows')} x "
            f"{ds.get('Columns')}, {samples} sample(s)). Re-export the image."
        )
    if samples == 3:
        if decoded != "RGB":
            raise ImageReadError(
                f"{path}: {photometric} pixel data decoded as {decoded}, which has no conversion to RGB. Re-export "
                "the image as RGB."
            )
        bits = int(changes.get("bits_stored", ds.get("BitsStored", 8)) or 8)
        return np.moveaxis(_scale_colour(arr, bits), -1, 0), index
    if photometric == "PALETTE COLOR":
        return np.moveaxis(_palette_to_rgb(arr, ds, path), -1, 0), index
    if int(ds.get("BitsAllocated", 0) or 0) == 1 and window is None:  # bit-packed: already 0/1
        out = arr.astype(np.float32)
    else:
        arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)  # rescale slope/intercept or modality LUT
        if not np.isfinite(arr).all():  # float pixel data or an extreme rescale; min-max would hide it
            raise ImageReadError(f"{path}: NaN or infinite pixel values. Re-export the image.")
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
    return out[None], index


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


def _read(
    path: str | os.PathLike,
    channels: int,
    frame: int | str | None,
    slice_index: int | None,
    window: Sequence[float] | None,
) -> tuple[np.ndarray, int]:
    """:func:`read_image` and the frame it read (0 for single-frame images)."""
    p = Path(path)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    policy = _frame_policy(frame)  # a wrong policy is the caller's error, not the file's
    if not p.is_file():
        raise ImageReadError(f"{p}: no such file. Check the datalist paths (relative to the datalist's folder).")
    kind = image_format(p)
    if kind not in ("pil", "dicom", "nifti"):
        raise ImageReadError(
            f"{p}: unsupported file type; supported: {', '.join(IMAGE_SUFFIXES)} and DICOM files without suffix."
        )
    try:
        if kind == "dicom":
            arr, index = _read_dicom(p, policy, window)
        else:
            index = frame_indices(1, policy, p)[0]  # one frame: an index other than 0 is out of range
            arr = _read_pil(p) if kind == "pil" else _read_nifti(p, slice_index)
    except ImageReadError:
        raise
    except Exception as err:  # libraries raise anything on malformed files (found by fuzzing): one clear error type
        raise ImageReadError(
            f"{p}: corrupt or unsupported {kind} file ({_one_line(err)}). Re-export or remove it."
        ) from err
    if min(arr.shape[1:]) < 2:
        raise ImageReadError(f"{p}: image of size {arr.shape[1:]} is too small. Remove it from the datalist.")
    if not np.isfinite(arr).all():  # float pixel data or an extreme rescale
        raise ImageReadError(f"{p}: NaN or infinite pixel values. Re-export the image.")
    if arr.shape[0] == channels:
        return np.ascontiguousarray(arr), index
    if arr.shape[0] == 1 and channels == 3:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=0)), index
    if arr.shape[0] == 3 and channels == 1:
        raise ImageReadError(f"{p}: RGB image where a grayscale one (channels=1) is expected. Use channels=3.")
    return _bad_channels(p, arr.shape[0]), index


def read_image(
    path: str | os.PathLike,
    channels: int = 3,
    frame: int | str | None = None,
    slice_index: int | None = None,
    window: Sequence[float] | None = None,
) -> np.ndarray:
    """Read a 2-D image as a float32 array ``[channels, H, W]`` with values in ``[0, 1]``.

    - PNG/JPEG/BMP/TIFF (PIL): EXIF orientation applied, palette images to RGB, alpha dropped, integer images
      divided by their type's maximum (8- and 16-bit).
    - DICOM (pydicom with the pylibjpeg and pyjpegls decoders): uncompressed, deflated, big endian, JPEG
      (baseline, extended 12-bit, lossless), JPEG-LS, JPEG 2000 and RLE pixel data. Grey images: modality LUT
      (rescale slope/intercept), then the VOI transform: ``window=(center, width)`` if given, else the file's VOI
      LUT or first window, else min-max; MONOCHROME1 is inverted; 1-bit images read as 0/1. Colour: PALETTE COLOR
      through its colour lookup table, YBR to RGB, samples divided by ``2**BitsStored - 1``. Non-image objects
      (DICOMDIR, SR, SEG, RT, presentation states, ...) are refused from their header, before any decoding.
    - NIfTI (nibabel): 2-D data (singleton axes squeezed), min-max scaled; 3-D volumes need ``slice_index``.

    Args:
        path: image file.
        channels: 3 (grayscale is repeated, the FPT backbones are RGB models) or 1 (RGB is refused).
        frame: the multi-frame policy (:func:`~fpt_monai.transforms.dicom_objects.frame_indices`): ``None`` or
            ``"refuse"`` (a multi-frame DICOM is an error), ``"first"``, ``"middle"`` or a frame index. Single-frame
            images are frame 0. ``"every"`` is not accepted here: the datalist / Deploy app expands it into one item
            per frame.
        slice_index: slice (last axis) of a 3-D NIfTI volume.
        window: DICOM VOI window ``(center, width)`` overriding the file's.

    Raises:
        ImageReadError: missing, unreadable, unsupported, non-image or wrongly shaped files; the message names the
            file. :class:`~fpt_monai.transforms.dicom_objects.MultiFrameError` (a subclass) for a multi-frame file
            under ``"refuse"`` or a frame out of range.
        ValueError: ``channels`` or ``frame`` not one of the values above.
    """
    return _read(path, channels, frame, slice_index, window)[0]


def image_frame_count(path: str | os.PathLike) -> int:
    """Frames in an image file: ``NumberOfFrames`` of a DICOM file (read from the header only, the pixel data is not
    loaded), 1 for single-frame DICOM and every other format.

    Raises:
        ImageReadError: a missing file, or a DICOM file whose header cannot be read.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such file. Check the datalist paths (relative to the datalist's folder).")
    if image_format(p) != "dicom":
        return 1
    return frame_count(_read_dicom_dataset(p, stop_before_pixels=True))


class LoadMedicalImage(Transform):
    """Array transform around :func:`read_image`; returns a ``MetaTensor`` ``[C, H, W]`` with the file name
    (``filename_or_obj``) and the frame read (``frame``) in its metadata, as MONAI loaders do.

    Args:
        channels, frame, slice_index, window: see :func:`read_image`.
    """

    def __init__(
        self,
        channels: int = 3,
        frame: int | str | None = None,
        slice_index: int | None = None,
        window: Sequence[float] | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        _frame_policy(frame)  # refuse a wrong policy when the pipeline is built, not at the first image
        self.channels = channels
        self.frame = frame
        self.slice_index = slice_index
        self.window = window

    def __call__(self, path: str | os.PathLike, frame: int | str | None = None) -> MetaTensor:
        """Read ``path``; ``frame`` (if not ``None``) overrides the transform's policy for this file."""
        arr, index = _read(path, self.channels, self.frame if frame is None else frame, self.slice_index, self.window)
        meta = {
            "filename_or_obj": str(path),
            "spatial_shape": np.asarray(arr.shape[1:]),
            "original_channel_dim": 0,
            "frame": index,
        }
        return MetaTensor(torch.from_numpy(arr), meta=meta)


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage` (replaces the path under each key by the image).

    Args:
        keys: keys holding image paths. Defaults to ``"image"``.
        channels, frame, slice_index, window: see :func:`read_image`.
        frame_key: key of an item's own frame index (``{"image": path, "frame": k}``, as bundle inference and the
            Deploy app expand ``frames="every"``); a value other than ``None`` overrides ``frame`` for that item.
            ``None`` ignores such keys.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        channels: int = 3,
        frame: int | str | None = None,
        slice_index: int | None = None,
        window: Sequence[float] | None = None,
        frame_key: str | None = "frame",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(channels, frame, slice_index, window)
        self.frame_key = frame_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        frame = d.get(self.frame_key) if self.frame_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], frame=frame)
        return d
