# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI transforms for FPT: medical image reading and the two views (the stored tokens are added by
:class:`fpt_monai.data.LoadPreloadedTokensd`, which lives with the feature store)."""

from __future__ import annotations

from fpt_monai.transforms.io import (
    DICOM_PHOTOMETRIC_INTERPRETATIONS,
    IMAGE_SUFFIXES,
    ImageReadError,
    LoadMedicalImage,
    LoadMedicalImaged,
    image_format,
    image_frame_count,
    read_image,
)
from fpt_monai.transforms.pipeline import FPT_MODES, fpt_transforms
from fpt_monai.transforms.views import LPMViewd, SideViewd, random_resized_crop_box

__all__ = [
    "DICOM_PHOTOMETRIC_INTERPRETATIONS",
    "FPT_MODES",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "LPMViewd",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "SideViewd",
    "fpt_transforms",
    "image_format",
    "image_frame_count",
    "random_resized_crop_box",
    "read_image",
]
