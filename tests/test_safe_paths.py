from __future__ import annotations

import os

import pytest

from fpt_monai.utils.safe_paths import UnsafeOutputPathError, output_path, safe_file_name


@pytest.mark.parametrize(
    "value",
    ["../../../../tmp/x", "..", ".hidden", "/etc/passwd", "a/../../b", "..\\..\\win", "1.2.840.10008.1", "", "é" * 300],
)
def test_untrusted_values_become_one_harmless_component_inside_the_folder(tmp_path, value):
    name = safe_file_name(value)
    assert name and "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 200
    path = output_path(tmp_path / "out", value, ".png", subfolder="heatmaps")
    assert path.resolve().parent == (tmp_path / "out" / "heatmaps").resolve()


def test_uids_keep_their_readable_form():
    assert safe_file_name("1.2.840.10008.5.1.4.1.1.7") == "1.2.840.10008.5.1.4.1.1.7"
    assert safe_file_name("images/test/case 1") == "images__test__case_1"


def test_a_planted_link_that_leaves_the_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(outside, tmp_path / "out" / "heatmaps")
    with pytest.raises(UnsafeOutputPathError, match="outside"):
        output_path(tmp_path / "out", "1.2.3", ".png", subfolder="heatmaps")
