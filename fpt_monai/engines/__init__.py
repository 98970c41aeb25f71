# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Ignite/MONAI engine pieces for FPT: batch preparation, metrics, the training recipe."""

from __future__ import annotations

from fpt_monai.engines.checkpoint import (
    CorruptCheckpointError,
    FPTCheckpointer,
    atomic_torch_save,
    load_checkpoint,
    verify_checkpoint,
)
from fpt_monai.engines.heatmaps import HeatmapWriter, denormalize, heatmap_name, heatmap_overlay, save_heatmap, save_png
from fpt_monai.engines.metrics import METRIC_NAMES, ClassificationMetric, classification_metrics
from fpt_monai.engines.model_card import (
    ModelCardWriter,
    bundle_metadata,
    model_identity,
    portable_record,
    write_model_identity,
)
from fpt_monai.engines.model_record import (
    DATALIST_COPY,
    MODEL_CONFIG_FORMAT,
    MODEL_SETTINGS,
    STORE_SETTINGS,
    ModelConfigError,
    check_model_settings,
    read_model_config,
    read_record,
    recorded_datalist,
    recorded_location,
    recorded_path,
    recorded_weights,
    write_model_config,
)
from fpt_monai.engines.prepare_batch import FPTPrepareBatch
from fpt_monai.engines.record_schema import RecordSchemaError, class_name_problem, validate_record
from fpt_monai.engines.reports import (
    PredictionCollector,
    PredictionWriter,
    evaluate_checkpoints,
    plot_confusion_matrix,
    plot_roc,
)
from fpt_monai.engines.run_lock import RunLock, RunLockedError, acquire_run_lock
from fpt_monai.engines.tracking import (
    configure_evaluation_mlflow,
    configure_mlflow,
    find_mlflow_handlers,
    log_mlflow_artifacts,
    recorded_tracking,
)
from fpt_monai.engines.training import (
    GradientClipHandler,
    NonFiniteLossError,
    StopOnNonFiniteLoss,
    class_weights,
    warmup_cosine_schedule,
)

__all__ = [
    "ClassificationMetric",
    "CorruptCheckpointError",
    "DATALIST_COPY",
    "FPTCheckpointer",
    "FPTPrepareBatch",
    "GradientClipHandler",
    "HeatmapWriter",
    "METRIC_NAMES",
    "MODEL_CONFIG_FORMAT",
    "MODEL_SETTINGS",
    "ModelCardWriter",
    "ModelConfigError",
    "NonFiniteLossError",
    "PredictionCollector",
    "PredictionWriter",
    "RunLock",
    "RunLockedError",
    "RecordSchemaError",
    "StopOnNonFiniteLoss",
    "STORE_SETTINGS",
    "acquire_run_lock",
    "atomic_torch_save",
    "bundle_metadata",
    "check_model_settings",
    "class_name_problem",
    "class_weights",
    "classification_metrics",
    "configure_evaluation_mlflow",
    "configure_mlflow",
    "denormalize",
    "evaluate_checkpoints",
    "find_mlflow_handlers",
    "heatmap_name",
    "heatmap_overlay",
    "load_checkpoint",
    "log_mlflow_artifacts",
    "model_identity",
    "plot_confusion_matrix",
    "plot_roc",
    "portable_record",
    "read_model_config",
    "read_record",
    "recorded_datalist",
    "recorded_location",
    "recorded_path",
    "recorded_tracking",
    "recorded_weights",
    "save_heatmap",
    "save_png",
    "validate_record",
    "verify_checkpoint",
    "warmup_cosine_schedule",
    "write_model_config",
    "write_model_identity",
]
