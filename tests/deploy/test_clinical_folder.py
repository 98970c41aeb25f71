"""The Deploy app on a folder as clinical archives export them: several studies, compressed and deflated transfer
syntaxes, PALETTE COLOR ultrasound, a cine clip, shared image positions, SEG/SR/RT objects and a DICOMDIR. Nothing
may be dropped silently: every file is classified, or skipped or failed with its reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from fpt_monai.data.demo import write_dicom

from .conftest import _stored

pytest.importorskip("holoscan", reason="the MONAI Deploy App SDK needs holoscan (extra fpt-monai[deploy])")
pytest.importorskip("highdicom", reason="the SDK's DICOM operators need highdicom (extra fpt-monai[deploy])")

IMAGES = {  # pydicom test file -> what it exercises
    "image_dfl.dcm": "Deflated Explicit VR Little Endian, empty SeriesNumber (the SDK loader dropped it)",
    "examples_palette.dcm": "PALETTE COLOR ultrasound",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG Lossless",
    "JPGExtended.dcm": "12-bit JPEG Extended",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless",
    "MR_small_RLE.dcm": "RLE Lossless",
    "examples_ybr_color.dcm": "a 30-frame YBR_FULL_422 JPEG cine clip",
}
OBJECTS = ("liver_1frame.dcm", "reportsi.dcm", "rtdose.dcm", "DICOMDIR")  # SEG, SR, RT Dose, a media index


@pytest.fixture
def archive(tmp_path) -> Path:
    root = tmp_path / "archive"
    for name in (*IMAGES, *OBJECTS):
        src = get_testdata_file(name)
        if src is None:
            pytest.skip(f"pydicom's test file {name} is not installed with this pydicom")
        folder = root / Path(name).stem
        folder.mkdir(parents=True)
        shutil.copy(src, folder / Path(name).name)
    # two DX views of one series at the same ImagePositionPatient: the SDK loader keeps one per position
    for n, seed in enumerate((5, 7)):
        path = write_dicom(
            root / "dx" / f"view{n}.dcm",
            _stored(1, seed=seed),
            study_uid="1.2.826.0.1.3680043.8.498.50",
            series_uid="1.2.826.0.1.3680043.8.498.51",
        )
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0, 0, 0]
        ds.save_as(path)
    # pydicom's MR_small in JPEG 2000 and in RLE is one instance (one SOP Instance UID): the J2K file gets its own
    # UID, as a re-encoded export would, so that both decoders run; a plain copy of the RLE file is a duplicate
    j2k = root / "MR_small_jp2klossless" / "MR_small_jp2klossless.dcm"
    ds = pydicom.dcmread(j2k)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.52"
    ds.save_as(j2k)
    (root / "copies").mkdir()
    shutil.copy(root / "MR_small_RLE" / "MR_small_RLE.dcm", root / "copies" / "re_export.dcm")
    return root


def _study_uids(root: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in root.rglob("*.dcm")}


@pytest.mark.slow
def test_every_file_of_a_clinical_archive_is_accounted_for(exported_tiny_bundle, archive, tmp_path):
    from fpt_monai.deploy.app import IncompleteRunError, run

    models = exported_tiny_bundle[0] / "models"
    out = tmp_path / "out"
    output = run(archive, out, models, frames="middle", heatmaps=True)

    assert output["status"] == "complete" and output["frames"] == "middle"
    files = {Path(f["file"]).name: f for f in output["files"]}
    assert set(files) == {*IMAGES, *OBJECTS, "view0.dcm", "view1.dcm", "re_export.dcm"}
    for name in (*IMAGES, "view0.dcm", "view1.dcm"):
        assert files[name]["status"] == "classified", (name, IMAGES.get(name), files[name])
    for name in OBJECTS:
        assert files[name]["status"] == "skipped" and files[name]["reason"], files[name]
    # the copy of an instance is analysed once: skipped, naming the file that was classified
    copy = files["re_export.dcm"]
    assert copy["status"] == "skipped" and copy["reason"] == "duplicate SOPInstanceUID of MR_small_RLE/MR_small_RLE.dcm"
    counts = {"classified": len(IMAGES) + 2, "skipped": len(OBJECTS) + 1, "failed": 0, "duplicates": 1}
    assert output["counts"] == counts

    # one result and one SR per study with a classified image, each SR in its own study
    image_studies = {files[n]["study_instance_uid"] for n in (*IMAGES, "view0.dcm")}
    assert {s["study_instance_uid"] for s in output["studies"]} == image_studies
    for study in output["studies"]:
        sr = pydicom.dcmread(out / study["sr_file"])
        assert sr.StudyInstanceUID == study["study_instance_uid"] and sr.Modality == "SR"
        assert abs(sum(study["probabilities"].values()) - 1) < 1e-5
    assert len(list(out.glob("*.dcm"))) == len(image_studies)
    instances = {Path(r["file"]).name: r for s in output["studies"] for r in s["instances"]}
    clip = instances["examples_ybr_color.dcm"]
    assert [f["frame"] for f in clip["frames"]] == [15] and (out / clip["frames"][0]["heatmap"]).is_file()
    assert (out / instances["view1.dcm"]["heatmap"]).is_file()

    # every frame of the clip: one prediction each, the instance's probabilities their mean
    output = run(archive / "examples_ybr_color", tmp_path / "every", models, frames="every")
    (record,) = output["studies"][0]["instances"]
    assert [f["frame"] for f in record["frames"]] == list(range(30))
    mean = {c: sum(f["probabilities"][c] for f in record["frames"]) / 30 for c in record["probabilities"]}
    assert record["probabilities"] == pytest.approx(mean)

    # the default policy refuses the clip: reported as failed, with the fix; the run is incomplete, no SR
    with pytest.raises(IncompleteRunError) as info:
        run(archive, tmp_path / "refuse", models)
    assert "examples_ybr_color.dcm: multi-frame image with 30 frames" in str(info.value)
    refused = {Path(f["file"]).name: f for f in info.value.output["files"]}["examples_ybr_color.dcm"]
    assert refused["status"] == "failed" and "--frames" in refused["reason"]
    assert not list((tmp_path / "refuse").glob("*.dcm"))
    written = json.loads((tmp_path / "refuse" / "output.json").read_text())
    assert written["status"] == "incomplete" and written["counts"]["failed"] == 1
