from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, NormalizeIntensityd
from monai.utils import set_determinism

from fpt_monai.transforms import LPMViewd, SideViewd, random_resized_crop_box


def _image(h=300, w=400):
    g = torch.linspace(0, 1, w).repeat(h, 1)
    return torch.stack([g, g.flip(-1), torch.full((h, w), 0.5)])


def test_lpm_view_resizes_and_never_augments():
    t = LPMViewd("image", size=64)
    a, b = t({"image": _image()})["image"], t({"image": _image()})["image"]
    assert a.shape == (3, 64, 64) and torch.equal(a, b)


def test_side_view_eval_is_a_resize():
    d = SideViewd("image", size=32, train=False)({"image": _image()})
    assert d["image_side"].shape == (3, 32, 32) and d["image"].shape == (3, 300, 400)
    torch.testing.assert_close(d["image_side"], LPMViewd("image", size=32)({"image": _image()})["image"])


def test_side_view_train_augments_deterministically():
    t = SideViewd("image", size=32, train=True)
    t.set_random_state(seed=1)
    first = [t({"image": _image()})["image_side"] for _ in range(6)]
    t.set_random_state(seed=1)
    again = [t({"image": _image()})["image_side"] for _ in range(6)]
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b)
    assert all(x.shape == (3, 32, 32) for x in first)
    assert len({round(float(x.sum()), 3) for x in first}) > 1  # different crops/flips/jitter
    # some draws flip: the horizontal gradient of channel 0 changes sign
    signs = {bool(x[0, :, -1].mean() > x[0, :, 0].mean()) for x in first}
    assert signs == {True, False}


def test_side_view_jitter_ranges():
    t = SideViewd(
        "image",
        size=16,
        train=True,
        flip_prob=0.0,
        brightness=0.2,
        contrast=0.0,
        scale=(1.0, 1.0),
        ratio=(4 / 3, 4 / 3),
    )
    t.set_random_state(seed=0)
    flat = torch.full((3, 30, 40), 0.5)
    means = [float(t({"image": flat})["image_side"].mean()) for _ in range(50)]
    assert 0.4 <= min(means) < 0.45 and 0.55 < max(means) <= 0.6  # brightness factor in [0.8, 1.2]


def test_random_resized_crop_box_bounds():
    rng = np.random.RandomState(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(300, 400, (0.8, 1.0), (0.7, 1.3), rng=rng)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 0.8 * 120000 * 0.97 <= h * w <= 120000
        assert 0.69 <= w / h <= 1.31


def test_full_pipeline_with_normalisation():
    set_determinism(0)
    t = Compose(
        [
            SideViewd("image", size=32, train=True),
            LPMViewd("image", size=64),
            NormalizeIntensityd(
                ["image", "image_side"], subtrahend=[0.5, 0.5, 0.5], divisor=[0.25, 0.25, 0.25], channel_wise=True
            ),
        ]
    )
    d = t({"image": _image()})
    assert d["image"].shape == (3, 64, 64) and d["image_side"].shape == (3, 32, 32)
    assert d["image"][2].abs().max() < 1e-5  # constant 0.5 channel -> 0
    set_determinism(None)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 0}, {"flip_prob": 2.0}, {"brightness": 1.5}, {"scale": (0.9, 0.5)}, {"keys": ["a", "b"]}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SideViewd(**{"keys": "image", **kwargs})
