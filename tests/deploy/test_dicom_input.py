"""The Deploy pre-flight on a clinical-looking folder: images, non-image objects, DICOMDIR and broken files, each with
its verdict and reason; pydicom's own test files where they exist offline, the rest written with pydicom here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from fpt_monai.data.demo import write_dicom
from fpt_monai.deploy import DicomInputError, inventory_dicom_folder
from fpt_monai.deploy.dicom_input import FAILED, IMAGE, SKIPPED

from .conftest import _stored


def _copy_testdata(name: str, folder: Path) -> Path:
    src = get_testdata_file(name)
    if src is None:
        pytest.skip(f"pydicom's test file {name} is not installed with this pydicom")
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, folder / Path(name).name))


def _verdicts(folder: Path) -> dict[str, tuple[str, str]]:
    return {f.path.name: (f.status, f.reason) for f in inventory_dicom_folder(folder)}


def test_non_image_objects_are_skipped_by_their_header_before_any_pixel_check(tmp_path):
    folder = tmp_path / "in"
    write_dicom(folder / "dx.dcm", _stored(1, seed=5))
    for name in ("liver_1frame.dcm", "reportsi.dcm", "rtdose.dcm", "rtplan.dcm", "waveform_ecg.dcm", "DICOMDIR"):
        _copy_testdata(name, folder / "other")
    (folder / "README.txt").write_text("notes")
    verdicts = _verdicts(folder)
    assert verdicts["dx.dcm"] == (IMAGE, "")
    assert verdicts["README.txt"] == (SKIPPED, "not a DICOM file (no DICM marker)")
    assert verdicts["DICOMDIR"] == (SKIPPED, "a DICOMDIR (a media directory index)")
    # a 1-bit SEG is a segmentation, not a truncated image
    assert verdicts["liver_1frame.dcm"][0] == SKIPPED and "Segmentation (SEG)" in verdicts["liver_1frame.dcm"][1]
    assert "Structured Report" in verdicts["reportsi.dcm"][1]
    assert "RT Dose" in verdicts["rtdose.dcm"][1] and "RT Plan" in verdicts["rtplan.dcm"][1]
    assert "Waveform" in verdicts["waveform_ecg.dcm"][1]
    assert all(status == SKIPPED for name, (status, _) in verdicts.items() if name != "dx.dcm")


def test_broken_files_fail_with_their_reason(tmp_path):
    folder = tmp_path / "in"
    good = write_dicom(folder / "good.dcm", _stored(1, seed=5)).read_bytes()
    (folder / "cut.dcm").write_bytes(good[: len(good) // 2])
    (folder / "junk.dcm").write_bytes(good[:132] + b"\xff" * 64)
    ds = pydicom.dcmread(folder / "good.dcm")
    del ds.StudyInstanceUID
    ds.save_as(folder / "no_study.dcm")
    verdicts = _verdicts(folder)
    assert verdicts["good.dcm"][0] == IMAGE
    assert verdicts["cut.dcm"][0] == FAILED and "truncated" in verdicts["cut.dcm"][1]
    assert verdicts["junk.dcm"] == (FAILED, "no SOPClassUID: unparseable, or not a DICOM instance")
    assert verdicts["no_study.dcm"][0] == FAILED and "no StudyInstanceUID" in verdicts["no_study.dcm"][1]


def test_bit_packed_images_are_sized_in_bits(tmp_path):
    """A 1-bit image stores 8 pixels per byte: the size check must not call it truncated, but must catch a cut."""
    path = write_dicom(tmp_path / "in" / "bits.dcm", _stored(1, seed=5))
    ds = pydicom.dcmread(path)
    bits = (np.arange(96 * 96).reshape(96, 96) % 3 == 0).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()  # 1,152 bytes for 9,216 pixels
    ds.save_as(path)
    assert _verdicts(path.parent)["bits.dcm"] == (IMAGE, "")
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(path)
    write_dicom(path.parent / "other.dcm", _stored(1, seed=5))  # a folder without images is another error
    assert _verdicts(path.parent)["bits.dcm"] == (FAILED, "pixel data has 1000 bytes, 1152 expected (truncated)")


def test_attributes_the_sdk_loader_cannot_take_are_marked_for_its_staged_copy(tmp_path):
    """The SDK's loader drops an instance with an empty SeriesNumber (a valid type 2 value: pydicom's deflated test
    file has one), and keeps one instance per ImagePositionPatient in a series."""
    folder = tmp_path / "in"
    _copy_testdata("image_dfl.dcm", folder)
    series = "1.2.826.0.1.3680043.8.498.77"
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        path = write_dicom(folder / name, _stored(1, seed=5), series_uid=series)
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0, 0, 0] if name != "c.dcm" else [0, 0, 5]
        ds.save_as(path)
    items = {f.path.name: f for f in inventory_dicom_folder(folder)}
    assert items["image_dfl.dcm"].status == IMAGE and "SeriesNumber" in items["image_dfl.dcm"].loader_fix
    assert items["image_dfl.dcm"].record(folder)["file"] == "image_dfl.dcm"
    assert items["a.dcm"].loader_fix == items["b.dcm"].loader_fix == ["ImagePositionPatient"]
    assert items["c.dcm"].loader_fix == []


def test_multi_frame_images_carry_their_frame_count(tmp_path):
    folder = tmp_path / "in"
    _copy_testdata("examples_ybr_color.dcm", folder)
    (item,) = inventory_dicom_folder(folder)
    assert item.status == IMAGE and item.frames == 30 and item.record(folder)["frames"] == 30


def test_a_folder_without_images_says_what_it_holds(tmp_path):
    folder = tmp_path / "in"
    _copy_testdata("reportsi.dcm", folder)
    good = write_dicom(tmp_path / "x.dcm", _stored(1, seed=5)).read_bytes()
    (folder / "cut.dcm").write_bytes(good[:600])  # the header survives, the pixels are gone
    with pytest.raises(DicomInputError) as info:
        inventory_dicom_folder(folder)
    first, *rest = str(info.value).splitlines()
    assert first.startswith(f"{folder}: no DICOM image to classify (1 failed, 1 skipped)") and "Pass a folder" in first
    assert len(rest) == 1 and "cut.dcm" in rest[0]
    with pytest.raises(DicomInputError, match="does not exist"):
        inventory_dicom_folder(tmp_path / "missing")


def _truncated_jpeg2000(path: Path) -> Path:
    """pydicom's JPEG 2000 lossless MR image, cut two thirds into its encapsulated pixel data (the header survives)."""
    data = Path(_copy_testdata("MR_small_jp2klossless.dcm", path.parent)).read_bytes()
    (path.parent / "MR_small_jp2klossless.dcm").unlink()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def test_a_truncated_jpeg_2000_file_fails_as_truncated_with_its_uids(tmp_path):
    """pydicom loses the whole dataset of a file that ends inside encapsulated pixel data: the UIDs come from a
    header-only read, and the reason is the truncation, not missing UIDs."""
    folder = tmp_path / "in"
    folder.mkdir()
    cut = _truncated_jpeg2000(folder / "mr_j2k_cut.dcm")
    header = pydicom.dcmread(cut, stop_before_pixels=True)
    write_dicom(folder / "good.dcm", _stored(1, seed=5))
    items = {f.path.name: f for f in inventory_dicom_folder(folder)}
    item = items["mr_j2k_cut.dcm"]
    assert item.status == FAILED and item.reason.startswith("incomplete pixel data") and "truncated" in item.reason
    assert "no StudyInstanceUID" not in item.reason
    assert item.sop_instance_uid == header.SOPInstanceUID and item.study_instance_uid == header.StudyInstanceUID
    assert item.record(folder)["series_instance_uid"] == header.SeriesInstanceUID
    # the same file whole is an image
    whole = Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes()
    (folder / "whole.dcm").write_bytes(whole)
    assert _verdicts(folder)["whole.dcm"] == (IMAGE, "")


