from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from fpt_monai.data import DATASET_STATS

from ..conftest import REPO_ROOT
from .conftest import TRAIN_CONFIG, make_workflow

PRESETS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))

EXPECTED = {  # spec §2.1: classes and learning rate per dataset
    "messidor2": (5, 2e-4),
    "ddr": (5, 5e-4),
    "isic2016": (2, 5e-3),
    "isic2018": (7, 1e-4),
    "ddsm": (3, 1e-3),
    "cmmd": (2, 5e-5),
    "covid": (3, 1e-4),
    "chncxr": (2, 5e-4),
}


def _parser(*files):
    parser = ConfigParser()
    parser.read_config([TRAIN_CONFIG, *map(str, files)])
    return parser


def test_every_dataset_of_the_paper_has_a_preset():
    names = {p.stem for p in (REPO_ROOT / "configs" / "datasets").glob("*.yaml")}
    assert names == set(EXPECTED) == set(DATASET_STATS)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_preset_merges_over_train(preset: Path):
    parser = _parser(preset)
    raw = ConfigParser.load_config_file(str(preset))
    for key, value in raw.items():
        assert parser[key] == value  # the preset's values win over train.yaml's
    if preset.parent.name == "datasets":
        classes, lr = EXPECTED[preset.stem]
        assert parser.get_parsed_content("num_classes") == classes
        assert parser.get_parsed_content("learning_rate") == pytest.approx(lr)
        assert parser.get_parsed_content("normalization") == preset.stem


def test_method_presets_match_the_networks():
    assert _parser(REPO_ROOT / "configs" / "methods" / "fpt.yaml")["variant"] == "fpt"
    assert _parser(REPO_ROOT / "configs" / "methods" / "fpt_plus.yaml")["side_img_size"] == 128


BASELINES = [
    "full_finetune",
    "full_finetune_checkpointing",
    "linear_probe",
    "linear_probe_online",
    "lora",
    "vpt",
    "adaptformer",
]


@pytest.mark.parametrize("method", BASELINES)
def test_baseline_presets_train_through_the_bundle(tmp_path, tiny_bundle_data, method):
    data_dir, weights = tiny_bundle_data
    preset = str(REPO_ROOT / "configs" / "methods" / f"{method}.yaml")
    wf = make_workflow([TRAIN_CONFIG, preset], tmp_path, data_dir, weights, epochs=1)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    wf.finalize()
    assert "val_auc" in metrics and (tmp_path / "models" / "model.pt").is_file()
