"""``fpt-monai fuse``: a trained FPT+ bundle and a trained linear probe bundle (at another img_size) fused into one
bundle whose weight is chosen on validation, which evaluates, exports and deploys like any other."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fpt_monai.data import datalist_from_json
from fpt_monai.data.feature_store import file_sha256
from fpt_monai.engines.fuse import FuseError, fuse_bundles
from fpt_monai.engines.model_record import ModelConfigError, read_model_config
from fpt_monai.engines.probability_blend import choose_blend_weight
from fpt_monai.networks import network_from_model_config

from ..bundle_utils import REPO_ROOT, TRAIN_CONFIG, run_workflow

PROBE_SIZE = 32  # FPT+ at 64 px, the probe at 32 px: the fused network resizes for the probe


@pytest.fixture(scope="module")
def fused(tmp_path_factory, trained_tiny_bundle):
    """``(fused_root, fpt_root, probe_root, data_dir, weights)``."""
    fpt_root, data_dir, weights = trained_tiny_bundle
    tmp = tmp_path_factory.mktemp("fuse")
    probe_root = tmp / "probe"
    record = json.loads((fpt_root / "models" / "model_config.json").read_text())
    fpt_norm = [record["mean"], record["std"]]  # "auto" statistics depend on img_size: FPT's, given explicitly
    run_workflow(
        [TRAIN_CONFIG, str(REPO_ROOT / "configs" / "methods" / "linear_probe.yaml")],
        probe_root,
        data_dir,
        weights,
        img_size=PROBE_SIZE,
        weight_decay=0.1,
        learning_rate=0.01,
        epochs=3,
        store_root=str(tmp / "stores"),
        normalization=fpt_norm,
    )
    assert json.loads((probe_root / "models" / "model_config.json").read_text())["mean"] == fpt_norm[0]
    out = tmp / "fused"
    fuse_bundles(fpt_root, probe_root, out, pretrained=weights, progress=False)
    return out, fpt_root, probe_root, data_dir, weights


def _trained(root, weights):
    record = read_model_config(root / "models" / "model_config.json", bundle_root=root)
    net = network_from_model_config(record, pretrained=str(weights), frozen_model=True)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True), strict=True)
    return net.eval(), record


def _images(items, record):
    from fpt_monai.transforms.pipeline import fpt_transforms

    t = fpt_transforms("inference", False, img_size=64, side_img_size=32, mean=record["mean"], std=record["std"])
    return torch.stack([t({"image": i["image"]})["image"] for i in items]), np.array([i["label"] for i in items])


def test_weight_is_chosen_on_validation_and_the_output_is_the_blend(fused):
    out, fpt_root, probe_root, data_dir, weights = fused
    net, record = _trained(out, weights)
    fpt_net, _ = _trained(fpt_root, weights)
    probe_net, _ = _trained(probe_root, weights)
    assert record["network_name"] == "ProbeFusion" and record["mode"] == "online"
    fusion = record["fusion"]
    assert fusion["members"]["probe"]["img_size"] == PROBE_SIZE and record["img_size"] == 64
    # the two bundles' own networks on the validation images: the recorded table and weight follow from them
    validation = datalist_from_json(out / "models" / "datalist.json")["validation"]
    x, labels = _images(validation, record)
    with torch.no_grad():
        p_fpt = torch.softmax(fpt_net(x), 1)
        small = F.interpolate(x, size=(PROBE_SIZE, PROBE_SIZE), mode="bilinear", antialias=True)
        p_probe = torch.softmax(probe_net(small), 1)
        fused_probs = torch.softmax(net(x), 1)
    choice = choose_blend_weight(p_fpt.numpy(), p_probe.numpy(), labels)
    assert fusion["weight"] == choice["weight"] == float(net.weight)
    assert [r["auc"] for r in fusion["table"]] == pytest.approx([r["auc"] for r in choice["table"]], abs=1e-6)
    w = fusion["weight"]
    assert torch.allclose(fused_probs, w * p_fpt + (1 - w) * p_probe, atol=1e-5)
    # the test split was never read to choose it
    test_ids = {i["image"] for i in datalist_from_json(out / "models" / "datalist.json")["test"]}
    assert not test_ids & {i["image"] for i in validation}


@pytest.mark.slow  # evaluation with bootstrap intervals and the ONNX export: about 2 min on 2 CPU cores
def test_fused_bundle_evaluates_exports_and_deploys(fused, tmp_path):
    from fpt_monai.deploy import ExportedFPT
    from fpt_monai.export import export_bundle

    src, _, _, data_dir, weights = fused
    out = tmp_path / "fused"
    shutil.copytree(src, out)
    run_workflow([TRAIN_CONFIG, TRAIN_CONFIG.replace("train.yaml", "evaluate.yaml")], out, data_dir, weights)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    n_test = len(datalist_from_json(data_dir / "datalist.json")["test"])
    assert set(metrics) == {"best", "final"} and metrics["best"]["n"] == n_test

    report = export_bundle(out, pretrained=weights, progress=False)
    assert set(report["max_abs_prob_diff"]) == {"torchscript", "onnx"}  # no heatmap explainer: not FPT's prompts
    assert max(report["max_abs_prob_diff"].values()) < 1e-4
    # the TorchScript file Deploy loads: the fused probabilities of the bundle's own network
    image = datalist_from_json(data_dir / "datalist.json")["test"][0]["image"]
    model = ExportedFPT(out / "models" / "model.ts")
    assert model.model_config["network_name"] == "ProbeFusion"
    (result,) = model([image])
    net, record = _trained(out, weights)
    x, _ = _images([{"image": image, "label": 0}], record)
    with torch.no_grad():
        expected = torch.softmax(net(x), 1)[0]
    assert list(result["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)


def test_bundles_that_do_not_share_the_frozen_model_or_classes_are_refused(fused, tmp_path):
    out, fpt_root, probe_root, _, weights = fused
    with pytest.raises(FuseError, match="--probe must be a linear probe bundle"):
        fuse_bundles(fpt_root, fpt_root, tmp_path / "x", pretrained=weights, progress=False)
    with pytest.raises(FuseError, match="--fpt must be an FPT"):
        fuse_bundles(out, probe_root, tmp_path / "x", pretrained=weights, progress=False)
    with pytest.raises(FuseError, match="exists: name another --out"):
        fuse_bundles(fpt_root, probe_root, out, pretrained=weights, progress=False)
    edited = tmp_path / "probe"
    shutil.copytree(probe_root, edited)
    path = edited / "models" / "model_config.json"
    record = json.loads(path.read_text())
    record["class_names"] = ["healthy", "disease"]
    record["frozen_weights"]["id"] = "sha256:" + "0" * 64
    path.write_text(json.dumps(record))
    with pytest.raises(FuseError) as err:
        fuse_bundles(fpt_root, edited, tmp_path / "x", pretrained=weights, progress=False)
    text = str(err.value)
    assert str(fpt_root) in text and str(edited) in text and "frozen weights" in text and "class names" in text
    # a probe that trained on an image of FPT's test split (the fused bundle's) is refused: its test would leak
    leaky = tmp_path / "leaky"
    shutil.copytree(probe_root, leaky, ignore=shutil.ignore_patterns("eval"))
    copy = leaky / "models" / "datalist.json"
    datalist = json.loads(copy.read_text())
    datalist["training"].append(datalist["test"].pop(0))  # another split: this image trains the probe
    copy.write_text(json.dumps(datalist))
    path = leaky / "models" / "model_config.json"
    record = json.loads(path.read_text())
    record["training_settings"]["datalist_sha256"] = file_sha256(copy)
    path.write_text(json.dumps(record))
    with pytest.raises(FuseError, match="trained on 1 image.s. of the test split of .*inflated"):
        fuse_bundles(fpt_root, leaky, tmp_path / "x", pretrained=weights, progress=False)
    # a fused record whose network disagrees with its fusion is refused when read
    bad = tmp_path / "fused"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("eval"))
    path = bad / "models" / "model_config.json"
    record = json.loads(path.read_text())
    record["fusion"]["weight"] = 1.0 - record["network_spec"]["kwargs"]["weight"] + 1e-3
    path.write_text(json.dumps(record))
    with pytest.raises(ModelConfigError, match="network_spec's weight differs from fusion's weight"):
        read_model_config(path)


def test_a_two_resolution_fpt_bundle_is_refused_before_any_weight_is_read(trained_tiny_bundle, tmp_path):
    """ProbeFusion's frozen model pools at FPT's img_size only: a bundle trained with pooled_img_size is refused up
    front (naming its record and the fix), not by FPT's forward in the middle of the validation pass."""
    fpt_root, _, weights = trained_tiny_bundle
    two_res = tmp_path / "two_res"
    shutil.copytree(fpt_root, two_res, ignore=shutil.ignore_patterns("eval"))
    path = two_res / "models" / "model_config.json"
    record = json.loads(path.read_text())
    for where in (record, record["network_spec"]["kwargs"]):
        where.update(head="side+pooled", pooled_img_size=32)
    path.write_text(json.dumps(record))
    with pytest.raises(FuseError) as err:
        fuse_bundles(two_res, tmp_path / "no_probe", tmp_path / "out", pretrained=weights, progress=False)
    text = str(err.value)
    assert str(path) in text and "pooled_img_size 32" in text and "pooled_img_size null" in text
    assert not (tmp_path / "out").exists()
