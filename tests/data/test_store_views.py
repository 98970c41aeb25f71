"""Augmented frozen views (issue 22, ``store_views``): K stored views per training image, one drawn per epoch."""

from __future__ import annotations

import warnings

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, NormalizeIntensityd
from monai.utils import set_determinism
from safetensors.torch import save_file

from fpt_monai.data import (
    LoadPreloadedTokensd,
    datalist_from_json,
    ensure_feature_store,
    make_demo_dataset,
    preload,
    resident_store,
)
from fpt_monai.networks import FrozenViTExtractor, create_vit_backbone
from fpt_monai.transforms import LoadMedicalImaged, LPMViewd, SideViewd, fpt_transforms
from fpt_monai.transforms.frozen_views import (
    DEFAULT_STORE_VIEW_TRANSFORMS,
    FROZEN_VIEW_TRANSFORMS,
    RandFrozenViewd,
    apply_frozen_view,
    check_store_views,
    expand_store_views,
    store_view_items,
    train_frozen_view,
    view_id,
)

MEAN, STD = (0.4, 0.4, 0.4), (0.25, 0.25, 0.25)
EXTRACTOR = {"backbone": "vit_tiny_patch16_224", "img_size": 64, "layers": "10-11", "token_ratio": 0.2}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``(datalist, extractor_kwargs)``: 12 demo images at 96 px (6 training) and a saved random ViT-Tiny."""
    root = tmp_path_factory.mktemp("views_demo")
    make_demo_dataset(root, per_class=6, size=96)
    weights = root / "vit_tiny.safetensors"
    torch.manual_seed(0)
    with warnings.catch_warnings():  # random weights on purpose
        warnings.simplefilter("ignore", UserWarning)
        backbone = create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=224)
    save_file(backbone.state_dict(), str(weights))
    return datalist_from_json(root / "datalist.json"), {**EXTRACTOR, "pretrained": str(weights)}


def _asymmetric(h=10, w=14):
    """No symmetry at all: every pixel differs, so each transform gives another image."""
    return torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w) / (3 * h * w)


def _gradient(h=60, w=80):
    """Bright at the top, dark at the bottom (values in [0.2, 0.8]: the side view's jitter never clips them)."""
    rows = torch.linspace(0.8, 0.2, h)[:, None].expand(h, w)
    return torch.stack([rows, rows, rows]).contiguous()


def test_transforms_are_exact():
    x = _asymmetric()
    t = FROZEN_VIEW_TRANSFORMS
    assert set(DEFAULT_STORE_VIEW_TRANSFORMS) == set(t)
    for name in ("hflip", "vflip", "rot180"):
        assert torch.equal(t[name](t[name](x)), x) and not torch.equal(t[name](x), x)
    assert t["rot90"](x).shape == (3, 14, 10) and t["rot270"](x).shape == (3, 14, 10)
    assert torch.equal(t["rot270"](t["rot90"](x)), x)
    assert torch.equal(t["rot180"](x), t["hflip"](t["vflip"](x)))
    # counter-clockwise as displayed: the right column becomes the top row
    assert torch.equal(t["rot90"](x)[:, 0, :], x[:, :, -1])
    big = torch.rand(3, 100, 60)
    crop = t["crop90"](big)
    assert crop.shape == (3, 90, 54) and torch.equal(crop, big[:, 5:95, 3:57])
    # a MetaTensor keeps its file name; the plain view is the image itself
    meta = MetaTensor(x, meta={"filename_or_obj": "a.png"})
    out = apply_frozen_view(meta, "vflip")
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.png" and out.is_contiguous()
    assert apply_frozen_view(x, "") is x


def test_view_ids_and_items():
    train = [{"image": "/d/a.png", "id": "a.png", "label": 0}, {"image": "/d/b.png", "id": "b.png", "label": 1}]
    val = [{"image": "/d/c.png", "id": "c.png", "label": 0}]
    assert view_id("a.png", "hflip") == "a.png@hflip" and view_id("a.png", "") == "a.png"
    assert expand_store_views(train, 1) == train
    items = store_view_items(train, val, 3, ["rot90", "vflip", "hflip"])
    assert [i["id"] for i in items] == [
        "a.png",
        "a.png@rot90",
        "a.png@vflip",
        "b.png",
        "b.png@rot90",
        "b.png@vflip",
        "c.png",
    ]
    assert [i.get("frozen_view", "") for i in items] == ["", "rot90", "vflip", "", "rot90", "vflip", ""]
    assert all(i["image"] == "/d/a.png" and i["label"] == 0 for i in items[:3])
    assert "frozen_view" not in train[0]  # the datalist is not changed


@pytest.mark.parametrize(
    "store_views, transforms, match",
    [
        (0, ["hflip"], "store_views must be a positive integer"),
        (True, ["hflip"], "store_views must be a positive integer"),
        (2.5, ["hflip"], "store_views must be a positive integer"),
        (2, ["hflip", "shear"], r"store_view_transforms names unknown transforms \['shear'\]; choose from"),
        (3, ["hflip", "hflip"], "store_view_transforms repeats"),
        (4, ["hflip", "crop90"], "store_views 4 needs 3 transforms in store_view_transforms.*lower store_views"),
    ],
)
def test_bad_settings_are_refused_by_name(store_views, transforms, match):
    with pytest.raises(ValueError, match=match):
        check_store_views(store_views, transforms)
    with pytest.raises(ValueError, match=match):
        RandFrozenViewd(store_views=store_views, transforms=transforms)


def test_settings_from_the_command_line_and_a_view_named_like_an_image():
    assert check_store_views("3", "vflip, crop90") == ("vflip", "crop90")
    assert check_store_views(1, []) == () and train_frozen_view(1) is None
    items = [{"image": "/d/a.png", "id": "a.png"}, {"image": "/d/x.png", "id": "a.png@hflip"}]
    with pytest.raises(ValueError, match="rename that image or set store_views 1"):
        expand_store_views(items, 2)
    # an image of another split named like a training image's view would read that view's tokens (evaluation reads
    # the training's store): refused too
    train, named_like_a_view = items[:1], items[1:]
    for split in ("validation", "test"):
        with pytest.raises(ValueError, match="'a.png@hflip', which is also the id of view 'hflip' of 'a.png'"):
            store_view_items(train, store_views=2, **{split: named_like_a_view})
    assert len(store_view_items(train, store_views=1, test=named_like_a_view)) == 1  # no views: nothing to clash


def test_store_holds_views_and_a_bigger_k_adds_only_the_new_ones(demo, tmp_path):
    dl, kwargs = demo
    train, val = dl["training"], dl["validation"]
    store_dir = tmp_path / "store"
    store = ensure_feature_store(
        store_view_items(train, val, 2), store_dir, MEAN, STD, kwargs, batch_size=8, progress=False
    )
    train_ids = [str(i["id"]) for i in train]
    want = set(train_ids) | {f"{i}@hflip" for i in train_ids} | {str(i["id"]) for i in val}
    assert set(store.ids) == want  # K views per training item, 1 per validation item
    before = {i: store.get(i)[0].clone() for i in store.ids}
    # K = 4 after K = 2: only views 2 and 3 are extracted, the stored ones are kept as they are
    extractor = FrozenViTExtractor(**kwargs)
    report = preload(store_view_items(train, val, 4), extractor, store_dir, MEAN, STD, progress=False)
    assert (report.computed, report.skipped) == (2 * len(train), 2 * len(train) + len(val))
    bigger = ensure_feature_store(store_view_items(train, val, 4), store_dir, MEAN, STD, kwargs, progress=False)
    assert len(bigger) == 4 * len(train) + len(val)
    assert all(torch.equal(bigger.get(i)[0], k) for i, k in before.items())
    # the views hold other tokens than the plain image
    assert not torch.equal(bigger.get(train_ids[0])[0], bigger.get(f"{train_ids[0]}@vflip")[0])

    # each stored view holds the frozen model's tokens of the transformed image
    load = LoadMedicalImaged("image")
    view = Compose(
        [LPMViewd("image", size=64), NormalizeIntensityd("image", subtrahend=MEAN, divisor=STD, channel_wise=True)]
    )
    item = train[0]
    for name in ("", "hflip", "vflip", "rot90"):
        image = apply_frozen_view(load({"image": item["image"]})["image"], name)
        with torch.inference_mode():
            keys, values = extractor(view({"image": image})["image"].unsqueeze(0))
        k, v = bigger.get(view_id(str(item["id"]), name))
        torch.testing.assert_close(k.float(), keys[0], rtol=1e-3, atol=2e-3)
        torch.testing.assert_close(v.float(), values[0], rtol=1e-3, atol=2e-3)

    # the resident copy holds the views too, and the token lookup finds a drawn view's row
    resident = resident_store(bigger, store_view_items(train, val, 4), device="cpu", mode="true")
    assert len(resident) == len(bigger)
    lookup = LoadPreloadedTokensd(bigger, resident=resident)
    row = lookup({"id": train_ids[1], "store_id": f"{train_ids[1]}@rot90"})["token_row"]
    assert torch.equal(resident.keys[row], bigger.get(f"{train_ids[1]}@rot90")[0])


def test_k1_store_is_the_plain_store(demo, tmp_path):
    dl, kwargs = demo
    train, val = dl["training"][:3], dl["validation"][:1]
    plain = ensure_feature_store(train + val, tmp_path / "a", MEAN, STD, kwargs, progress=False)
    k1 = ensure_feature_store(store_view_items(train, val, 1), tmp_path / "b", MEAN, STD, kwargs, progress=False)
    assert plain.ids == k1.ids and plain.settings == k1.settings
    for i in plain.ids:
        assert torch.equal(plain.get(i)[0], k1.get(i)[0]) and torch.equal(plain.get(i)[1], k1.get(i)[1])
    # the training pipeline is the one without the option
    without = fpt_transforms("online", True, 64, 32, mean=MEAN, std=STD)
    with_k1 = fpt_transforms("online", True, 64, 32, mean=MEAN, std=STD, frozen_view=train_frozen_view(1))
    assert [type(t) for t in without.transforms] == [type(t) for t in with_k1.transforms]


def test_draws_every_view_and_the_side_view_gets_its_transform():
    draw = RandFrozenViewd(store_views=3, transforms=["vflip", "rot90", "crop90"])
    draw.set_random_state(seed=0)
    pipeline = Compose([draw, SideViewd("image", size=32, train=True)])
    seen = {"": 0, "vflip": 0, "rot90": 0}
    for _ in range(300):
        d = pipeline({"image": _gradient(), "id": "a.png"})
        name, side = d["frozen_view"], d["image_side"]
        seen[name] += 1
        assert d["store_id"] == view_id("a.png", name)
        top, bottom = side[:, :16].mean(), side[:, 16:].mean()
        left, right = side[:, :, :16].mean(), side[:, :, 16:].mean()
        if name == "":  # the side view's own augmentation never turns the image upside down
            assert top > bottom + 0.1
        elif name == "vflip":
            assert bottom > top + 0.1
        else:  # rot90: the gradient runs across (the side view may still flip it left-right)
            assert abs(top - bottom) < 0.05 and abs(left - right) > 0.1
    assert set(seen) == {"", "vflip", "rot90"} and min(seen.values()) > 70  # uniform: 100 each expected
    # without augmentation the side view is exactly the resized transformed image
    exact = Compose([RandFrozenViewd(store_views=2, transforms=["rot90"]), SideViewd("image", size=16)])
    exact.set_random_state(seed=1)
    for _ in range(10):
        d = exact({"image": _asymmetric(20, 28), "id": "b"})
        want = SideViewd("image", size=16)({"image": apply_frozen_view(_asymmetric(20, 28), d["frozen_view"])})
        assert torch.equal(d["image_side"], want["image_side"])


def test_online_frozen_model_sees_the_drawn_view(demo):
    dl, _ = demo
    item = dl["training"][0]
    draw = RandFrozenViewd(store_views=2, transforms=["vflip"])
    online = fpt_transforms("online", True, 64, 32, mean=MEAN, std=STD, frozen_view=draw)
    lpm = Compose(
        [LPMViewd("image", size=64), NormalizeIntensityd("image", subtrahend=MEAN, divisor=STD, channel_wise=True)]
    )
    online.set_random_state(seed=0)
    names = set()
    for _ in range(8):
        d = online(dict(item))
        names.add(d["frozen_view"])
        loaded = apply_frozen_view(LoadMedicalImaged("image")({"image": item["image"]})["image"], d["frozen_view"])
        torch.testing.assert_close(d["image"].as_tensor(), lpm({"image": loaded})["image"].as_tensor())
    assert names == {"", "vflip"}


def test_the_drawn_views_follow_the_seed(demo, tmp_path):
    dl, kwargs = demo
    train = dl["training"]
    store = ensure_feature_store(store_view_items(train, [], 3), tmp_path / "s", MEAN, STD, kwargs, progress=False)
    tokens = LoadPreloadedTokensd(store)

    def epochs(seed):
        set_determinism(seed=seed)
        pipeline = fpt_transforms(
            "preload", True, 64, 32, mean=MEAN, std=STD, tokens=tokens, frozen_view=train_frozen_view(3)
        )
        loader = DataLoader(Dataset(train, transform=pipeline), batch_size=3, shuffle=True, num_workers=0)
        out = []
        for _ in range(3):
            for batch in loader:
                out += list(batch["store_id"])
                for i, sid in enumerate(batch["store_id"]):  # the tokens are the drawn view's
                    assert torch.equal(batch["keys"][i], store.get(sid)[0])
        return out

    try:
        first, again, other = epochs(0), epochs(0), epochs(1)
    finally:
        set_determinism(seed=None)
    assert first == again and first != other
    assert {s.partition("@")[2] for s in first} == {"", "hflip", "vflip"}
