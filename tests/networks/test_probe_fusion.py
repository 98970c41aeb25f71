"""ProbeFusion: FPT+ and a pooled-feature linear probe blended in one network sharing one frozen model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fpt_monai.networks import (
    FPT,
    FrozenViTExtractor,
    PooledLinearProbe,
    ProbeFusion,
    create_vit_backbone,
    network_from_spec,
    network_spec,
)
from fpt_monai.networks.probe_fusion import position_embedding_at

BACKBONE = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "vit_tiny.safetensors"
    torch.manual_seed(0)
    save_file(create_vit_backbone(BACKBONE, pretrained=False, img_size=224).state_dict(), str(path))
    return str(path)


def _pair(weights, probe_size, head="side"):
    fpt = FPT(num_classes=3, backbone=BACKBONE, pretrained=weights, img_size=64, side_img_size=32, head=head).eval()
    probe = PooledLinearProbe(num_classes=3, backbone=BACKBONE, pretrained=weights, img_size=probe_size).eval()
    with torch.no_grad():  # trained-looking heads: the blend must not be a blend of two uniform distributions
        for p in [*fpt.side.parameters(), *probe.head.parameters()]:
            p.add_(torch.randn_like(p) * 0.5)
        if fpt.pooled_head is not None:
            fpt.pooled_head.fc.weight.normal_()
    return fpt, probe


def _fused(fpt, probe, weights, weight):
    net = ProbeFusion(network_spec(fpt)["kwargs"], network_spec(probe)["kwargs"], weight=weight, pretrained=weights)
    net.fpt.load_state_dict(fpt.state_dict(), strict=True)
    net.probe.load_state_dict(probe.state_dict(), strict=True)
    return net.eval()


def test_pool_at_another_resolution_equals_an_extractor_built_at_it(weights):
    lpm = FrozenViTExtractor(BACKBONE, pretrained=weights, img_size=64, layers="6-11", pooled=True)
    small = FrozenViTExtractor(BACKBONE, pretrained=weights, img_size=32, layers="6-11", pooled=True)
    x = torch.randn(2, 3, 32, 32)
    pos = position_embedding_at(lpm, 32, weights)
    assert torch.allclose(lpm.pool_at(x, pos), small.pool(x), atol=1e-5)
    assert not torch.allclose(pos[:, 1:5], lpm.vit.pos_embed[:, 1:5])  # another grid's embeddings, not a slice


@pytest.mark.parametrize("probe_size, head", [(32, "side"), (64, "side+pooled")])
def test_output_is_the_blend_of_the_two_networks_probabilities(weights, probe_size, head):
    fpt, probe = _pair(weights, probe_size, head)
    net = _fused(fpt, probe, weights, weight=0.3)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        probe_view = x if probe_size == 64 else F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
        p_fpt, p_probe = torch.softmax(fpt(x), 1), torch.softmax(probe(probe_view), 1)
        blend = 0.3 * p_fpt + 0.7 * p_probe
        got = torch.softmax(net(x), 1)
    assert torch.allclose(got, blend, atol=1e-5)
    assert (p_fpt - p_probe).abs().max() > 1e-2  # the two parts disagree: the weight matters
    # one frozen model: the parameters are FPT's (with its frozen model; plus the final norm the probe needs when
    # FPT's early exit dropped it) and the probe's head, nothing twice
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    final_norm = count(net.fpt.lpm.vit.norm) if head == "side" else 0
    assert count(net) == count(fpt) + count(probe.head) + final_norm
    state = net.state_dict()
    assert "weight" in state and not any(".lpm." in k or k.startswith("lpm.") for k in state)


def test_traced_model_agrees_and_the_spec_rebuilds_it(weights):
    fpt, probe = _pair(weights, 32)
    net = _fused(fpt, probe, weights, weight=0.6)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        y = torch.randn(4, 3, 64, 64)  # another batch size than the trace's
        assert torch.allclose(torch.softmax(traced(y), 1), torch.softmax(net(y), 1), atol=1e-5)
    rebuilt = network_from_spec(network_spec(net), pretrained=weights, frozen_model=True).eval()
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(rebuilt(y), net(y), atol=1e-6)


def test_mismatched_backbone_classes_or_weight_are_refused(weights):
    fpt, probe = _pair(weights, 32)
    f, p = network_spec(fpt)["kwargs"], network_spec(probe)["kwargs"]
    with pytest.raises(ValueError, match="do not share a frozen model.*backbone"):
        ProbeFusion(f, {**p, "backbone": "vit_small_patch16_224"}, pretrained=False)
    with pytest.raises(ValueError, match="num_classes 3 vs 2"):
        ProbeFusion(f, {**p, "num_classes": 2}, pretrained=False)
    with pytest.raises(ValueError, match="layer_norm_eps"):
        ProbeFusion(f, {**p, "layer_norm_eps": 1e-12}, pretrained=False)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]"):
        ProbeFusion(f, p, weight=1.5, pretrained=False)
    with pytest.raises(ValueError, match="--mode online"):
        ProbeFusion(f, p, pretrained=False, frozen_model=False)
