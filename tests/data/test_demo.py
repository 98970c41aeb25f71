from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fpt_monai.data import DEMO_CLASSES, datalist_from_json, make_demo_dataset
from fpt_monai.transforms import image_format, read_image


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_demo_dataset_is_deterministic_mixed_and_learnable(tmp_path):
    dl = make_demo_dataset(tmp_path / "a", per_class=10, size=128)
    first = _digest(tmp_path / "a")
    make_demo_dataset(tmp_path / "a", per_class=10, size=128)
    assert _digest(tmp_path / "a") == first  # byte-identical rerun
    assert datalist_from_json(tmp_path / "a" / "datalist.json") == dl
    assert dl["classes"] == list(DEMO_CLASSES)
    assert [len(dl[s]) for s in ("training", "validation", "test")] == [10, 6, 4]
    items = dl["training"] + dl["validation"] + dl["test"]
    suffixes = {it["image"].rsplit(".", 1)[-1] for it in items}
    assert suffixes == {"png", "jpg", "dcm", "gz"}
    assert {image_format(it["image"]) for it in items} == {"pil", "dicom", "nifti"}
    import pydicom

    photometric = {
        pydicom.dcmread(it["image"]).PhotometricInterpretation for it in items if it["image"].endswith("dcm")
    }
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    # the class signal is visible: a large bright lesion only in 'abnormal' images
    bright = {0: [], 1: []}
    for it in items:
        img = read_image(it["image"]).mean(0)
        bright[it["label"]].append(float((img > 0.75).mean()))
    assert min(bright[1]) > 0.01 and np.mean(bright[1]) > 5 * np.mean(bright[0])


def test_demo_arguments():
    with pytest.raises(ValueError, match="per_class"):
        make_demo_dataset("/tmp/unused", per_class=2)
    with pytest.raises(ValueError, match="unknown formats"):
        make_demo_dataset("/tmp/unused", formats=("gif",))
