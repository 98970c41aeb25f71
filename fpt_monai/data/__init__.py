# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Datalists, normalisation statistics, the preloaded-token feature store and the demo dataset."""

from __future__ import annotations

from fpt_monai.data.datalist import (
    DEFAULT_SPLIT_FRACTIONS,
    GROUP_KEY,
    SPLITS,
    DatalistError,
    check_datalist,
    datalist_from_csv,
    datalist_from_image_folder,
    datalist_from_json,
    datalist_from_medmnist,
    datalist_num_classes,
    inference_items,
    make_splits,
    write_datalist,
)
from fpt_monai.data.demo import DEMO_CLASSES, make_demo_dataset, synthetic_image, write_dicom
from fpt_monai.data.feature_store import (
    POOLED,
    STORE_DTYPES,
    STORE_FIELDS,
    TOKENS,
    CorruptStoreError,
    FeatureStore,
    MissingItemsError,
    StoreMismatchError,
)
from fpt_monai.data.image_check import (
    InferenceImages,
    SkippedImagesError,
    UnreadableImagesError,
    check_images,
    check_inference_images,
)
from fpt_monai.data.normalization import DATASET_STATS, backbone_stats, compute_mean_std, resolve_normalization
from fpt_monai.data.preload import (
    PreloadReport,
    ensure_feature_store,
    preload,
    store_settings,
    weights_id,
)
from fpt_monai.data.resident import (
    RESIDENT_MODES,
    ResidentStore,
    available_memory,
    choose_residency,
    resident_store,
)
from fpt_monai.data.sanity import (
    DEFAULT_MIN_IMAGES_PER_CLASS,
    datalist_warnings,
    similar_class_names,
    warn_about_datalist,
)
from fpt_monai.data.store_location import (
    STORE_ROOT_NAME,
    dataset_identity,
    default_store_root,
    store_key,
    store_location,
)
from fpt_monai.data.tokens import LoadPreloadedTokensd

__all__ = [
    "DEFAULT_MIN_IMAGES_PER_CLASS",
    "datalist_warnings",
    "similar_class_names",
    "warn_about_datalist",
    "STORE_ROOT_NAME",
    "dataset_identity",
    "default_store_root",
    "store_key",
    "store_location",
    "InferenceImages",
    "SkippedImagesError",
    "UnreadableImagesError",
    "check_images",
    "check_inference_images",
    "DATASET_STATS",
    "DatalistError",
    "DEFAULT_SPLIT_FRACTIONS",
    "DEMO_CLASSES",
    "GROUP_KEY",
    "SPLITS",
    "POOLED",
    "STORE_DTYPES",
    "STORE_FIELDS",
    "TOKENS",
    "LoadPreloadedTokensd",
    "RESIDENT_MODES",
    "ResidentStore",
    "available_memory",
    "choose_residency",
    "resident_store",
    "CorruptStoreError",
    "FeatureStore",
    "MissingItemsError",
    "PreloadReport",
    "StoreMismatchError",
    "backbone_stats",
    "check_datalist",
    "compute_mean_std",
    "datalist_from_csv",
    "datalist_from_image_folder",
    "datalist_from_json",
    "datalist_from_medmnist",
    "datalist_num_classes",
    "ensure_feature_store",
    "inference_items",
    "make_demo_dataset",
    "make_splits",
    "preload",
    "resolve_normalization",
    "store_settings",
    "synthetic_image",
    "weights_id",
    "write_datalist",
    "write_dicom",
]
