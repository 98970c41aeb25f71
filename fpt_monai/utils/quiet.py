# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A readable console: hide the third-party warnings and log lines known to be harmless, keep every other one.

:func:`quiet_third_party` installs precise filters (message, category and module, or one library logger), so our
own warnings and any warning not listed here still show. ``verbose=True``, or ``FPT_VERBOSE=1`` in the
environment, installs none (and takes back those installed earlier in the process).

=====================================  =========================  ==================================================
warning (start of its text)            emitted by                 why it is harmless
=====================================  =========================  ==================================================
RuntimeWarning "Current stack size     holoscan.core, at import   holoscan's check for its own executor threads;
(8.0 MB) is below the recommended                                 bundle runs use no holoscan. Printed when
minimum (32.0 MB)"                                                ``import monai`` imports the Deploy SDK, so
                                                                  usually before this filter (see below)
FutureWarning "`torch.cuda.amp.        monai.engines.trainer      MONAI's trainer calls the old alias of
GradScaler(args...)` is deprecated"    (GPU, ``amp: true``)       torch.amp.GradScaler, which behaves the same;
                                                                  nothing a user can change
INFO "Creating initial MLflow          logger                     MLflow's progress notes on its first use of a new
database tables...", "Updating         mlflow.store.db.utils      sqlite store; raised to WARNING, so its warnings
database tables"                                                  and errors still show
=====================================  =========================  ==================================================

Not hidden, on purpose: PyTorch's DataLoader warning about more workers than CPUs (a real misconfiguration; the
bundle's default ``num_workers`` is :func:`fpt_monai.utils.runtime.default_num_workers`), and MONAI's
``parsing config_file ...`` security notice (it concerns whichever config file is passed, ours or not).

``python -m monai.bundle run`` imports MONAI, and with it the Deploy SDK and holoscan, and prints MONAI's
``parsing config_file`` notice and its ``Not all config files are in bundle/configs`` log line, before any config
item runs: no filter installed from a config can reach these. The fixes belong to the environment:
``ulimit -s 32768`` (the stack size holoscan asks for), or ``PYTHONWARNINGS="ignore:Current stack
size:RuntimeWarning,ignore:parsing config_file:UserWarning"`` once the configs are trusted; see docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from fpt_monai.utils.flags import as_bool

__all__ = ["KNOWN_WARNINGS", "NOISY_LOGGERS", "VERBOSE_ENV", "KnownWarning", "quiet_third_party", "verbose_requested"]

VERBOSE_ENV = "FPT_VERBOSE"


@dataclass(frozen=True)
class KnownWarning:
    """One harmless third-party warning, matched like :func:`warnings.filterwarnings` matches.

    Args:
        message: regular expression matched at the start of the warning's text.
        category: the warning class (subclasses match too).
        module: regular expression matched against the whole name of the module that warns.
        why: why it is harmless (for the documentation and the tests).
    """

    message: str
    category: type[Warning]
    module: str
    why: str

    def install(self) -> None:
        """Hide this warning (:func:`warnings.filterwarnings` puts the entry first; an equal one is replaced)."""
        warnings.filterwarnings("ignore", message=self.message, category=self.category, module=self.module + r"\Z")

    def filter_item(self) -> tuple:
        """The entry :meth:`install` puts in ``warnings.filters``."""
        return ("ignore", re.compile(self.message, re.I), self.category, re.compile(self.module + r"\Z"), 0)


KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(
        message=r"Current stack size \(",
        category=RuntimeWarning,
        module=r"holoscan\.core",
        why="holoscan's check for its own executor threads, printed when `import monai` imports the Deploy SDK",
    ),
    KnownWarning(
        message=r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
        category=FutureWarning,
        module=r"monai\.engines\.trainer",
        why="MONAI's trainer uses the old alias of torch.amp.GradScaler, which behaves the same",
    ),
)

# library logger -> the level it gets: INFO notes that say nothing a user can act on
NOISY_LOGGERS: Mapping[str, int] = {"mlflow.store.db.utils": logging.WARNING}

# levels the loggers had before we raised them, to give them back in verbose mode
_saved_levels: dict[str, int] = {}


def verbose_requested(verbose: bool | str | None = False, *, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to show everything: ``verbose`` (``True`` or text such as ``"true"`` from the bundle CLI), or
    ``FPT_VERBOSE`` set to ``1/true/yes/on`` in ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    return as_bool(verbose) or as_bool(env.get(VERBOSE_ENV))


def quiet_third_party(verbose: bool | str | None = False, *, environ: Mapping[str, str] | None = None) -> bool:
    """Hide :data:`KNOWN_WARNINGS` and lower :data:`NOISY_LOGGERS`, unless verbose; idempotent.

    Args:
        verbose: show everything instead (see :func:`verbose_requested`); filters and levels installed by an earlier
            call in this process are removed. Defaults to False.
        environ: the environment read for ``FPT_VERBOSE``. Defaults to ``os.environ``.

    Returns:
        Whether the filters are now installed (False in verbose mode).
    """
    ours = [known.filter_item() for known in KNOWN_WARNINGS]
    # take ours out first: a repeated call neither stacks duplicates nor leaves them behind in verbose mode
    warnings.filters[:] = [f for f in warnings.filters if f not in ours]
    if verbose_requested(verbose, environ=environ):
        for name, level in _saved_levels.items():
            logging.getLogger(name).setLevel(level)
        _saved_levels.clear()
        # the per-module registries cache filter decisions until the filters' version changes (CPython 3.10-3.13)
        getattr(warnings, "_filters_mutated", lambda: None)()
        return False
    for known in KNOWN_WARNINGS:
        known.install()
    for name, level in NOISY_LOGGERS.items():
        logger = logging.getLogger(name)
        _saved_levels.setdefault(name, logger.level)
        logger.setLevel(max(level, logger.level))
    return True
