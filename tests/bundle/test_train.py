from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from ignite.engine import Events

from fpt_monai.data import FeatureStore, datalist_from_json
from fpt_monai.networks import FPT

from ..conftest import REPO_ROOT, error_text
from .conftest import META, TRAIN_CONFIG, make_workflow, tiny_overrides


def _workflow(bundle_root, data_dir, weights, **extra):
    return make_workflow(TRAIN_CONFIG, bundle_root, data_dir, weights, **extra)


@pytest.mark.parametrize("mode", ["preload", "online"])
def test_training_in_both_modes(tmp_path, tiny_bundle_data, mode):
    data_dir, weights = tiny_bundle_data
    bundle = tmp_path / "bundle"
    wf = _workflow(bundle, data_dir, weights, mode=mode)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    network = wf.parser.get_parsed_content("network")
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    wf.finalize()
    assert set(metrics) == {"val_auc", "val_acc", "val_f1", "val_precision", "val_recall", "val_kappa", "val_loss"}
    models = bundle / "models"
    assert {"model.pt", "last.pt", "model_final.pt"} <= set(os.listdir(models))
    last = torch.load(models / "last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 2 and "optimizer" in last and "lr_scheduler" in last
    if mode == "preload":
        assert network.lpm is None  # trained from stored tokens: the frozen model was never loaded
        dl = datalist_from_json(data_dir / "datalist.json")
        # the store beside the bundle, named after its settings (fpt_monai.data.store_location)
        (store_dir,) = (tmp_path / "feature_stores").iterdir()
        assert store_dir.name.startswith("vit_tiny_patch16_224_64_")
        store = FeatureStore.open(store_dir)
        store.require(i["id"] for i in dl["training"] + dl["validation"])
    else:
        assert network.lpm is not None
        assert not (tmp_path / "feature_stores").exists()  # online: no store
    # the best checkpoint loads strictly into a full model built from the same weight file
    full = FPT(num_classes=2, backbone="vit_tiny_patch16_224", pretrained=str(weights), img_size=64, side_img_size=32)
    full.load_state_dict(torch.load(models / "model.pt", weights_only=True), strict=True)


def test_resume_continues_from_the_saved_epoch(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    wf = _workflow(tmp_path, data_dir, weights, epochs=1, learning_rate=0.01)
    wf.initialize()
    wf.run()
    wf.finalize()
    first = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    assert first["trainer"]["epoch"] == 1

    wf = _workflow(tmp_path, data_dir, weights, epochs=3, learning_rate=0.01)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    started = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: started.append(e.state.epoch))
    wf.run()
    wf.finalize()
    assert started == [2, 3]  # epoch 1 was not trained again
    last = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 3
    assert last["trainer"]["iteration"] == 3 * first["trainer"]["iteration"]
    assert last["best_metric"] >= first["best_metric"]
    steps = [s["step"] for s in last["optimizer"]["state"].values()]
    assert all(int(s) == last["trainer"]["iteration"] for s in steps)  # AdamW moments carried over


def test_class_weights_reach_the_loss(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    wf = _workflow(tmp_path, data_dir, weights, class_weighting=True)
    wf.initialize()
    loss = wf.parser.get_parsed_content("loss")
    assert loss.weight is not None and loss.weight.shape == (2,)


def test_wrong_num_classes_and_missing_dataset(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    wf = _workflow(tmp_path, data_dir, weights, num_classes=1)
    with pytest.raises(Exception) as info:
        wf.initialize()
    assert "but num_classes=1" in error_text(info.value)
    wf = _workflow(tmp_path, data_dir, weights, num_classes=3)
    with pytest.raises(Exception) as info:
        wf.initialize()
    assert "Set num_classes to 2" in error_text(info.value)
    wf = _workflow(tmp_path, tmp_path / "no_such_dataset", weights)
    with pytest.raises(Exception) as info:
        wf.initialize()
    chain = error_text(info.value)
    assert "no_such_dataset" in chain and "datalist" in chain


def test_stale_feature_store_is_refused(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    # a store folder named outright (--store_dir); the default one is named after its settings, so it never is stale
    store_dir = str(tmp_path / "store")
    wf = _workflow(tmp_path / "bundle", data_dir, weights, epochs=1, store_dir=store_dir)
    wf.initialize()
    wf.run()
    wf.finalize()
    # same store folder, other settings; starting afresh (resuming another model is refused before, by the record)
    wf = _workflow(tmp_path / "bundle", data_dir, weights, epochs=1, token_ratio=0.5, resume=False, store_dir=store_dir)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    text = error_text(info.value)
    assert "token_ratio" in text and "Preload into a new directory" in text


def test_bundle_cli(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    args = [f"--{k}={v}" for k, v in tiny_overrides(data_dir, weights, epochs=1).items()]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            TRAIN_CONFIG,
            "--meta_file",
            META,
            "--bundle_root",
            str(tmp_path),
            *args,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file() and "val_auc" in proc.stdout + proc.stderr


def test_a_resident_store_trains_exactly_as_reading_it(tmp_path, tiny_bundle_data, caplog):
    import logging

    data_dir, weights = tiny_bundle_data
    finals = {}
    for resident in ("true", "false"):
        root = tmp_path / resident
        with caplog.at_level(logging.INFO, logger="fpt_monai.data.resident"):
            # a store of its own: both runs preload (the preload draws on the random state the training then uses)
            wf = _workflow(root, data_dir, weights, resident_store=resident, epochs=1, store_root=str(root / "stores"))
            wf.initialize()
            wf.run()
            assert (wf.parser.get_parsed_content("resident_tokens") is not None) == (resident == "true")
            wf.finalize()
        finals[resident] = torch.load(root / "models" / "model_final.pt", weights_only=True)
    assert "feature store resident on cpu" in caplog.text
    assert finals["true"].keys() == finals["false"].keys()
    for name, tensor in finals["true"].items():
        assert torch.equal(tensor, finals["false"][name]), name
