"""``python -m fpt_monai.check``: see :mod:`fpt_monai.check`."""

from fpt_monai.check.cli import run

if __name__ == "__main__":
    run()
