from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fpt_monai.engines.tracking import TRAINING_RUN_NAME_TAG, TRAINING_RUN_TAG, read_run_record

from .conftest import TRAIN_CONFIG, run_workflow

EVAL_CONFIG = TRAIN_CONFIG.replace("train.yaml", "evaluate.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend and served artifacts."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=open(root / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).read() == b"OK":
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError((root / "server.log").read_text()[-3000:])
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        raise RuntimeError("mlflow server did not start within 120 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def _run(config, bundle_root, data_dir, weights, **extra):
    run_workflow(config, bundle_root, data_dir, weights, tracking="mlflow", **extra)


def _assert_evaluation_metrics(evaluation):
    metrics = set(evaluation.data.metrics)
    assert {"test_best_auc", "test_best_acc", "test_final_auc", "test_final_kappa"} <= metrics
    assert all(m.startswith("test_") for m in metrics), sorted(metrics)  # no val_* from the evaluator's handler


def _runs(uri, experiment="monai_experiment"):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _assert_linked(training, evaluation, nested=True):
    """The evaluation run names the training run and holds every training parameter with the same value."""
    tags = evaluation.data.tags
    assert tags[TRAINING_RUN_TAG] == training.info.run_id
    assert tags[TRAINING_RUN_NAME_TAG] == training.info.run_name and tags["fpt.eval_split"] == "test"
    assert tags.get("mlflow.parentRunId") == (training.info.run_id if nested else None)
    params = evaluation.data.params
    assert len(training.data.params) > 20  # the hyper-parameters, not only max_epochs/epoch_length
    assert {k: params.get(k) for k in training.data.params} == training.data.params
    assert params["eval_split"] == "test"
    _assert_evaluation_metrics(evaluation)


def test_training_and_evaluation_logged_to_a_server(tmp_path, tiny_bundle_data, mlflow_server):
    data_dir, weights = tiny_bundle_data
    tracking = {"tracking_uri": mlflow_server, "experiment_name": "fpt_test", "run_name": "tiny_run"}
    _run(TRAIN_CONFIG, tmp_path, data_dir, weights, **tracking)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("fpt_test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "tiny_run" and runs[0].info.status == "FINISHED"
    run = runs[0]
    params = run.data.params
    assert params["learning_rate"] == "0.0001" and params["backbone"] == "vit_tiny_patch16_224"
    assert params["variant"] == "fpt_plus" and int(params["trainable_parameters"]) > 0 and "mean" in params
    history = client.get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [1, 2]  # per-epoch validation metrics
    assert {"train_loss", "val_acc", "val_f1", "val_kappa", "train_acc"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "model_final.pt", "model_config.json"} <= artifacts
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts)  # the resolved config

    _run(
        [TRAIN_CONFIG, EVAL_CONFIG],
        tmp_path,
        data_dir,
        weights,
        run_name="tiny_eval",  # the experiment comes from the training's run record
        tracking_uri=mlflow_server,  # a server is used only when named: a bundle's record never chooses one
        mode="preload",
    )
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    evaluation = runs["tiny_eval"]
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"roc_best.png", "confusion_best.png", "metrics.csv", "predictions_final.csv"} <= artifacts
    assert "test_best_acc" in evaluation.data.metrics
    _assert_linked(runs["tiny_run"], evaluation)
    record = read_run_record(tmp_path / "models" / "mlflow_run.json")
    assert record["run_id"] == run.info.run_id and record["params"] == run.data.params


def test_evaluation_links_to_training_in_the_default_store(tmp_path, tiny_bundle_data):
    """The `make demo` way: no tracking options, both runs in <bundle>/eval/mlruns.db, generated run names."""
    data_dir, weights = tiny_bundle_data
    _run(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=1)
    record = json.loads((tmp_path / "models" / "mlflow_run.json").read_text())
    _run([TRAIN_CONFIG, EVAL_CONFIG], tmp_path, data_dir, weights, epochs=1)
    client = MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs = _runs(client.tracking_uri)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    training = client.get_run(record["run_id"])
    (evaluation,) = [r for r in runs if r.info.run_id != training.info.run_id]
    assert "val_auc" in training.data.metrics and training.data.params["max_epochs"] == "1"
    _assert_linked(training, evaluation)


def test_evaluation_in_another_store_reads_the_training_parameters_from_the_record(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    train_uri, eval_uri = (f"sqlite:///{tmp_path / name}.db" for name in ("train", "eval"))
    _run(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=1, tracking_uri=train_uri, run_name="t")
    _run([TRAIN_CONFIG, EVAL_CONFIG], tmp_path, data_dir, weights, epochs=1, tracking_uri=eval_uri, run_name="e")
    (training,) = _runs(train_uri)
    (evaluation,) = _runs(eval_uri)
    _assert_linked(training, evaluation, nested=False)  # no parent: that run is not in this store


def test_evaluation_without_a_tracked_training_is_not_linked(tmp_path, tiny_bundle_data, caplog):
    data_dir, weights = tiny_bundle_data
    stale = tmp_path / "models" / "mlflow_run.json"
    stale.parent.mkdir()
    stale.write_text(json.dumps({"run_id": "0123456789abcdef", "params": {"learning_rate": "1"}}))
    run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=1)  # no tracking: the stale record goes
    assert not stale.exists()
    with caplog.at_level(logging.INFO, logger="fpt_monai.engines.tracking"):
        _run([TRAIN_CONFIG, EVAL_CONFIG], tmp_path, data_dir, weights, epochs=1, run_name="e")
    assert "no training run recorded" in caplog.text and "not linked" in caplog.text
    (evaluation,) = _runs(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    assert TRAINING_RUN_TAG not in evaluation.data.tags and "mlflow.parentRunId" not in evaluation.data.tags
    params = evaluation.data.params  # this config's hyper-parameters stand in for the training run's
    assert params["learning_rate"] == "0.0001" and params["eval_split"] == "test" and "trainable_parameters" in params
    _assert_evaluation_metrics(evaluation)


def test_evaluation_metrics_are_named_for_the_evaluated_split(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    _run(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=1, run_name="t")
    _run([TRAIN_CONFIG, EVAL_CONFIG], tmp_path, data_dir, weights, epochs=1, run_name="e", eval_split="validation")
    runs = {r.info.run_name: r for r in _runs(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")}
    evaluation = runs["e"]
    assert evaluation.data.tags[TRAINING_RUN_TAG] == runs["t"].info.run_id
    assert evaluation.data.tags["fpt.eval_split"] == evaluation.data.params["eval_split"] == "validation"
    metrics = set(evaluation.data.metrics)
    assert "validation_best_auc" in metrics and all(m.startswith("validation_") for m in metrics), sorted(metrics)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not a training run record"),
        ('{"params": {}}', "no run_id"),
        ('{"run_id": "a", "params": 1}', "params"),
    ],
)
def test_unreadable_run_record_is_a_clear_error(tmp_path, text, reason):
    path = tmp_path / "mlflow_run.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason) as info:
        read_run_record(path)
    assert str(path) in str(info.value) and "--tracking mlflow" in str(info.value)
    assert read_run_record(tmp_path / "missing.json") is None


def test_default_tracking_store_is_sqlite_under_the_output_dir(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    _run(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=1, experiment_name="local")
    db = tmp_path / "eval" / "mlruns.db"
    assert db.is_file()
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("local").experiment_id])
    assert len(runs) == 1 and "val_auc" in runs[0].data.metrics and "batch_size" in runs[0].data.params


@pytest.mark.slow
def test_concurrent_trainings_log_to_one_server(tmp_path, tiny_bundle_data, mlflow_server):
    """Two bundle trainings (separate processes, as on a team's machines) log to one server at the same time."""
    from ..conftest import REPO_ROOT
    from .conftest import META, tiny_overrides

    data_dir, weights = tiny_bundle_data
    procs = {}
    for name in ("team_a", "team_b"):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN_CONFIG]
        cmd += ["--meta_file", META, "--bundle_root", str(tmp_path / name), "--tracking", "mlflow"]
        cmd += ["--tracking_uri", mlflow_server, "--experiment_name", "shared", "--run_name", name]
        cmd += [f"--{k}={v}" for k, v in tiny_overrides(data_dir, weights, epochs=3).items()]
        procs[name] = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for proc in procs.values():
        out = proc.communicate(timeout=600)[0].decode()
        assert proc.returncode == 0, out[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("shared")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"team_a", "team_b"}
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1, 2, 3]  # nothing lost
        assert {"model.pt", "model_final.pt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_recorded_store_outside_the_bundle_is_used_only_when_named(tmp_path, monkeypatch, caplog):
    """A shared bundle's mlflow_run.json cannot send the evaluation's results to a server or folder it names."""
    import logging

    from fpt_monai.engines import recorded_tracking

    record = tmp_path / "bundle" / "models" / "mlflow_run.json"
    record.parent.mkdir(parents=True)
    default = f"sqlite:///{tmp_path / 'bundle' / 'eval' / 'mlruns.db'}"
    inside = tmp_path / "bundle" / "eval" / "train.db"
    inside.parent.mkdir()
    inside.write_bytes(b"")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for uri, expected in (
        ("http://collector.example:5000", default),
        (f"file://{tmp_path / 'elsewhere'}", default),
        (f"sqlite:///{inside}", f"sqlite:///{inside}"),
    ):
        record.write_text(json.dumps({"run_id": "a" * 32, "tracking_uri": uri, "params": {}}))
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            got = recorded_tracking(record, "tracking_uri", default, bundle_root=tmp_path / "bundle")
        assert got == expected
        assert (f"--tracking_uri {uri}" in caplog.text) == (expected == default)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://collector.example:5000")  # named by the user's environment
    record.write_text(json.dumps({"run_id": "a" * 32, "tracking_uri": "http://collector.example:5000", "params": {}}))
    assert recorded_tracking(record, "tracking_uri", default, bundle_root=tmp_path / "bundle").startswith("http://")
