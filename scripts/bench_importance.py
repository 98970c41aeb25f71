"""Kept for old commands: `python scripts/bench_importance.py ...` is
`python -m fpt_monai.benchmarks.importance ...`."""

from fpt_monai.benchmarks.importance import run

if __name__ == "__main__":
    run()
