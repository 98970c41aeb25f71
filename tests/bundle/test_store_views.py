"""``store_views`` through the bundle: train.yaml stores two views per training image and trains from them."""

from __future__ import annotations

import pytest

from fpt_monai.data import FeatureStore
from fpt_monai.engines.model_record import read_record

from ..conftest import error_text
from .conftest import TRAIN_CONFIG, make_workflow


def test_bundle_trains_from_two_stored_views(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    root = tmp_path / "bundle"
    # the transforms as a comma-separated string (check_store_views takes one): the record holds their names
    wf = make_workflow(
        TRAIN_CONFIG,
        root,
        data_dir,
        weights,
        store_root=str(tmp_path / "tokens"),
        store_views=2,
        store_view_transforms="hflip, crop90",
    )
    wf.initialize()
    wf.run()
    datalist = wf.parser.get_parsed_content("datalist")
    store = FeatureStore.open(wf.parser.get_parsed_content("store_dir"))
    train_ids = [str(i["id"]) for i in datalist["training"]]
    val_ids = [str(i["id"]) for i in datalist["validation"]]
    # two views per training image (the plain one and its horizontal flip), the plain view of each validation image
    assert set(store.ids) == set(train_ids) | {f"{i}@hflip" for i in train_ids} | set(val_ids)
    assert (root / "models" / "model.pt").is_file()
    assert wf.parser.get_parsed_content("hyper_params")["store_views"] == 2
    # the model's record says which views it was trained from (validated against the record's schema on read)
    settings = read_record(root / "models" / "model_config.json")["training_settings"]
    assert settings["store_views"] == 2 and settings["store_view_transforms"] == ["hflip"]
    assert settings["weight_averaging"] == "none" and settings["ema_decay"] is None
    # training draws a view per image and reads its tokens; validation reads the plain view
    train_item = wf.parser.get_parsed_content("train#dataset")[0]
    assert train_item["store_id"] in (train_item["id"], f"{train_item['id']}@hflip")
    assert "store_id" not in wf.parser.get_parsed_content("validate#dataset")[0]
    wf.finalize()


def test_bundle_refuses_more_views_than_transforms_before_writing(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    root = tmp_path / "bundle"
    wf = make_workflow(
        TRAIN_CONFIG,
        root,
        data_dir,
        weights,
        store_root=str(tmp_path / "tokens"),
        store_views=3,
        store_view_transforms=["crop90"],
    )
    with pytest.raises(Exception) as err:
        wf.initialize()
    assert "store_views 3 needs 2 transforms in store_view_transforms" in error_text(err.value)
    assert not (root / "models" / "model_config.json").exists()
