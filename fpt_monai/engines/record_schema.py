# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The declared schema of ``models/model_config.json``, the trained model's record.

A trained bundle is shared between teams like a model-zoo bundle, so its record is untrusted data: it is read as JSON
and checked key by key here before any value is used (required keys, types, ranges, the known format versions;
unknown keys are refused by name). No record is ever handed to MONAI's ``ConfigParser``, which would run ``$`` code,
resolve ``@`` references and read other files for ``%`` macros; class names that look like such code are refused as
well, since a report or a config might show them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from fpt_monai.data.class_names import MAX_CLASS_NAME, class_name_problem

__all__ = [
    "IDENTITY_FORMS",
    "KNOWN_RECORD_FORMATS",
    "MAX_CLASS_NAME",
    "RecordSchemaError",
    "class_name_problem",
    "validate_record",
]

# 1: records written before the "format" key existed (defaults assumed for what they lack); 2: the current one
KNOWN_RECORD_FORMATS = (1, 2)
_WEIGHTS_ID = re.compile(r"sha256:[0-9a-f]{64}|timm-hub|random")
_NAME = re.compile(r"[A-Za-z0-9_.+\-]{1,120}")  # timm model names, network class names, variants, heads
# what the reports print of a model's identity (fpt_monai.engines.model_card, the Deploy app): matched whole
IDENTITY_FORMS = {
    "name": re.compile(r"[\w .+()\-]{1,120}"),
    "version": re.compile(r"[\w.+\-]{1,40}"),
    "run_id": re.compile(r"[0-9a-f]{32}"),
    "checkpoint_sha256": re.compile(r"[0-9a-f]{64}"),
}


