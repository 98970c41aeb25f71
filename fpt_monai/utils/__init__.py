# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Helpers every part of fpt_monai uses, none of them about images or models, and none importing torch or MONAI at
import time:

- :mod:`~fpt_monai.utils.atomic`: atomic file writes;
- :mod:`~fpt_monai.utils.errors`: the one-line error at the end of a failed run, and the hook that prints it
  (:mod:`~fpt_monai.utils.excepthook` installs it when imported, for the bundle configs);
- :mod:`~fpt_monai.utils.flags`: on/off settings that arrive as text;
- :mod:`~fpt_monai.utils.lazy`: packages whose names load on first use;
- :mod:`~fpt_monai.utils.quiet`: the known-harmless third-party warnings, hidden;
- :mod:`~fpt_monai.utils.runtime`: threads and DataLoader workers for the machine, ``--verbose``/``--threads``;
- :mod:`~fpt_monai.utils.safe_paths`: output paths that stay inside their folder.

Their old names (``fpt_monai.runtime``, ``fpt_monai.errors``, ...) are the same modules.
"""

from __future__ import annotations

from fpt_monai.utils.lazy import lazy_exports

__all__ = ["atomic", "errors", "flags", "lazy", "quiet", "runtime", "safe_paths"]

# the submodules load on first use (`$fpt_monai.utils.runtime.setup_run(...)` in a config after `$import fpt_monai`)
__getattr__, __dir__ = lazy_exports(__name__, {})
