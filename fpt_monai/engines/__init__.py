# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Ignite/MONAI engine pieces for FPT: batch preparation, metrics, the training recipe.

The names below load on first use (PEP 562): importing one submodule does not import every other one (and with them
MONAI, ignite and matplotlib).
"""

from __future__ import annotations

from fpt_monai.utils.lazy import lazy_exports

# submodule -> the names the package re-exports from it (loaded on first use)
_EXPORTS = {
    "checkpoint": (
        "CorruptCheckpointError",
        "FPTCheckpointer",
        "atomic_torch_save",
        "load_checkpoint",
        "verify_checkpoint",
    ),
    "heatmaps": ("HeatmapWriter", "denormalize", "heatmap_name", "heatmap_overlay", "save_heatmap", "save_png"),
    "metrics": ("METRIC_NAMES", "ClassificationMetric", "classification_metrics"),
    "model_card": (
        "ModelCardWriter",
        "bundle_metadata",
        "model_identity",
        "portable_record",
        "write_model_identity",
    ),
    "model_record": (
        "DATALIST_COPY",
        "MODEL_CONFIG_FORMAT",
        "MODEL_SETTINGS",
        "STORE_SETTINGS",
        "ModelConfigError",
        "check_model_settings",
        "read_model_config",
        "read_record",
        "recorded_datalist",
        "recorded_location",
        "recorded_path",
        "recorded_weights",
        "write_model_config",
    ),
    "operating_point": (
        "CalibrationError",
        "OperatingPointChooser",
        "apply_calibration",
        "check_calibration",
        "check_operating_point_options",
        "decide",
        "describe_calibration",
    ),
    "prepare_batch": ("FPTPrepareBatch",),
    "probability_blend": ("DEFAULT_BLEND_WEIGHTS", "blend_probabilities", "choose_blend_weight"),
    "record_schema": ("RecordSchemaError", "class_name_problem", "validate_record"),
    "reports": (
        "PredictionCollector",
        "PredictionWriter",
        "checkpoint_report",
        "evaluate_checkpoints",
        "flat_metrics",
        "plot_confusion_matrix",
        "plot_roc",
    ),
    "run_lock": ("RunLock", "RunLockedError", "acquire_run_lock"),
    "statistics": (
        "BOOTSTRAP_METRICS",
        "DEFAULT_BOOTSTRAP_METRICS",
        "Interval",
        "apply_temperature",
        "bootstrap_intervals",
        "calibration_bins",
        "choose_threshold",
        "cohen_kappa",
        "delong_test",
        "delong_test_ovr",
        "expected_calibration_error",
        "fit_temperature",
        "kappa_metric",
        "kappa_metric_name",
        "metrics_at_threshold",
        "per_class_metrics",
        "reliability_diagram",
    ),
    "token_head": (
        "DEFAULT_TOKEN_HEAD_CS",
        "TOKEN_HEAD_INITS",
        "TokenHeadError",
        "check_token_head",
        "init_token_head",
    ),
    "tracking": (
        "configure_evaluation_mlflow",
        "configure_mlflow",
        "find_mlflow_handlers",
        "log_mlflow_artifacts",
        "recorded_tracking",
    ),
    "training": (
        "GradientClipHandler",
        "NonFiniteLossError",
        "StopOnNonFiniteLoss",
        "class_weights",
        "warmup_cosine_schedule",
    ),
    "training_summary": ("TrainingSummary", "epoch_metrics_print", "evaluate_command", "training_summary"),
    "weight_averaging": ("WEIGHT_AVERAGING_MODES", "WeightAveraging", "check_weight_averaging"),
}

__all__ = [name for names in _EXPORTS.values() for name in names]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
