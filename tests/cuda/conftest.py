"""CUDA tests: the paths that only a GPU takes (half-precision prompt attention, resident stores in GPU memory,
fp16/bf16 preloads, autocast training, exports run on the GPU, the bundle on ``cuda:0``).

Every test here is marked ``cuda``: ``pytest -m cuda`` runs exactly them, and they also run in the normal suite
(``make test``). They run on the device of the :func:`device` fixture:

- by default ``cuda`` (``cuda:0``); without CUDA (``torch.cuda.is_available()`` is False) every test is skipped with
  the reason "CUDA not available", before any fixture runs, so a CPU-only suite spends no time on them;
- ``FPT_CUDA_TESTS_DEVICE=<torch device>`` chooses another device: ``FPT_CUDA_TESTS_DEVICE=cpu pytest -m cuda`` runs
  the same tests on the CPU, so they keep working on machines without a GPU (``cuda:1``: another GPU). A check that
  exists only on a GPU (pinned memory, ``torch.cuda`` memory statistics, half-precision CUDA kernels) is asserted only
  when the device is CUDA; the rest of each test runs everywhere.

Known bugs of the package are marked ``xfail(strict=True)`` with their reason (``pytest -rxX`` lists them): the fix
turns the mark into a failure (XPASS), so that it is removed with the bug.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DEVICE_ENV = "FPT_CUDA_TESTS_DEVICE"
_HERE = Path(__file__).resolve().parent


def tests_device() -> torch.device:
    """The device these tests run on: ``$FPT_CUDA_TESTS_DEVICE``, else ``cuda``.

    Raises:
        pytest.UsageError: the variable is not a torch device.
    """
    name = os.environ.get(DEVICE_ENV, "").strip() or "cuda"
    try:
        return torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise pytest.UsageError(f"{DEVICE_ENV}={name!r} is not a torch device (e.g. cuda, cuda:1, cpu): {err}") from err


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this folder's tests without CUDA (a skip mark acts before any fixture is set up), and refuse a test here
    that lacks the ``cuda`` mark, so that ``pytest -m cuda`` selects exactly this folder."""
    ours = [item for item in items if _HERE in Path(str(item.path)).resolve().parents]
    unmarked = [item.nodeid for item in ours if item.get_closest_marker("cuda") is None]
    if unmarked:
        raise pytest.UsageError(
            f"tests in {_HERE} must be marked cuda (pytestmark = pytest.mark.cuda at the top of the module): "
            + ", ".join(unmarked)
        )
    device = tests_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason=f"CUDA not available (set {DEVICE_ENV}=cpu to run these tests on the CPU)")
        for item in ours:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of every test here (module docstring); ``cuda`` means ``cuda:<current device>``."""
    device = tests_device()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in fp64 (half-precision results are compared as a whole, not element by
    element: single elements near zero carry no relative precision)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


@pytest.fixture(scope="session")
def device_bundle(tmp_path_factory, tiny_bundle_data, device):
    """The tiny bundle (ViT-Tiny at 64 px, 2 epochs, preload mode) trained on ``device``: ``(bundle_root, data_dir,
    weights, facts)``; ``facts`` holds what the training ran on (the network's and the resident tokens' device, the
    CUDA memory peak). Read-only use: its tests only evaluate and export it."""
    from ..bundle_utils import TRAIN_CONFIG, run_workflow

    data_dir, weights = tiny_bundle_data
    root = tmp_path_factory.mktemp("device_bundle")
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
    workflow = run_workflow(TRAIN_CONFIG, root, data_dir, weights, **bundle_device_overrides(device))
    resident = workflow.parser.get_parsed_content("resident_tokens")
    network = workflow.parser.get_parsed_content("network")
    facts = {
        "network_device": next(network.parameters()).device,
        "resident_device": None if resident is None else resident.keys.device,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if is_cuda(device) else 0,
    }
    return root, data_dir, weights, facts


def bundle_device_overrides(device: torch.device) -> dict:
    """The bundle's settings for a run on ``device``: its defaults on CUDA (AMP, the resident store chosen by
    ``auto``); on a CPU the resident copy forced, so that the GPU's path runs there too."""
    return {"device": str(device), "amp": is_cuda(device), "resident_store": "auto" if is_cuda(device) else "true"}
