"""Kept for old commands: `python scripts/bench_precision.py ...` is
`python -m fpt_monai.benchmarks.precision ...`."""

from fpt_monai.benchmarks.precision import run

if __name__ == "__main__":
    run()
