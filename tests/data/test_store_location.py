"""The bundle's default feature store: beside the bundle (<parent>/feature_stores), named after what determines its
content, so methods trained on the same data with the same frozen model preload once (issue 20, part 8b)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fpt_monai.data import (
    FeatureStore,
    datalist_from_json,
    dataset_identity,
    default_store_root,
    store_key,
    store_location,
)

from ..bundle_utils import REPO_ROOT, TRAIN_CONFIG, run_workflow

EVAL_CONFIGS = [TRAIN_CONFIG, str(REPO_ROOT / "bundle" / "configs" / "evaluate.yaml")]
PROBE_CONFIGS = [TRAIN_CONFIG, str(REPO_ROOT / "configs" / "methods" / "linear_probe.yaml")]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _datalist(root: Path, n: int = 6) -> dict:
    """Items as fpt_monai.data writes them: absolute images, ids relative to the dataset root."""
    items = [
        {"image": str(root / f"c{i % 2}" / f"{i}.png"), "label": i % 2, "id": f"c{i % 2}/{i}.png"} for i in range(n)
    ]
    return {"training": items[:2], "validation": items[2:4], "test": items[4:]}


def _kwargs(weights, **changes) -> dict:
    """train.yaml's extractor_kwargs (FPT+ on the tiny backbone)."""
    base = {
        "backbone": "vit_tiny_patch16_224",
        "pretrained": str(weights),
        "img_size": 64,
        "layers": "second_half",
        "token_ratio": 0.2,
        "layer_norm_eps": None,
    }
    return {**base, **changes}


@pytest.fixture
def weights(tmp_path) -> dict[str, Path]:
    """Weight files: two with other bytes, and a copy of the first elsewhere (the same weights moved)."""
    files = {"w": tmp_path / "w" / "vit.safetensors", "other": tmp_path / "other.safetensors"}
    files["w"].parent.mkdir()
    files["w"].write_bytes(b"the frozen model's weights")
    files["other"].write_bytes(b"other weights")
    files["copy"] = tmp_path / "copy.safetensors"
    shutil.copy(files["w"], files["copy"])
    return files


def test_the_name_changes_with_every_setting_that_changes_the_stored_content(tmp_path, weights):
    data = _datalist(tmp_path / "data")

    def name(datalist=data, mean=MEAN, std=STD, dtype="float16", precision="fp32", **changes):
        kwargs = _kwargs(weights["w"], **changes)
        return Path(store_location(tmp_path / "stores", datalist, kwargs, mean, std, dtype, precision)).name

    base = name()
    assert re.fullmatch(r"vit_tiny_patch16_224_64_[0-9a-f]{12}", base), base
    assert (
        Path(store_location(tmp_path / "stores", data, _kwargs(weights["w"]), MEAN, STD)).parent == tmp_path / "stores"
    )
    differ = {
        "another dataset (the same ids)": name(datalist=_datalist(tmp_path / "other_data")),
        "backbone": name(backbone="vit_small_patch16_224"),
        "img_size": name(img_size=96),
        "other weights": name(pretrained=str(weights["other"])),
        "timm hub weights": name(pretrained=True),
        "random weights": name(pretrained=False),
        "FPT's layers": name(layers="all"),
        "token_ratio": name(token_ratio=0.5),
        "layer-norm eps": name(layer_norm_eps=1e-12),
        "mean": name(mean=[0.4, 0.5, 0.5]),
        "std": name(std=[0.25, 0.25, 0.2]),
        "dtype": name(dtype="float32"),
        "precision": name(precision="bf16"),
    }
    assert base not in differ.values(), {k: v for k, v in differ.items() if v == base}
    assert len(set(differ.values())) == len(differ)  # and from each other
    assert differ["backbone"].startswith("vit_small_patch16_224_64_") and differ["img_size"].startswith(
        "vit_tiny_patch16_224_96_"
    )
    # the same content, however it is asked for: the fields (pooled), the weights moved, command-line text, a subset or
    # another split of the same images (a study's folds), the items as a list
    fold = {"training": data["test"], "validation": data["training"][:1], "test": data["validation"]}
    same = {
        "pooled features asked for": name(pooled=True),
        "the same weights elsewhere": name(pretrained=str(weights["copy"])),
        "settings as text": name(img_size="64", token_ratio="0.2", layer_norm_eps="null"),
        "another split of the same images": name(datalist=fold),
        "items as a list": name(datalist=data["training"] + data["test"]),
        "a tuple normalisation": name(mean=tuple(MEAN), std=tuple(STD)),
    }
    assert set(same.values()) == {base}, {k: v for k, v in same.items() if v != base}
    # what the hash covers, readable
    key = store_key(data, _kwargs(weights["w"], pooled=True), MEAN, STD)
    assert key["dataset"] == {"image_roots": [str(tmp_path / "data")], "other_items": None}
    assert key["frozen_model"]["weights"].startswith("sha256:") and "pooled" not in key["frozen_model"]
    assert "pretrained" not in key["frozen_model"] and key["frozen_model"]["layers"] == "second_half"
    with pytest.raises(FileNotFoundError, match="no such weight file"):
        name(pretrained=str(tmp_path / "missing.safetensors"))


