"""Recording a network's class and arguments, and rebuilding it from the record (fpt_monai.networks.spec)."""

from __future__ import annotations

import json

import pytest
import torch

from fpt_monai.networks import (
    FPT,
    RECORDED_NETWORKS,
    LoRAViT,
    PooledLinearProbe,
    ViTClassifier,
    network_from_model_config,
    network_from_spec,
    network_spec,
)

from ..conftest import TINY


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (FPT, {"variant": "fpt", "side_img_size": 32, "head": "side+pooled", "num_prompts": 4}),
        (PooledLinearProbe, {"feature_norm": False}),
        (ViTClassifier, {"train_backbone": False}),
        (LoRAViT, {"rank": 4, "target_modules": ("qkv",)}),
    ],
)
def test_spec_rebuilds_the_same_architecture(cls, kwargs):
    torch.manual_seed(0)  # the frozen model is not in the state dict: the same random weights for both
    net = cls(num_classes=3, pretrained=False, **TINY, **kwargs)
    spec = json.loads(json.dumps(network_spec(net)))  # as it comes back from model_config.json
    assert spec["target"] == cls.__name__
    assert "pretrained" not in spec["kwargs"] and "frozen_model" not in spec["kwargs"]
    for key, value in kwargs.items():
        assert spec["kwargs"][key] == (list(value) if isinstance(value, tuple) else value)
    torch.manual_seed(0)
    rebuilt = network_from_spec(spec, pretrained=False)
    assert type(rebuilt) is cls
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    rebuilt.load_state_dict(net.state_dict())
    image = torch.randn(2, 3, 64, 64)
    net.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(image), net(image))


def test_spec_of_fpt_without_frozen_model_rebuilds_either_way():
    net = FPT(num_classes=2, pretrained=False, frozen_model=False, **TINY)
    spec = network_spec(net)
    assert network_from_spec(spec, pretrained=False, frozen_model=False).lpm is None
    assert network_from_spec(spec, pretrained=False, frozen_model=True).lpm is not None


def test_spec_names_the_most_derived_class_and_nothing_for_other_modules():
    assert network_spec(ViTClassifier(num_classes=2, pretrained=False, **TINY))["target"] == "ViTClassifier"
    assert network_spec(torch.nn.Linear(2, 2)) is None
    assert {"FPT", "PooledLinearProbe", "ViTClassifier", "LoRAViT", "VPTDeepViT", "AdaptFormerViT"} <= set(
        RECORDED_NETWORKS
    )


def test_spec_refuses_unknown_targets_and_arguments():
    with pytest.raises(ValueError, match="'os.system', which is not a network this package can rebuild"):
        network_from_spec({"target": "os.system", "kwargs": {}})
    with pytest.raises(ValueError, match=r"FPT arguments it does not take: \['evil'\]"):
        network_from_spec({"target": "FPT", "kwargs": {"evil": 1}})


def test_model_config_prefers_the_spec_and_keeps_older_records_working():
    net = FPT(num_classes=2, pretrained=False, frozen_model=False, side_img_size=48, **TINY)
    record = {"network_spec": network_spec(net), "network_name": "fpt", "num_classes": 2, "variant": "fpt_plus"}
    assert network_from_model_config(record, pretrained=False, frozen_model=False).side_img_size == 48
    old = {"num_classes": 2, "variant": "fpt_plus", "side_img_size": 32, "token_ratio": 0.2, **TINY}
    assert isinstance(network_from_model_config(old, pretrained=False), FPT)
    with pytest.raises(ValueError, match="network_name 'LoRAViT' without a network_spec"):
        network_from_model_config({**old, "network_name": "LoRAViT"}, pretrained=False)
