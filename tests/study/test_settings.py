"""The study's settings before any run: the default data and weights relative to the current directory (an
installed package has no clone), the packaged presets, the learning-rate grids and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from fpt_monai.commands.study import build_parser
from fpt_monai.study.defaults import DINOV2_WEIGHTS, ISIC_CSV
from fpt_monai.study.folds import load_datalist
from fpt_monai.study.run import default_weights
from fpt_monai.study.runs import find_preset, lr_grids, method_presets, parse_overrides
from fpt_monai.utils.bundle_files import PRESETS_DIR


def test_default_isic_data_is_looked_for_from_the_current_directory(tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    clone.mkdir()
    monkeypatch.chdir(clone)
    args = build_parser().parse_args([])
    assert not Path(args.weights).is_absolute() and args.csv is None
    with pytest.raises(SystemExit, match="give --datalist, --csv or --image-folder") as err:
        load_datalist(args)
    assert "the default: the ISIC data in" in str(err.value) and str(clone) in str(err.value)
    # an explicit --csv keeps its own message
    with pytest.raises(SystemExit) as err:
        load_datalist(build_parser().parse_args(["--csv", "labels.csv"]))
    assert str(err.value).startswith("labels.csv not found;")

    # the shared data beside the clone: the default CSV is read with the ISIC columns
    csv_file = tmp_path / "shared" / "data" / "isic_uda1" / "labels.csv"
    assert (clone / ISIC_CSV).resolve() == csv_file
    csv_file.parent.mkdir(parents=True)
    csv_file.write_text("isic_id,label\n" + "".join(f"i{k},{k % 2}\n" for k in range(4)))
    datalist = load_datalist(args)
    items = [item for split in ("training", "validation", "test") for item in datalist.get(split, [])]
    assert len(items) == 4 and datalist["classes"] == ["benign", "malignant"]
    assert sorted(item["image"] for item in items) == [str(csv_file.parent / "images" / f"i{k}.jpg") for k in range(4)]


def test_default_weights_must_exist_and_become_absolute(tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    clone.mkdir()
    monkeypatch.chdir(clone)
    with pytest.raises(SystemExit, match="give --weights") as err:
        default_weights(str(DINOV2_WEIGHTS))
    assert str(clone) in str(err.value)
    assert default_weights("missing.safetensors") == "missing.safetensors"  # given: to the bundle as it is
    weights = (clone / DINOV2_WEIGHTS).resolve()
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert default_weights(str(DINOV2_WEIGHTS)) == str(weights)


def test_methods_are_packaged_presets_and_grids_and_overrides_parse():
    assert find_preset("fpt_plus") == PRESETS_DIR / "methods" / "fpt_plus.yaml"
    assert method_presets("fpt_plus+small_data") == [
        PRESETS_DIR / "methods" / "fpt_plus.yaml",
        PRESETS_DIR / "recipes" / "small_data.yaml",
    ]
    with pytest.raises(SystemExit, match="unknown method 'fpt_pls'.*'fpt_plus'"):
        find_preset("fpt_pls")
    grids = lr_grids(["fpt_plus", "linear_probe"], "fpt_plus=1e-2, 1e-4")
    assert grids == {"fpt_plus": [1e-2, 1e-4], "linear_probe": [1e-2, 1e-3]}
    with pytest.raises(SystemExit, match="expected METHOD=LR1,LR2"):
        lr_grids(["fpt_plus"], "lora=1e-3")
    assert parse_overrides(["epochs=3", "device=cpu", 'a={"b": 1}']) == {"epochs": 3, "device": "cpu", "a": {"b": 1}}
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        parse_overrides(["epochs"])
