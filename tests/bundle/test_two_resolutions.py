"""``pooled_img_size`` through the bundle: the hybrid head's pooled features from a second feature store at the lower
size, recorded, evaluated (preload and online agree), exported; bad combinations refused before anything is
written (issue 22)."""

from __future__ import annotations

import pytest
import torch
import yaml

from fpt_monai.data import FeatureStore, make_demo_dataset
from fpt_monai.engines import read_model_config
from fpt_monai.export import export_bundle
from fpt_monai.networks import network_from_model_config
from fpt_monai.transforms import fpt_transforms

from ..conftest import REPO_ROOT, error_text
from .conftest import TRAIN_CONFIG, make_workflow, run_workflow, stores_and_images_differ_by

TWO_RES = {"head": "side+pooled", "pooled_img_size": 32}


@pytest.fixture(scope="module")
def data_at_img_size(tmp_path_factory, tiny_bundle_data):
    """The demo images at the bundle's img_size (64 px): the frozen model's view is then the image itself, so the
    network's own resize to pooled_img_size sees what the second store's preload saw."""
    _, weights = tiny_bundle_data
    root = tmp_path_factory.mktemp("two_res_data")
    make_demo_dataset(root / "data", per_class=6, size=64)
    return root / "data", weights


def test_trains_from_a_second_store_evaluates_and_exports(tmp_path, data_at_img_size):
    data_dir, weights = data_at_img_size
    root = tmp_path / "bundle"
    common = dict(store_root=str(tmp_path / "tokens"), store_dtype="float32", **TWO_RES)
    # two stored views and a resident copy (on the CPU: in RAM), so the second store's views and rows are exercised
    wf = run_workflow(TRAIN_CONFIG, root, data_dir, weights, store_views=2, resident_store="true", **common)
    record = read_model_config(root / "models" / "model_config.json", bundle_root=root)
    assert record["pooled_img_size"] == 32 and record["network_spec"]["kwargs"]["pooled_img_size"] == 32
    assert record["store_fields"] == ["tokens"]  # the main store is read for its tokens only
    assert wf.parser.get_parsed_content("hyper_params")["pooled_img_size"] == 32
    second = FeatureStore.open(record["pooled_store_dir"])
    assert second.settings["img_size"] == 32 and record["pooled_store_dir"] != record["store_dir"]
    datalist = wf.parser.get_parsed_content("datalist")
    train_ids = [str(i["id"]) for i in datalist["training"]]
    val_ids = [str(i["id"]) for i in datalist["validation"]]
    expected_ids = set(train_ids) | {f"{i}@hflip" for i in train_ids} | set(val_ids)
    assert not second.missing(expected_ids, "pooled")  # the pooled features of every stored view

    # the rebuilt network (frozen model online) pools at 32 px what the second store holds, and its logits equal those
    # of the stored path fed with them
    net = network_from_model_config(record, pretrained=str(weights), frozen_model=True).eval()
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True), strict=True)
    assert net.pooled_head.fc.weight.abs().sum() > 0  # trained: the pooled features matter
    view = fpt_transforms("inference", False, 64, mean=record["mean"], std=record["std"])
    items = [view(dict(item)) for item in datalist["validation"][:3]]
    image = torch.stack([torch.as_tensor(i["image"]) for i in items])
    stored = torch.stack([second.get_pooled(str(i["id"])) for i in items]).float()
    with torch.no_grad():
        assert torch.allclose(net.lpm.pool(image), stored, atol=1e-4)
        keys, values = net.extract(image)
        assert torch.allclose(
            net(image), net.forward_features(net.make_side_view(image), keys, values, stored), atol=1e-4
        )

    # evaluation from the stores and from the images gives the same probabilities
    assert stores_and_images_differ_by(root, data_dir, weights, str(tmp_path / "tokens")) < 1e-3
    test_ids = [str(i["id"]) for i in datalist["test"]]
    assert not FeatureStore.open(record["pooled_store_dir"]).missing(
        test_ids, "pooled"
    )  # evaluation added the test split's to the training's store

    # the exported TorchScript model classifies like the rebuilt network
    report = export_bundle(root, onnx=False, progress=False)
    assert report["max_abs_prob_diff"]["torchscript"] < 1e-4
    ts = torch.jit.load(str(root / "models" / "model.ts"))
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert torch.allclose(torch.softmax(ts(x), 1), torch.softmax(net(x), 1), atol=1e-4)


def test_pooled_img_size_without_the_hybrid_head_or_with_a_probe_is_refused_before_writing(tmp_path, data_at_img_size):
    data_dir, weights = data_at_img_size
    wf = make_workflow(TRAIN_CONFIG, tmp_path / "side", data_dir, weights, pooled_img_size=32)
    with pytest.raises(Exception) as err:
        wf.initialize()
    assert "pooled_img_size 32 is the resolution of the hybrid head's pooled features, but head 'side'" in error_text(
        err.value
    )
    assert not (tmp_path / "side" / "models" / "model_config.json").exists()

    probe = str(REPO_ROOT / "configs" / "methods" / "linear_probe.yaml")
    wf = make_workflow([TRAIN_CONFIG, probe], tmp_path / "probe", data_dir, weights, pooled_img_size=32)
    with pytest.raises(Exception) as err:
        wf.initialize()
    assert "the network is PooledLinearProbe, which does not pool at a second resolution" in error_text(err.value)
    assert not (tmp_path / "probe" / "models" / "model_config.json").exists()
    assert not (tmp_path / "feature_stores").exists()  # nothing was preloaded (the default store root)


def test_recipe_sets_the_hybrid_head_at_224():
    from fpt_monai.study.runs import method_presets

    presets = method_presets("fpt_plus+small_data+two_res224")
    assert presets[-1].name == "two_res224.yaml"
    recipe = yaml.safe_load(presets[-1].read_text())
    assert recipe == {"head": "side+pooled", "pooled_img_size": 224}
