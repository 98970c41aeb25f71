# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Fine-grained Prompt Tuning (FPT, FPT+) for high-resolution medical image classification with MONAI."""

from __future__ import annotations

__version__ = "0.1.0"

# bundle configs use `$import fpt_monai` and dotted names such as `fpt_monai.data.preload`
from fpt_monai import data, engines, flags, networks, transforms  # noqa: E402

__all__ = ["__version__", "data", "engines", "flags", "networks", "transforms"]
