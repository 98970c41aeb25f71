"""The tiny bundle helpers live in tests/bundle_utils.py (shared with the export and deploy tests)."""

from ..bundle_utils import META, TRAIN_CONFIG, make_workflow, run_workflow, tiny_overrides

__all__ = ["META", "TRAIN_CONFIG", "make_workflow", "run_workflow", "tiny_overrides"]
