"""Kept for old commands: `python scripts/benchmark.py ...` is
`python -m fpt_monai.benchmarks.training_cost ...`."""

from fpt_monai.benchmarks.training_cost import run

if __name__ == "__main__":
    run()
