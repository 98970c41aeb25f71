"""Kept for old commands: `python scripts/run_summary.py ...` is `fpt-monai summary ...`
(fpt_monai.commands.summary; the report itself is fpt_monai.reports.summary)."""

import sys

from fpt_monai.commands.summary import main

if __name__ == "__main__":
    from fpt_monai.utils.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    sys.exit(main())
