# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What ``--tracking mlflow`` records beyond MONAI's defaults.

MONAI's bundle tracking appends an ``MLFlowHandler`` to ``train#handlers`` / ``validate#handlers``; it logs losses,
metrics and the executed config. The bundle configs call :func:`configure_mlflow` in ``initialize`` so the same
run also gets every hyper-parameter (at start) and the best/final checkpoints and the model card (at the end);
training also writes ``models/mlflow_run.json`` (:func:`write_run_record`), which names its run: a resumed or re-run
training continues that run, and its curve points are committed with each ``last.pt`` so that a killed and resumed
training logs every step once (:func:`configure_mlflow`). The evaluation
config calls :func:`configure_evaluation_mlflow`: its run gets the training run's parameters, tags linking it to
that run (:data:`TRAINING_RUN_TAG`, and ``mlflow.parentRunId`` when both runs share a store and an experiment), no
``val_*`` metrics, and its tables, plots and ``<split>_<checkpoint>_<metric>`` metrics through
:func:`log_mlflow_artifacts`. Without tracking these do nothing (training removes a stale run record).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fpt_monai.utils.atomic import atomic_write_text

__all__ = [
    "RUN_RECORD_NAME",
    "TRAINING_RUN_NAME_TAG",
    "TRAINING_RUN_TAG",
    "configure_evaluation_mlflow",
    "configure_mlflow",
    "find_mlflow_handlers",
    "log_mlflow_artifacts",
    "read_run_record",
    "recorded_tracking",
    "write_run_record",
]

logger = logging.getLogger(__name__)

RUN_RECORD_NAME = "mlflow_run.json"
"""The file (in the checkpoint folder, ``models/``) where training records its MLflow run."""
TRAINING_RUN_TAG = "fpt.training_run_id"
"""Tag of an evaluation run: the id of the training run whose checkpoints it evaluated."""
TRAINING_RUN_NAME_TAG = "fpt.training_run_name"
"""Tag of an evaluation run: the name of that training run."""
_PARENT_RUN_TAG = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID: nests the run in the UI


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


def _after_start(handler, callback: Callable[[], None]) -> None:
    """Call ``callback`` at the end of ``handler.start`` (the run exists and its parameters are logged then).

    ``dataset_logger`` is the last step of ``MLFlowHandler.start`` and is read when the event fires, not when the
    handler is attached, so this works whenever the engine was built."""
    previous = handler.dataset_logger

    def dataset_logger(dataset_dict):
        if previous is not None:
            previous(dataset_dict)
        else:
            handler._default_dataset_log(dataset_dict)
        callback()

    handler.dataset_logger = dataset_logger


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _public_uri(uri: str) -> str:
    """``uri`` without a user name or password (the record is written into the bundle)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def write_run_record(handler, path: str | os.PathLike, write: bool = True) -> dict:
    """Write the MLflow run of ``handler`` (an ``MLFlowHandler`` whose run has started) to ``path``, atomically:
    ``{"run_id", "run_name", "experiment_id", "experiment_name", "tracking_uri", "params"}``, the parameters as
    the run holds them. Returns the record (only that with ``write=False``)."""
    run = handler.client.get_run(handler.cur_run.info.run_id)
    record = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "experiment_name": handler.experiment_name,
        "tracking_uri": _public_uri(str(getattr(handler.client, "tracking_uri", "") or "")),
        "params": dict(run.data.params),
    }
    if write:
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
    return record


def read_run_record(path: str | os.PathLike) -> dict | None:
    """The training run record written by :func:`write_run_record`, or None when there is none (training ran
    without ``--tracking mlflow``).

    Raises:
        ValueError: the file is not a run record.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path}: not a training run record ({e}). Delete it or train again with --tracking mlflow."
        ) from e
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str) or not record["run_id"]:
        raise ValueError(
            f"{path}: no run_id in the training run record. Delete it or train again with --tracking mlflow."
        )
    if not isinstance(record.get("params", {}), dict):
        raise ValueError(f"{path}: 'params' is not a mapping. Delete it or train again with --tracking mlflow.")
    return record


