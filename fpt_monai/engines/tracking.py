# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What ``--tracking mlflow`` records beyond MONAI's defaults.

MONAI's bundle tracking appends an ``MLFlowHandler`` to ``train#handlers`` / ``validate#handlers``; it logs losses,
metrics and the executed config. The bundle configs call :func:`configure_mlflow` in ``initialize`` so the same
run also gets every hyper-parameter (at start) and the best/final checkpoints and the model card (at the end); the
evaluation config logs its tables and plots through :func:`log_mlflow_artifacts`. Without tracking these do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["configure_mlflow", "find_mlflow_handlers", "log_mlflow_artifacts"]


def find_mlflow_handlers(handlers: Iterable | None) -> list:
    """The MONAI ``MLFlowHandler`` objects among ``handlers`` (empty when tracking is off)."""
    from monai.handlers import MLFlowHandler

    return [h for h in (handlers or []) if isinstance(h, MLFlowHandler)]


def _flat(params: Mapping, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "."))
        else:
            out[name] = str(list(value) if isinstance(value, tuple) else value)[:500]  # MLflow's param length cap
    return out


def configure_mlflow(handlers: Iterable | None, params: Mapping, artifacts: Sequence[str | os.PathLike] = ()) -> int:
    """Add ``params`` (flattened, logged when the run starts) and ``artifacts`` (files logged at the end, if they
    exist then) to every MLflow handler in ``handlers``. Returns how many handlers were configured."""
    found = find_mlflow_handlers(handlers)
    for handler in found:
        handler.experiment_param = {**(handler.experiment_param or {}), **_flat(params)}
        handler.artifacts = tuple(a for a in handler.artifacts if a) + tuple(str(a) for a in artifacts)
    return len(found)


def log_mlflow_artifacts(
    handlers: Iterable | None, paths: Sequence[str | os.PathLike], metrics: Mapping[str, float] | None = None
) -> int:
    """Log existing files (and optional final metrics) to the runs of the MLflow handlers among ``handlers``, then
    close those runs. Returns how many runs received them."""
    count = 0
    for handler in find_mlflow_handlers(handlers):
        if handler.cur_run is None:
            continue
        run_id = handler.cur_run.info.run_id
        for path in paths:
            if Path(path).is_file():
                handler.client.log_artifact(run_id, str(path))
        for name, value in (metrics or {}).items():
            if value == value:  # NaN (e.g. AUC with one class) is not logged
                handler.client.log_metric(run_id, name, float(value))
        handler.close()
        count += 1
    return count
