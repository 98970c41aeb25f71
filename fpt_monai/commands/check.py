"""``fpt-monai check``: :mod:`fpt_monai.check` (every speed and memory claim on one device, one report)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from fpt_monai.check.cli import main as check

    return check(None if argv is None else list(argv))
