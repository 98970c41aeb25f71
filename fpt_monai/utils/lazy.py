# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Packages whose names load on first use (PEP 562), so that ``import fpt_monai.data.splits`` or a command's
``--help`` does not import MONAI and torch through the package's ``__init__``.

A package's ``__init__`` keeps its ``__all__`` and names, per submodule, what it re-exports::

    __all__ = ["FeatureStore", "make_splits"]
    __getattr__, __dir__ = lazy_exports(__name__, {"feature_store": ("FeatureStore",), "splits": ("make_splits",)})

``fpt_monai.data.FeatureStore`` then imports ``fpt_monai.data.feature_store`` when first asked for; ``from
fpt_monai.data import FeatureStore`` and MONAI's ``_target_``/``$`` lookups work as with eager imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


class _ExportsFirst(types.ModuleType):
    """A package that exports a name of one of its submodules under the submodule's own name (``fpt_monai.data.preload``
    is the function of ``preload.py``, ``fpt_monai.data.store_location`` that of ``store_location.py``).

    Importing the submodule makes importlib bind the package's attribute to the module; the export is kept there
    instead, as the package's eager ``from .preload import preload`` did (bundle configs call
    ``$fpt_monai.data.store_location(...)``). ``importlib.import_module`` still returns the module.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if (
            isinstance(value, types.ModuleType)
            and name in self.__dict__.get("_lazy_shadowed", ())
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(
    package: str, submodules: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose exports load on first use.

    Args:
        package: the package's ``__name__``; it must be in ``sys.modules`` (call this from its ``__init__``).
        submodules: submodule (relative name) -> the names the package re-exports from it.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's ``__init__``. ``__getattr__`` also imports the
        package's submodules by name (``fpt_monai.engines.probe_selection`` in a bundle config), as the eager imports
        made them attributes of the package.

    Raises:
        ValueError: a name re-exported from two submodules.
    """
    where: dict[str, str] = {}
    for submodule, names in submodules.items():
        for name in names:
            if where.setdefault(name, submodule) != submodule:
                raise ValueError(f"{package}: {name!r} is re-exported from both {where[name]!r} and {submodule!r}.")
    module = sys.modules[package]
    shadowed = frozenset(name for name, submodule in where.items() if name == submodule)
    if shadowed:
        module.__class__ = _ExportsFirst
        module._lazy_shadowed = shadowed

    def __getattr__(name: str) -> object:
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            setattr(module, name, value)  # found in the module's dict from now on: __getattr__ is not called again
            return value
        if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(where) | set(module.__dict__.get("__all__", ())))

    return __getattr__, __dir__
