"""fpt_monai.utils.errors: the most specific message of an exception chain as the last line of a failed run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fpt_monai.data import UnreadableImagesError
from fpt_monai.utils.errors import PREFIX, error_line, find_error, install_excepthook, is_ours

from .conftest import REPO_ROOT


def _wrapped(inner: BaseException) -> BaseException:
    """``inner`` as MONAI's bundle runner reports it: wrapped twice by monai.bundle's own frames."""
    from monai.bundle import ConfigParser

    def fail():
        raise inner

    parser = ConfigParser({"a": {"_target_": "builtins.dict", "x": "$@fail()"}, "b": "$@a"})
    parser["fail"] = fail
    try:
        parser.get_parsed_content("b")
    except Exception as err:
        return err
    raise AssertionError("the config did not fail")


def test_our_message_is_found_behind_monai_wrappers():
    outer = _wrapped(UnreadableImagesError("2 of 9 images cannot be read:\n  /d/a.png: truncated\nFix them."))
    assert "Failed to evaluate" in str(outer) or "Failed to instantiate" in str(outer)
    assert isinstance(find_error(outer), UnreadableImagesError)
    assert error_line(outer) == PREFIX + "2 of 9 images cannot be read: /d/a.png: truncated Fix them."


def test_other_errors_get_their_type_and_a_hint():
    line = error_line(_wrapped(ZeroDivisionError("division by zero")))
    assert (
        line
        == PREFIX
        + "division by zero (ZeroDivisionError). Unexpected error; the traceback above shows where it happened."
    )
    try:
        open("/no/such/file.json")
    except OSError as err:
        line = error_line(_wrapped(err))
    assert line.startswith(PREFIX + "/no/such/file.json: No such file or directory (FileNotFoundError). Unexpected")


def test_what_counts_as_ours(tmp_path):
    from fpt_monai.data import DatalistError, write_datalist
    from fpt_monai.transforms import fpt_transforms

    with pytest.raises(ValueError) as info:  # a plain ValueError raised by our code is written for users too
        fpt_transforms("sideways", train=False)
    assert type(info.value) is ValueError and is_ours(info.value)
    assert is_ours(DatalistError("defined in fpt_monai"))
    with pytest.raises(KeyError) as info:  # a bug in our code is not a message for users
        write_datalist({"training": [{"label": 0}]}, tmp_path / "datalist.json")
    assert not is_ours(info.value)
    assert (
        error_line(info.value)
        == PREFIX + "'image' (KeyError). Unexpected error; the traceback above shows where it happened."
    )


def test_long_messages_are_shortened_to_one_line():
    listing = "\n".join(f"  /d/{i}.png: truncated" for i in range(50))
    line = error_line(UnreadableImagesError(f"50 of 60 images cannot be read:\n{listing}\nFix or remove them."))
    assert "\n" not in line and line.endswith("Fix or remove them.") and "/d/0.png" in line and "/d/49.png" not in line


def test_excepthook_prints_the_traceback_then_our_line(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: calls.append(args[0]))
    install_excepthook()
    hook = sys.excepthook
    install_excepthook()  # idempotent
    assert sys.excepthook is hook
    err = _wrapped(UnreadableImagesError("/d/a.png: truncated. Remove it."))
    sys.excepthook(type(err), err, err.__traceback__)
    assert calls == [type(err)]  # the previous hook printed the traceback
    assert capsys.readouterr().err.splitlines()[-1] == PREFIX + "/d/a.png: truncated. Remove it."
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert calls[-1] is KeyboardInterrupt and capsys.readouterr().err == ""  # Ctrl-C as before


def test_our_cli_ends_with_our_line(tmp_path):
    cmd = [sys.executable, "-m", "fpt_monai.data.preload", "--datalist", "/no/such/datalist.json"]
    done = subprocess.run(cmd + ["--store", str(tmp_path / "store")], cwd=REPO_ROOT, capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1
    assert lines[-1].startswith(PREFIX + "/no/such/datalist.json: no such datalist file. Check the path"), lines[-1]
    assert "Traceback (most recent call last)" in done.stderr


def test_errors_from_dataloader_workers_are_found_in_their_text(tmp_path):
    from monai.data import DataLoader, Dataset

    from fpt_monai.transforms import LoadMedicalImaged

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    loader = DataLoader(Dataset([{"image": str(broken)}], transform=LoadMedicalImaged("image")), num_workers=1)
    with pytest.raises(Exception) as info:
        next(iter(loader))
    assert "Original Traceback" in str(info.value)  # torch keeps the worker's chain only as text
    line = error_line(_wrapped(info.value))
    assert line.startswith(f"{PREFIX}{broken}: ") and "Unexpected" not in line, line