def test_the_dataset_is_identified_by_the_folder_its_ids_are_relative_to(tmp_path):
    root = tmp_path / "data"
    assert dataset_identity(_datalist(root)) == {"image_roots": [str(root)], "other_items": None}
    # an id that is the image's own absolute path names the file: no root needed
    absolute = [{"image": str(tmp_path / "x.png"), "id": str(tmp_path / "x.png")}]
    assert dataset_identity(absolute) == {"image_roots": [], "other_items": None}
    # ids chosen by hand (not the path below a root): the pairs themselves, so another image under the same id differs
    hand = [{"image": str(root / "a.png"), "id": "case-1"}]
    other = [{"image": str(root / "b.png"), "id": "case-1"}]
    first, second = dataset_identity(hand), dataset_identity(other)
    assert first["image_roots"] == [] and first["other_items"] and first["other_items"] != second["other_items"]
    with pytest.raises(ValueError, match="needs 'image' and 'id'"):
        dataset_identity([{"image": "a.png"}])


def test_the_default_store_root_is_beside_the_bundle(tmp_path, monkeypatch):
    assert default_store_root(tmp_path / "runs" / "my_fpt") == str(tmp_path / "runs" / "feature_stores")
    assert default_store_root(f"{tmp_path}/runs/my_probe/") == str(tmp_path / "runs" / "feature_stores")
    (tmp_path / "bundle").mkdir()
    monkeypatch.chdir(tmp_path / "bundle")
    # the parent of the bundle folder itself (Path(".").parent would be "." again)
    assert Path(default_store_root(".")) == (tmp_path / "feature_stores").resolve()


def _shards(stores: Path) -> list[tuple[str, int]]:
    """Every shard file under the store root, with its modification time: equal lists mean nothing was extracted."""
    return sorted((str(p.relative_to(stores)), p.stat().st_mtime_ns) for p in stores.rglob("shards/*.npy"))


def _store_dir(bundle: Path) -> str:
    return json.loads((bundle / "models" / "model_config.json").read_text())["training_settings"]["store_dir"]