def test_a_sop_instance_uid_is_analysed_once(tmp_path):
    """Three files with one SOP Instance UID (copies, re-exports): the first in sorted order is the image, the others
    are skipped as its duplicates, naming it."""
    folder = tmp_path / "in"
    uid = "1.2.826.0.1.3680043.8.498.4242"
    for name in ("b/one.dcm", "a/two.dcm", "c.dcm"):
        write_dicom(folder / name, _stored(1, seed=5), instance_uid=uid)
    write_dicom(folder / "other.dcm", _stored(0, seed=6))
    items = {f.record(folder)["file"]: f for f in inventory_dicom_folder(folder)}
    assert items["a/two.dcm"].status == IMAGE and items["other.dcm"].status == IMAGE
    for name in ("b/one.dcm", "c.dcm"):
        record = items[name].record(folder)
        assert record["status"] == SKIPPED and record["reason"] == "duplicate SOPInstanceUID of a/two.dcm"
        assert record["duplicate_of"] == "a/two.dcm" and record["sop_instance_uid"] == uid
    assert "duplicate_of" not in items["a/two.dcm"].record(folder)
    # a failed copy does not hide a readable one: the readable file is the image
    good = (folder / "c.dcm").read_bytes()
    (folder / "a" / "two.dcm").write_bytes(good[: len(good) // 2])
    items = {f.record(folder)["file"]: f for f in inventory_dicom_folder(folder)}
    assert items["a/two.dcm"].status == FAILED and items["b/one.dcm"].status == IMAGE
    assert items["c.dcm"].reason == "duplicate SOPInstanceUID of b/one.dcm"


def test_a_dangling_symbolic_link_fails_with_its_target(tmp_path):
    folder = tmp_path / "in"
    write_dicom(folder / "good.dcm", _stored(1, seed=5))
    target = tmp_path / "moved" / "scan.dcm"
    (folder / "scan.dcm").symlink_to(target)
    (folder / "noname").symlink_to(tmp_path / "gone")
    verdicts = _verdicts(folder)
    assert verdicts["good.dcm"] == (IMAGE, "")
    assert verdicts["scan.dcm"] == (FAILED, f"broken symbolic link to {target}")
    assert verdicts["noname"] == (FAILED, f"broken symbolic link to {tmp_path / 'gone'}")