class RecordSchemaError(ValueError):
    """A record that does not follow the schema (the message lists every problem)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_in(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if _is_int(value) and low <= value <= high else f"an integer in [{low}, {high}]"

    return check


def _number_in(low: float, high: float, low_open: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = _is_number(value) and (value > low if low_open else value >= low) and value <= high
        return None if ok else f"a number in {'(' if low_open else '['}{low}, {high}]"

    return check


def _one_of(*choices: Any) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if isinstance(value, (str, bool)) and value in choices else f"one of {list(choices)}"

    return check


def _name(value: Any) -> str | None:
    return None if isinstance(value, str) and _NAME.fullmatch(value) else "a name of letters, digits and . _ + -"


def _optional_eps(value: Any) -> str | None:
    return None if value is None or (_is_number(value) and 0 < value < 1) else "null or a number in (0, 1)"


def _channel_stats(positive: bool) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = (
            isinstance(value, list)
            and len(value) in (1, 3)
            and all(_is_number(v) and (v > 0 if positive else abs(v) < 1e6) for v in value)
        )
        return None if ok else f"a list of 1 or 3 {'positive ' if positive else ''}numbers"

    return check


def _normalization(value: Any) -> str | None:
    if isinstance(value, str) and _NAME.fullmatch(value):
        return None
    if isinstance(value, list) and len(value) == 2 and all(_channel_stats(False)(v) is None for v in value):
        return None
    return "a normalisation name or [mean, std]"


def _text(value: Any) -> str | None:
    ok = isinstance(value, str) and 0 < len(value) <= 4096 and value.isprintable()
    return None if ok else "printable text of at most 4096 characters"


def _json_value(value: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if value is None or isinstance(value, (bool, str)) or _is_number(value):
        return not isinstance(value, str) or (len(value) <= 4096 and value.isprintable())
    if isinstance(value, list):
        return len(value) <= 64 and all(_json_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 64 and all(_NAME.fullmatch(str(k)) and _json_value(v, depth + 1) for k, v in value.items())
    return False


def _network_spec(value: Any) -> str | None:
    from fpt_monai.networks.spec import RECORDED_NETWORKS

    if not isinstance(value, dict) or set(value) != {"target", "kwargs"}:
        return "an object with exactly 'target' and 'kwargs'"
    if value["target"] not in RECORDED_NETWORKS:
        return f"a target among {sorted(RECORDED_NETWORKS)}"
    kwargs = value["kwargs"]
    if not isinstance(kwargs, dict) or not all(_NAME.fullmatch(k) for k in kwargs) or not _json_value(kwargs):
        return "kwargs of plain JSON values (names as keys)"
    return None


def _frozen_weights(value: Any) -> str | None:
    if not isinstance(value, dict) or set(value) != {"source", "id"}:
        return "an object with exactly 'source' and 'id'"
    if not isinstance(value["id"], str) or not _WEIGHTS_ID.fullmatch(value["id"]):
        return "an id 'sha256:<64 hex digits>', 'timm-hub' or 'random'"
    source = value["source"]
    if not (isinstance(source, bool) or _text(source) is None):
        return "a source that is true, false or a file path"
    if isinstance(source, bool) and value["id"] != ("timm-hub" if source else "random"):
        return "id 'timm-hub' with source true, 'random' with source false"
    return None


def _store_fields(value: Any) -> str | None:
    ok = isinstance(value, list) and 0 < len(value) <= 2 and all(v in ("tokens", "pooled") for v in value)
    return None if ok else "a list of 'tokens' and/or 'pooled'"


_TRAINING_SETTINGS: dict[str, Callable[[Any], str | None]] = {
    "mode": _one_of("preload", "online"),
    "store_dtype": _one_of("float16", "bfloat16", "float32"),
    "preload_precision": _one_of("fp32", "bf16", "fp16"),
    "store_fields": _store_fields,
    "side_view": lambda v: None if isinstance(v, bool) else "true or false",
    "store_dir": _text,
    # the second store of a two-resolution hybrid head (pooled_img_size), or null
    "pooled_store_dir": lambda v: None if v is None else _text(v),
    "dataset_dir": _text,
    "datalist_file": _text,
    "datalist_source": _text,
    "datalist_sha256": lambda v: None if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) else "64 hex digits",
    # the small-data options the training used (issue 22): augmented frozen views and averaged weights
    "store_views": lambda v: None if type(v) is int and 1 <= v <= 64 else "an integer from 1 to 64",
    "store_view_transforms": lambda v: (
        None
        if isinstance(v, list)
        and len(v) <= 63
        and all(isinstance(t, str) and re.fullmatch(r"[a-z0-9_]{1,32}", t) for t in v)
        else "a list of view transform names"
    ),
    "weight_averaging": _one_of("none", "ema", "swa"),
    "ema_decay": lambda v: None if v is None or (type(v) is float and 0.0 < v < 1.0) else "null or a number in (0, 1)",
    "swa_start_epoch": lambda v: None if v is None or (type(v) is int and v >= 0) else "null or an epoch number",
}


def _training_settings(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "an object"
    unknown = sorted(set(value) - set(_TRAINING_SETTINGS))
    if unknown:
        return f"an object without unknown keys (found {unknown})"
    for key, check in _TRAINING_SETTINGS.items():
        if key in value:
            problem = check(value[key])
            if problem:
                return f"an object whose {key} is {problem}"
    return None


def _class_names(value: Any) -> str | None:
    if not isinstance(value, list) or not 1 <= len(value) <= 10_000:
        return "a list of class names"
    for name in value:
        problem = class_name_problem(name)
        if problem:
            return f"a list of class names ({name!r} {problem})"
    if len(set(value)) != len(value):
        return "a list of distinct class names"
    return None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _unit_or_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value) or _is_number(value) and 0.0 <= value <= 1.0


def _operating_point(value: Any) -> str | None:
    keys = {
        "positive_class",
        "rule",
        "target_sensitivity",
        "threshold",
        "validation_sensitivity",
        "validation_specificity",
    }
    if not isinstance(value, dict) or set(value) != keys:
        return f"an object with exactly {sorted(keys)}"
    if class_name_problem(value["positive_class"]):
        return "an object whose positive_class is a class name"
    if value["rule"] not in ("youden", "target_sensitivity"):
        return "an object whose rule is 'youden' or 'target_sensitivity'"
    target = value["target_sensitivity"]
    if not (target is None and value["rule"] == "youden" or _is_number(target) and 0.0 < target <= 1.0):
        return "an object whose target_sensitivity is a number in (0, 1] (null for youden)"
    if not all(_unit_or_nan(value[k]) for k in ("threshold", "validation_sensitivity", "validation_specificity")):
        return "an object whose threshold and validation figures are numbers in [0, 1]"
    return None


def _calibration(value: Any) -> str | None:
    """The temperature and operating point chosen on validation (fpt_monai.engines.operating_point)."""
    if not isinstance(value, dict) or not {"checkpoint_sha256", "temperature", "operating_point"} <= set(value):
        return "an object with checkpoint_sha256, temperature and operating_point"
    unknown = sorted(set(value) - {"checkpoint_sha256", "temperature", "operating_point", "validation"})
    if unknown:
        return f"an object without unknown keys (found {unknown})"
    if not isinstance(value["checkpoint_sha256"], str) or not _SHA256.fullmatch(value["checkpoint_sha256"]):
        return "an object whose checkpoint_sha256 is 64 hex digits"
    temperature = value["temperature"]
    if not (temperature is None or _is_number(temperature) and 0.01 <= temperature <= 100.0):
        return "an object whose temperature is null or a number in [0.01, 100]"
    if value["operating_point"] is not None:
        problem = _operating_point(value["operating_point"])
        if problem:
            return f"an object whose operating_point is {problem}"
    validation = value.get("validation", {})
    if (
        not isinstance(validation, dict)
        or not all(
            _NAME.fullmatch(str(k)) and (_is_number(v) or isinstance(v, float) and math.isnan(v))
            for k, v in validation.items()
        )
        or len(validation) > 16
    ):
        return "an object whose validation holds named numbers"
    return None


def _fusion(value: Any) -> str | None:
    """A fused bundle's blend (fpt_monai.engines.fuse): the weight chosen on validation, the table it was chosen from
    and the two fused bundles' own records (each checked against this schema, without a fusion of its own)."""
    keys = {"weight", "val_auc", "val_loss", "split", "probabilities_from", "table", "members"}
    if not isinstance(value, dict) or set(value) != keys:
        return f"an object with exactly {sorted(keys)}"
    if not (_is_number(value["weight"]) and 0.0 <= value["weight"] <= 1.0):
        return "an object whose weight is a number in [0, 1]"
    if not all(
        _is_number(value[k]) or isinstance(value[k], float) and math.isnan(value[k]) for k in ("val_auc", "val_loss")
    ):
        return "an object whose val_auc and val_loss are numbers"
    if value["split"] != "validation" or value["probabilities_from"] not in ("images", "stores"):
        return "an object whose split is 'validation' and probabilities_from 'images' or 'stores'"
    table = value["table"]
    rows_ok = isinstance(table, list) and all(
        isinstance(r, dict)
        and set(r) == {"weight", "auc", "loss"}
        and all(_is_number(v) or isinstance(v, float) and math.isnan(v) for v in r.values())
        for r in table
    )
    if not rows_ok or not 1 <= len(table) <= 101:
        return "an object whose table lists at most 101 {weight, auc, loss} rows"
    members = value["members"]
    if not isinstance(members, dict) or set(members) != {"fpt", "probe"}:
        return "an object whose members are exactly 'fpt' and 'probe'"
    for name, member in members.items():
        if isinstance(member, Mapping) and "fusion" in member:
            return f"an object whose member {name} is not itself a fusion"
        try:
            validate_record(member, f"fusion member {name}")
        except RecordSchemaError as err:
            return f"an object whose member {name} is a valid record ({str(err)[:300]})"
    return None