def test_the_linear_probe_and_fpt_plus_preload_once_into_one_store_that_moves_with_them(tmp_path, tiny_bundle_data):
    """The README's comparison at tiny scale: two bundles under one folder on the same data share one store; the
    second training and the second evaluation extract nothing; the folder moved as a whole still evaluates."""
    data_dir, weights = tiny_bundle_data
    runs = tmp_path / "runs"
    stores = runs / "feature_stores"
    run_workflow(PROBE_CONFIGS, runs / "my_probe", data_dir, weights, epochs=1)
    (store,) = stores.iterdir()  # tokens and pooled features of every training and validation item
    dl = datalist_from_json(data_dir / "datalist.json")
    trained_ids = [i["id"] for i in dl["training"] + dl["validation"]]
    opened = FeatureStore.open(store)
    assert opened.fields == ("tokens", "pooled") and not opened.missing(trained_ids, "pooled")
    assert _store_dir(runs / "my_probe") == f"../feature_stores/{store.name}"
    preloaded = _shards(stores)

    run_workflow(TRAIN_CONFIG, runs / "my_fpt", data_dir, weights, epochs=1)  # FPT+, another method
    assert _shards(stores) == preloaded  # found every item: nothing extracted, nothing stored twice
    assert _store_dir(runs / "my_fpt") == _store_dir(runs / "my_probe") and [p.name for p in stores.iterdir()] == [
        store.name
    ]
    assert not (runs / "my_fpt" / "tokens").exists() and not (runs / "my_probe" / "tokens").exists()

    # evaluation of both from the shared store: the first one adds the test split, the second finds it
    run_workflow(EVAL_CONFIGS, runs / "my_probe", data_dir, weights, workflow_type="infer")
    evaluated = _shards(stores)
    assert len(evaluated) > len(preloaded)
    run_workflow(EVAL_CONFIGS, runs / "my_fpt", data_dir, weights, workflow_type="infer")
    assert _shards(stores) == evaluated
    n_test = len(dl["test"])
    for bundle in ("my_probe", "my_fpt"):
        metrics = json.loads((runs / bundle / "eval" / "metrics.json").read_text())
        assert metrics["best"]["n"] == n_test, bundle

    # the folder of bundles moved as a whole: the recorded ../feature_stores/<name> is found there and trusted
    moved = tmp_path / "elsewhere" / "runs"
    shutil.move(str(runs), moved)
    (moved / "my_fpt" / "eval" / "metrics.json").unlink()
    run_workflow(EVAL_CONFIGS, moved / "my_fpt", data_dir, weights, workflow_type="infer")
    assert json.loads((moved / "my_fpt" / "eval" / "metrics.json").read_text())["best"]["n"] == n_test
    assert _shards(moved / "feature_stores") == evaluated  # the moved store, read: nothing extracted again
    assert [p.name for p in (moved / "feature_stores").iterdir()] == [store.name] and not runs.exists()


def test_fpt_plus_first_then_the_probe_preloads_nothing(tmp_path, tiny_bundle_data):
    """The other order: FPT+'s preload runs the frozen model anyway and stores the pooled features beside the tokens
    (almost free), so the probe trained afterwards on the same data finds everything and extracts nothing."""
    data_dir, weights = tiny_bundle_data
    runs = tmp_path / "runs"
    run_workflow(TRAIN_CONFIG, runs / "my_fpt", data_dir, weights, epochs=1)
    (store,) = (runs / "feature_stores").iterdir()
    before = _shards(runs / "feature_stores")
    assert any(Path(s[0]).name.startswith("pooled-") for s in before)
    assert FeatureStore.open(store).fields == ("tokens", "pooled")
    run_workflow(PROBE_CONFIGS, runs / "my_probe", data_dir, weights, epochs=1)
    assert [p.name for p in (runs / "feature_stores").iterdir()] == [store.name]
    assert _shards(runs / "feature_stores") == before  # nothing extracted again
    assert _store_dir(runs / "my_probe") == _store_dir(runs / "my_fpt")


def test_evaluating_another_dataset_uses_a_store_of_its_own_images(tmp_path, tiny_bundle_data):
    """Another --dataset_dir whose ids equal the training's (images/test/...) must not read the training images'
    features: its store is named after its own images."""
    from fpt_monai.data import make_demo_dataset

    data_dir, weights = tiny_bundle_data
    runs = tmp_path / "runs"
    run_workflow(TRAIN_CONFIG, runs / "my_fpt", data_dir, weights, epochs=1)
    (trained,) = (runs / "feature_stores").iterdir()
    other = tmp_path / "other_site"
    make_demo_dataset(other, per_class=6, size=96, seed=7)  # the same ids, other pixels
    assert (
        datalist_from_json(other / "datalist.json")["test"][0]["id"]
        == datalist_from_json(data_dir / "datalist.json")["test"][0]["id"]
    )
    run_workflow(EVAL_CONFIGS, runs / "my_fpt", other, weights, workflow_type="infer")
    stores = sorted(p.name for p in (runs / "feature_stores").iterdir())
    assert len(stores) == 2 and trained.name in stores
    (new,) = [p for p in (runs / "feature_stores").iterdir() if p.name != trained.name]
    assert sorted(FeatureStore.open(new).ids) == sorted(
        str(i["id"]) for i in datalist_from_json(other / "datalist.json")["test"]
    )
