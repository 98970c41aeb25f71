# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A deterministic, offline demo dataset: synthetic high-resolution two-class images in mixed formats.

Class ``abnormal`` shows one large bright round "lesion" with a darker rim; class ``normal`` only small faint blobs.
The images are written as RGB PNG, JPEG, DICOM (MONOCHROME2 with rescale slope/intercept and a VOI window, and
MONOCHROME1) and 2-D NIfTI, with ``datalist.json`` (stratified train/validation/test split) beside them
(:mod:`fpt_monai.commands.demo`, ``fpt-monai demo``)::

    python -m fpt_monai.data.demo outputs/demo_data --per-class 24 --size 512
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fpt_monai.data.datalist import write_datalist
from fpt_monai.utils.runtime import setup_cli

__all__ = ["DEMO_CLASSES", "DEMO_FORMATS", "make_demo_dataset", "synthetic_image", "write_dicom"]

DEMO_CLASSES = ("normal", "abnormal")
DEMO_FORMATS = ("png", "jpg", "dcm", "dcm_mono1", "nii.gz")


def synthetic_image(label: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """A float image ``[size, size]`` in ``[0, 1]``: smooth background texture, faint blobs, and for ``label == 1``
    a large bright lesion with a dark rim at a random place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size), np.float32)
    for _ in range(6):  # low-frequency background
        fx, fy, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        img += 0.05 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    for _ in range(12):  # small faint blobs in both classes
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.01, 0.03)
        img += 0.15 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
    if label == 1:
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.16)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        img += 0.6 * (d < r) - 0.25 * ((d >= r) & (d < 1.25 * r))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(0.35 + img, 0.0, 1.0)


def write_dicom(
    path: str | os.PathLike,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    modality: str = "DX",
    patient_id: str = "DEMO",
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_uid: str | None = None,
    bits_stored: int = 12,
) -> Path:
    """Write a single-frame 2-D DICOM file with pydicom.

    Args:
        path: output file.
        pixels: stored values ``[H, W]`` (unsigned integers up to ``2**bits_stored - 1``) or ``[H, W, 3]`` uint8 RGB.
        photometric: ``MONOCHROME2``, ``MONOCHROME1`` or ``RGB``.
        rescale: ``(slope, intercept)`` written as RescaleSlope/RescaleIntercept.
        window: ``(center, width)`` written as WindowCenter/WindowWidth.
        modality, patient_id: DICOM attributes.
        study_uid, series_uid, instance_uid: UIDs (derived deterministically from ``path`` when not given).
        bits_stored: bits per grayscale sample.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path = Path(path)
    name = path.name
    study_uid = study_uid or generate_uid(entropy_srcs=["study", patient_id])
    series_uid = series_uid or generate_uid(entropy_srcs=["series", patient_id, str(path.parent)])
    instance_uid = instance_uid or generate_uid(entropy_srcs=["instance", str(path)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = modality
    ds.StudyDate = ds.SeriesDate = datetime.date(2024, 1, 1).strftime("%Y%m%d")
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    if photometric == "RGB":
        arr = np.ascontiguousarray(pixels, dtype=np.uint8)
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
    else:
        arr = np.ascontiguousarray(pixels, dtype=np.uint16)
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _save(img: np.ndarray, path: Path, fmt: str) -> Path:
    from PIL import Image

    if fmt in ("png", "jpg"):
        # tint the grayscale image so the RGB files really carry three channels
        rgb = np.stack([img, img * 0.9 + 0.05, img * 0.8 + 0.1], axis=-1)
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(
            path, quality=92
        ) if fmt == "jpg" else Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
    elif fmt == "dcm":
        # stored = (value - intercept) / slope; the window covers [0, 1] of the image
        slope, intercept = 0.5, -100.0
        values = img * 2000.0
        write_dicom(path, np.round((values - intercept) / slope), "MONOCHROME2", (slope, intercept), (1000.0, 2001.0))
    elif fmt == "dcm_mono1":
        write_dicom(path, np.round((1.0 - img) * 4095), "MONOCHROME1", window=(2048.0, 4096.0))
    elif fmt == "nii.gz":
        import nibabel as nib

        nib.save(nib.Nifti1Image((img * 1000).astype(np.float32), np.eye(4)), str(path))
    else:
        raise ValueError(f"unknown demo format {fmt!r}")
    return path


def make_demo_dataset(
    out_dir: str | os.PathLike,
    per_class: int = 24,
    size: int = 512,
    seed: int = 0,
    formats: Sequence[str] = DEMO_FORMATS,
    split_fractions: Sequence[float] = (0.5, 0.25, 0.25),
) -> dict:
    """Write the demo dataset under ``out_dir`` (``images/<split>/<class>/<name>.<ext>`` and ``datalist.json``).

    Deterministic: the same arguments give byte-identical image data. Existing files are overwritten.

    Args:
        out_dir: output folder.
        per_class: images per class.
        size: image side in pixels.
        seed: base random seed.
        formats: file formats cycled through the images (see :data:`DEMO_FORMATS`).
        split_fractions: train/validation/test fractions per class.

    Returns:
        the datalist (also written to ``out_dir/datalist.json``).
    """
    if per_class < 3:
        raise ValueError("per_class must be at least 3 (one image per split).")
    unknown = set(formats) - set(DEMO_FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {DEMO_FORMATS}.")
    out = Path(out_dir)
    n_train = max(1, int(per_class * split_fractions[0] + 0.5))
    n_val = max(1, int(per_class * split_fractions[1] + 0.5))
    datalist: dict = {"training": [], "validation": [], "test": [], "classes": list(DEMO_CLASSES)}
    for label, cls in enumerate(DEMO_CLASSES):
        for i in range(per_class):
            split, folder = (
                ("training", "train")
                if i < n_train
                else ("validation", "val")
                if i < n_train + n_val
                else ("test", "test")
            )
            fmt = formats[(i + label) % len(formats)]
            ext = "dcm" if fmt.startswith("dcm") else fmt
            path = out / "images" / folder / cls / f"case_{i:03d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            _save(synthetic_image(label, size, seed=seed * 100_003 + label * 10_007 + i), path, fmt)
            datalist[split].append(
                {
                    "image": str(path.resolve()),
                    "label": label,
                    "id": path.relative_to(out).as_posix(),
                }
            )
    write_datalist(datalist, out / "datalist.json")
    return datalist


def run_command(args: argparse.Namespace) -> int:
    """The command line on its parsed arguments (:func:`fpt_monai.commands.demo.build_parser`): write the dataset,
    say where, return 0."""
    setup_cli(args)
    dl = make_demo_dataset(args.out_dir, per_class=args.per_class, size=args.size, seed=args.seed)
    print(
        f"wrote {sum(len(dl[s]) for s in ('training', 'validation', 'test'))} images and "
        f"{Path(args.out_dir) / 'datalist.json'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fpt_monai.data.demo``: :func:`fpt_monai.commands.demo.main` (``fpt-monai demo``) under this
    module's name."""
    from fpt_monai.commands.demo import main as command

    return command(argv, prog="python -m fpt_monai.data.demo")


if __name__ == "__main__":
    from fpt_monai.utils.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    sys.exit(main())