def recorded_tracking(
    run_record: str | os.PathLike, key: str, default: str, bundle_root: str | os.PathLike | None = None
) -> str:
    """Where evaluation tracks by default: the training run's ``experiment_name`` or ``tracking_uri`` from its run
    record (so that ``--tracking mlflow`` alone puts the evaluation next to its training run), else ``default``.

    A recorded sqlite store that is no longer there (the bundle moved) gives ``default``, the bundle's own store.
    With ``bundle_root``, the record is treated as the data it is (a shared bundle's record could send the results
    anywhere): a recorded store is used only when it is a local store inside the bundle or the one
    ``MLFLOW_TRACKING_URI`` names; for any other (a team server, a folder elsewhere) ``default`` is used, with a
    warning naming the option that logs there.

    Raises:
        ValueError: an unknown ``key``, or a run record that cannot be read.
    """
    if key not in ("experiment_name", "tracking_uri"):
        raise ValueError(f"key must be 'experiment_name' or 'tracking_uri', got {key!r}.")
    record = read_run_record(run_record)
    value = str(record.get(key) or "") if record else ""
    if not value:
        return default
    if key == "tracking_uri" and value.startswith("sqlite:///") and not Path(value[len("sqlite:///") :]).is_file():
        return default
    if key == "tracking_uri" and bundle_root is not None and not _trusted_store(value, bundle_root):
        logger.warning(
            "%s: the training was tracked at %s, outside the bundle; the evaluation is logged to %s. Pass "
            "--tracking_uri %s to log it next to the training run (a bundle's record never chooses a remote store).",
            run_record,
            value,
            default,
            value,
        )
        return default
    return value


def _trusted_store(uri: str, bundle_root: str | os.PathLike) -> bool:
    """A local store (sqlite file or folder) inside ``bundle_root``, or the store the environment names."""
    if uri == os.environ.get("MLFLOW_TRACKING_URI"):
        return True
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            path = Path(uri[len(prefix) :]).resolve()
            return path.is_relative_to(Path(bundle_root).resolve())
    return False


_BATCH = 1000  # MLflow's limit of metrics per log_batch request


class _DeferredMetrics:
    """The training run's metric points, held in memory and committed to MLflow at checkpoints.

    A point is committed once per (metric, step): when the run continues after a resume, the steps it already holds
    (logged by the killed process between its last commit and its death) are not logged again."""

    def __init__(self) -> None:
        self.client = None
        self.run_id: str | None = None
        self.continued = False
        self.pending: list = []
        self.logged: dict[str, int] = {}  # the last committed step of each metric
        self.epoch_added = -1

    def bind(self, client, run_id: str, continued: bool) -> None:
        self.client, self.run_id, self.continued = client, run_id, continued
        self.pending, self.logged, self.epoch_added = [], {}, -1

    def add(self, metrics: Mapping, step: int) -> None:
        import mlflow
        from monai.utils import flatten_dict

        timestamp = int(time.time() * 1000)
        for key, value in flatten_dict(dict(metrics)).items():
            self.pending.append(mlflow.entities.Metric(key, value, timestamp, int(step or 0)))

    def last_step(self, key: str) -> int:
        """The last step of ``key`` the run holds (-1 for none); read from the store once, for a continued run."""
        if key not in self.logged:
            history = self.client.get_metric_history(self.run_id, key) if self.continued else []
            self.logged[key] = max((m.step for m in history), default=-1)
        return self.logged[key]

    def flush(self) -> None:
        if self.client is None or not self.pending:
            return
        points = [m for m in self.pending if m.step > self.last_step(m.key)]
        self.pending = []
        for i in range(0, len(points), _BATCH):
            self.client.log_batch(self.run_id, metrics=points[i : i + _BATCH])
        for m in points:
            self.logged[m.key] = max(self.logged[m.key], m.step)


def _iteration_points(handler, engine) -> dict:
    """What ``MLFlowHandler._default_iteration_log`` logs at an iteration: the loss and the optimizer's lr."""
    loss = handler.output_transform(engine.state.output)
    if loss is None:
        return {}
    points = dict(loss) if isinstance(loss, Mapping) else {handler.tag_name: loss}
    points = {k: v.item() if hasattr(v, "item") else v for k, v in points.items()}
    optimizer = getattr(engine, "optimizer", None)
    for name in handler.optimizer_param_names if optimizer is not None else ():
        points.update({f"{name}_group_{i}": float(g[name]) for i, g in enumerate(optimizer.param_groups)})
    return points


def _epoch_points(handler, engine) -> tuple[dict, int]:
    """What ``MLFlowHandler._default_epoch_log`` logs at an epoch, and its step."""
    points = dict(engine.state.metrics or {})
    if points and handler.state_attributes is not None:
        points.update({a: getattr(engine.state, a, None) for a in handler.state_attributes})
    return points, handler.global_epoch_transform(engine.state.epoch)