def _fusion_problems(data: Mapping) -> list[str]:
    """A ProbeFusion's network_spec against the record: its FPT's arguments are the record's settings, its weight
    the fusion's, its two parts the members' networks."""
    spec = data.get("network_spec")
    fusion = data.get("fusion")
    fused = isinstance(spec, Mapping) and spec.get("target") == "ProbeFusion"
    if not fused:
        return ["fusion is only for a network_spec of ProbeFusion"] if fusion is not None else []
    if not isinstance(fusion, Mapping):
        return ["a ProbeFusion needs its fusion (the weight and the fused bundles' records)"]
    from fpt_monai.engines.model_record import MODEL_SETTINGS  # here: model_record imports this module

    kwargs = spec["kwargs"]
    fpt, probe = kwargs.get("fpt"), kwargs.get("probe")
    if not isinstance(fpt, Mapping) or not isinstance(probe, Mapping):
        return ["network_spec of ProbeFusion needs the kwargs fpt and probe"]
    problems = []
    differ = [k for k in MODEL_SETTINGS if k in fpt and k in data and fpt[k] != data[k]]
    if differ:
        problems.append(f"network_spec's fpt {differ} differ from the record's settings")
    if kwargs.get("weight") != fusion["weight"]:
        problems.append("network_spec's weight differs from fusion's weight")
    for name, part, target in (("fpt", fpt, "FPT"), ("probe", probe, "PooledLinearProbe")):
        member_spec = fusion["members"][name].get("network_spec")
        if not isinstance(member_spec, Mapping) or member_spec != {"target": target, "kwargs": part}:
            problems.append(f"network_spec's {name} is not the {target} of fusion's member {name}")
    return problems


