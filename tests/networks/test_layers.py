from __future__ import annotations

import pytest

from fpt_monai.networks import parse_layers


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("6-11", (6, 7, 8, 9, 10, 11)),
        ("0-11", tuple(range(12))),
        ("0,3,5", (0, 3, 5)),
        ("5, 1", (1, 5)),
        (7, (7,)),
        ([9, 2], (2, 9)),
        (-1, (11,)),
        ("-3--1", (9, 10, 11)),
        ("all", tuple(range(12))),
        ("second_half", (6, 7, 8, 9, 10, 11)),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 12) == expected


def test_second_half_of_vit_large():
    assert parse_layers("second_half", 24) == tuple(range(12, 24))


@pytest.mark.parametrize("spec", ["12", "0-12", "a-b", "3-1", "", [], "1,1", True, "1-"])
def test_bad_layers(spec):
    with pytest.raises(ValueError):
        parse_layers(spec, 12)
