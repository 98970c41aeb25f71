# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m fpt_monai.data.preload`` (a package's ``__main__``, so that runpy does not warn that the module is
already imported by ``fpt_monai.data``)."""

from __future__ import annotations

import sys

from fpt_monai.data.preload import main
from fpt_monai.errors import install_excepthook

install_excepthook()  # our one-line error after the traceback
sys.exit(main())
