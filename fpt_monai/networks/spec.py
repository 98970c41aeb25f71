# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A network's recipe: its class and constructor arguments, recorded at training so that evaluation, inference and
export rebuild exactly the trained architecture from ``models/model_config.json`` alone.

Only the classes of this package marked :func:`recorded` can be rebuilt (an allow-list: a JSON file never names
arbitrary code to run). Arguments are stored as JSON values; the frozen model's weight file and whether the frozen
model is built are not part of the architecture and are given when the network is rebuilt.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Mapping
from typing import Any, TypeVar

import torch.nn as nn

__all__ = ["RECORDED_NETWORKS", "network_from_spec", "network_spec", "recorded"]

# class name -> class, filled by @recorded
RECORDED_NETWORKS: dict[str, type[nn.Module]] = {}
# given at rebuild time, never taken from the record: where the frozen weights are, and whether to build the model
_REBUILD_ARGS = ("pretrained", "frozen_model")

_M = TypeVar("_M", bound=type)


def recorded(cls: _M) -> _M:
    """Class decorator: remember the arguments each instance was constructed with (for :func:`network_spec`) and allow
    :func:`network_from_spec` to rebuild the class."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        # set after the call, so that the most derived recorded class wins
        self.__dict__["_recorded_init_args"] = (type(self).__name__, arguments)

    if RECORDED_NETWORKS.get(cls.__name__, cls) is not cls:
        raise ValueError(f"a recorded network is already named {cls.__name__!r}; recorded names must be unique.")
    cls.__init__ = __init__
    RECORDED_NETWORKS[cls.__name__] = cls
    return cls


def _json_value(value: Any) -> Any:
    """JSON form of a constructor argument (tuples as lists, paths as strings)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return json.loads(json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def network_spec(network: nn.Module) -> dict | None:
    """``{"target": class name, "kwargs": constructor arguments}`` of a network built from a :func:`recorded` class
    (``pretrained`` and ``frozen_model`` left out: they are chosen when the network is rebuilt), or ``None`` for any
    other module."""
    record = network.__dict__.get("_recorded_init_args")
    # a subclass that is not itself @recorded cannot be rebuilt from the record: no spec rather than a wrong one
    if record is None or RECORDED_NETWORKS.get(record[0]) is not type(network):
        return None
    name, arguments = record
    return {"target": name, "kwargs": {k: _json_value(v) for k, v in arguments.items() if k not in _REBUILD_ARGS}}


def network_from_spec(spec: Mapping, **rebuild_args: Any) -> nn.Module:
    """Build the network a :func:`network_spec` describes.

    Args:
        spec: ``{"target", "kwargs"}`` as written by :func:`network_spec`.
        rebuild_args: ``pretrained`` and ``frozen_model``; each is passed only to classes that accept it.

    Raises:
        ValueError: a target that is not a recorded class of this package, or arguments it does not accept.
    """
    target = spec.get("target") if isinstance(spec, Mapping) else None
    if target not in RECORDED_NETWORKS:
        raise ValueError(
            f"network_spec names {target!r}, which is not a network this package can rebuild; expected one of "
            f"{sorted(RECORDED_NETWORKS)}."
        )
    cls = RECORDED_NETWORKS[target]
    parameters = inspect.signature(cls.__init__).parameters
    kwargs = dict(spec.get("kwargs") or {})
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ValueError(f"network_spec gives {target} arguments it does not take: {unknown}.")
    kwargs.update({k: v for k, v in rebuild_args.items() if k in parameters})
    return cls(**kwargs)
