"""The small-data options through the bundle: the store-based linear probe and FPT+ with the side network
initialised from the frozen model and the hybrid head, from training to inference."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
import torch
from monai.bundle import ConfigWorkflow

from fpt_monai.data import FeatureStore, LoadPreloadedTokensd, datalist_from_json

from ..bundle_utils import make_workflow
from ..conftest import REPO_ROOT
from .conftest import META, TRAIN_CONFIG

METHODS = REPO_ROOT / "configs" / "methods"
INFER_CONFIG = TRAIN_CONFIG.replace("train.yaml", "inference.yaml")


def _train(configs, root, data_dir, weights, **extra):
    wf = make_workflow(configs, root, data_dir, weights, store_root=str(root.parent / "tokens"), **extra)
    wf.initialize()
    wf.run()
    return wf


def _infer(root, data_dir, weights):
    wf = ConfigWorkflow(
        config_file=INFER_CONFIG,
        meta_file=META,
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(data_dir / "images" / "test"),
        pretrained=str(weights),
        num_workers=0,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(root / "eval" / "predictions.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_linear_probe_trains_from_stored_pooled_features_and_classifies_images(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    probe = make_workflow(
        [TRAIN_CONFIG, str(METHODS / "linear_probe.yaml")],
        tmp_path / "probe",
        data_dir,
        weights,
        store_root=str(tmp_path / "tokens"),
        epochs=20,
    )
    probe.initialize()
    store = probe.parser.get_parsed_content("feature_store")  # the preload: tokens and pooled features
    assert store.fields == ("tokens", "pooled")
    steps = probe.parser.get_parsed_content("train#preprocessing").transforms
    assert len(steps) == 1 and isinstance(steps[0], LoadPreloadedTokensd)  # no image is read in training
    assert probe.parser.get_parsed_content("network").lpm is None  # nor is the frozen model built
    start = time.perf_counter()
    probe.run()
    seconds = time.perf_counter() - start
    probe.finalize()
    assert seconds < 60, seconds  # 20 epochs on 8 items; the real budget is measured in docs/benchmarks.md
    config = json.loads((tmp_path / "probe" / "models" / "model_config.json").read_text())
    assert config["network_name"] == "linear_probe"
    head = torch.load(tmp_path / "probe" / "models" / "model.pt", weights_only=True)
    assert set(head) >= {"head.fc.weight", "head.fc.bias"} and not any(k.startswith("lpm.") for k in head)

    rows = _infer(tmp_path / "probe", data_dir, weights)  # the one-tensor network recomputes the features
    assert len(rows) == len(json.loads((data_dir / "datalist.json").read_text())["test"])

    # FPT+ with both small-data options reuses the same store: its tokens and pooled features are already there
    shards = sorted(p.name for p in (tmp_path / "tokens").rglob("*.npy"))
    _train([TRAIN_CONFIG, str(METHODS / "fpt_plus_lpm_hybrid.yaml")], tmp_path / "hybrid", data_dir, weights)
    assert sorted(p.name for p in (tmp_path / "tokens").rglob("*.npy")) == shards
    config = json.loads((tmp_path / "hybrid" / "models" / "model_config.json").read_text())
    assert (config["network_name"], config["head"]) == ("fpt", "side+pooled")
    rows = _infer(tmp_path / "hybrid", data_dir, weights)
    assert rows and all(abs(sum(float(v) for k, v in r.items() if k.startswith("prob_")) - 1) < 1e-4 for r in rows)

    # both export like every method: TorchScript (+ the heatmap explainer for FPT) and ONNX agree with PyTorch
    for name, extra in (("hybrid", []), ("probe", ["--no-onnx"])):
        done = subprocess.run(
            [
                sys.executable,
                "scripts/export_bundle.py",
                "--bundle-root",
                str(tmp_path / name),
                "--pretrained",
                str(weights),
                *extra,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        report = json.loads((tmp_path / name / "models" / "export_check.json").read_text())
        assert max(report["max_abs_prob_diff"].values()) < 1e-4
        assert ("torchscript_explainer" in report["max_abs_prob_diff"]) == (name == "hybrid")
    assert "onnx" in json.loads((tmp_path / "hybrid" / "models" / "export_check.json").read_text())["max_abs_prob_diff"]

    # the Deploy app's model classifies with both; heatmaps exist for FPT only, and the probe says so
    from fpt_monai.deploy import ExportedFPT, ModelFileError

    image = datalist_from_json(data_dir / "datalist.json")["test"][0]["image"]
    (hybrid_result,) = ExportedFPT(tmp_path / "hybrid" / "models" / "model.ts", heatmaps=True)([image])
    assert hybrid_result["heatmap"] is not None and abs(sum(hybrid_result["probabilities"].values()) - 1) < 1e-5
    (probe_result,) = ExportedFPT(tmp_path / "probe" / "models" / "model.ts")([image])
    assert probe_result["heatmap"] is None and abs(sum(probe_result["probabilities"].values()) - 1) < 1e-5
    with pytest.raises(ModelFileError, match="linear_probe; run without --heatmaps"):
        ExportedFPT(tmp_path / "probe" / "models" / "model.ts", heatmaps=True)


def test_a_store_without_pooled_features_gets_them_added(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    # a store as an older fpt_monai (or the preload command without --pooled) wrote it: tokens only. The bundle's
    # own preload stores the pooled features too, so the store is written here with the bundle's settings
    from fpt_monai.data.preload import preload
    from fpt_monai.networks import FrozenViTExtractor

    wf = make_workflow([TRAIN_CONFIG], tmp_path / "plain", data_dir, weights, store_root=str(tmp_path / "tokens"))
    parsed = wf.parser.get_parsed_content
    mean, std = parsed("norm")
    datalist = parsed("datalist")
    preload(
        datalist["training"] + datalist["validation"],
        FrozenViTExtractor(**parsed("extractor_kwargs")),
        parsed("store_dir"),
        mean,
        std,
        progress=False,
    )
    (store_dir,) = (tmp_path / "tokens").iterdir()
    assert FeatureStore.open(store_dir).fields == ("tokens",)
    _train([TRAIN_CONFIG], tmp_path / "plain", data_dir, weights, epochs=1)
    assert FeatureStore.open(store_dir).fields == ("tokens",)  # an older store is not extracted again for them
    tokens_before = {p.name: p.stat().st_mtime_ns for p in store_dir.glob("shards/r000-*")}
    _train([TRAIN_CONFIG, str(METHODS / "fpt_plus_hybrid.yaml")], tmp_path / "hybrid", data_dir, weights, epochs=1)
    assert FeatureStore.open(store_dir).fields == ("tokens", "pooled")
    assert {p.name: p.stat().st_mtime_ns for p in store_dir.glob("shards/r000-*")} == tokens_before
