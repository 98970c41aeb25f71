from __future__ import annotations

import json
import subprocess
import sys

from safetensors.torch import save_file

from fpt_monai.data import make_demo_dataset
from fpt_monai.networks import create_vit_backbone

from ..conftest import REPO_ROOT


def test_study_runs_end_to_end_on_a_tiny_setting(tmp_path):
    make_demo_dataset(tmp_path / "data", per_class=6, size=96)
    weights = tmp_path / "w.safetensors"
    save_file(create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=224).state_dict(), str(weights))
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/study_isic.py",
            "--datalist",
            str(tmp_path / "data" / "datalist.json"),
            "--weights",
            str(weights),
            "--backbone",
            "vit_tiny_patch16_224",
            "--img-size",
            "64",
            "--side-img-size",
            "32",
            "--methods",
            "fpt_plus,linear_probe",
            "--lrs",
            "fpt_plus=1e-3,1e-4;linear_probe=1e-3",
            "--seeds",
            "0,1",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path / "study"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "study" / "study.json").read_text())
    assert len(result["runs"]) == 2 + 1 + 1 + 1  # fpt_plus: 2 lrs + 1 seed, linear_probe: 1 lr + 1 seed
    summary = {r["method"]: r for r in result["summary"]}
    assert set(summary) == {"fpt_plus", "linear_probe"} and summary["fpt_plus"]["seeds"] == 2
    assert "| fpt_plus |" in (tmp_path / "study" / "study.md").read_text()
    assert len(list((tmp_path / "study" / "tokens").iterdir())) == 1  # FPT+ preloaded once for all its runs
