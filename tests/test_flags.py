from __future__ import annotations

import pytest

from fpt_monai.utils.flags import as_bool


@pytest.mark.parametrize("value", [True, 1, "true", "True", " YES ", "on", "1"])
def test_true_values(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, 0, None, "false", "False", "no", "off", "0", ""])
def test_false_values_include_the_string_false(value):
    assert as_bool(value) is False
