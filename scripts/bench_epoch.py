"""Kept for old commands: `python scripts/bench_epoch.py ...` is
`python -m fpt_monai.benchmarks.epoch ...`."""

from fpt_monai.benchmarks.epoch import run

if __name__ == "__main__":
    run()
