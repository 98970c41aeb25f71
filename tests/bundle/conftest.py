"""The tiny bundle helpers live in tests/bundle_utils.py (shared with the export and deploy tests)."""

from ..bundle_utils import (
    EVAL_CONFIG,
    META,
    TRAIN_CONFIG,
    evaluated_probabilities,
    make_workflow,
    run_workflow,
    stores_and_images_differ_by,
    tiny_overrides,
)

__all__ = [
    "EVAL_CONFIG",
    "META",
    "TRAIN_CONFIG",
    "evaluated_probabilities",
    "make_workflow",
    "run_workflow",
    "stores_and_images_differ_by",
    "tiny_overrides",
]
