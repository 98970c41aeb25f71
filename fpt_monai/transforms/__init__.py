# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI transforms for FPT: medical image reading and the two views (the stored tokens are added by
:class:`fpt_monai.data.LoadPreloadedTokensd`, which lives with the feature store).

- :mod:`~fpt_monai.transforms.formats`: which files are images (by name, or the DICOM marker); light;
- :mod:`~fpt_monai.transforms.errors`: :class:`ImageReadError` and :class:`MultiFrameError`; light;
- :mod:`~fpt_monai.transforms.dicom_objects`: which DICOM objects are images, and which frames to classify; light;
- :mod:`~fpt_monai.transforms.io`: reading PNG/JPEG/BMP/TIFF, DICOM and NIfTI into tensors;
- :mod:`~fpt_monai.transforms.views`: the LPM and side views;
- :mod:`~fpt_monai.transforms.pipeline`: the transform chains of training, evaluation and inference.

The names below load on first use (PEP 562): importing a light submodule does not import MONAI or torch.
"""

from __future__ import annotations

from fpt_monai.utils.lazy import lazy_exports

# submodule -> the names the package re-exports from it (loaded on first use)
_EXPORTS = {
    "io": (
        "DICOM_PHOTOMETRIC_INTERPRETATIONS",
        "IMAGE_SUFFIXES",
        "ImageReadError",
        "LoadMedicalImage",
        "LoadMedicalImaged",
        "image_format",
        "image_frame_count",
        "read_image",
    ),
    "pipeline": ("FPT_MODES", "fpt_transforms"),
    "views": ("LPMViewd", "SideViewd", "random_resized_crop_box"),
}

__all__ = [name for names in _EXPORTS.values() for name in names]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
