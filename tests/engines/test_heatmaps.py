"""Heatmap file names: one file per (id, frame), readable where the id is a plain file name, always safe."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpt_monai.engines.heatmaps import HASH_LENGTH, heatmap_name
from fpt_monai.utils.safe_paths import output_path, safe_file_name


def test_plain_ids_keep_their_whole_name_and_others_get_a_hash():
    # the reviewer's collisions: one stem, three extensions; a folder and a "__" in a file name
    names = {i: heatmap_name(i) for i in ("case.png", "case.jpg", "case.dcm", "a/b.png", "a__b.png")}
    assert names["case.png"] == "case.png" and names["case.jpg"] == "case.jpg" and names["case.dcm"] == "case.dcm"
    assert names["a/b.png"].startswith("a__b.png__") and names["a__b.png"].startswith("a__b.png__")
    assert len(set(names.values())) == 5
    assert heatmap_name("case.dcm", 3) == "case.dcm_frame3"
    # an id that looks like a frame's name is not a frame's name
    assert heatmap_name("case.dcm_frame3") != heatmap_name("case.dcm", 3)
    # a UID is its own name; the hash on request (names that differ only in letter case)
    assert heatmap_name("1.2.840.10008.5") == "1.2.840.10008.5"
    assert heatmap_name("Case.png", hashed=True) != heatmap_name("case.png", hashed=True)
    assert len(heatmap_name("x" * 1000)) < 200 and heatmap_name("x" * 1000) != heatmap_name("x" * 999)


@pytest.mark.parametrize("value", ["../../../etc/passwd", "/abs/path.png", "..", "", "a\\b.png", "é.png", "a\x00b"])
def test_untrusted_ids_stay_inside_the_folder(tmp_path, value):
    name = heatmap_name(value, 2)
    assert safe_file_name(name) == name and name.endswith("_frame2") and len(name.split("__")[-1]) > HASH_LENGTH
    assert output_path(tmp_path, name, ".png").parent == tmp_path


_ids = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="ab._-/\\", max_size=12),
    st.sampled_from(["a_frame1", "a", "a__b", "a/b", "a_b", "A", "a.png", "a.png_frame1"]),
)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.lists(st.tuples(_ids, st.one_of(st.none(), st.integers(0, 12))), min_size=2, max_size=8, unique=True))
def test_different_items_never_share_a_name(pairs):
    names = [heatmap_name(value, frame) for value, frame in pairs]
    assert len(set(names)) == len(names), list(zip(pairs, names, strict=True))
    assert all(safe_file_name(n) == n for n in names)  # output_path keeps them as they are
