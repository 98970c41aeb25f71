"""The read-once check of the files bundle inference classifies: a dangling symbolic link is reported as unreadable
with its target, never silently left out of both the predictions and the list of unreadable files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from fpt_monai.data import UnreadableImagesError, check_images, check_inference_images, inference_items


def _folder(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / name)
    target = tmp_path / "elsewhere" / "c.png"  # never created: the link dangles
    (images / "sub" / "c.png").symlink_to(target)
    (images / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not named like an image: not an item
    (images / "d.png").symlink_to(images / "a.png")  # a working link is an image like any other
    return images, target


def test_a_dangling_link_is_listed_as_unreadable_with_its_target(tmp_path):
    images, target = _folder(tmp_path)
    items = inference_items(images)
    assert [i["id"] for i in items] == ["a.png", "d.png", "sub/b.png", "sub/c.png"]
    report = tmp_path / "eval" / "unreadable.csv"

    with pytest.raises(UnreadableImagesError) as info:  # refused up front, named with its reason
        check_inference_images(items, report_file=report, progress=False)
    assert "1 of 4 images cannot be read" in str(info.value) and f"broken symbolic link to {target}" in str(info.value)

    found = check_inference_images(items, skip_unreadable="true", report_file=report, progress=False)
    assert [i["id"] for i in found.items] == ["a.png", "d.png", "sub/b.png"]
    assert found.total == 4 and len(found.unreadable) == 1
    rows = list(csv.DictReader(open(report)))
    assert rows == [
        {"id": "sub/c.png", "image": str(images / "sub" / "c.png"), "reason": f"broken symbolic link to {target}"}
    ]
    with pytest.raises(UnreadableImagesError, match="1 of 4 images were skipped as unreadable"):
        found.raise_if_skipped()
    # --check_images false reads no pixels, but the link is still reported
    found = check_inference_images(items, skip_unreadable=True, enabled=False, progress=False)
    assert [row["reason"] for row in found.unreadable] == [f"broken symbolic link to {target}"]


def test_a_dangling_link_in_a_training_datalist_is_named(tmp_path):
    images, target = _folder(tmp_path)
    datalist = {
        "training": [{"image": str(images / "a.png"), "label": 0, "id": "a"}],
        "validation": [{"image": str(images / "sub" / "c.png"), "label": 1, "id": "c"}],
    }
    with pytest.raises(UnreadableImagesError, match=f"c.png: broken symbolic link to {target}"):
        check_images(datalist, progress=False)