# key -> (check, required from format 2 on); each check returns what the value should be, or None when it is fine
_SCHEMA: dict[str, tuple[Callable[[Any], str | None], bool]] = {
    "format": (
        lambda v: None if v in KNOWN_RECORD_FORMATS[1:] and _is_int(v) else f"one of {KNOWN_RECORD_FORMATS[1:]}",
        True,
    ),
    "class_names": (_class_names, True),
    "num_classes": (_int_in(1, 10_000), True),
    "network_name": (_name, True),
    "variant": (_one_of("fpt", "fpt_plus"), True),
    "backbone": (_name, True),
    "img_size": (_int_in(8, 16_384), True),
    "side_img_size": (_int_in(8, 16_384), True),
    "token_ratio": (_number_in(0.0, 1.0, low_open=True), True),
    "side_init": (_one_of("hf", "timm", "lpm"), False),
    # fpt_monai.networks.FPT_HEADS (spelled out: the schema imports no torch)
    "head": (_one_of("side", "side+pooled", "side+prompts", "side+pooled+prompts", "side+tokens"), False),
    "pooled_img_size": (
        lambda v: None if v is None or _int_in(8, 16_384)(v) is None else "null or an integer in [8, 16384]",
        False,
    ),
    "fusion_dropout": (_number_in(0.0, 1.0), False),
    "lpm_layer_norm_eps": (_optional_eps, False),
    "normalization": (_normalization, False),
    "mean": (_channel_stats(False), True),
    "std": (_channel_stats(True), True),
    "network_spec": (_network_spec, False),
    "frozen_weights": (_frozen_weights, False),
    "training_settings": (_training_settings, False),
    "ordinal_labels": (lambda v: None if isinstance(v, bool) else "true or false", False),
    "calibration": (_calibration, False),
    "fusion": (_fusion, False),
}
# format 1 (no "format" key) records held only these for sure
_REQUIRED_FORMAT_1 = ("class_names", "num_classes", "backbone", "img_size", "mean", "std")


def validate_record(
    data: Any,
    source: str = "models/model_config.json",
    fix: str = "The record is data that training writes; restore it from the training run (MLflow keeps a copy) or "
    "train again.",
) -> int:
    """Check a parsed record against the schema; return its format version.

    Args:
        data: the parsed JSON.
        source: the file, named in the error.
        fix: what the error tells the user to do.

    Raises:
        RecordSchemaError: naming the file and every problem (unknown keys by name, missing keys, wrong values).
    """
    if not isinstance(data, Mapping):
        raise RecordSchemaError(
            f"{source}: not a model record (a JSON object is expected, found {type(data).__name__})."
        )
    version = data.get("format", 1)
    if version not in KNOWN_RECORD_FORMATS or not _is_int(version):
        raise RecordSchemaError(
            f"{source}: record format {version!r} is not one this fpt_monai reads {list(KNOWN_RECORD_FORMATS)}: it was "
            "written by a newer fpt_monai or edited. Use the fpt_monai that trained it, or train again."
        )
    problems = []
    unknown = sorted(set(data) - set(_SCHEMA))
    if unknown:
        problems.append(f"unknown keys {unknown}")
    required = [k for k, (_, needed) in _SCHEMA.items() if needed] if version >= 2 else list(_REQUIRED_FORMAT_1)
    missing = [k for k in required if k not in data]
    if missing:
        problems.append(f"missing keys {missing}")
    for key, (check, _) in _SCHEMA.items():
        if key in data:
            problem = check(data[key])
            if problem:
                problems.append(f"{key} must be {problem} (found {_shown(data[key])})")
    if not problems and data["num_classes"] != len(data["class_names"]):
        problems.append(f"num_classes {data['num_classes']} differs from the {len(data['class_names'])} class_names")
    calibration = data.get("calibration")
    if not problems and isinstance(calibration, Mapping) and calibration.get("operating_point"):
        if calibration["operating_point"]["positive_class"] not in data["class_names"]:
            problems.append("calibration's positive_class is not one of class_names")
    if not problems and isinstance(data.get("network_spec"), Mapping):
        # the network is rebuilt from network_spec: its arguments must be the settings checked above
        from fpt_monai.engines.model_record import MODEL_SETTINGS  # here: model_record imports this module

        kwargs = data["network_spec"]["kwargs"]
        differ = [k for k in MODEL_SETTINGS if k in kwargs and k in data and kwargs[k] != data[k]]
        if differ:
            problems.append(f"network_spec's {differ} differ from the record's settings")
    if not problems:
        problems += _fusion_problems(data)
    if problems:
        raise RecordSchemaError(f"{source}: not a valid model record: {'; '.join(problems)}. {fix}")
    return int(version)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
