"""A training keeps one MLflow run across re-runs and resumes, and a killed training's curve has every step once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow import MlflowClient

from fpt_monai.engines.tracking import read_run_record

from ..conftest import REPO_ROOT
from .conftest import META, TRAIN_CONFIG, run_workflow


def _runs(uri, experiment):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_rerunning_a_finished_training_continues_its_run_and_logs_nothing(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"tracking": "mlflow", "tracking_uri": uri, "experiment_name": "lineage"}
    record = tmp_path / "models" / "mlflow_run.json"
    run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, **tracking)
    (run,) = _runs(uri, "lineage")
    client = MlflowClient(uri)
    written = record.read_bytes()
    loss, artifacts = _steps(client, run.info.run_id, "train_loss"), client.list_artifacts(run.info.run_id)
    assert read_run_record(record)["run_id"] == run.info.run_id and loss == list(range(1, len(loss) + 1))

    run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, **tracking)  # last.pt is at the final epoch
    (again,) = _runs(uri, "lineage")  # no new, empty run
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert record.read_bytes() == written
    assert _steps(client, run.info.run_id, "train_loss") == loss
    assert _steps(client, run.info.run_id, "val_auc") == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {a.path for a in artifacts}
    assert again.data.params == run.data.params

    # the same bundle with another setting: nothing trains (last.pt is past it), the run and record stay as they are
    run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, learning_rate=0.001, **tracking)
    assert [r.info.run_id for r in _runs(uri, "lineage")] == [run.info.run_id] and record.read_bytes() == written
    assert MlflowClient(uri).get_run(run.info.run_id).data.params["learning_rate"] == "0.0001"

    run_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, resume=False, epochs=1, **tracking)
    runs = {r.info.run_id: r for r in _runs(uri, "lineage")}
    assert len(runs) == 2  # a fresh training starts its own run, and the record names it
    new = read_run_record(record)["run_id"]
    assert new != run.info.run_id and runs[new].data.params["epochs"] == "1"
    assert _steps(client, new, "val_auc") == [1]


def _cli(bundle_root, data_dir, weights, uri, **extra) -> list[str]:
    from .conftest import tiny_overrides

    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN_CONFIG]
    cmd += ["--meta_file", META, "--bundle_root", str(bundle_root), "--tracking", "mlflow"]
    cmd += ["--tracking_uri", uri, "--experiment_name", "killed"]
    return cmd + [f"--{k}={v}" for k, v in tiny_overrides(data_dir, weights, **extra).items()]


@pytest.mark.slow
def test_a_sigkilled_training_logs_every_step_once_in_one_run(tiny_bundle_data, tmp_path):
    data_dir, weights = tiny_bundle_data
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    epochs = 3
    # online mode runs the frozen model every step: epochs long enough to be killed inside one
    cmd = _cli(tmp_path, data_dir, weights, uri, epochs=epochs, mode="online", batch_size=1)
    last = tmp_path / "models" / "last.pt"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not last.is_file():
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch: its steps were trained, not committed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = torch.load(last, weights_only=True)["trainer"]
    assert 1 <= state["epoch"] < epochs, "the training finished before it could be killed"
    client = MlflowClient(uri)
    (killed,) = _runs(uri, "killed")
    logged = _steps(client, killed.info.run_id, "train_loss")
    # committed just before last.pt: nothing past it, unless killed between a commit and its checkpoint
    assert logged[-1] in (state["iteration"], state["iteration"] + state["epoch_length"]), (logged[-1], state)

    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = _runs(uri, "killed")  # the resumed training continued the killed one's run
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert read_run_record(tmp_path / "models" / "mlflow_run.json")["run_id"] == run.info.run_id
    total = epochs * state["epoch_length"]
    assert _steps(client, run.info.run_id, "train_loss") == list(range(1, total + 1))  # each step once
    assert _steps(client, run.info.run_id, "lr_group_0") == list(range(1, total + 1))
    for key in ("val_auc", "val_loss", "train_acc"):
        assert _steps(client, run.info.run_id, key) == list(range(1, epochs + 1)), key
