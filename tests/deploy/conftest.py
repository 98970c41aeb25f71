"""DICOM studies written with pydicom for the deploy tests."""

from __future__ import annotations

import numpy as np
import pytest

from fpt_monai.data.demo import synthetic_image, write_dicom


def _stored(label: int, seed: int) -> np.ndarray:
    gray = synthetic_image(label, 96, seed=seed)
    gray = gray.mean(-1) if gray.ndim == 3 else gray
    return np.round(gray / gray.max() * 4000).astype(np.uint16)


@pytest.fixture
def dicom_study(tmp_path):
    """One DX study: the same image as MONOCHROME2 (rescale -1000) and as MONOCHROME1 (inverted, slope 2), plus a
    CT series of another image, each instance single-frame."""
    root = tmp_path / "study"
    px = _stored(1, seed=5)
    kw = {"patient_id": "P1", "study_uid": "1.2.826.0.1.3680043.8.498.1", "modality": "DX"}
    series = "1.2.826.0.1.3680043.8.498.2"
    write_dicom(root / "dx" / "m2.dcm", px, photometric="MONOCHROME2", rescale=(1.0, -1000.0), series_uid=series, **kw)
    write_dicom(
        root / "dx" / "m1.dcm", 4000 - px, photometric="MONOCHROME1", rescale=(2.0, 0.0), series_uid=series, **kw
    )
    kw["modality"] = "CT"
    write_dicom(root / "ct" / "ct.dcm", _stored(0, seed=6), series_uid="1.2.826.0.1.3680043.8.498.3", **kw)
    return root
