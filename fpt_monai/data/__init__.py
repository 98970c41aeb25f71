# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Datalists, normalisation statistics, the preloaded-token feature store and the demo dataset.

- :mod:`~fpt_monai.data.splits`: a datalist's splits and checks, the stratified, patient-grouped split; light;
- :mod:`~fpt_monai.data.datalist`: datalists from an image folder, a CSV, a datalist JSON or MedMNIST; light;
- :mod:`~fpt_monai.data.datalist_cli`: what ``fpt-monai datalist`` does once its arguments parsed;
- :mod:`~fpt_monai.data.class_names`, :mod:`~fpt_monai.data.sanity`: class-name rules, small-data warnings; light;
- :mod:`~fpt_monai.data.image_check`: every image read once before training or inference;
- :mod:`~fpt_monai.data.normalization`: mean/std of a dataset or a backbone;
- :mod:`~fpt_monai.data.store_options`: a feature store's dtypes, fields and precisions, by name; light;
- :mod:`~fpt_monai.data.feature_store`, :mod:`~fpt_monai.data.store_location`, :mod:`~fpt_monai.data.resident`,
  :mod:`~fpt_monai.data.tokens`: the store of preloaded tokens, where it lives, in memory, as a transform;
- :mod:`~fpt_monai.data.preload`: running the frozen model over a datalist into the store;
- :mod:`~fpt_monai.data.demo`: the offline demo dataset.

The names below load on first use (PEP 562): ``import fpt_monai.data.splits`` does not import MONAI or torch.
"""

from __future__ import annotations

from fpt_monai.utils.lazy import lazy_exports

# submodule -> the names the package re-exports from it (loaded on first use)
_EXPORTS = {
    "datalist": (
        "datalist_from_csv",
        "datalist_from_image_folder",
        "datalist_from_json",
        "datalist_from_medmnist",
        "inference_items",
        "write_datalist",
    ),
    "demo": ("DEMO_CLASSES", "make_demo_dataset", "synthetic_image", "write_dicom"),
    "feature_store": ("CorruptStoreError", "FeatureStore", "MissingItemsError", "StoreMismatchError"),
    "image_check": (
        "InferenceImages",
        "SkippedImagesError",
        "UnreadableImagesError",
        "check_images",
        "check_inference_images",
    ),
    "normalization": ("DATASET_STATS", "backbone_stats", "compute_mean_std", "resolve_normalization"),
    "preload": ("PreloadReport", "ensure_feature_store", "preload", "store_settings", "weights_id"),
    "resident": ("RESIDENT_MODES", "ResidentStore", "available_memory", "choose_residency", "resident_store"),
    "sanity": ("DEFAULT_MIN_IMAGES_PER_CLASS", "datalist_warnings", "similar_class_names", "warn_about_datalist"),
    "splits": (
        "DEFAULT_SPLIT_FRACTIONS",
        "GROUP_KEY",
        "SPLITS",
        "DatalistError",
        "check_datalist",
        "datalist_num_classes",
        "make_splits",
    ),
    "store_location": ("STORE_ROOT_NAME", "dataset_identity", "default_store_root", "store_key", "store_location"),
    "store_options": ("POOLED", "STORE_DTYPES", "STORE_FIELDS", "TOKENS"),
    "tokens": ("LoadPreloadedTokensd",),
}

__all__ = [name for names in _EXPORTS.values() for name in names]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
