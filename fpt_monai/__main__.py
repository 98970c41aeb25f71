"""``python -m fpt_monai <command>``: the same as ``fpt-monai <command>`` (:mod:`fpt_monai.cli`)."""

from fpt_monai.cli import run

if __name__ == "__main__":
    run()
