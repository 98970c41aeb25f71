"""Tiny bundle set-up shared by the bundle, export and deploy tests: the demo dataset at 96 px, a saved ViT-Tiny as
the 'pre-trained' frozen model, and helpers that run the bundle's workflows on it."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from fpt_monai.data import make_demo_dataset
from fpt_monai.networks import create_vit_backbone

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = str(REPO_ROOT / "bundle" / "configs" / "train.yaml")
META = str(REPO_ROOT / "bundle" / "configs" / "metadata.json")
EVAL_CONFIG = str(REPO_ROOT / "bundle" / "configs" / "evaluate.yaml")


def make_tiny_bundle_data(root):
    """The demo images at 96 px under ``root/data`` and random ViT-Tiny weights; returns ``(data_dir, weights)``."""
    make_demo_dataset(root / "data", per_class=6, size=96)
    weights = root / "vit_tiny.safetensors"
    # the same weights whichever test (or pytest-xdist worker) builds the session fixture first
    torch.manual_seed(0)
    save_file(create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=224).state_dict(), str(weights))
    return root / "data", weights


def tiny_overrides(data_dir, weights, **extra):
    return {
        "dataset_dir": str(data_dir),
        "backbone": "vit_tiny_patch16_224",
        "pretrained": str(weights),
        "img_size": 64,
        "side_img_size": 32,
        "epochs": 2,
        "batch_size": 4,
        "num_workers": 0,
        **extra,
    }


def make_workflow(config, bundle_root, data_dir, weights, workflow_type="train", tracking=None, **extra):
    """A ``ConfigWorkflow`` of the bundle on the tiny setting (``config``: one file or a list merged in order)."""
    from monai.bundle import ConfigWorkflow

    kwargs = {"tracking": tracking} if tracking else {}
    return ConfigWorkflow(
        config_file=config,
        meta_file=META,
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(bundle_root),
        **kwargs,
        **tiny_overrides(data_dir, weights, **extra),
    )


def run_workflow(config, bundle_root, data_dir, weights, **kwargs):
    """Initialise, run and finalise :func:`make_workflow`; returns the workflow."""
    wf = make_workflow(config, bundle_root, data_dir, weights, **kwargs)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def evaluated_probabilities(bundle_root, data_dir, weights, **kwargs):
    """Evaluate a trained tiny bundle (evaluate.yaml over train.yaml) and read its ``eval/predictions_best.csv``:
    ``{id: (probability of each class)}``."""
    import csv

    run_workflow([TRAIN_CONFIG, EVAL_CONFIG], bundle_root, data_dir, weights, **kwargs)
    with open(Path(bundle_root) / "eval" / "predictions_best.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["id"]: tuple(float(v) for k, v in r.items() if k.startswith("prob_")) for r in rows}


def stores_and_images_differ_by(bundle_root, data_dir, weights, store_root):
    """The largest difference between the probabilities of an evaluation from the feature stores and one from the
    images (mode online), after checking that both classified the same, non-empty set of images."""
    from_stores = evaluated_probabilities(bundle_root, data_dir, weights, store_root=store_root)
    online = evaluated_probabilities(bundle_root, data_dir, weights, mode="online", store_root=store_root)
    assert from_stores.keys() == online.keys() and from_stores and all(len(v) > 1 for v in online.values())
    return max(abs(a - b) for k in online for a, b in zip(online[k], from_stores[k], strict=True))
