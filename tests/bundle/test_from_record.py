"""Evaluation and inference need only the bundle folder: every setting of the trained model comes from
models/model_config.json, and a contradicting option is refused naming both values (issue 14)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from fpt_monai.data import FeatureStore, datalist_from_json
from fpt_monai.engines import read_model_config

from ..conftest import REPO_ROOT, error_text
from .conftest import META, TRAIN_CONFIG, run_workflow

EVAL_CONFIG = TRAIN_CONFIG.replace("train.yaml", "evaluate.yaml")
INFER_CONFIG = TRAIN_CONFIG.replace("train.yaml", "inference.yaml")


def _bare(config, bundle_root, workflow_type="train", **overrides) -> ConfigWorkflow:
    """A workflow given the bundle folder and nothing of the model (num_workers=0 only spares the test a pool)."""
    return ConfigWorkflow(
        config_file=config,
        meta_file=META,
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(bundle_root),
        num_workers=0,
        **overrides,
    )


def _run(wf: ConfigWorkflow) -> ConfigWorkflow:
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture
def moved_bundle(tmp_path, trained_tiny_bundle):
    """A copy of the trained tiny bundle in another folder, with its feature store beside it (``feature_stores/``):
    the folder of bundles moved as a whole."""
    root, data_dir, weights = trained_tiny_bundle
    copy = tmp_path / "runs" / "moved_bundle"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("eval"))
    store = Path(read_model_config(root / "models" / "model_config.json", bundle_root=root)["store_dir"]).resolve()
    shutil.copytree(store, tmp_path / "runs" / "feature_stores" / store.name)
    return copy, data_dir, weights


def test_evaluation_needs_only_the_bundle_root(moved_bundle):
    root, data_dir, _ = moved_bundle
    record = json.loads((root / "models" / "model_config.json").read_text())
    # beside the bundle, recorded relative: it moves with the folder of bundles
    name = record["training_settings"]["store_dir"].removeprefix("../feature_stores/")
    assert name != record["training_settings"]["store_dir"] and "/" not in name
    stores = root.parent / "feature_stores"
    stored = set(FeatureStore.open(stores / name).ids)
    _run(_bare([TRAIN_CONFIG, EVAL_CONFIG], root))
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    test_ids = [i["id"] for i in datalist_from_json(data_dir / "datalist.json")["test"]]
    assert metrics["best"]["n"] == metrics["final"]["n"] == len(test_ids)  # the training's datalist, its test split
    # the test split went into the moved store, not a new one built with default settings
    assert set(FeatureStore.open(stores / name).ids) == stored | set(test_ids)
    assert [p.name for p in stores.iterdir()] == [name]


def test_a_contradicting_option_is_refused_before_anything_is_written(moved_bundle):
    root, _, _ = moved_bundle
    with pytest.raises(Exception) as info:
        _run(_bare([TRAIN_CONFIG, EVAL_CONFIG], root, img_size=96, head="side+pooled", batch_size=2))
    text = error_text(info.value)
    assert str(root / "models" / "model_config.json") in text
    assert (
        "--img_size 96 (the trained model has 64)" in text
        and "--head 'side+pooled' (the trained model has 'side')" in text
    )
    assert "batch_size" not in text  # not a setting of the model
    assert not (root / "eval").exists()
    with pytest.raises(Exception) as info:
        _run(_bare(INFER_CONFIG, root, "infer", dataset_dir=str(root), backbone="vit_small_patch16_224"))
    assert "--backbone 'vit_small_patch16_224' (the trained model has 'vit_tiny_patch16_224')" in error_text(info.value)


def test_other_weights_are_refused_the_same_weights_moved_are_accepted(moved_bundle, tmp_path):
    root, data_dir, weights = moved_bundle
    images = data_dir / "images" / "test"
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    from fpt_monai.networks import create_vit_backbone

    torch.manual_seed(1)  # other random weights than the fixture's (seed 0)
    save_file(create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=224).state_dict(), str(other))
    assert other.read_bytes() != weights.read_bytes()
    with pytest.raises(Exception) as info:
        _run(_bare(INFER_CONFIG, root, "infer", dataset_dir=str(images), pretrained=str(other)))
    assert "--pretrained" in error_text(info.value) and "the trained model's frozen weights are" in error_text(
        info.value
    )
    same = tmp_path / "moved_weights.safetensors"
    shutil.copy(weights, same)
    _run(_bare(INFER_CONFIG, root, "infer", dataset_dir=str(images), pretrained=str(same)))
    rows = list(csv.DictReader(open(root / "eval" / "predictions.csv")))
    assert len(rows) == sum(1 for p in images.rglob("*") if p.is_file())


def test_a_datalist_with_other_classes_is_refused(moved_bundle, tmp_path):
    root, data_dir, _ = moved_bundle
    data = tmp_path / "swapped"
    shutil.copytree(data_dir, data)
    datalist = json.loads((data / "datalist.json").read_text())
    datalist["classes"] = list(reversed(datalist["classes"]))
    (data / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(Exception) as info:
        _run(_bare([TRAIN_CONFIG, EVAL_CONFIG], root, dataset_dir=str(data)))
    assert "the datalist's classes ['abnormal', 'normal']" in error_text(info.value)


def test_a_baseline_is_evaluated_and_classifies_images_from_its_record(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    bundle = tmp_path / "lora"
    preset = str(REPO_ROOT / "configs" / "methods" / "lora.yaml")
    run_workflow([TRAIN_CONFIG, preset], bundle, data_dir, weights, epochs=1)
    record = json.loads((bundle / "models" / "model_config.json").read_text())
    assert record["network_name"] == "LoRAViT" and record["network_spec"]["kwargs"]["rank"] == 16
    assert record["training_settings"]["mode"] == "online"
    _run(_bare([TRAIN_CONFIG, EVAL_CONFIG], bundle))  # no preset: the record names the network
    assert json.loads((bundle / "eval" / "metrics.json").read_text())["best"]["n"] > 0
    _run(_bare(INFER_CONFIG, bundle, "infer", dataset_dir=str(data_dir / "images" / "test")))
    assert (bundle / "eval" / "predictions.csv").is_file()


def test_a_tracked_evaluation_from_the_record_warns_of_no_training_only_setting(tmp_path, tiny_bundle_data, caplog):
    import logging

    data_dir, weights = tiny_bundle_data
    run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=1, learning_rate=0.01, tracking="mlflow")
    with caplog.at_level(logging.WARNING, logger="fpt_monai"):
        _run(_bare([TRAIN_CONFIG, EVAL_CONFIG], tmp_path, tracking="mlflow"))
    assert "differs from training run" not in caplog.text  # epochs, learning rate: training's business
    run = json.loads((tmp_path / "models" / "mlflow_run.json").read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run["tracking_uri"])
    (evaluation,) = [r for r in client.search_runs([run["experiment_id"]]) if r.info.run_id != run["run_id"]]
    assert evaluation.data.params["learning_rate"] == "0.01"  # the evaluation run carries the training's values


def test_a_datalist_of_another_name_is_the_one_evaluated(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    datalist = json.loads((data / "datalist.json").read_text())
    assert len(datalist["test"]) > 1
    datalist["test"] = datalist["test"][:1]  # another test split than datalist.json's, in my_split.json
    (data / "my_split.json").write_text(json.dumps(datalist))
    bundle = tmp_path / "bundle"
    run_workflow(TRAIN_CONFIG, bundle, data, weights, epochs=1, datalist_file=str(data / "my_split.json"))
    _run(_bare([TRAIN_CONFIG, EVAL_CONFIG], bundle))
    assert json.loads((bundle / "eval" / "metrics.json").read_text())["best"]["n"] == 1


def test_training_into_a_bundle_of_another_model_is_refused(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=1)
    record = (tmp_path / "models" / "model_config.json").read_text()
    with pytest.raises(Exception) as info:
        run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=2, side_img_size=48)
    assert "side_img_size 32 -> 48" in error_text(info.value)
    assert (tmp_path / "models" / "model_config.json").read_text() == record  # the record still describes model.pt
    run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=2)  # the same model resumes
