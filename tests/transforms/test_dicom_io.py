"""read_image on real clinical DICOM: every compressed transfer syntax (pydicom's bundled test files, against their
uncompressed twins or pydicom's reference pixel values), every photometric interpretation, non-image objects and the
multi-frame policy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import fpt_monai.transforms.io as io_module
from fpt_monai.transforms import ImageReadError, LoadMedicalImaged, image_frame_count, read_image
from fpt_monai.transforms.dicom_objects import MultiFrameError

pydicom = pytest.importorskip("pydicom")

# PS3.3 C.11.2.1.2.1 with center 0.5 and this width maps a value v to v / 2**18 + 0.5: the reader's output gives the
# modality-LUT values back exactly (float32 resolution at 0.5..1 is 6e-8, i.e. 0.016 of a value)
_WIDTH = 2**18 + 1

# SC_rgb*.dcm: ten stripes of 10 rows; (row, RGB) from pydicom's pixel reference data
STRIPES = [
    (5, (255, 0, 0)),
    (15, (255, 128, 128)),
    (25, (0, 255, 0)),
    (35, (128, 255, 128)),
    (45, (0, 0, 255)),
    (55, (128, 128, 255)),
    (65, (0, 0, 0)),
    (75, (64, 64, 64)),
    (85, (192, 192, 192)),
    (95, (255, 255, 255)),
]


def bundled(name: str) -> Path:
    """A file bundled with pydicom, or skip (some pydicom packages strip the test data)."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name)
    except Exception as err:  # a missing file may trigger a download attempt, which fails offline
        pytest.skip(f"pydicom test file {name} not available ({err})")
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom install")
    return Path(path)


def values(path: Path, frame: int | str | None = None) -> np.ndarray:
    """The modality-LUT values read_image computed for a grey image, recovered through a known window."""
    out = read_image(path, channels=1, frame=frame, window=(0.5, _WIDTH))[0].astype(np.float64)
    assert 0.0 < out.min() and out.max() < 1.0  # nothing clipped: the recovered values are exact
    return np.round((out - 0.5) * (_WIDTH - 1))


def rgb255(path: Path, frame: int | str | None = None) -> np.ndarray:
    out = read_image(path, frame=frame)
    assert out.shape[0] == 3 and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    return np.moveaxis(out, 0, -1) * 255.0


def assert_stripes(rgb: np.ndarray, atol: float = 0.5) -> None:
    for row, colour in STRIPES:
        np.testing.assert_allclose(rgb[row, 50], colour, atol=atol, err_msg=f"row {row}")


