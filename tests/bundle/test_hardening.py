"""Faults of long runs: a killed training, a corrupt checkpoint, a NaN loss, unreadable images."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from ..conftest import REPO_ROOT, error_text
from .conftest import META, TRAIN_CONFIG, make_workflow, tiny_overrides


def _cli(bundle_root, data_dir, weights, **extra) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN_CONFIG]
    cmd += ["--meta_file", META, "--bundle_root", str(bundle_root)]
    return cmd + [f"--{k}={v}" for k, v in tiny_overrides(data_dir, weights, **extra).items()]


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_final_epoch(tiny_bundle_data, tmp_path):
    data_dir, weights = tiny_bundle_data
    # online mode runs the frozen model every step: epochs long enough to be killed inside one
    cmd = _cli(tmp_path, data_dir, weights, epochs=5, mode="online", batch_size=1)
    last = tmp_path / "models" / "last.pt"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not last.is_file():
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = torch.load(last, weights_only=True)["trainer"]["epoch"]
    assert 1 <= killed_at < 5, "the training finished before it could be killed"

    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {last}: epoch {killed_at}" in done.stdout + done.stderr
    state = torch.load(last, weights_only=True)
    assert state["trainer"]["epoch"] == 5
    assert (tmp_path / "models" / "model_final.pt").is_file()

    # a checkpoint damaged after it was written is refused, never silently used
    raw = bytearray(last.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    last.write_bytes(bytes(raw))
    again = subprocess.run(
        _cli(tmp_path, data_dir, weights, epochs=6, mode="online"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode != 0
    assert "is corrupt or was modified after it was saved" in again.stdout + again.stderr


class NaNFromIteration(torch.nn.Module):
    """Cross-entropy that turns NaN from a given iteration on (stands in for a diverging run)."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start, self.calls = start, 0

    def forward(self, pred, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(pred, target)
        return loss * float("nan") if self.calls >= self.start else loss


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_bundle_data, tmp_path):
    data_dir, weights = tiny_bundle_data
    loss = NaNFromIteration(start=10**9)
    wf = make_workflow(TRAIN_CONFIG, tmp_path, data_dir, weights, epochs=3, loss=loss)
    wf.initialize()
    per_epoch = len(wf.parser.get_parsed_content("train#dataloader"))
    loss.start = per_epoch + 1  # the first iteration of epoch 2
    with pytest.raises(Exception) as info:
        wf.run()
    text = error_text(info.value)
    assert "training loss is nan at epoch 2" in text and "stopped before this step changed the weights" in text
    assert str(tmp_path / "models" / "last.pt") in text
    state = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    assert state["trainer"]["epoch"] == 1  # the last completed epoch
    assert all(torch.isfinite(v).all() for v in state["network"].values())
    assert not (tmp_path / "models" / "model_final.pt").exists()


def test_unreadable_images_fail_fast_with_the_list_or_are_skipped(tiny_bundle_data, tmp_path, caplog):
    data_dir, weights = tiny_bundle_data
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    import json

    dl = json.loads((data / "datalist.json").read_text())
    broken = [dl["training"][0]["image"], dl["validation"][0]["image"]]
    (data / broken[0]).write_bytes((data / broken[0]).read_bytes()[:100])  # truncated
    (data / broken[1]).write_bytes(b"not an image at all")
    total = sum(len(dl[s]) for s in ("training", "validation", "test"))

    wf = make_workflow(TRAIN_CONFIG, tmp_path / "a", data, weights, epochs=1)
    with pytest.raises(Exception) as info:
        wf.initialize()
    text = error_text(info.value)
    assert f"2 of {total} images cannot be read" in text and "--skip_unreadable true" in text
    assert all(name in text for name in broken)

    wf = make_workflow(TRAIN_CONFIG, tmp_path / "b", data, weights, epochs=1, skip_unreadable="true")
    with caplog.at_level("WARNING"):
        wf.initialize()
    assert f"skipping 2 of {total} images" in caplog.text
    datalist = wf.parser.get_parsed_content("datalist")
    assert (
        len(datalist["training"]) == len(dl["training"]) - 1
        and len(datalist["validation"]) == len(dl["validation"]) - 1
    )
    wf.run()
    assert (tmp_path / "b" / "models" / "model_final.pt").is_file()


def _datalist_copy(data_dir, dest, edit):
    """The tiny dataset at ``dest`` (images linked, not copied) with ``edit`` applied to its datalist JSON."""
    import json

    dest.mkdir(parents=True)
    (dest / "images").symlink_to(data_dir / "images")
    dl = json.loads((data_dir / "datalist.json").read_text())
    edit(dl, dest)
    (dest / "datalist.json").write_text(json.dumps(dl))
    return dest


def _corrupt_first_training_image(dl, dest):
    import shutil as sh

    image = dl["training"][0]["image"]
    (dest / "broken").mkdir()
    sh.copy(dest / image, dest / "broken" / "x.png")
    (dest / "broken" / "x.png").write_bytes((dest / "broken" / "x.png").read_bytes()[:100])
    dl["training"][0]["image"] = "broken/x.png"
    return str(dest / "broken" / "x.png")


FAILURES = {
    # case: (datalist edit returning the file the last line must name, extra overrides)
    "corrupt image": (_corrupt_first_training_image, {}),
    "label out of range": (lambda dl, dest: dl["training"][1].update(label=5) or "label 5 in", {}),
    "missing weights": (
        lambda dl, dest: "/nonexistent/vit.safetensors",
        {"pretrained": "/nonexistent/vit.safetensors"},
    ),
    "empty validation split": (lambda dl, dest: dl.update(validation=[]) or "the validation split is empty", {}),
    "empty training split": (lambda dl, dest: dl.update(training=[]) or "the training split is empty", {}),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failed_run_ends_with_our_line(tiny_bundle_data, tmp_path, case):
    """The last line on stderr names the file and the reason (MONAI's wrapper used to be last, the message 60-360
    lines up); the traceback is still above it. Empty splits stop the run before anything is written."""
    data_dir, weights = tiny_bundle_data
    edit, extra = FAILURES[case]
    named = []
    data = _datalist_copy(data_dir, tmp_path / "data", lambda dl, dest: named.append(edit(dl, dest)))
    bundle = tmp_path / "bundle"
    done = subprocess.run(
        _cli(bundle, data, weights, epochs=1, **extra), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0
    assert lines[-1].startswith("fpt_monai: error: "), done.stderr[-3000:]
    assert named[0] in lines[-1] and "Unexpected error" not in lines[-1], lines[-1]
    if case == "label out of range" or case.startswith("empty"):
        assert str(data / "datalist.json") in lines[-1]
    assert "Traceback (most recent call last)" in done.stderr and "Failed to evaluate" in done.stderr
    if case.startswith("empty"):
        assert not bundle.exists()  # no model_config.json, no feature store