class _TrainingRun:
    """Which MLflow run a training logs to, and its deferred metrics (:func:`configure_mlflow`)."""

    def __init__(self, handler, params: Mapping[str, str], run_record: str | os.PathLike | None, checkpointer) -> None:
        self.handler, self.params, self.checkpointer = handler, dict(params), checkpointer
        self.run_record = None if run_record is None else Path(run_record)
        self.metrics = _DeferredMetrics()
        self.run = None

    def _record(self) -> dict | None:
        try:
            return read_run_record(self.run_record) if self.run_record is not None else None
        except ValueError as e:
            logger.warning("%s; a new MLflow run is started and the record replaced.", str(e).split(". ")[0])
            return None

    def _nothing_to_train(self) -> bool:
        trainer = self.checkpointer.trainer if self.checkpointer is not None else None
        return trainer is not None and trainer.state.epoch >= (trainer.state.max_epochs or 0) > 0

    def _continuable(self, record: Mapping | None) -> tuple[object | None, str]:
        """The recorded run if this training continues it, else None; and why."""
        from mlflow.exceptions import MlflowException

        handler, ck = self.handler, self.checkpointer
        if record is None:
            return None, "no run recorded"
        if ck is None or not ck.resume:
            return None, "not resuming (--resume false)"
        if record.get("tracking_uri") != _public_uri(str(getattr(handler.client, "tracking_uri", "") or "")):
            return None, f"it is in another tracking store ({record.get('tracking_uri')})"
        if record.get("experiment_name") != handler.experiment_name:
            return None, f"it is in another experiment ({record.get('experiment_name')})"
        if handler.run_name is not None and handler.run_name != record.get("run_name"):
            return None, f"it is named {record.get('run_name')!r}, not {handler.run_name!r}"
        try:
            run = handler.client.get_run(record["run_id"])
        except MlflowException:
            return None, "it is not in this tracking store"
        if run.info.lifecycle_stage != "active" or run.info.experiment_id != handler.experiment.experiment_id:
            return None, "it was deleted or moved to another experiment"
        state = ck.trainer.state if ck.trainer is not None else None
        if self._nothing_to_train():
            return run, f"{ck.last_path} is at the final epoch: nothing trains and nothing is logged"
        differ = sorted(k for k in self.params.keys() & run.data.params.keys() if self.params[k] != run.data.params[k])
        if differ:
            return None, f"its parameters differ ({', '.join(differ[:5])})"
        iteration, epoch_length = (state.iteration, state.epoch_length or 0) if state is not None else (0, 0)
        self.metrics.bind(handler.client, run.info.run_id, continued=True)
        logged = self.metrics.last_step(handler.tag_name)
        if iteration == 0 and run.data.metrics:
            return None, "this training starts from scratch (no last.pt) and the run holds its curves"
        if logged > iteration + epoch_length:  # the killed run commits at most one epoch past its last checkpoint
            return None, f"it holds {handler.tag_name} up to step {logged}, past {ck.last_path} (step {iteration})"
        return run, f"resuming from step {iteration}"

    def choose(self) -> None:
        """Continue the recorded run or create a new one; called when the trainer's handler sets its experiment
        (``MLFlowHandler.start``, after ``FPTCheckpointer`` restored ``last.pt``)."""
        handler = self.handler
        record = self._record()
        run, why = self._continuable(record)
        if run is not None:
            if run.info.status != "RUNNING":
                handler.client.update_run(run.info.run_id, status="RUNNING")
            logger.info(
                "MLflow: continuing the training run %s (%s) of %s: %s.",
                run.info.run_id,
                run.info.run_name,
                self.run_record,
                why,
            )
            if self._nothing_to_train():  # the run already holds this training's parameters and files
                handler.experiment_param, handler.artifacts = None, ()
        else:
            name = handler.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}"  # MONAI's default name
            run = handler.client.create_run(handler.experiment.experiment_id, run_name=name)
            if record is not None:
                logger.info(
                    "MLflow: new training run %s, not the recorded %s: %s.", run.info.run_id, record["run_id"], why
                )
            self.metrics.bind(handler.client, run.info.run_id, continued=False)
        self.run = handler.cur_run = run

    def write_record(self) -> None:
        if self.run_record is None:
            return
        if self.run_record.is_file():
            previous = self.run_record.read_text(encoding="utf-8", errors="replace")
            record = write_run_record(self.handler, self.run_record, write=False)
            if json.dumps(record, indent=1, sort_keys=True) == previous:
                return  # the same run: the file is left as it is
        write_run_record(self.handler, self.run_record)

    def commit(self, engine) -> None:
        """Add the trainer's epoch metrics and commit every held point (before ``last.pt`` is written)."""
        if engine.state.epoch != self.metrics.epoch_added:
            points, step = _epoch_points(self.handler, engine)
            if points:
                self.metrics.add(points, step)
            self.metrics.epoch_added = engine.state.epoch
        self.metrics.flush()


