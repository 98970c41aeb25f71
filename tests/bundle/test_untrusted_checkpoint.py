"""A trained bundle is a trust boundary: a model.pt that would run code when unpickled is refused by name, never run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import torch

from fpt_monai.data.feature_store import file_sha256

from ..conftest import REPO_ROOT
from .conftest import META, TRAIN_CONFIG

INFER_CONFIG = TRAIN_CONFIG.replace("train.yaml", "inference.yaml")


class RunsCode:
    """Unpickling this runs a command."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_inference_refuses_a_code_running_model_pt_with_our_last_line(tmp_path, trained_tiny_bundle):
    root, data_dir, weights = trained_tiny_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(root / "models", bundle / "models")
    model = bundle / "models" / "model.pt"
    marker = tmp_path / "ran"
    state = torch.load(model, weights_only=True)
    torch.save({**state, "extra": RunsCode(marker)}, model)  # the real weights plus a payload
    sums = json.loads((bundle / "models" / "checksums.json").read_text())
    sums["model.pt"] = [file_sha256(model)]  # whoever replaced the file updated its checksum too
    (bundle / "models" / "checksums.json").write_text(json.dumps(sums))

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFER_CONFIG, "--meta_file", META]
    cmd += ["--bundle_root", str(bundle), "--dataset_dir", str(data_dir / "images" / "test")]
    cmd += ["--pretrained", str(weights), "--num_workers", "0"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fpt_monai: error: {model}: not a checkpoint written by fpt_monai"), last
    assert "other than tensors (posix.system)" in last and "nothing in it ran" in last and "train again" in last
    assert "weights_only" not in done.stderr  # torch's advice to load it with code execution enabled is not passed on
    assert not marker.exists()
    assert not (bundle / "eval" / "predictions.csv").exists()
