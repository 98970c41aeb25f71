"""FPT's hybrid head at a second resolution (``pooled_img_size``): the pooled features of the resized image through the
same frozen weights (issue 22)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fpt_monai.networks import (
    FPT,
    FPTExplainer,
    FrozenViTExtractor,
    create_vit_backbone,
    network_from_spec,
    network_spec,
)

BACKBONE = "vit_tiny_patch16_224"
SIZES = dict(img_size=64, side_img_size=32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "vit_tiny.safetensors"
    torch.manual_seed(0)
    save_file(create_vit_backbone(BACKBONE, pretrained=False, img_size=224).state_dict(), str(path))
    return str(path)


def _fpt(weights, **kwargs):
    net = FPT(num_classes=3, backbone=BACKBONE, pretrained=weights, head="side+pooled", **SIZES, **kwargs).eval()
    with torch.no_grad():  # a trained-looking pooled head: the pooled features must matter to the logits
        net.pooled_head.fc.weight.normal_()
    return net


def _resized(x, size):
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def test_pooled_features_are_those_of_an_extractor_built_at_the_second_size(weights):
    net = _fpt(weights, pooled_img_size=32)
    small = FrozenViTExtractor(BACKBONE, pretrained=weights, img_size=32, layers="second_half", pooled=True)
    one_res = FrozenViTExtractor(BACKBONE, pretrained=weights, img_size=64, layers="second_half", pooled=True)
    x = torch.randn(2, 3, 64, 64)
    expected = small.pool(_resized(x, 32))
    keys, values, _, pooled = net.lpm.extract_all(x, True)
    assert torch.allclose(pooled, expected, atol=1e-5)
    assert torch.allclose(net.lpm.pool(x), expected, atol=1e-5)
    assert not torch.allclose(one_res.pool(x), expected, atol=1e-3)  # the size matters
    # the tokens stay those of img_size
    ref_keys, ref_values = one_res(x)
    assert torch.equal(keys, ref_keys) and torch.equal(values, ref_values)
    with torch.no_grad():
        # the online forward equals the stored path fed with the second size's pooled features
        online = net(x)
        stored = net.forward_features(net.make_side_view(x), keys, values, expected)
        assert torch.allclose(online, stored, atol=1e-5)
        # given tokens: only the pooled features are computed, at the second size
        assert torch.allclose(net(x, keys=keys, values=values), stored, atol=1e-5)
        # the explainer (lpm.extract_all) classifies like the network
        logits, _ = FPTExplainer(net).eval()(x)
        assert torch.allclose(logits, online, atol=1e-5)


def test_default_and_img_size_are_one_resolution(weights):
    default = _fpt(weights)
    same = FPT(num_classes=3, backbone=BACKBONE, pretrained=weights, head="side+pooled", pooled_img_size=64, **SIZES)
    same.load_state_dict(default.state_dict(), strict=True)
    same.eval()
    assert default.pooled_img_size == default.lpm.pooled_img_size == 64 and default.lpm.pooled_pos_embed.numel() == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(same(x), default(x))
        keys, values, _, pooled = default.lpm.extract_all(x, True)
        # at img_size, as before the option (the explicit and the fused attention agree up to rounding)
        assert torch.allclose(pooled, default.lpm.pool(x), atol=1e-5)


def test_no_weights_are_added_to_the_checkpoint_and_the_spec_rebuilds_it(weights):
    two = _fpt(weights, pooled_img_size=32)
    one = _fpt(weights)
    assert two.state_dict().keys() == one.state_dict().keys()
    assert sum(p.numel() for p in two.parameters()) == sum(p.numel() for p in one.parameters())
    spec = network_spec(two)
    assert spec["kwargs"]["pooled_img_size"] == 32
    rebuilt = network_from_spec(spec, pretrained=weights, frozen_model=True).eval()
    rebuilt.load_state_dict(two.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), two(x))
    # from stored features (no frozen model): nothing is derived, the stored pooled features are used as given
    light = network_from_spec(spec, pretrained=weights, frozen_model=False).eval()
    light.load_state_dict(two.state_dict(), strict=True)
    keys, values, _, pooled = two.lpm.extract_all(x, True)
    with torch.no_grad():
        side = two.make_side_view(x)
        assert torch.allclose(light(side, image_side=side, keys=keys, values=values, pooled=pooled), two(x), atol=1e-5)


def test_traced_model_agrees_on_another_batch(weights):
    net = _fpt(weights, pooled_img_size=32)
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.randn(1, 3, 64, 64))
        y = torch.randn(3, 3, 64, 64)
        assert torch.allclose(traced(y), net(y), atol=1e-5)


def test_bad_settings_are_refused(weights):
    with pytest.raises(ValueError, match=r"pooled_img_size 32 is the resolution.*head 'side\+pooled'"):
        FPT(num_classes=3, backbone=BACKBONE, pretrained=False, head="side", pooled_img_size=32, **SIZES)
    with pytest.raises(ValueError, match="pooled_img_size must be a positive integer"):
        FPT(num_classes=3, backbone=BACKBONE, pretrained=False, head="side+pooled", pooled_img_size=0, **SIZES)
    with pytest.raises(ValueError, match="smaller than the frozen model's 16 px patch"):
        FPT(num_classes=3, backbone=BACKBONE, pretrained=False, head="side+pooled", pooled_img_size=8, **SIZES)
    # a frozen model put in place of FPT's own (as ProbeFusion does) that pools at img_size is refused, not misread
    net = _fpt(weights, pooled_img_size=32)
    net.lpm = FrozenViTExtractor(BACKBONE, pretrained=weights, img_size=64, layers="second_half", pooled=True)
    with pytest.raises(RuntimeError, match="reads pooled features at 32 px but its frozen model pools at 64 px"):
        net(torch.randn(1, 3, 64, 64))
    lpm = FrozenViTExtractor(BACKBONE, pretrained=False, img_size=64, layers="second_half", pooled=True)
    with pytest.raises(ValueError, match="needs the position embeddings of that grid"):
        lpm.set_pooled_view(32)
    with pytest.raises(RuntimeError, match="pooled=True"):
        FrozenViTExtractor(BACKBONE, pretrained=False, img_size=64, layers="second_half").set_pooled_view(32)
