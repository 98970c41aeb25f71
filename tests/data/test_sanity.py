"""Warnings where the numbers cannot hold (issue 20): few images per class, a misspelt class folder."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
from PIL import Image

from fpt_monai.data import datalist_warnings, similar_class_names, warn_about_datalist

from ..conftest import REPO_ROOT


def test_similar_class_names_are_likely_typos_but_numbered_classes_are_not():
    assert similar_class_names(["benign", "maligant", "malignant"]) == [("maligant", "malignant")]
    assert similar_class_names(["Benign", "benign_"]) == [("Benign", "benign_")]
    assert similar_class_names(["pneumonia", "pneumnia", "normal"]) == [("pneumonia", "pneumnia")]
    assert similar_class_names(["grade_1", "grade_2", "grade_3"]) == []
    assert similar_class_names(["cat", "car", "benign", "malignant", "normal"]) == []  # short names: no guess


def _datalist(per_split, names=("benign", "malignant")):
    out = {"classes": list(names)}
    for split, n in zip(("training", "validation", "test"), per_split, strict=True):
        out[split] = [
            {"image": f"{split}{c}{i}.png", "label": c, "id": f"{split}/{c}/{i}"}
            for c in range(len(names))
            for i in range(n)
        ]
    return out


def test_small_classes_are_named_per_split():
    (message,) = datalist_warnings(_datalist((20, 4, 3)), source="data/datalist.json")
    assert message.startswith("data/datalist.json: ")
    assert "'benign' has 4 in validation" in message and "'malignant' has 3 in test" in message
    assert "in training" not in message and "fewer than 10 images" in message
    (message,) = datalist_warnings(_datalist((20, 4, 3)), min_images_per_class=4)  # configurable
    assert "has 3 in test" in message and "in validation" not in message
    assert datalist_warnings(_datalist((20, 10, 10))) == []
    assert datalist_warnings(_datalist((2, 2, 2)), min_images_per_class=0) == []


def test_the_bundle_logs_them_as_warnings(caplog):
    with caplog.at_level(logging.WARNING):
        messages = warn_about_datalist(_datalist((12, 12, 12), ("benign", "maligant", "malignant")), 10, "dl.json")
    assert len(messages) == 1 and "'maligant' and 'malignant'" in caplog.text


def test_the_datalist_command_warns_on_three_images_per_class_and_a_misspelt_folder(tmp_path):
    """The issue's case: a class-folder tree with 3 images per class and `maligant/` beside `malignant/`."""
    for name in ("benign", "malignant", "maligant"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(5 if name != "maligant" else 3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / "tree" / name / f"{i}.png")
    done = subprocess.run(
        [sys.executable, "-m", "fpt_monai.data.datalist", str(tmp_path / "tree")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert any("'maligant' and 'malignant' are nearly the same" in w for w in warnings), done.stderr
    assert any("fewer than 10 images of a class in a split" in w and "'maligant' has 1 in test" in w for w in warnings)