def _wrap_set_experiment(handler, after: Callable[[], None]) -> None:
    """Call ``after`` when ``handler.start`` has set its experiment, before it looks for a run.

    ``MLFlowHandler.start`` picks an unfinished run of the experiment (any, without a run name) unless ``cur_run``
    is set; it calls ``self._set_experiment()`` first, looked up when it runs, so this works whenever the engine was
    built and the handler attached."""
    original = handler._set_experiment

    def set_experiment():
        original()
        if handler.cur_run is None:
            after()

    handler._set_experiment = set_experiment


def configure_mlflow(
    handlers: Iterable | None,
    params: Mapping,
    artifacts: Sequence[str | os.PathLike] = (),
    run_record: str | os.PathLike | None = None,
    validate_handlers: Iterable | None = None,
) -> int:
    """Add ``params`` (flattened, logged when the run starts) and ``artifacts`` (files logged at the end, if they
    exist then) to every MLflow handler in ``handlers``, and make a resumed or re-run training continue its run.

    With a run record and an ``FPTCheckpointer`` among ``handlers`` (the bundle's training):

    - the run: a training that resumes (``--resume true``, the default) continues the run of the record when it is
      in the same tracking store and experiment, has the same name (or none is given) and the same parameters, and
      holds no curve points past ``last.pt`` by more than one epoch (nor any when there is no ``last.pt``). Otherwise
      (``--resume false``, other settings, another store) a new run is created and the record names it. Re-running a
      finished training continues (and closes again) its run; nothing trains, so nothing is logged.
    - the curves: the per-iteration (``train_loss``, ``lr_group_*``) and per-epoch (``train_acc``, ``val_*``) points
      are held in memory and committed when ``last.pt`` is written, just before it, at every epoch end. A killed
      training loses only the points of the epoch it was in, which a resumed training redoes and logs; a point
      the run already holds (a kill between the commit and the checkpoint) is not logged again: every step is
      logged once.

    Args:
        handlers: the training handlers (``@train#handlers``).
        params: the hyper-parameters, nested mappings flattened to ``a.b`` names.
        artifacts: files logged when training completes.
        run_record: where to write the training run (:func:`write_run_record`) once it has started, so that
            evaluation can link to it, and a resumed training continue it. Without tracking a record left there by
            an earlier training is removed (on rank 0), as it no longer describes the checkpoints.
        validate_handlers: the validation handlers (``@validate#handlers``): their MLflow handler logs to the same
            run, its points committed with the training's. Without them it logs as MONAI does.

    Returns:
        how many handlers were configured.
    """
    from fpt_monai.engines.checkpoint import FPTCheckpointer

    found = find_mlflow_handlers(handlers)
    flat = _flat(params)
    for handler in found:
        handler.experiment_param = {**(handler.experiment_param or {}), **flat}
        handler.artifacts = tuple(a for a in handler.artifacts if a) + tuple(str(a) for a in artifacts)
    if run_record is not None and not found and _is_rank0() and Path(run_record).is_file():
        Path(run_record).unlink()
        logger.info("%s: removed; it named the MLflow run of an earlier, tracked training.", run_record)
    checkpointer = next((h for h in handlers or [] if isinstance(h, FPTCheckpointer)), None)
    if not found:
        return 0
    if checkpointer is None:  # not the bundle's training: MONAI's run choice and logging, the record written
        if run_record is not None:
            _after_start(found[0], lambda h=found[0]: write_run_record(h, run_record))
        return len(found)
    trainer = found[0]
    training = _TrainingRun(trainer, {**(trainer.experiment_param or {})}, run_record, checkpointer)
    _wrap_set_experiment(trainer, training.choose)
    _after_start(trainer, training.write_record)
    trainer.iteration_logger = lambda engine: training.metrics.add(
        _iteration_points(trainer, engine), engine.state.iteration
    )
    trainer.epoch_logger = training.commit  # after last.pt (or without one): commits what is left
    checkpointer.add_before_save(training.commit)

    def use_training_run(handler) -> None:
        if training.run is not None:
            handler.cur_run = training.run

    for handler in find_mlflow_handlers(validate_handlers):
        _wrap_set_experiment(handler, lambda h=handler: use_training_run(h))
        handler.epoch_logger = lambda engine, h=handler: training.metrics.add(*_epoch_points(h, engine))
    return len(found)


