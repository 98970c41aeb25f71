# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI Deploy application for FPT (extra ``fpt-monai[deploy]``): ``python -m fpt_monai.deploy -i -o -m``.

:class:`ExportedFPT` (the model with its embedded metadata and record) needs only torch and MONAI; the application
itself (``fpt_monai.deploy.app``) needs the MONAI Deploy App SDK and holoscan, and is imported on first use.
"""

from __future__ import annotations

from fpt_monai.deploy.dicom_input import DicomInputError, InputFile, inventory_dicom_folder
from fpt_monai.deploy.model import ExportedFPT, ModelFileError

__all__ = ["DicomInputError", "ExportedFPT", "InputFile", "ModelFileError", "inventory_dicom_folder"]
