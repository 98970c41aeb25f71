"""The datalist command line, ``fpt-monai datalist`` (``python -m fpt_monai.data.datalist``): one real subprocess, the
rest through ``main`` (fpt_monai.commands.datalist)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fpt_monai.commands.datalist import main

from ..conftest import REPO_ROOT

SPLIT_NAMES = ("training", "validation", "test")


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)


def _class_tree(root, counts=(("benign", 10), ("malignant", 6), ("normal", 5))):
    for name, n in counts:
        for i in range(n):
            _png(root / name / f"{i:03d}.png")


def _table(stdout: str) -> dict[str, list[int]]:
    """The printed count table: row name -> counts of training, validation, test, total."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 5 and all(p.isdigit() for p in parts[1:]):
            rows[parts[0]] = [int(p) for p in parts[1:]]
    return rows


def _counts(datalist: dict, label: int) -> list[int]:
    return [sum(1 for it in datalist[s] if it["label"] == label) for s in SPLIT_NAMES]


def test_cli_subprocess_writes_the_datalist_of_a_class_folder_tree(tmp_path):
    root = tmp_path / "my_dataset"
    _class_tree(root)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "fpt_monai.data.datalist", str(root), "--seed", "3"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    path = root / "datalist.json"
    stored = json.loads(path.read_text())
    assert stored["classes"] == ["benign", "malignant", "normal"]
    assert not stored["training"][0]["image"].startswith("/")  # relative to the JSON, inside the dataset folder
    assert sum(len(stored[s]) for s in SPLIT_NAMES) == 21
    table = _table(proc.stdout)
    for label, name in enumerate(stored["classes"]):
        assert table[name] == [*_counts(stored, label), sum(_counts(stored, label))]
        assert all(n > 0 for n in table[name][:3])
    assert table["total"] == [13, 4, 4, 21]  # 10 -> 6/2/2, 6 -> 4/1/1 (3.6/1.2/1.2), 5 -> 3/1/1
    assert "stratified by class, seed 3" in proc.stdout
    assert f"wrote {path.resolve()}" in proc.stdout
    assert proc.stdout.splitlines()[-1].endswith(f"--dataset_dir {root.resolve()}")


def test_cli_refuses_to_overwrite_without_force(tmp_path, capsys):
    _class_tree(tmp_path)
    assert main([str(tmp_path)]) == 0
    path = tmp_path / "datalist.json"
    before = path.read_text()
    capsys.readouterr()
    assert main([str(tmp_path), "--seed", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"fpt_monai: error: {path}: a datalist already exists; pass --force to overwrite it (or -o another file)."
    )
    assert path.read_text() == before
    assert main([str(tmp_path), "--seed", "1", "--force"]) == 0
    assert path.read_text() != before  # another seed, another split


def test_cli_help_exits_zero_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "python -m fpt_monai.data.datalist /data/my_dataset" in out and "--group-column" in out


def test_cli_csv_with_patients(tmp_path, capsys):
    lines = ["file,diagnosis,patient_id"]
    for p in range(20):
        lines += [f"p{p:02d}_{k}.png,{'malignant' if p % 2 else 'benign'},P{p:02d}" for k in range(1 + p % 3)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    args = [str(tmp_path / "labels.csv"), "--path-column", "file", "--label-column", "diagnosis"]
    out_file = tmp_path / "out" / "grouped.json"
    assert main([*args, "--group-column", "patient_id", "--split", "70,15,15", "-o", str(out_file)]) == 0
    out = capsys.readouterr().out
    stored = json.loads(out_file.read_text())
    patients = [{it["patient"] for it in stored[s]} for s in SPLIT_NAMES]
    assert sum(map(len, patients)) == len(set().union(*patients)) == 20
    assert _table(out)["patients"] == [*map(len, patients), 20]
    assert "70/15/15 %, stratified by class, by patient (patient_id), seed 0" in out
    assert stored["training"][0]["image"].startswith(str(tmp_path.resolve()))  # outside the JSON's folder: absolute
    assert f"--datalist_file {out_file.resolve()}" in out  # not named datalist.json
    # without --group-column: split image by image, with a hint at the patient column
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "patients" not in _table(out) and "--group-column patient_id keeps each patient's images" in out
    assert json.loads((tmp_path / "datalist.json").read_text())["training"][0]["image"].startswith("p")


def test_cli_keeps_given_splits_and_reads_medmnist(tmp_path, capsys):
    for rel in ("train/a/1.png", "train/b/1.png", "val/a/2.png", "val/b/2.png", "test/a/3.png"):
        _png(tmp_path / "tree" / rel)
    assert main([str(tmp_path / "tree")]) == 0
    out = capsys.readouterr().out
    assert _table(out)["a"] == [1, 1, 1, 3] and _table(out)["b"] == [1, 1, 0, 2]
    assert "as given by the split folders ['test', 'train', 'val']" in out
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    assert main([str(tmp_path / "breastmnist.npz")]) == 0
    out = capsys.readouterr().out
    stored = json.loads((tmp_path / "breastmnist" / "datalist.json").read_text())
    assert stored["training"][0]["image"] == "train/000000.png"
    assert (tmp_path / "breastmnist" / "train" / "000000.png").is_file()
    assert _table(out)["total"] == [6, 2, 3, 11]


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda d: None, [], "missing: no such file or folder"),
        (lambda d: _png(d / "missing" / "train" / "a" / "1.png") or _class_tree(d / "missing"), [], "beside other"),
        (lambda d: _class_tree(d / "missing"), ["--group-column", "patient_id"], "apply to a CSV source"),
        (lambda d: _png(d / "missing" / "train" / "a" / "1.png"), ["--split", "0.8,0.2"], "whose splits are kept"),
        (lambda d: _class_tree(d / "missing"), ["--split", "0.8,0.3"], r"sum to 1.1, not 1"),
        (lambda d: _class_tree(d / "missing", (("a", 9), ("b", 2))), [], "class 'b' has 2 images: too few"),
    ],
)
def test_cli_errors_end_with_our_line(tmp_path, capsys, make, extra, message):
    make(tmp_path)
    assert main([str(tmp_path / "missing"), *extra]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("fpt_monai: error: ") and message in last
    assert not (tmp_path / "missing" / "datalist.json").exists()


def test_cli_bad_split_argument_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--split", "0.6,x"])
    assert exit_info.value.code == 2 and "not a list of numbers" in capsys.readouterr().err