def write(path: Path, pixels: bytes, photometric: str, rows: int, cols: int, **attrs) -> Path:
    """A secondary-capture DICOM file with the given pixel bytes and attributes (explicit VR little endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = attrs.pop("SOPClassUID", SecondaryCaptureImageStorage)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = attrs.pop("Modality", "OT")
    ds.Rows, ds.Columns = rows, cols
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric.startswith(("RGB", "YBR")) else 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixels:
        ds.PixelData = pixels
    ds.save_as(path, enforce_file_format=True)
    return path


# --- transfer syntaxes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_RLE.dcm",  # RLE lossless
        "MR_small_bigendian.dcm",  # explicit VR big endian
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_grey_equals_uncompressed_twin(name):
    reference = values(bundled("MR_small.dcm"))
    # pydicom's reference values of MR_small (signed 16-bit, no rescale): the twin itself is read right
    assert reference.shape == (64, 64)
    assert tuple(reference[0, 31:34]) == (422, 319, 361) and tuple(reference[-1, -3:]) == (1369, 1129, 862)
    np.testing.assert_array_equal(values(bundled(name)), reference)
    # the file's own window (600, 1600) is used by default
    out = read_image(bundled(name), channels=1)[0]
    expected = np.clip((reference - 599.5) / 1599 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize(
    "name, atol",
    [
        ("SC_rgb_rle.dcm", 0.5),  # RLE lossless
        ("SC_rgb_jpeg_gdcm.dcm", 0.5),  # JPEG lossless, process 14 SV1
        ("SC_rgb_gdcm_KY.dcm", 0.5),  # JPEG 2000, RGB
        ("SC_rgb_dcmtk_+eb+cr.dcm", 2),  # JPEG baseline, RGB
        ("SC_rgb_jpeg_dcmtk.dcm", 8),  # JPEG baseline, YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 8),  # JPEG baseline, YBR_FULL_422
        ("SC_ybr_full_422_uncompressed.dcm", 8),  # uncompressed YBR_FULL_422
        ("SC_rgb_jls_lossy_line.dcm", 3),  # JPEG-LS near-lossless (NEAR 2), line interleaved
        ("SC_rgb_jls_lossy_sample.dcm", 3),  # sample interleaved
    ],
)
def test_colour_syntaxes_give_the_reference_stripes(name, atol):
    rgb = rgb255(bundled(name))
    assert rgb.shape == (100, 100, 3)
    assert_stripes(rgb, atol)


def test_16_and_32_bit_rgb_scale_by_their_bit_depth():
    reference = rgb255(bundled("SC_rgb_rle.dcm"))
    for name in ("SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"):  # v * 257 and v * 16843009
        np.testing.assert_allclose(rgb255(bundled(name)), reference, atol=1e-3)


def test_lossy_colour_jpeg_close_to_the_original():
    reference = rgb255(bundled("SC_rgb_rle.dcm"))
    rgb = rgb255(bundled("SC_rgb_jpeg_lossy_gdcm.dcm"))  # JPEG baseline, lossy YBR_FULL
    assert np.abs(rgb - reference).mean() < 4
    odd = rgb255(bundled("SC_rgb_small_odd.dcm"))
    assert odd[0].tolist() == [[166, 141, 52]] * 3 and odd[2].tolist() == [[158, 158, 158]] * 3
    np.testing.assert_array_equal(rgb255(bundled("SC_rgb_small_odd_big_endian.dcm")), odd)
    np.testing.assert_allclose(rgb255(bundled("SC_rgb_small_odd_jpeg.dcm")), odd, atol=5)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_jpeg_baseline_rgb_256px():
    for name in ("SC_rgb_jpeg.dcm", "SC_rgb_jpeg_dcmd.dcm"):
        rgb = rgb255(bundled(name))
        assert rgb.shape == (256, 256, 3)
        # pydicom's reference pixels of SC_rgb_jpeg_dcmd.dcm (the same picture)
        np.testing.assert_allclose(
            rgb[29, 77:81], [[240, 243, 246], [214, 210, 213], [150, 134, 134], [244] * 3], atol=1
        )


def test_jpeg_extended_12_bit():
    v = values(bundled("JPGExtended.dcm"))
    assert v.shape == (1024, 256) and v.min() >= 0 and v.max() <= 4095
    assert v[420, 140] == 244 and v[230, 120] == 95  # pydicom's reference values
    out = read_image(bundled("JPGExtended.dcm"), channels=1)[0]  # no window in the file: min-max
    np.testing.assert_allclose(out, (v - v.min()) / (v.max() - v.min()), atol=1e-6)


def test_non_conformant_jpeg_names_file_and_fix():
    # JPEG-lossy.dcm's scan header is invalid for sequential JPEG (JPGExtended.dcm is its fixed version); libjpeg
    # refuses it. The error names the file, the syntax and how to re-export it.
    with pytest.raises(ImageReadError, match=r"JPEG-lossy\.dcm: cannot decode the JPEG Extended.*gdcmconv"):
        read_image(bundled("JPEG-lossy.dcm"))


def test_jpeg_ls_near_lossless_16_and_8_bit():
    v16 = values(bundled("JPEGLSNearLossless_16.dcm"))
    assert v16.shape == (50, 10)
    assert v16[[0, 5, 10, 15, 20, 25, 30, 35, 40], 0].tolist() == [65535, 32765, 16385, 4095, 1025, 255, 65, 15, 5]
    v8 = values(bundled("JPEGLSNearLossless_08.dcm"))
    assert v8[[0, 5, 10, 15, 20, 25, 30, 35, 40], 0].tolist() == [255, 125, 65, 30, 15, 5, 5, 0, 0]


def test_jpeg_2000_lossy_signed():
    v = values(bundled("JPEG2000.dcm"))  # signed 16-bit, NM
    assert v.shape == (1024, 256) and v.min() < 0 < v.max()
    ct = values(bundled("693_J2KI.dcm"))  # 14-bit signed CT, rescale intercept -1024, window 40/100
    assert ct.shape == (512, 512) and ct.min() >= -1024 - 2**13 and ct.max() <= 2**13 - 1024
    raw = pydicom.dcmread(bundled("693_J2KI.dcm")).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(ct, raw - 1024)  # the modality LUT is applied
    out = read_image(bundled("693_J2KI.dcm"), channels=1)[0]
    np.testing.assert_allclose(out, np.clip((ct - 39.5) / 99 + 0.5, 0, 1), atol=1e-6)


def test_jpeg_2000_ybr_rct():
    rgb = rgb255(bundled("GDCMJ2K_TextGBR.dcm"))
    assert tuple(rgb[45, 140]) == (223, 32, 32) and tuple(rgb[46, 140]) == (255, 0, 0)
    assert tuple(rgb[350, 195]) == (128, 128, 128)


def test_deflated_explicit_vr(tmp_path):
    path = bundled("image_dfl.dcm")
    v = values(path)
    assert v.shape == (512, 512) and v[10].min() == 41 and v[10].max() == 255
    assert tuple(v[300, 255:263]) == (138, 65, 65, 65, 65, 35, 35, 35)
    # the same dataset written uncompressed reads the same
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(values(tmp_path / "plain.dcm"), v)


def test_missing_decoder_is_named(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(ImageReadError, match=r"MR_small_RLE\.dcm: no decoder installed for RLE.*pip install pylibjpeg"):
        read_image(bundled("MR_small_RLE.dcm"))


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = pydicom.encaps.encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(
        ImageReadError, match=r"video\.dcm: pixel data in transfer syntax MPEG2.*cannot be decoded.*Re-"
    ):
        read_image(tmp_path / "video.dcm")


# --- photometric interpretations ------------------------------------------------------------------------------------


def test_palette_color_bundled_example():
    path = bundled("examples_palette.dcm")
    out = read_image(path)
    assert out.shape == (3, 350, 800)
    assert np.abs(out[0] - out[1]).max() > 0.2  # colour, not grey palette indices repeated
    ds = pydicom.dcmread(path)
    from pydicom.pixels import apply_color_lut

    assert ds.RedPaletteColorLookupTableDescriptor[2] == 16
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64) / 65535
    np.testing.assert_allclose(np.moveaxis(out, 0, -1), expected, atol=1e-6)
    with pytest.raises(ImageReadError, match="RGB image where a grayscale"):
        read_image(path, channels=1)


@pytest.mark.parametrize("first_mapped", [0, 10])
def test_palette_color_16_bit_lut(tmp_path, first_mapped):
    lut = np.array(
        [[0, 0, 0], [65535, 0, 0], [0, 32768, 65535], [65535, 65535, 65535]], dtype=np.uint16
    )  # black, red, azure, white
    indices = (np.arange(16).reshape(4, 4) % 4 + first_mapped).astype(np.uint8)
    path = write(
        tmp_path / "pal16.dcm",
        indices.tobytes(),
        "PALETTE COLOR",
        4,
        4,
        RedPaletteColorLookupTableDescriptor=[4, first_mapped, 16],
        GreenPaletteColorLookupTableDescriptor=[4, first_mapped, 16],
        BluePaletteColorLookupTableDescriptor=[4, first_mapped, 16],
        RedPaletteColorLookupTableData=lut[:, 0].tobytes(),
        GreenPaletteColorLookupTableData=lut[:, 1].tobytes(),
        BluePaletteColorLookupTableData=lut[:, 2].tobytes(),
    )
    out = read_image(path)
    expected = lut[indices - first_mapped].astype(np.float64) / 65535
    np.testing.assert_allclose(np.moveaxis(out, 0, -1), expected, atol=1e-6)
    assert tuple(out[:, 0, 2]) == pytest.approx((0.0, 32768 / 65535, 1.0))


def test_palette_color_8_bit_lut(tmp_path):
    lut = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [255, 255, 255]], dtype=np.uint8)
    indices = (np.arange(16).reshape(4, 4) % 4).astype(np.uint8)
    desc = [4, 0, 8]
    path = write(
        tmp_path / "pal8.dcm",
        indices.tobytes(),
        "PALETTE COLOR",
        4,
        4,
        RedPaletteColorLookupTableDescriptor=desc,
        GreenPaletteColorLookupTableDescriptor=desc,
        BluePaletteColorLookupTableDescriptor=desc,
        RedPaletteColorLookupTableData=lut[:, 0].tobytes(),
        GreenPaletteColorLookupTableData=lut[:, 1].tobytes(),
        BluePaletteColorLookupTableData=lut[:, 2].tobytes(),
    )
    np.testing.assert_allclose(np.moveaxis(read_image(path), 0, -1), lut[indices] / 255.0, atol=1e-6)


def test_palette_color_without_lut_names_file(tmp_path):
    path = write(tmp_path / "nolut.dcm", bytes(16), "PALETTE COLOR", 4, 4)
    with pytest.raises(ImageReadError, match=r"nolut\.dcm: PALETTE COLOR image with a missing .*Re-export"):
        read_image(path)


def _rgb_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgb[0, :2] = [(255, 0, 0), (0, 0, 255)]
    return rgb


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_planar_configurations(tmp_path, planar):
    rgb = _rgb_image()
    data = np.moveaxis(rgb, -1, 0) if planar else rgb  # planar 1: RRR..GGG..BBB
    path = write(tmp_path / f"rgb{planar}.dcm", np.ascontiguousarray(data).tobytes(), "RGB", 6, 8)
    pydicom_ds = pydicom.dcmread(path)
    pydicom_ds.PlanarConfiguration = planar
    pydicom_ds.save_as(path)
    np.testing.assert_allclose(rgb255(path), rgb, atol=1e-3)


def test_ybr_full_uncompressed(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = _rgb_image()
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    path = write(tmp_path / "ybr.dcm", ybr.tobytes(), "YBR_FULL", 6, 8)
    assert np.abs(rgb255(path) - rgb).max() <= 2  # within 2/255 (YBR rounding)


def test_ybr_full_422_uncompressed(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.repeat(_rgb_image()[:, ::2], 2, axis=1)  # horizontal pairs share their chroma
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.uint8)
    # 4:2:2 stores Y1 Y2 Cb Cr for each pair of pixels
    pairs = np.stack([ybr[:, 0::2, 0], ybr[:, 1::2, 0], ybr[:, 0::2, 1], ybr[:, 0::2, 2]], axis=-1)
    path = write(tmp_path / "ybr422.dcm", pairs.tobytes(), "YBR_FULL_422", 6, 8)
    assert np.abs(rgb255(path) - rgb).max() <= 2


@pytest.mark.parametrize("photometric", ["HSV", "CMYK", "ARGB", "YBR_PARTIAL_422", "XYZ", ""])
def test_unsupported_photometric_names_value_and_fix(tmp_path, photometric):
    samples = 4 if photometric in ("CMYK", "ARGB") else 3
    path = write(tmp_path / "odd.dcm", bytes(4 * 4 * samples), "RGB", 4, 4, SamplesPerPixel=samples)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = photometric
    ds.save_as(path)
    shown = re.escape(repr(photometric or "(missing)"))
    with pytest.raises(ImageReadError, match=rf"odd\.dcm: unsupported photometric interpretation {shown}.*Re-export"):
        read_image(path)


def test_samples_per_pixel_inconsistent_with_photometric(tmp_path):
    path = write(tmp_path / "rgb1.dcm", bytes(16), "RGB", 4, 4)
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel = 1
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"rgb1\.dcm: RGB with SamplesPerPixel 1 \(expected 3\)"):
        read_image(path)


def test_one_bit_images_read_as_zero_one(tmp_path):
    from pydicom.pixels import pack_bits

    bits = (np.arange(8 * 16).reshape(8, 16) % 3 == 0).astype(np.uint8)
    for name, image in (("bits.dcm", bits), ("ones.dcm", np.ones_like(bits))):
        path = write(tmp_path / name, pack_bits(image), "MONOCHROME2", 8, 16, BitsAllocated=1, BitsStored=1, HighBit=0)
        out = read_image(path, channels=1)[0]
        np.testing.assert_array_equal(out, image.astype(np.float32))  # all-ones stays ones (no min-max)
    m1 = write(tmp_path / "m1.dcm", pack_bits(bits), "MONOCHROME1", 8, 16, BitsAllocated=1, BitsStored=1, HighBit=0)
    np.testing.assert_array_equal(read_image(m1, channels=1)[0], 1.0 - bits)


def test_signed_pixels_and_rescale(tmp_path):
    stored = np.arange(-60, 60, dtype=np.int16).reshape(8, 15)
    path = write(
        tmp_path / "signed.dcm",
        stored.tobytes(),
        "MONOCHROME2",
        8,
        15,
        BitsAllocated=16,
        BitsStored=16,
        HighBit=15,
        PixelRepresentation=1,
        RescaleSlope=2,
        RescaleIntercept=-5,
    )
    np.testing.assert_array_equal(values(path), stored * 2.0 - 5)
    out = read_image(path, channels=1)[0]  # no window: min-max
    np.testing.assert_allclose(out, (stored - stored.min()) / np.ptp(stored), atol=1e-6)


def test_float_pixel_data(tmp_path):
    arr = np.linspace(-1.0, 3.0, 20, dtype=np.float32).reshape(4, 5)
    path = write(tmp_path / "float.dcm", b"", "MONOCHROME2", 4, 5, BitsAllocated=32)
    ds = pydicom.dcmread(path)
    for key in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, key)
    ds.FloatPixelData = arr.tobytes()
    ds.save_as(path)
    np.testing.assert_allclose(read_image(path, channels=1)[0], (arr + 1.0) / 4.0, atol=1e-6)
    ds.FloatPixelData = np.full((4, 5), np.nan, np.float32).tobytes()
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"float\.dcm: NaN or infinite pixel values"):
        read_image(path)


# --- non-image objects ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, what",
    [
        ("liver_1frame.dcm", "Segmentation"),
        ("reportsi.dcm", "Structured Report"),
        ("test-SR.dcm", "Structured Report"),
        ("rtdose.dcm", "RT Dose"),
        ("rtplan.dcm", "RT Plan"),
        ("waveform_ecg.dcm", "Waveform"),
        ("DICOMDIR", "DICOMDIR"),
    ],
)
def test_non_image_objects_refused_before_decoding(name, what, monkeypatch):
    decoded = []
    monkeypatch.setattr(io_module, "_decode_frame", lambda *args: decoded.append(args))
    path = bundled(name)
    with pytest.raises(ImageReadError, match=rf"{name}: .*{what}.*no image to classify\. Remove it") as info:
        read_image(path, frame="first")
    assert str(path) in str(info.value) and not decoded


@pytest.mark.parametrize(
    "sop_class, modality, what",
    [
        ("1.2.840.10008.5.1.4.1.1.11.1", "PR", "Presentation State"),  # grayscale softcopy presentation state
        ("1.2.840.10008.5.1.4.1.1.88.59", "KO", "Key Object Selection"),
        ("1.2.840.10008.5.1.4.1.1.104.1", "DOC", "Encapsulated Document"),  # encapsulated PDF
    ],
)
def test_written_non_image_objects(tmp_path, sop_class, modality, what):
    path = write(tmp_path / "obj.dcm", b"", "MONOCHROME2", 1, 1, SOPClassUID=sop_class, Modality=modality)
    with pytest.raises(ImageReadError, match=rf"obj\.dcm: .*{what}.*no image to classify"):
        read_image(path)


# --- multi-frame ----------------------------------------------------------------------------------------------------


def test_multiframe_policy_on_two_frame_rgb():
    path = bundled("SC_rgb_rle_2frame.dcm")  # frame 1 is frame 0 inverted
    with pytest.raises(MultiFrameError, match=r"SC_rgb_rle_2frame\.dcm: multi-frame image with 2 frames.*index"):
        read_image(path)
    with pytest.raises(MultiFrameError, match=r"SC_rgb_rle_2frame\.dcm: multi-frame"):
        read_image(path, frame="refuse")
    assert_stripes(rgb255(path, frame="first"))
    assert_stripes(255 - rgb255(path, frame=1))
    assert_stripes(255 - rgb255(path, frame="middle"))  # 2 // 2 = 1
    assert_stripes(rgb255(path, frame="0"))
    with pytest.raises(MultiFrameError, match=r"SC_rgb_rle_2frame\.dcm: frame 2 out of range \(the image has 2"):
        read_image(path, frame=2)
    with pytest.raises(ValueError, match="'every' is expanded by the datalist / Deploy app into one item per frame"):
        read_image(path, frame="every")
    with pytest.raises(ValueError, match="frame must be None, 'refuse', 'first', 'middle' or a frame index"):
        read_image(path, frame="last")


def test_multiframe_ybr_jpeg_middle_frame():
    path = bundled("examples_ybr_color.dcm")  # 30 frames, YBR_FULL_422 JPEG baseline
    assert image_frame_count(path) == 30
    out = read_image(path, frame="middle")
    assert out.shape == (3, 240, 320) and 0.0 <= out.min() and out.max() <= 1.0
    ds = pydicom.dcmread(path)
    full = ds.pixel_array  # every frame decoded and converted to RGB by pydicom
    np.testing.assert_allclose(np.moveaxis(out, 0, -1), full[15] / 255.0, atol=1e-6)
    assert np.abs(full[15].astype(int) - full[0]).max() > 0  # frame 15 is not frame 0
    assert np.abs(out[0] - out[2]).max() > 0.1  # colour


def test_single_frame_policies():
    path = bundled("MR_small.dcm")
    reference = values(path)
    for frame in (None, "refuse", "first", "middle", 0):
        np.testing.assert_array_equal(values(path, frame=frame), reference)
    with pytest.raises(MultiFrameError, match=r"MR_small\.dcm: frame 1 out of range \(the image has 1 frame"):
        read_image(path, frame=1)


def test_dict_transform_frame_key(tmp_path):
    path = str(bundled("SC_rgb_rle_2frame.dcm"))
    load = LoadMedicalImaged("image")
    out = load({"image": path, "frame": 1})
    assert out["image"].meta["frame"] == 1 and out["frame"] == 1
    assert_stripes(255 - np.moveaxis(out["image"].numpy(), 0, -1) * 255)
    with pytest.raises(MultiFrameError):  # no frame in the item, the transform's policy: refuse
        load({"image": path})
    with pytest.raises(MultiFrameError):
        load({"image": path, "frame": None})
    middle = LoadMedicalImaged("image", frame="middle")
    assert middle({"image": path})["image"].meta["frame"] == 1
    assert middle({"image": path, "frame": 0})["image"].meta["frame"] == 0  # the item's frame wins
    assert (
        LoadMedicalImaged("image", frame="first", frame_key=None)({"image": path, "frame": 1})["image"].meta["frame"]
        == 0
    )
    assert LoadMedicalImaged("image", frame_key="k")({"image": path, "k": np.int64(1)})["image"].meta["frame"] == 1
    with pytest.raises(ValueError, match="'every'"):
        LoadMedicalImaged("image", frame="every")


def test_image_frame_count_reads_the_header_only(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    assert image_frame_count(tmp_path / "a.png") == 1
    assert image_frame_count(bundled("MR_small.dcm")) == 1
    assert image_frame_count(bundled("SC_rgb_rle_2frame.dcm")) == 2
    calls = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert image_frame_count(bundled("examples_ybr_color.dcm")) == 30
    assert calls == [{"stop_before_pixels": True}]
    with pytest.raises(ImageReadError, match=r"nope\.dcm: no such file"):
        image_frame_count(tmp_path / "nope.dcm")
    (tmp_path / "bad.dcm").write_bytes(b"not dicom")
    with pytest.raises(ImageReadError, match=r"bad\.dcm: not a readable DICOM file"):
        image_frame_count(tmp_path / "bad.dcm")
