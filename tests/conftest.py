"""Shared fixtures: tiny backbones for fast tests and the read-only ``../shared`` data (skipped when absent)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from .bundle_utils import TRAIN_CONFIG, make_tiny_bundle_data, run_workflow

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
DINOV2_WEIGHTS = (
    SHARED_DIR / "data" / "vit_small_patch14_dinov2_imgfocus" / "vit_small_patch14_dinov2_imgfocus.fp16.safetensors"
)

# A 12-block ViT with 3 heads of 64 and a 4x4 patch grid at 64 px: every code path of ViT-B, a hundred times faster.
TINY = {"backbone": "vit_tiny_patch16_224", "img_size": 64}


# The longest tests (a minute or more of CPU each, `make test --durations`), longest first. A test id that no longer
# exists only drops out of the list. None of them waits for exported_tiny_bundle (its builder makes the other
# workers wait).
LONG_TESTS = (
    "tests/test_readme_example.py::test_readme_worked_example_runs_as_written_from_an_installed_wheel",
    "tests/bundle/test_trust.py::test_a_three_class_bundle_exports_and_deploys_with_one_identity",
    "tests/study/test_study.py::test_study_cross_validates_every_method_through_the_bundle_and_reruns_nothing",
    "tests/bundle/test_small_data.py::test_linear_probe_trains_from_stored_pooled_features_and_classifies_images",
    "tests/check/test_check.py::test_tiny_check_runs_every_section_and_writes_one_report",
    "tests/engines/test_fuse.py::test_fused_bundle_evaluates_exports_and_deploys",
    "tests/bundle/test_hardening.py::test_sigkilled_training_resumes_to_the_final_epoch",
    "tests/bundle/test_mlflow_lineage.py::test_a_sigkilled_training_logs_every_step_once_in_one_run",
    "tests/bundle/test_distributed.py::test_torchrun_training_matches_one_process",
    "tests/scripts/test_bench_epoch.py::test_bench_epoch_times_training_from_the_store_and_from_a_resident_copy",
)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the chunks below are of the tests that run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start every pytest-xdist worker with its share of :data:`LONG_TESTS`, so that no worker is left running one of
    them alone at the end of the suite (collection order put the wheel and study tests last).

    xdist's load scheduler gives each of the W workers a first chunk of consecutive tests (len // W // 4, at least 2,
    at most --maxschedchunk) and then hands out the rest in order as workers run low: the long tests are dealt round
    robin to the heads of those first chunks; the other tests keep their order (the same in every worker, whose
    collections must agree). Without xdist the long tests simply run first; the other modes (--dist loadfile,
    loadscope) group tests by file whatever the order.
    """
    rank = {nodeid: i for i, nodeid in enumerate(LONG_TESTS)}
    ranked = sorted(
        (item for item in items if item.nodeid.split("[")[0] in rank), key=lambda i: rank[i.nodeid.split("[")[0]]
    )
    if not ranked:
        return
    rest = [item for item in items if item.nodeid.split("[")[0] not in rank]
    # set in xdist's workers, where the order matters (their config says dist "no": the mode is the controller's)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        items[:] = ranked + rest
        return
    chunk = max(2, min(len(items) // workers // 4, config.getoption("maxschedchunk", None) or len(items)))
    ordered: list[pytest.Item] = []
    for w in range(workers):
        head = ranked[w::workers]
        take = max(0, chunk - len(head)) if w < workers - 1 else 0
        ordered += head + rest[:take]
        rest = rest[take:]
    items[:] = ordered + rest


@pytest.fixture(autouse=True)
def _seed_and_quiet():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised.*", category=UserWarning)
        yield


@pytest.fixture
def dinov2_weights() -> Path:
    if not DINOV2_WEIGHTS.is_file():
        pytest.skip(f"shared pre-trained ViT-S/14 weights not found at {DINOV2_WEIGHTS} (../shared is absent)")
    return DINOV2_WEIGHTS


def error_text(exc: BaseException) -> str:
    """The messages of an exception and of all its causes (MONAI wraps errors raised inside config expressions)."""
    text = ""
    while exc is not None:
        text += f"{exc}\n"
        exc = exc.__cause__
    return text


@pytest.fixture(scope="session")
def tiny_bundle_data(tmp_path_factory):
    """``(data_dir, weights)``: the demo images at 96 px and random ViT-Tiny 'pre-trained' weights."""
    return make_tiny_bundle_data(tmp_path_factory.mktemp("bundle_data"))


@pytest.fixture(scope="session")
def trained_tiny_bundle(tmp_path_factory, tiny_bundle_data):
    """``(bundle_root, data_dir, weights)`` of a bundle trained for 2 epochs on the tiny setting (read-only use)."""
    data_dir, weights = tiny_bundle_data
    root = tmp_path_factory.mktemp("trained")
    run_workflow(TRAIN_CONFIG, root, data_dir, weights)
    return root, data_dir, weights


@pytest.fixture(scope="session")
def exported_tiny_bundle(request, tmp_path_factory):
    """A copy of the trained tiny bundle after ``scripts/export_bundle.py`` (model.ts, model_explain.ts, model.onnx).

    Built once per test session, not once per pytest-xdist worker (a training and three exports, about a minute of
    CPU): the first worker to need it exports into the folder the workers share, under a file lock, and the others
    read it (the xdist documentation's recipe; ``--dist loadgroup`` does not group tests under pytest 9). A copy, so
    that no worker's trained bundle is written while another worker reads it.
    """
    import json
    import shutil
    import subprocess
    import sys

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder above every worker's own
    shared = shared / "exported_tiny_bundle"
    done_file = shared / "done.json"
    with FileLock(str(shared) + ".lock"):
        if not done_file.is_file():
            source, data_dir, weights = request.getfixturevalue("trained_tiny_bundle")  # only the builder trains
            shutil.rmtree(shared, ignore_errors=True)  # what a failed attempt left
            root = shared / "bundle"
            shutil.copytree(source / "models", root / "models")
            store = json.loads((source / "models" / "model_config.json").read_text())["training_settings"]["store_dir"]
            if store.startswith("../feature_stores/") and (source / store).is_dir():  # the store beside the bundle
                shutil.copytree(source / store, root / store)
            done = subprocess.run(
                [sys.executable, "scripts/export_bundle.py", "--bundle-root", str(root), "--pretrained", str(weights)],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
            done_file.write_text(json.dumps({"root": str(root), "data_dir": str(data_dir), "weights": str(weights)}))
    built = json.loads(done_file.read_text())
    return Path(built["root"]), Path(built["data_dir"]), Path(built["weights"])
