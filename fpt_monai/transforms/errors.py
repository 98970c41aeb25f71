# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The errors of reading an image, owned here so that the reader (:mod:`fpt_monai.transforms.io`) and the DICOM
object rules (:mod:`fpt_monai.transforms.dicom_objects`) share them without importing each other; both re-export
them under their old names."""

from __future__ import annotations

__all__ = ["ImageReadError", "MultiFrameError"]


class ImageReadError(ValueError):
    """An image that cannot be used: unreadable, unsupported, or of the wrong shape. The message names the file."""


class MultiFrameError(ImageReadError):
    """A multi-frame image where the frame policy does not allow one (``"refuse"``), or a frame out of range."""
