"""Fuzzing of the Deploy pre-flight and per-instance reading with mutated headers of real files (ours and pydicom's):
every file ends as an image that is classified, skipped with a reason, or failed with a reason naming what is wrong;
never another exception, and never a write outside the output folder. Derandomised in the suite (the same examples
every run); a longer campaign: ``FPT_FUZZ_EXAMPLES=2000 FPT_FUZZ_RANDOM=1 pytest tests/deploy/test_fuzz_preflight.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from fpt_monai.data.demo import write_dicom
from fpt_monai.deploy import inventory_dicom_folder
from fpt_monai.deploy.dicom_input import FAILED, IMAGE, SKIPPED
from fpt_monai.transforms import ImageReadError
from fpt_monai.transforms.dicom_objects import frame_indices

from .conftest import _stored

EXAMPLES = int(os.environ.get("FPT_FUZZ_EXAMPLES", "60"))
RANDOM = os.environ.get("FPT_FUZZ_RANDOM", "") == "1"
SEED_FILES = ("image_dfl.dcm", "examples_palette.dcm", "JPGExtended.dcm", "liver_1frame.dcm", "SC_rgb_rle_2frame.dcm")
TEXT_KEYS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "Modality")
INT_KEYS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel", "PixelRepresentation")
SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.3.4",
)
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "HSV", "")
EVIL = ("../../../../tmp/fpt_fuzz_escape", "/etc/passwd", "a/b\\c", "..", "", "1.2." + "9" * 70)


def _seeds(folder: Path) -> list[Path]:
    seeds = [write_dicom(folder / "ours.dcm", _stored(1, seed=5))]
    for name in SEED_FILES:
        src = get_testdata_file(name)
        if src is not None:
            seeds.append(Path(shutil.copy(src, folder / name)))
    return seeds


SEED_DIR = Path(tempfile.mkdtemp(prefix="fpt_fuzz_seeds_"))
SEEDS = _seeds(SEED_DIR)


@st.composite
def mutation(draw):
    kind = draw(st.sampled_from(["delete", "empty", "text", "int", "frames", "syntax", "photometric", "truncate"]))
    if kind in ("delete", "empty"):
        return kind, draw(st.sampled_from(TEXT_KEYS + INT_KEYS + ("PixelData", "NumberOfFrames"))), None
    if kind == "text":
        return kind, draw(st.sampled_from(TEXT_KEYS)), draw(st.sampled_from(EVIL) | st.text(max_size=40))
    if kind == "int":
        return kind, draw(st.sampled_from(INT_KEYS)), draw(st.integers(0, 70000))
    if kind == "frames":
        return kind, "NumberOfFrames", draw(st.integers(-2, 100))
    if kind == "syntax":
        return kind, "TransferSyntaxUID", draw(st.sampled_from(SYNTAXES))
    if kind == "photometric":
        return kind, "PhotometricInterpretation", draw(st.sampled_from(PHOTOMETRIC))
    return kind, "", draw(st.floats(0.05, 0.99))


def _mutate(seed: Path, target: Path, mutations) -> None:
    ds = pydicom.dcmread(seed)
    truncate = None
    for kind, key, value in mutations:
        if kind == "truncate":
            truncate = value
        elif kind == "delete":
            if key in ds:
                del ds[key]
        elif kind == "empty":
            if key in ds:
                ds[key].value = None
        elif kind == "syntax":
            ds.file_meta.TransferSyntaxUID = value
        elif kind == "frames":
            ds.NumberOfFrames = value
        else:
            setattr(ds, key, value)
    try:
        ds.save_as(target)
    except Exception:  # pydicom refuses to write some mutations: write the seed and flip bytes instead
        data = bytearray(seed.read_bytes())
        data[200:210] = b"\xff" * 10
        target.write_bytes(bytes(data))
    if truncate is not None:
        data = target.read_bytes()
        target.write_bytes(data[: max(132, int(len(data) * truncate))])


@pytest.fixture(scope="module")
def model(exported_tiny_bundle):
    from fpt_monai.deploy import ExportedFPT

    return ExportedFPT(exported_tiny_bundle[0] / "models")


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation(), min_size=1, max_size=4))
def test_mutated_headers_end_in_a_verdict_or_a_named_error(model, seed, mutations):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        target = folder / f"mutated_{seed.name}"
        _mutate(seed, target, mutations)
        shutil.copy(SEEDS[0], folder / "good.dcm")  # so that the folder always holds an image
        before = set(Path(tmp).rglob("*"))
        (item,) = [f for f in inventory_dicom_folder(folder) if f.path == target]
        assert item.status in (IMAGE, SKIPPED, FAILED)
        assert item.status == IMAGE or item.reason
        if item.status == IMAGE:
            try:  # what the classifier operator does with an image instance
                for k in frame_indices(item.frames, "first", target):
                    x = model.preprocess(target, None if item.frames == 1 else k)
                    size = model.model_config["img_size"]
                    assert tuple(x.shape) == (3, size, size) and bool(np.isfinite(x.numpy()).all())
            except ImageReadError as err:
                assert str(target) in str(err)
            except RuntimeError as err:  # MONAI wraps the reader's error: the cause must be ours, naming the file
                cause = err.__cause__
                assert isinstance(cause, ImageReadError) and str(target) in str(cause), repr(err)
        assert set(Path(tmp).rglob("*")) == before  # reading writes nothing
    assert not Path("/tmp/fpt_fuzz_escape").exists()


@pytest.mark.slow
def test_a_folder_of_mutated_files_through_the_app_writes_only_inside_the_output_folder(exported_tiny_bundle, tmp_path):
    """End to end: UIDs that are paths, broken headers and truncations; each file gets a verdict in output.json,
    the run ends complete, incomplete or with a named error, and nothing appears outside -o."""
    from fpt_monai.deploy.app import IncompleteRunError, run

    pytest.importorskip("holoscan", reason="the MONAI Deploy App SDK needs holoscan (extra fpt-monai[deploy])")
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    plans = [
        [("text", "SOPInstanceUID", "../../../../../../victim")],
        [("text", "StudyInstanceUID", "../../study")],
        [("text", "SeriesInstanceUID", "/abs/series")],
        [("photometric", "PhotometricInterpretation", "HSV")],
        [("int", "BitsAllocated", 12)],
        [("truncate", "", 0.6)],
        [("frames", "NumberOfFrames", 3)],
        [("syntax", "TransferSyntaxUID", "1.2.840.10008.1.2.4.50")],
    ]
    for n, plan in enumerate(plans):
        _mutate(SEEDS[int(rng.integers(len(SEEDS)))], folder / f"m{n}.dcm", plan)
    shutil.copy(SEEDS[0], folder / "good.dcm")
    out = tmp_path / "out"
    outside_before = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    try:
        output = run(folder, out, exported_tiny_bundle[0] / "models", heatmaps=True)
    except IncompleteRunError as err:
        output = err.output
    files = {f["file"]: f for f in output["files"]}
    assert set(files) == {p.name for p in folder.iterdir()}
    assert all(f["status"] in ("classified", "skipped", "failed") for f in files.values()), files
    assert all(f.get("reason") for f in files.values() if f["status"] != "classified")
    assert all("applying transform" not in f.get("reason", "") for f in files.values())
    outside_after = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert outside_after == outside_before
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
