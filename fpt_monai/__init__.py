# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Fine-grained Prompt Tuning (FPT, FPT+) for high-resolution medical image classification with MONAI."""

from __future__ import annotations

__version__ = "0.1.0"

# first, before anything imports monai (and with it holoscan, which warns about the stack size at import): the known-
# harmless third-party warnings are hidden for our command lines; FPT_VERBOSE=1 shows them (fpt_monai.utils.quiet)
from fpt_monai.utils import quiet  # noqa: E402, I001

quiet.quiet_third_party()

# bundle configs use `$import fpt_monai` and dotted names such as `fpt_monai.data.preload`, `fpt_monai.utils.runtime`
# (`fpt_monai.runtime`, `fpt_monai.flags`: their old names, kept for bundles exported before fpt_monai.utils)
__all__ = ["__version__", "data", "engines", "flags", "networks", "quiet", "runtime", "transforms", "utils"]

_SUBPACKAGES = frozenset(__all__) - {"__version__", "quiet"}


def __getattr__(name: str):
    """Subpackages load on first use (``fpt_monai.data`` in a bundle config, ``from fpt_monai import networks``):
    a command that needs no MONAI, or only its ``--help``, does not pay for importing it (PEP 562)."""
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"fpt_monai.{name}")
    raise AttributeError(f"module 'fpt_monai' has no attribute {name!r}")
