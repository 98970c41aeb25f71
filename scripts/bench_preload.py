"""Kept for old commands: `python scripts/bench_preload.py ...` is
`python -m fpt_monai.benchmarks.preload_speed ...`."""

from fpt_monai.benchmarks.preload_speed import run

if __name__ == "__main__":
    run()
