"""The trained model's record (models/model_config.json): written by training, checked by evaluation/inference."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from fpt_monai.data.feature_store import file_sha256
from fpt_monai.engines import (
    MODEL_SETTINGS,
    ModelConfigError,
    check_model_settings,
    read_model_config,
    recorded_datalist,
    recorded_location,
    recorded_weights,
    write_model_config,
)
from fpt_monai.networks import FPT

from ..conftest import TINY

SETTINGS = {
    "class_names": ["normal", "abnormal"],
    "num_classes": 2,
    "network_name": "fpt",
    "variant": "fpt_plus",
    "backbone": TINY["backbone"],
    "img_size": 64,
    "side_img_size": 32,
    "token_ratio": 0.2,
    "side_init": "hf",
    "head": "side",
    "fusion_dropout": 0.5,
    "lpm_layer_norm_eps": None,
    "normalization": "auto",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.2, 0.2, 0.2],
}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights" / "vit.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"not really weights, but hashed like them")
    return path


def _write(tmp_path, weights, store_dir=None, **extra):
    bundle = tmp_path / "bundle"
    net = FPT(num_classes=2, pretrained=False, frozen_model=False, side_img_size=32, **TINY)
    settings = {
        "mode": "preload",
        "store_dtype": "float16",
        "preload_precision": "fp32",
        "store_fields": ("tokens",),
        "side_view": True,
        "store_dir": store_dir if store_dir is not None else bundle / "tokens" / "s",
        "dataset_dir": tmp_path / "data",
    }
    path = bundle / "models" / "model_config.json"
    write_model_config(
        path,
        network=net,
        pretrained=weights,
        training_settings=settings,
        bundle_root=bundle,
        **{
            **SETTINGS,
            **extra,
        },
    )
    return bundle, path


def test_record_round_trip_with_portable_paths(tmp_path, weights):
    bundle, path = _write(tmp_path, weights)
    raw = json.loads(path.read_text())
    assert raw["format"] == 2 and raw["network_spec"]["target"] == "FPT"
    assert raw["frozen_weights"] == {"source": str(weights.resolve()), "id": f"sha256:{file_sha256(weights)}"}
    assert raw["training_settings"]["store_dir"] == "tokens/s"  # inside the bundle: relative, the bundle can move
    moved = tmp_path / "moved"
    shutil.move(str(bundle), moved)
    record = read_model_config(moved / "models" / "model_config.json", bundle_root=moved)
    assert record["store_dir"] == str(moved / "tokens" / "s")
    assert record["dataset_dir"] == str((tmp_path / "data").resolve())
    assert record["_assumed"] == [] and record["store_fields"] == ["tokens"] and record["mode"] == "preload"
    assert recorded_weights(record) == str(weights.resolve())
    check_model_settings(record, pretrained=recorded_weights(record), **{k: record[k] for k in MODEL_SETTINGS})


def test_a_store_beside_the_bundle_is_recorded_relative_and_trusted(tmp_path, weights):
    """train.yaml's default store root is <parent>/feature_stores, shared with the sibling bundles: a store there is
    recorded as ../feature_stores/<name>, found again when the folder of bundles moves, and accepted without being
    named; a path that leaves that folder (or names the folder itself, or another sibling) is not."""
    runs = tmp_path / "runs"
    bundle, path = _write(runs, weights, store_dir=runs / "feature_stores" / "s")
    raw = json.loads(path.read_text())
    assert raw["training_settings"]["store_dir"] == "../feature_stores/s"
    # elsewhere (not beside the bundle): absolute, as before
    _write(tmp_path / "other", weights, store_dir=tmp_path / "feature_stores" / "s")
    other = json.loads((tmp_path / "other" / "bundle" / "models" / "model_config.json").read_text())
    assert other["training_settings"]["store_dir"] == str((tmp_path / "feature_stores" / "s").resolve())

    moved = tmp_path / "moved_runs"
    shutil.move(str(runs), moved)
    record = read_model_config(moved / "bundle" / "models" / "model_config.json", bundle_root=moved / "bundle")
    store = recorded_location(record, "store_dir", moved / "bundle")
    assert Path(store).resolve() == (moved / "feature_stores" / "s").resolve()
    for bad in ("../feature_stores/../victim", "../feature_stores", "../victim"):
        record["store_dir"] = str(moved / "bundle" / bad)
        with pytest.raises(ModelConfigError, match=r"store_dir .* is outside the bundle .*Pass --store_dir <folder>"):
            recorded_location(record, "store_dir", moved / "bundle")
    # only the store: a dataset or datalist there is not trusted
    record["dataset_dir"] = str(moved / "feature_stores" / "s")
    with pytest.raises(ModelConfigError, match="dataset_dir .* is outside the bundle"):
        recorded_location(record, "dataset_dir", moved / "bundle")


def test_baselines_are_named_by_their_class(tmp_path):
    from fpt_monai.networks import VPTDeepViT

    path = tmp_path / "model_config.json"
    net = VPTDeepViT(num_classes=2, pretrained=False, num_prompts=2, **TINY)
    record = write_model_config(path, network=net, pretrained=False, **SETTINGS)
    assert record["network_name"] == "VPTDeepViT" and record["network_spec"]["kwargs"]["num_prompts"] == 2
    assert record["frozen_weights"] == {"source": False, "id": "random"}


def test_conflicting_settings_are_refused_naming_both_values(tmp_path, weights):
    _, path = _write(tmp_path, weights)
    record = read_model_config(path)
    with pytest.raises(ModelConfigError) as info:
        check_model_settings(record, backbone="vit_small_patch16_224", img_size="128", token_ratio=0.2)
    text = str(info.value)
    assert str(path) in text and "drop the conflicting options" in text
    assert "--backbone 'vit_small_patch16_224' (the trained model has 'vit_tiny_patch16_224')" in text
    assert "--img_size '128' (the trained model has 64)" in text
    assert "token_ratio" not in text  # equal values pass
    # values from the command line arrive as text: equal values in another spelling pass
    check_model_settings(record, img_size="64", token_ratio="0.2", lpm_layer_norm_eps="None", num_classes=2.0)
    with pytest.raises(ModelConfigError, match="the datalist's classes \\['abnormal', 'normal'\\]"):
        check_model_settings(record, class_names=["abnormal", "normal"])
    check_model_settings(record, class_names=["normal", "abnormal"])


def test_weights_moved_are_accepted_other_weights_refused(tmp_path, weights):
    _, path = _write(tmp_path, weights)
    record = read_model_config(path)
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(weights, moved)
    check_model_settings(record, pretrained=str(moved))  # the same bytes: the same frozen model
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"other weights")
    with pytest.raises(ModelConfigError, match=r"--pretrained '.*other.safetensors' \(sha256:"):
        check_model_settings(record, pretrained=str(other))
    with pytest.raises(ModelConfigError, match="the trained model's frozen weights are"):
        check_model_settings(record, pretrained=True)
    weights.unlink()
    with pytest.raises(ModelConfigError, match="Pass --pretrained with the same file where it is now"):
        check_model_settings(record, pretrained=recorded_weights(record))


def test_older_records_get_the_defaults_with_a_warning_and_no_check(tmp_path, caplog):
    path = tmp_path / "models" / "model_config.json"
    path.parent.mkdir()
    old = {k: SETTINGS[k] for k in ("class_names", "num_classes", "variant", "backbone", "img_size", "side_img_size")}
    old.update({"token_ratio": 0.2, "mean": [0.5] * 3, "std": [0.2] * 3})
    path.write_text(json.dumps(old))
    # an older record that does not name the frozen weights is refused: nothing could check them
    with pytest.raises(ModelConfigError, match=r"does not name the frozen model's weights \(key frozen_weights\)"):
        read_model_config(path)
    path.write_text(json.dumps({**old, "frozen_weights": {"source": False, "id": "random"}}))
    with caplog.at_level(logging.WARNING):
        record = read_model_config(path)
    assert "written by an older fpt_monai" in caplog.text and "store_dtype" in caplog.text
    assert record["mode"] == "preload" and record["store_dir"] == str(
        tmp_path / "tokens" / "fpt_plus_vit_tiny_patch16_224_64"
    )
    assert recorded_weights(record) is False
    check_model_settings(record, store_dtype="float32", pretrained=False)  # assumed keys: not checked
    with pytest.raises(ModelConfigError, match="--img_size"):
        check_model_settings(record, img_size=96)


def test_missing_or_broken_record_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ModelConfigError, match="no model record there .*train first, or point --bundle_root"):
        read_model_config(tmp_path / "models" / "model_config.json")
    bad = tmp_path / "model_config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelConfigError, match="cannot read the model record"):
        read_model_config(bad)
    bad.write_text(json.dumps({"training": []}))
    with pytest.raises(ModelConfigError, match=r"not a valid model record: unknown keys \['training'\]; missing keys"):
        read_model_config(bad)


def test_resuming_into_a_bundle_of_another_model_is_refused(tmp_path, weights):
    bundle, path = _write(tmp_path, weights)
    before = path.read_text()
    net = FPT(num_classes=2, pretrained=False, frozen_model=False, side_img_size=32, **TINY)
    again = dict(path=path, network=net, pretrained=weights, bundle_root=bundle, resume=True)
    write_model_config(**again, **SETTINGS)  # no last.pt: nothing to resume, the record is rewritten
    (path.parent / "last.pt").write_bytes(b"a checkpoint")
    write_model_config(**again, **SETTINGS)  # the same model resumes
    other = FPT(num_classes=2, pretrained=False, frozen_model=False, side_img_size=32, **{**TINY, "img_size": 96})
    with pytest.raises(ModelConfigError) as info:
        write_model_config(**{**again, "network": other}, **{**SETTINGS, "img_size": 96})
    text = str(info.value)
    assert "img_size 64 -> 96" in text and "another --bundle_root" in text and "--resume false" in text
    assert json.loads(path.read_text())["img_size"] == 64  # not overwritten
    write_model_config(**{**again, "network": other, "resume": False}, **{**SETTINGS, "img_size": 96})  # afresh
    assert json.loads(path.read_text())["img_size"] == 96 and before != path.read_text()


def test_evaluation_reads_the_trainings_copy_of_its_datalist_and_no_folder_outside_the_bundle(tmp_path, weights):
    from fpt_monai.data import write_datalist

    items = [{"image": str(tmp_path / "data" / f"{i}.png"), "label": i % 2, "id": f"{i}.png"} for i in range(6)]
    source = write_datalist(
        {"training": items[:2], "validation": items[2:4], "test": items[4:]}, tmp_path / "data" / "dl.json"
    )
    bundle, path = _write(tmp_path, weights)
    raw = json.loads(path.read_text())
    raw["training_settings"]["datalist_file"] = str(source)
    bundle_settings = dict(raw["training_settings"], store_fields=("tokens",))
    net = FPT(num_classes=2, pretrained=False, frozen_model=False, side_img_size=32, **TINY)
    write_model_config(
        path, network=net, pretrained=weights, training_settings=bundle_settings, bundle_root=bundle, **SETTINGS
    )
    raw = json.loads(path.read_text())
    copy = bundle / "models" / "datalist.json"
    assert raw["training_settings"]["datalist_file"] == "models/datalist.json"
    assert raw["training_settings"]["datalist_source"] == str(source.resolve())
    assert raw["training_settings"]["datalist_sha256"] == file_sha256(copy)
    record = read_model_config(path, bundle_root=bundle)
    # the training's folder: its copy inside the bundle; another folder named on the command line: its datalist.json
    assert recorded_datalist(record, record["dataset_dir"], bundle_root=bundle) == str(copy)
    assert recorded_datalist(record, tmp_path / "other", bundle_root=bundle) == str(
        tmp_path / "other" / "datalist.json"
    )
    # a record that names a file or folder outside the bundle (edited, or shared) is never used without being named
    raw["training_settings"]["datalist_file"] = str(source)
    for bad in ("../../../x", "/tmp/elsewhere/store", str(tmp_path / "shared_store")):
        raw["training_settings"]["store_dir"] = bad
        path.write_text(json.dumps(raw))
        record = read_model_config(path, bundle_root=bundle)
        with pytest.raises(ModelConfigError, match=r"store_dir .* is outside the bundle .*Pass --store_dir <folder>"):
            recorded_location(record, "store_dir", bundle)
        with pytest.raises(ModelConfigError, match=r"datalist_file .* outside the bundle .*--datalist_file <file>"):
            recorded_datalist(record, record["dataset_dir"], bundle_root=bundle)
    # ... unless it lies under a folder the user named (a shared --store_root)
    assert recorded_location(record, "store_dir", bundle, named=[tmp_path]) == str(tmp_path / "shared_store")


def test_an_older_linear_probe_record_reads_pooled_features(tmp_path):
    path = tmp_path / "models" / "model_config.json"
    path.parent.mkdir()
    old = {k: SETTINGS[k] for k in ("class_names", "num_classes", "backbone", "img_size")}
    old["frozen_weights"] = {"source": False, "id": "random"}
    path.write_text(json.dumps({**old, "network_name": "linear_probe", "mean": [0.5] * 3, "std": [0.2] * 3}))
    record = read_model_config(path)
    assert record["store_fields"] == ["pooled"] and record["side_view"] is False


def test_text_weights_from_the_command_line_are_booleans(tmp_path):
    path = tmp_path / "model_config.json"
    net = FPT(num_classes=2, pretrained=False, frozen_model=False, side_img_size=32, **TINY)
    write_model_config(path, network=net, pretrained="false", **SETTINGS)
    record = read_model_config(path)
    assert record["frozen_weights"] == {"source": False, "id": "random"}
    check_model_settings(record, pretrained="False")  # not "no such weight file: False"
    with pytest.raises(ModelConfigError, match="--pretrained 'True'"):
        check_model_settings(record, pretrained="True")
