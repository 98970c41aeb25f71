"""The token head (``head: side+tokens``, configs/recipes/token_head.yaml) through the bundle: fitted before the first
epoch as the logistic regression on the stored tokens' layer means (C chosen on validation), recorded, kept as
fitted when frozen, trained otherwise, evaluated from the stores and from the images alike, exported (issue 22)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fpt_monai.data import FeatureStore
from fpt_monai.engines import TokenHeadError, init_token_head, read_model_config
from fpt_monai.engines.token_head import token_head_features
from fpt_monai.export import export_bundle
from fpt_monai.networks import FPT, network_from_model_config

from ..conftest import REPO_ROOT
from .conftest import TRAIN_CONFIG, run_workflow, stores_and_images_differ_by

RECIPE = str(REPO_ROOT / "configs" / "recipes" / "token_head.yaml")
FROZEN = str(REPO_ROOT / "configs" / "recipes" / "token_head_frozen.yaml")


def _independent_fit(wf, root):
    """scikit-learn's pipeline at the recorded C, on the training items' tokens read here from the store:
    ``(pipeline, features, the record)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    store = FeatureStore.open(wf.parser.get_parsed_content("store_dir"))
    items = wf.parser.get_parsed_content("datalist")["training"]
    x = np.stack([store.get(str(i["id"]))[1].float().mean(dim=2).flatten().numpy() for i in items])
    y = np.array([int(i["label"]) for i in items])
    chosen = json.loads((root / "models" / "token_head.json").read_text())
    model = make_pipeline(StandardScaler(), LogisticRegression(C=chosen["C"], max_iter=5000)).fit(x, y)
    return model, x, chosen


