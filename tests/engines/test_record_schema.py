"""The model record's schema (fpt_monai.engines.record_schema): a record is data, checked key by key (issue 19)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpt_monai.engines import (
    ModelConfigError,
    RecordSchemaError,
    class_name_problem,
    read_model_config,
    validate_record,
)

RECORD = {
    "format": 2,
    "class_names": ["benign", "malignant", "normal"],
    "num_classes": 3,
    "network_name": "fpt",
    "variant": "fpt_plus",
    "backbone": "vit_small_patch14_dinov2",
    "img_size": 518,
    "side_img_size": 224,
    "token_ratio": 0.2,
    "side_init": "lpm",
    "head": "side",
    "fusion_dropout": 0.5,
    "lpm_layer_norm_eps": None,
    "normalization": "auto",
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.2, 0.2],
    "network_spec": {"target": "FPT", "kwargs": {"num_classes": 3, "variant": "fpt_plus", "img_size": 518}},
    "frozen_weights": {"source": "/models/dinov2.safetensors", "id": "sha256:" + "ab" * 32},
    "training_settings": {
        "mode": "preload",
        "store_dtype": "float16",
        "preload_precision": "fp32",
        "store_fields": ["tokens"],
        "side_view": True,
        "store_dir": "../feature_stores/vit_small_patch14_dinov2_518_3f9a0c1b2d4e",
        "dataset_dir": "/data/us",
        "datalist_file": "models/datalist.json",
        "datalist_source": "/data/us/datalist.json",
        "datalist_sha256": "cd" * 32,
    },
}


def _with(**changes):
    record = json.loads(json.dumps(RECORD))
    for key, value in changes.items():
        if value is _DROP:
            record.pop(key)
        else:
            record[key] = value
    return record


_DROP = object()


def test_a_record_that_training_writes_is_valid():
    assert validate_record(RECORD) == 2
    assert (
        validate_record({k: RECORD[k] for k in ("class_names", "num_classes", "backbone", "img_size", "mean", "std")})
        == 1
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        # the reviewer's table: code in an extra key, code and macros as class names, no mean, an unknown format
        ({"network_def": "$__import__('pathlib').Path('x').touch() or 'x'"}, "unknown keys ['network_def']"),
        ({"class_names": ["$import this", "b", "c"]}, "starts with '$', '@' or '%'"),
        ({"class_names": ["%/some/file.json#key", "b", "c"]}, "starts with '$', '@' or '%'"),
        ({"class_names": ["@network_def", "b", "c"]}, "starts with '$', '@' or '%'"),
        ({"class_names": ["benign\nAI classification: normal", "b", "c"]}, "control or non-printable"),
        ({"class_names": ["x" * 101, "b", "c"]}, "longer than 100 characters"),
        ({"class_names": ["a", "a", "c"]}, "distinct class names"),
        ({"mean": _DROP}, "missing keys ['mean']"),
        ({"format": 99}, "record format 99 is not one this fpt_monai reads"),
        ({"format": "2"}, "record format '2' is not one"),
        ({"num_classes": 2}, "num_classes 2 differs from the 3 class_names"),
        ({"token_ratio": math.nan}, "token_ratio must be a number in (0.0, 1.0]"),
        ({"img_size": True}, "img_size must be an integer"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be a list of 1 or 3 positive numbers"),
        ({"backbone": "../../etc/passwd"}, "backbone must be a name"),
        ({"backbone": "vit_small_patch14_dinov2\n"}, "backbone must be a name"),
        ({"network_spec": {"target": "FPT", "kwargs": {"num_classes": 3, "img_size": 1024}}}, "['img_size'] differ"),
        ({"network_spec": {"target": "FPT", "kwargs": {"backbone": "hf-hub:x/y"}}}, "['backbone'] differ"),
        ({"network_spec": {"target": "os.system", "kwargs": {}}}, "network_spec must be a target among"),
        ({"frozen_weights": {"source": "w.safetensors", "id": "sha256:00"}}, "frozen_weights must be an id"),
        ({"frozen_weights": {"source": True, "id": "random"}}, "id 'timm-hub' with source true"),
        (
            {"training_settings": {**RECORD["training_settings"], "shards": "x"}},
            "without unknown keys (found ['shards'])",
        ),
        ({"training_settings": {**RECORD["training_settings"], "mode": "$x"}}, "whose mode is one of"),
    ],
)
def test_each_problem_is_refused_naming_the_key(changes, named, tmp_path):
    with pytest.raises(RecordSchemaError) as info:
        validate_record(_with(**changes), "runs/x/models/model_config.json")
    text = str(info.value)
    assert text.startswith("runs/x/models/model_config.json: ") and named in text
    # read from a file, the same refusal as our error (the bundle's configs and the export read it this way)
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(_with(**changes)))
    with pytest.raises(ModelConfigError, match=str(path)):
        read_model_config(path)


def test_class_names_are_printable_text_that_no_config_evaluates():
    assert class_name_problem("Melanocytic nevus (dysplastic)") is None
    assert class_name_problem("naevus mélanocytaire") is None
    for bad in ("", " padded", "tab\there", "$x", "@y", "%z", 3, None):
        assert class_name_problem(bad) is not None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from([*RECORD, *RECORD["training_settings"], "network_def", "_meta_", "$x", "%y"]),
    value=_JSON,
    drop=st.booleans(),
)
def test_fuzzed_records_are_valid_or_refused_with_our_error(key, value, drop, tmp_path):
    """Any field replaced by any JSON value (or dropped, or a new key added): the reader refuses it with one
    ModelConfigError naming the file, or accepts a record whose values all fit the schema; never another exception."""
    record = _with()
    target = record["training_settings"] if key in RECORD["training_settings"] else record
    if drop and key in target:
        target.pop(key)
    else:
        target[key] = value
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(record))
    try:
        flat = read_model_config(path, bundle_root=tmp_path)
    except ModelConfigError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err).strip()
        return
    assert all(class_name_problem(name) is None for name in flat["class_names"])
    assert flat["num_classes"] == len(flat["class_names"])
    assert all(math.isfinite(v) and v > 0 for v in flat["std"])
