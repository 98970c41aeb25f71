# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Importing this module installs :func:`fpt_monai.utils.errors.install_excepthook`.

It exists for the bundle configs (``excepthook: $import fpt_monai.utils.excepthook``): MONAI evaluates every ``$import``
expression before it resolves any other item, whichever config file defines it, so the hook is in place before the
first of our checks can fail, however a later config file overrides ``imports`` or ``initialize``.
"""

from __future__ import annotations

from fpt_monai.utils.errors import install_excepthook

__all__: list[str] = []

install_excepthook()
