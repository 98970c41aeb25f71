"""Kept for old commands: `python scripts/study.py ...` is `fpt-monai study ...` (fpt_monai.commands.study; the
study itself is the package fpt_monai.study)."""

import sys

from fpt_monai.commands.study import main

if __name__ == "__main__":
    from fpt_monai.utils.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    sys.exit(main())