def test_frozen_token_head_is_the_fitted_probe_and_the_side_network_trains(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    root, stores = tmp_path / "bundle", str(tmp_path / "tokens")
    wf = run_workflow(
        [TRAIN_CONFIG, FROZEN], root, data_dir, weights, store_root=stores, store_dtype="float32", tracking="mlflow"
    )
    record = read_model_config(root / "models" / "model_config.json", bundle_root=root)
    assert record["head"] == "side+tokens" and record["store_fields"] == ["tokens"]
    chosen = json.loads((root / "models" / "token_head.json").read_text())
    assert (
        chosen["init"] == "logreg" and chosen["trainable"] is False and chosen["C"] in [r["C"] for r in chosen["table"]]
    )
    assert chosen["val_auc"] == max(r["val_auc"] for r in chosen["table"])  # chosen on validation
    assert chosen["training_items"] > 0 and chosen["validation_items"] > 0

    model, x, _ = _independent_fit(wf, root)
    state = torch.load(root / "models" / "model_final.pt", weights_only=True)
    scaler, logreg = model[0], model[1]
    torch.testing.assert_close(state["token_head.norm.mean"], torch.from_numpy(scaler.mean_).float())
    torch.testing.assert_close(state["token_head.norm.scale"], torch.from_numpy(scaler.scale_).float())
    # frozen: the trained model still holds the fit (binary: the second class's logit is the fit's)
    torch.testing.assert_close(
        state["token_head.fc.weight"][1], torch.from_numpy(logreg.coef_[0]).float(), atol=1e-6, rtol=1e-5
    )
    assert state["token_head.fc.weight"][0].abs().sum() == 0
    # ... and with the side network's logits removed, the network's token head gives the fit's probabilities
    net = FPT(**{**record["network_spec"]["kwargs"], "pretrained": False, "frozen_model": False})
    net.load_state_dict(state)
    logits = net.token_head(torch.from_numpy(x).float())
    np.testing.assert_allclose(torch.softmax(logits, 1).detach().numpy(), model.predict_proba(x), atol=1e-5)
    # the side network did train
    assert any("side" in k for k in state) and state["fusion.prompts"].abs().max() > 1e-5
    # the fit's record goes with the MLflow run (the default sqlite store)
    from mlflow.tracking import MlflowClient

    run = json.loads((root / "models" / "mlflow_run.json").read_text())
    artifacts = {a.path for a in MlflowClient(run["tracking_uri"]).list_artifacts(run["run_id"])}
    assert {"token_head.json", "model.pt"} <= artifacts


def test_token_head_with_stored_views_is_fitted_on_the_plain_views(tmp_path, tiny_bundle_data):
    """With store_views 2 (study 7's token head on augmented views) the fit reads each training image's plain view,
    the study's probe; the epochs then draw the views."""
    data_dir, weights = tiny_bundle_data
    root, stores = tmp_path / "bundle", str(tmp_path / "tokens")
    views = str(REPO_ROOT / "configs" / "recipes" / "views2.yaml")
    wf = run_workflow([TRAIN_CONFIG, FROZEN, views], root, data_dir, weights, store_root=stores, store_dtype="float32")
    training = wf.parser.get_parsed_content("datalist")["training"]
    store = FeatureStore.open(wf.parser.get_parsed_content("store_dir"))
    assert not store.missing([f"{i['id']}@hflip" for i in training], "tokens")  # the views were stored
    model, _, chosen = _independent_fit(wf, root)
    assert chosen["training_items"] == len(training)  # one row per image, not per view
    state = torch.load(root / "models" / "model_final.pt", weights_only=True)
    torch.testing.assert_close(
        state["token_head.fc.weight"][1], torch.from_numpy(model[1].coef_[0]).float(), atol=1e-6, rtol=1e-5
    )
    record = read_model_config(root / "models" / "model_config.json", bundle_root=root)
    assert record["head"] == "side+tokens"


def test_trainable_token_head_moves_evaluates_online_alike_and_exports(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    root, stores = tmp_path / "bundle", str(tmp_path / "tokens")
    wf = run_workflow([TRAIN_CONFIG, RECIPE], root, data_dir, weights, store_root=stores, store_dtype="float32")
    record = read_model_config(root / "models" / "model_config.json", bundle_root=root)
    model, _, chosen = _independent_fit(wf, root)
    assert chosen["trainable"] is True
    state = torch.load(root / "models" / "model_final.pt", weights_only=True)
    moved = (state["token_head.fc.weight"][1].double() - torch.from_numpy(model[1].coef_[0])).abs().max()
    assert moved > 1e-6  # started at the fit, then trained

    assert stores_and_images_differ_by(root, data_dir, weights, stores) < 1e-4

    report = export_bundle(root, pretrained=str(weights))
    assert max(report["max_abs_prob_diff"].values()) < 1e-4 and "onnx" in report["max_abs_prob_diff"]
    net = network_from_model_config(record, pretrained=str(weights), frozen_model=True).eval()
    assert net.token_head is not None and net.prompt_head is None


def test_bad_settings_are_named(tmp_path, tiny_bundle_data):
    data_dir, weights = tiny_bundle_data
    net = FPT(
        num_classes=2,
        head="side+tokens",
        backbone="vit_tiny_patch16_224",
        img_size=64,
        side_img_size=32,
        pretrained=False,
        frozen_model=False,
    )
    datalist = {"training": [{"id": "a", "label": 0}], "validation": [{"id": "b", "label": 1}]}
    with pytest.raises(TokenHeadError, match="mode preload"):
        init_token_head(net, None, datalist)
    with pytest.raises(TokenHeadError, match="token_head_init must be one of"):
        init_token_head(net, None, datalist, init="probe")
    with pytest.raises(TokenHeadError, match="positive numbers"):
        init_token_head(net, None, datalist, cs=[0.1, -1])
    # none: nothing fitted, the head stays zero and can be frozen
    assert init_token_head(net, None, datalist, init="none", trainable=False) == {"init": "none", "trainable": False}
    assert not net.token_head.fc.weight.requires_grad and net.token_head.fc.weight.abs().sum() == 0
    # a network without a token head is left alone
    assert (
        init_token_head(
            FPT(
                num_classes=2,
                backbone="vit_tiny_patch16_224",
                img_size=64,
                side_img_size=32,
                pretrained=False,
                frozen_model=False,
            ),
            None,
            datalist,
        )
        is None
    )
    with pytest.raises(TokenHeadError, match="'id'"):
        token_head_features(None, [{"label": 0}], "training")
    # an online training with the token head fitted is refused before anything is written
    with pytest.raises(Exception) as failed:
        run_workflow([TRAIN_CONFIG, RECIPE], tmp_path / "online", data_dir, weights, mode="online")
    assert isinstance(failed.value.__cause__, TokenHeadError) and "--mode preload" in str(failed.value.__cause__)
    assert not (tmp_path / "online" / "models").exists()


def test_one_grid_of_c_for_the_study_the_engine_and_the_bundle():
    from monai.bundle import ConfigParser

    from fpt_monai.engines import DEFAULT_TOKEN_HEAD_CS
    from fpt_monai.study.runs import LOGREG_CS

    parser = ConfigParser()
    parser.read_config(TRAIN_CONFIG)
    assert tuple(parser["token_head_cs"]) == tuple(DEFAULT_TOKEN_HEAD_CS) == tuple(LOGREG_CS)
    assert parser["token_head_init"] == "logreg" and parser["head"] == "side"  # the paper's head by default
