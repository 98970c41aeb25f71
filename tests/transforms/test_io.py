from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fpt_monai.data import write_dicom
from fpt_monai.transforms import ImageReadError, LoadMedicalImaged, read_image

from ..conftest import SHARED_DIR


def test_png_rgb_gray_16bit_rgba_palette(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = read_image(tmp_path / "rgb.png")
    assert out.shape == (3, 20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.moveaxis(rgb, -1, 0) / 255.0, atol=1e-6)

    gray = np.arange(600, dtype=np.uint8).reshape(20, 30)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (3, 20, 30) and np.allclose(out[0], out[2]) and np.allclose(out[0], gray / 255.0)
    assert read_image(tmp_path / "gray.png", channels=1).shape == (1, 20, 30)

    g16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(read_image(tmp_path / "g16.png", channels=1)[0], g16 / 65535.0, atol=1e-6)

    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), np.moveaxis(rgb, -1, 0) / 255.0, atol=1e-6)

    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (3, 20, 30)


def test_jpeg(tmp_path):
    rgb = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    out = read_image(tmp_path / "x.jpg")
    np.testing.assert_allclose(out[:, 8, 8], np.array([200, 100, 50]) / 255.0, atol=0.02)


def test_dicom_monochrome2_rescale_and_window(tmp_path):
    stored = np.arange(0, 4000, 10, dtype=np.uint16).reshape(20, 20)
    slope, intercept, center, width = 2.0, -1000.0, 1000.0, 4000.0
    write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", rescale=(slope, intercept), window=(center, width))
    out = read_image(tmp_path / "m2.dcm", channels=1)[0]
    value = stored * slope + intercept  # modality LUT
    expected = np.clip((value - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # an explicit window overrides the file's
    out = read_image(tmp_path / "m2.dcm", channels=1, window=(0.0, 100.0))[0]
    np.testing.assert_allclose(out, np.clip((value + 0.5) / 99 + 0.5, 0, 1), atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))
    write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1")
    out = read_image(tmp_path / "m1.dcm", channels=1)[0]
    assert out[0, 0] == pytest.approx(1.0) and out[0, -1] == pytest.approx(0.0)  # low stored value = bright
    assert np.all(np.diff(out[0]) < 0)


def test_dicom_without_suffix_and_rgb(tmp_path):
    write_dicom(tmp_path / "IM0001", np.full((8, 8), 100, np.uint16), "MONOCHROME2", window=(100.0, 200.0))
    assert read_image(tmp_path / "IM0001").shape == (3, 8, 8)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")
    out = read_image(tmp_path / "rgb.dcm")
    assert out[0].min() == 1.0 and out[1].max() == 0.0


def test_nifti_2d_and_3d(tmp_path):
    import nibabel as nib

    data = np.arange(30, dtype=np.float32).reshape(5, 6)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "a.nii.gz"))
    np.testing.assert_allclose(read_image(tmp_path / "a.nii.gz", channels=1)[0], data / 29.0, atol=1e-6)
    nib.save(nib.Nifti1Image(data[..., None], np.eye(4)), str(tmp_path / "b.nii"))  # singleton axis
    assert read_image(tmp_path / "b.nii").shape == (3, 5, 6)
    vol = np.random.default_rng(0).random((5, 6, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "vol.nii.gz"))
    with pytest.raises(ImageReadError, match=r"vol\.nii\.gz: 3-D volume.*slice_index"):
        read_image(tmp_path / "vol.nii.gz")
    out = read_image(tmp_path / "vol.nii.gz", channels=1, slice_index=2)[0]
    np.testing.assert_allclose(out, (vol[..., 2] - vol[..., 2].min()) / np.ptp(vol[..., 2]), atol=1e-6)


def test_multiframe_dicom_needs_a_frame(tmp_path):
    import pydicom

    from fpt_monai.transforms.dicom_objects import MultiFrameError

    path = write_dicom(tmp_path / "mf.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    frames = np.stack([np.full((8, 8), v, np.uint16) for v in (10, 20, 30)])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.save_as(path)
    with pytest.raises(MultiFrameError, match=r"mf\.dcm: multi-frame image with 3 frames.*frame index"):
        read_image(path)
    assert read_image(path, frame=1, window=(20.0, 10.0), channels=1)[0, 0, 0] == pytest.approx(0.5, abs=0.06)
    with pytest.raises(MultiFrameError, match=r"mf\.dcm: frame 5 out of range"):
        read_image(path, frame=5)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("truncated.jpg", None, "corrupt or truncated"),
        ("notes.png", b"this is a text file, not a picture", "not a readable image"),
        ("report.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00", "DICOM"),
        ("broken.nii.gz", b"\x1f\x8b\x08garbage", "not a readable NIfTI"),
        ("table.csv", b"a,b\n1,2\n", "unsupported file type"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    if content is None:  # a real JPEG cut in half
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(path)
    assert name in str(info.value)


def test_missing_file_and_wrong_channels(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match="RGB image where a grayscale"):
        read_image(tmp_path / "rgb.png", channels=1)
    Image.fromarray(np.zeros((8, 8, 2), np.uint8), mode="LA").save(tmp_path / "la.png")  # alpha dropped: gray
    assert read_image(tmp_path / "la.png").shape == (3, 8, 8)
    dcm = write_dicom(tmp_path / "no_pixels.dcm", np.zeros((4, 4), np.uint16))
    import pydicom

    ds = pydicom.dcmread(dcm)
    del ds.PixelData
    ds.save_as(dcm)
    with pytest.raises(ImageReadError, match=r"no_pixels\.dcm: DICOM image without pixel data"):
        read_image(dcm)


def test_dict_transform_returns_meta_tensor(tmp_path):
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "a.png")
    out = LoadMedicalImaged("image")({"image": str(tmp_path / "a.png"), "label": 1})
    assert isinstance(out["image"], torch.Tensor) and out["image"].shape == (3, 8, 10)
    assert out["image"].meta["filename_or_obj"].endswith("a.png") and out["label"] == 1
    assert out["image"].meta["frame"] == 0


def test_isic_jpegs_from_shared():
    images = sorted((SHARED_DIR / "data" / "isic_uda1" / "images").glob("*.jpg"))[:3]
    if not images:
        pytest.skip("../shared/data/isic_uda1 not found (../shared is absent)")
    for path in images:
        out = read_image(path)
        assert out.shape[0] == 3 and min(out.shape[1:]) == 512 and 0.05 < out.mean() < 0.95
