# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The old name of :mod:`fpt_monai.utils.runtime`, kept for bundles exported before the move, the documentation and
user code: ``fpt_monai.runtime`` is that very module."""

import sys

from fpt_monai.utils import runtime as _module

sys.modules[__name__] = _module  # one module under both names: its state and a monkeypatch are shared
