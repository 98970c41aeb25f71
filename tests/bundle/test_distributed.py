"""multi_gpu_train.yaml under a real torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ..conftest import REPO_ROOT
from .conftest import META, TRAIN_CONFIG, make_workflow, run_workflow, tiny_overrides

MULTI_CONFIG = TRAIN_CONFIG.replace("train.yaml", "multi_gpu_train.yaml")


@pytest.mark.slow
def test_torchrun_training_matches_one_process(tiny_bundle_data, tmp_path):
    data_dir, weights = tiny_bundle_data
    settings = {"epochs": 2, "learning_rate": 1e-3}
    ddp_root = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "monai.bundle", "run", "training", "--config_file", repr([TRAIN_CONFIG, MULTI_CONFIG])]
    cmd += ["--meta_file", META, "--bundle_root", str(ddp_root)]
    # batch 2 per process = the single process's batch of 4
    for key, value in tiny_overrides(data_dir, weights, batch_size=2, **settings).items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    # rank 0 alone wrote single-process checkpoints (no DDP "module." prefix), and logged
    last = torch.load(ddp_root / "models" / "last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 2
    assert not any(k.startswith("module.") for k in last["network"])
    assert (done.stdout + done.stderr).count("Epoch[2] Metrics -- val_acc") == 1

    # the gathered validation metric equals a one-process evaluation of the same weights on the whole split
    wf = make_workflow(TRAIN_CONFIG, ddp_root, data_dir, weights, **settings)
    wf.initialize()
    net = wf.parser.get_parsed_content("network")
    net.load_state_dict(torch.load(ddp_root / "models" / "model.pt", weights_only=True))
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    assert evaluator.state.metrics["val_auc"] == pytest.approx(last["best_metric"], abs=1e-6)

    # and training on 2 processes ends close to training on one (same global batch, other sample order)
    single = run_workflow(TRAIN_CONFIG, tmp_path / "single", data_dir, weights, batch_size=4, **settings)
    single_last = torch.load(tmp_path / "single" / "models" / "last.pt", weights_only=True)
    assert single_last["trainer"]["epoch"] == 2
    val = single.parser.get_parsed_content("validate#evaluator")
    val.run()
    for name in ("val_auc", "val_acc"):
        assert val.state.metrics[name] == pytest.approx(evaluator.state.metrics[name], abs=0.25), name
