"""The bundle's training and evaluation on the device: a tiny run trains there (network, resident tokens, AMP on
CUDA), writes ``models/model.pt``, and its evaluation on the device writes the test metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fpt_monai.data import datalist_from_json
from fpt_monai.engines import load_checkpoint

from ..bundle_utils import TRAIN_CONFIG, run_workflow
from .conftest import bundle_device_overrides, is_cuda

pytestmark = pytest.mark.cuda

EVAL_CONFIG = TRAIN_CONFIG.replace("train.yaml", "evaluate.yaml")


def test_training_on_the_device_writes_the_model(device_bundle, device):
    root, _, _, facts = device_bundle
    assert facts["network_device"] == device
    assert facts["resident_device"] == device  # the stored tokens were gathered where the network runs
    if is_cuda(device):
        assert facts["cuda_peak_bytes"] > 0
    models = root / "models"
    for name in ("model.pt", "model_final.pt", "model_config.json"):
        assert (models / name).is_file(), name
    record = json.loads((models / "model_config.json").read_text())
    assert record["backbone"] == "vit_tiny_patch16_224" and record["img_size"] == 64
    # a checkpoint written from the device loads on a CPU-only machine, every tensor finite
    state = load_checkpoint(models / "model.pt")
    assert state and all(t.device.type == "cpu" and bool(torch.isfinite(t).all()) for t in state.values())


def test_evaluation_on_the_device_writes_the_metrics(device_bundle, device, tmp_path):
    root, data_dir, weights, _ = device_bundle
    # evaluation writes into the bundle: run it on a copy, so that other tests see the trained bundle as it was
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(root, bundle)
    workflow = run_workflow([TRAIN_CONFIG, EVAL_CONFIG], bundle, data_dir, weights, **bundle_device_overrides(device))
    network = workflow.parser.get_parsed_content("network")
    assert next(network.parameters()).device == device
    metrics = json.loads((bundle / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"best", "final"}
    n_test = len(datalist_from_json(data_dir / "datalist.json")["test"])
    for name, figures in metrics.items():
        assert figures["n"] == n_test, name
        for key in ("auc", "acc", "f1"):
            assert math.isfinite(figures[key]) and 0.0 <= figures[key] <= 1.0, (name, key)
    assert (bundle / "eval" / "metrics.csv").is_file() and (bundle / "eval" / "predictions_best.csv").is_file()