def _skip_epoch_log(engine) -> None:
    """Epoch logger of the evaluation run: the evaluator's metrics carry the validation names (``val_auc``);
    :func:`log_mlflow_artifacts` logs them per checkpoint, named for the split."""


def _link_run(handler, record: Mapping, split: str, nest: bool) -> None:
    run = handler.cur_run
    if run.info.run_id == record["run_id"]:
        logger.warning(
            "evaluation re-attached to the training run %s (it is not finished); give evaluation its own --run_name.",
            record["run_id"],
        )
        return
    tags = {
        TRAINING_RUN_TAG: record["run_id"],
        TRAINING_RUN_NAME_TAG: str(record.get("run_name") or ""),
        "fpt.training_experiment_id": str(record.get("experiment_id") or ""),
        "fpt.eval_split": split,
    }
    if nest and run.info.experiment_id == record.get("experiment_id"):
        tags[_PARENT_RUN_TAG] = record["run_id"]
    import mlflow

    handler.client.log_batch(run.info.run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])


def configure_evaluation_mlflow(
    handlers: Iterable | None,
    run_record: str | os.PathLike,
    split: str = "test",
    params: Mapping | None = None,
) -> dict | None:
    """Link the evaluation's MLflow run to the training run of the checkpoints it evaluates.

    With a training run record (``models/mlflow_run.json``, written by training with ``--tracking mlflow``) the
    evaluation run gets the training run's parameters (read from the tracking store when it holds the training
    run, else from the record), an ``eval_split`` parameter, the tags :data:`TRAINING_RUN_TAG`,
    :data:`TRAINING_RUN_NAME_TAG`, ``fpt.training_experiment_id`` and ``fpt.eval_split``, and
    ``mlflow.parentRunId`` (shown nested under the training run) when the training run is in the same store and
    experiment. Without a record it gets ``params`` and a log line says it is not linked. In both cases the
    evaluator's per-epoch ``val_*`` metrics are not logged: evaluation logs ``<split>_<checkpoint>_<metric>``.

    Args:
        handlers: the evaluation handlers (``@validate#handlers``); nothing is done without an MLflow handler.
        run_record: the training run record, ``<ckpt_dir>/mlflow_run.json``.
        split: the evaluated split (``@eval_split``).
        params: the evaluation config's hyper-parameters (``@hyper_params``): logged without a record; with one, those
            that define the model are compared with the training run's (a warning names those that differ).

    Returns:
        the training run record, or None when there is none.
    """
    found = find_mlflow_handlers(handlers)
    if not found:
        return None
    own = _flat(params or {})
    record, nest = read_run_record(run_record), False
    if record is None:
        logger.info(
            "%s: no training run recorded (training ran without --tracking mlflow); the evaluation run is not "
            "linked to a training run and logs this config's parameters.",
            run_record,
        )
        logged = own
    else:
        logged, nest = {str(k): str(v) for k, v in record.get("params", {}).items()}, False
        from mlflow.exceptions import MlflowException

        try:
            logged, nest = dict(found[0].client.get_run(record["run_id"]).data.params), True
        except MlflowException as e:
            logger.info(
                "training run %s is not in this tracking store (%s); its parameters come from %s.",
                record["run_id"],
                str(e).splitlines()[0][:200],
                run_record,
            )
        # only what defines the model: evaluation takes it from models/model_config.json, so a difference means the
        # record and the run disagree; training-only settings (epochs, learning rate, ...) are not evaluation's
        from fpt_monai.engines.model_record import MODEL_SETTINGS, STORE_SETTINGS

        compared = set(MODEL_SETTINGS) | set(STORE_SETTINGS) | {"mean", "std"}
        differ = sorted(k for k in own.keys() & logged.keys() & compared if own[k] != logged[k])
        if differ:
            logger.warning(
                "evaluation config differs from training run %s in %s; the run logs the training values.",
                record["run_id"],
                ", ".join(f"{k} ({logged[k]!r} in training, {own[k]!r} here)" for k in differ),
            )
        logger.info(
            "evaluation run linked to training run %s (%s): tag %s%s.",
            record["run_id"],
            record.get("run_name"),
            TRAINING_RUN_TAG,
            f" and {_PARENT_RUN_TAG}" if nest else "",
        )
    logged = {**logged, "eval_split": split}
    for handler in found:
        handler.experiment_param = {**(handler.experiment_param or {}), **logged}
        handler.epoch_logger = _skip_epoch_log
        if record is not None:
            _after_start(handler, lambda h=handler: _link_run(h, record, split, nest))
    return record


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
