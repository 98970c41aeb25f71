"""The prompt head (``head: side+prompts``, configs/recipes/prompt_head.yaml) through the bundle: trained from the
stored tokens alone, recorded, evaluated from the stores and from the images alike, exported (issue 22)."""

from __future__ import annotations

import json

import pytest
import torch

from fpt_monai.engines import RecordSchemaError, read_model_config, validate_record
from fpt_monai.export import export_bundle
from fpt_monai.networks import network_from_model_config

from ..conftest import REPO_ROOT
from .conftest import TRAIN_CONFIG, run_workflow, stores_and_images_differ_by

RECIPE = str(REPO_ROOT / "configs" / "recipes" / "prompt_head.yaml")


def test_trains_from_the_tokens_evaluates_online_alike_and_exports(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    root, stores = tmp_path / "bundle", str(tmp_path / "tokens")
    run_workflow([TRAIN_CONFIG, RECIPE], root, data_dir, weights, store_root=stores, store_dtype="float32")
    record = read_model_config(root / "models" / "model_config.json", bundle_root=root)
    assert record["head"] == "side+prompts" and record["network_spec"]["kwargs"]["head"] == "side+prompts"
    assert record["store_fields"] == ["tokens"] and record["pooled_store_dir"] is None  # it reads nothing else
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert state["prompt_head.fc.weight"].abs().sum() > 0  # zero-initialised, then trained
    assert not any(k.startswith("pooled_head") for k in state)

    assert stores_and_images_differ_by(root, data_dir, weights, stores) < 1e-4

    report = export_bundle(root, pretrained=str(weights))
    assert max(report["max_abs_prob_diff"].values()) < 1e-4 and "onnx" in report["max_abs_prob_diff"]
    net = network_from_model_config(record, pretrained=str(weights), frozen_model=True).eval()
    assert net.prompt_head is not None and net.pooled_head is None

    # the record is data: a head this package does not build is refused by name
    raw = json.loads((root / "models" / "model_config.json").read_text())
    validate_record(raw)
    with pytest.raises(RecordSchemaError, match="head"):
        validate_record({**raw, "head": "side+everything"})
