from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.utils import convert_to_torchscript

from fpt_monai.networks import FPT, count_parameters, token_layer_means

from ..conftest import TINY

TINY_FPT = {**TINY, "side_img_size": 32, "pretrained": False}


@pytest.mark.parametrize(
    "variant, trainable, layers, side_tokens",
    [("fpt", 1_602_341, 12, 197), ("fpt_plus", 900_965, 6, 65)],
)
def test_vit_b16_at_512_shapes_and_parameter_counts(variant, trainable, layers, side_tokens):
    """Spec §1.6/§1.7: ViT-B/16 LPM at 512 px, 5 classes."""
    net = FPT(num_classes=5, variant=variant, backbone="vit_base_patch16_384", pretrained=False, img_size=512).eval()
    count = count_parameters(net)
    assert count.trainable == trainable
    assert count.frozen == sum(p.numel() for p in net.lpm.parameters())
    assert net.lpm.layers == (tuple(range(12)) if variant == "fpt" else tuple(range(6, 12)))
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        keys, values = net.extract(x)
        assert keys.shape == values.shape == (1, layers, 12, 205, 64)
        prompts = net.fusion(keys, values)
        assert prompts.shape == (1, layers, 16, 96)
        side = net.make_side_view(x)
        assert net.side.forward_features(side, prompts).shape == (1, side_tokens, 96)
        assert net.forward_features(side, keys, values).shape == (1, 5)


def test_trainable_ratio_is_about_one_percent():
    net = FPT(num_classes=5, pretrained=False)
    assert 1.0 < count_parameters(net).ratio < 1.1  # paper: 1.03 %


@pytest.mark.parametrize("variant", ["fpt", "fpt_plus"])
def test_gradients_reach_only_trainable_parameters(variant):
    net = FPT(num_classes=3, variant=variant, **TINY_FPT)
    net.train()
    assert not net.lpm.training
    frozen_before = {k: v.clone() for k, v in net.lpm.state_dict().items()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad} == {"fusion", "side"}
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)  # reference: one group, all params
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in net.lpm.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert all(p.grad.abs().sum() > 0 for p in trainable)
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, trainable, strict=True))
    for k, v in net.lpm.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k


@pytest.mark.parametrize("variant", ["fpt", "fpt_plus"])
def test_online_equals_preloaded_path(variant):
    net = FPT(num_classes=4, variant=variant, **TINY_FPT).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        keys, values = net.extract(x)
        preloaded = net.forward_features(net.make_side_view(x), keys, values)
        torch.testing.assert_close(net(x), preloaded)
        # fp16 storage (the feature store's default) changes logits only within fp16 rounding
        torch.testing.assert_close(
            net.forward_features(net.make_side_view(x), keys.half(), values.half()), preloaded, rtol=1e-2, atol=1e-2
        )
        other_side = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(net(x, image_side=other_side), preloaded)
        torch.testing.assert_close(net(x, image_side=other_side), net.forward_features(other_side, keys, values))


def test_side_view_is_antialiased_resize():
    net = FPT(num_classes=2, **TINY_FPT)
    x = torch.zeros(1, 3, 64, 64)
    x[..., ::2, :] = 1.0  # 1-px stripes: an anti-aliased 2x downscale averages them to 0.5
    torch.testing.assert_close(net.make_side_view(x)[..., 1:-1, :], torch.full((1, 3, 30, 32), 0.5))


def test_trace_export_round_trip(tmp_path):
    net = FPT(num_classes=3, **TINY_FPT).eval()
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "model.ts"
    ts = convert_to_torchscript(
        net, filename_or_obj=str(path), verify=True, inputs=[x], use_trace=True, rtol=1e-4, atol=1e-5
    )
    loaded = torch.jit.load(str(path))
    y = torch.randn(3, 3, 64, 64)  # another batch size than the trace example
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), net(y), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ts(y), net(y), rtol=1e-4, atol=1e-5)


def test_monai_config_instantiation():
    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "fpt_monai.networks.FPT",
                "num_classes": 2,
                "variant": "fpt",
                "backbone": TINY["backbone"],
                "img_size": TINY["img_size"],
                "side_img_size": 32,
                "pretrained": False,
                "layers": "8-11",
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, FPT) and net.lpm.layers == (8, 9, 10, 11) and net.variant == "fpt"
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_overrides_and_historic_fusion_variants():
    miccai = FPT(num_classes=2, variant="fpt", residual="none", **TINY_FPT)
    assert miccai.fusion.residual == "none"
    ed3aa74 = FPT(num_classes=2, variant="fpt", residual_after_dropout=True, **TINY_FPT)
    assert ed3aa74.fusion.residual_after_dropout
    custom = FPT(
        num_classes=2, num_prompts=4, token_ratio=0.5, token_importance="class_token", include_cls=False, **TINY_FPT
    )
    assert custom.fusion.prompts.shape == (6, 4, 192) and custom.token_shape == (6, 3, 8, 64)


def test_bad_tokens_are_rejected():
    net = FPT(num_classes=2, **TINY_FPT)
    side = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="other layers or another backbone"):
        net.forward_features(side, torch.randn(1, 12, 3, 3, 64), torch.randn(1, 12, 3, 3, 64))
    with pytest.raises(ValueError, match="differ in shape"):
        net.forward_features(side, torch.randn(1, 6, 3, 3, 64), torch.randn(1, 6, 3, 4, 64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variant": "fpt++"}, "variant"),
        ({"num_classes": 0}, "num_classes"),
        ({"side_reduction": 5}, "side_reduction"),
        ({"side_reduction": 0}, "side_reduction"),
        ({"variant": "fpt", "prompt_reduction": 4}, "post_proj"),
        ({"prompt_reduction": 7}, "prompt_reduction"),
        ({"side_reduction": 48}, "heads"),
        ({"token_ratio": 0.0}, "token_ratio"),
        ({"layers": "3-20"}, "outside"),
        ({"token_importance": "max"}, "token_importance"),
        ({"side_init": "zeros"}, "init"),
        ({"residual": "sum"}, "residual"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FPT(**{**TINY_FPT, **kwargs})


def test_shared_dinov2_weights_load_and_give_finite_outputs(dinov2_weights):
    from safetensors.torch import load_file

    net = FPT(
        num_classes=2,
        backbone="vit_small_patch14_dinov2",
        pretrained=str(dinov2_weights),
        img_size=224,
        side_img_size=112,
    ).eval()
    stored = load_file(str(dinov2_weights))
    torch.testing.assert_close(net.lpm.vit.blocks[5].attn.qkv.weight, stored["blocks.5.attn.qkv.weight"].float())
    assert net.lpm.vit.pos_embed.shape == (1, 16 * 16 + 1, 384)  # 37x37 grid resampled to 224 px
    assert net.token_shape == (6, 6, 51, 64) and net.side.embed_dim == 48
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        keys, values = net.extract(x)
        logits = net(x)
    assert torch.isfinite(keys).all() and torch.isfinite(logits).all() and logits.shape == (2, 2)
    assert keys.abs().max() > 0.1  # real weights, real activations


def test_checkpoints_hold_the_trainable_part_only(tmp_path):
    net = FPT(num_classes=3, **TINY_FPT).eval()
    sd = net.state_dict()
    assert sd and not any(k.startswith("lpm.") for k in sd)
    assert sum(v.numel() for v in sd.values()) == count_parameters(net).trainable
    other = FPT(num_classes=3, **TINY_FPT).eval()
    other.lpm.load_state_dict(net.lpm.state_dict())  # same frozen weights, as from one weight file
    other.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(other(x), net(x))
    full = {**sd, **{f"lpm.{k}": v for k, v in net.lpm.state_dict().items()}}
    FPT(num_classes=3, **TINY_FPT).load_state_dict(full, strict=True)  # full checkpoints still load


def test_training_without_the_frozen_model():
    full = FPT(num_classes=3, **TINY_FPT).eval()
    light = FPT(
        num_classes=3, **{**TINY_FPT, "pretrained": "/nonexistent/weights.safetensors"}, frozen_model=False
    ).eval()
    assert light.lpm is None and count_parameters(light).frozen == 0
    assert light.token_shape == full.token_shape
    light.load_state_dict(full.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    keys, values = full.extract(x)
    side = full.make_side_view(x)
    torch.testing.assert_close(light(side, image_side=side, keys=keys, values=values), full(x))
    with pytest.raises(RuntimeError, match="frozen_model=False"):
        light(x)


def test_hybrid_head_adds_a_linear_classifier_on_pooled_features(tmp_path):
    side_only = FPT(num_classes=3, **TINY_FPT).eval()
    hybrid = FPT(num_classes=3, head="side+pooled", **TINY_FPT).eval()
    dim = 2 * 192  # class token and mean patch token of ViT-Tiny
    assert count_parameters(hybrid).trainable == count_parameters(side_only).trainable + dim * 3 + 3
    hybrid.lpm.load_state_dict(side_only.lpm.state_dict(), strict=False)
    hybrid.load_state_dict(side_only.state_dict(), strict=False)  # same side network and fusion
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(hybrid(x), side_only(x))  # zero-initialised: starts as the side network alone
    torch.nn.init.normal_(hybrid.pooled_head.fc.weight)
    keys, values, _, pooled = hybrid.lpm.extract_all(x, True)
    online = hybrid(x)
    assert not torch.allclose(online, side_only(x))
    side = hybrid.make_side_view(x)
    torch.testing.assert_close(hybrid(side, image_side=side, keys=keys, values=values, pooled=pooled), online)
    light = FPT(num_classes=3, head="side+pooled", frozen_model=False, **TINY_FPT).eval()
    light.load_state_dict(hybrid.state_dict(), strict=True)  # trainable part (and BatchNorm statistics) only
    torch.testing.assert_close(light.forward_features(side, keys, values, pooled), online)
    with pytest.raises(ValueError, match="pooled features"):
        light.forward_features(side, keys, values)
    # given tokens are used as they are; only the missing pooled features come from the image
    torch.testing.assert_close(hybrid(x, keys=keys, values=values), online)
    torch.testing.assert_close(
        hybrid(x, keys=keys, values=torch.zeros_like(values)),
        hybrid(x, keys=keys, values=torch.zeros_like(values), pooled=pooled),
    )
    traced = convert_to_torchscript(hybrid, tmp_path / "h.ts", verify=False, use_trace=True, inputs=[x])
    torch.testing.assert_close(traced(x), online, atol=1e-5, rtol=1e-5)


def test_prompt_head_reads_the_fusion_context_of_every_layer(tmp_path):
    side_only = FPT(num_classes=3, **TINY_FPT).eval()
    net = FPT(num_classes=3, head="side+prompts", **TINY_FPT).eval()
    layers, dim = 6, 192  # the second half of ViT-Tiny's 12 blocks, its width
    assert count_parameters(net).trainable == count_parameters(side_only).trainable + layers * dim * 3 + 3
    assert net.pooled_head is None and not net.hybrid  # the stored tokens are all it reads
    net.lpm.load_state_dict(side_only.lpm.state_dict(), strict=False)
    net.load_state_dict(side_only.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(net(x), side_only(x))  # zero-initialised: starts as the side network alone

    torch.nn.init.normal_(net.prompt_head.fc.weight)
    torch.nn.init.normal_(net.prompt_head.fc.bias)
    keys, values = net.extract(x)
    # an independent computation of what the head adds: each layer's prompts attend to that layer's tokens (heads
    # merged), averaged over the prompts, standardised by the BatchNorm's running statistics, then the linear layer
    q = net.fusion.queries()  # [L, H, P, hs]
    probs = torch.softmax(q @ keys.transpose(-2, -1) * keys.shape[-1] ** -0.5, dim=-1)  # [B, L, H, P, k]
    context = (probs @ values).mean(dim=3).flatten(1)  # [B, L * H * hs]: mean over prompts, then merge heads
    norm = net.prompt_head.norm
    standardised = (context - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    expected = side_only(x) + net.prompt_head.fc(standardised)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)

    # from stored half-precision tokens as in training (the layer-wise kernel), and exported
    light = FPT(num_classes=3, head="side+prompts", frozen_model=False, **TINY_FPT).eval()
    light.load_state_dict(net.state_dict(), strict=True)
    side = net.make_side_view(x)
    torch.testing.assert_close(light.forward_features(side, keys, values), net(x))
    light.train()
    half = light.forward_features(side, keys.half(), values.half())
    half.sum().backward()
    assert light.fusion.prompts.grad is not None and light.prompt_head.fc.weight.grad.abs().sum() > 0
    traced = convert_to_torchscript(net, tmp_path / "p.ts", verify=False, use_trace=True, inputs=[x])
    torch.testing.assert_close(traced(x), net(x), atol=1e-5, rtol=1e-5)

    both = FPT(num_classes=3, head="side+pooled+prompts", **TINY_FPT)
    assert both.hybrid and both.pooled_head is not None and both.prompt_head is not None
    with pytest.raises(ValueError, match="head must be one of"):
        FPT(num_classes=3, head="prompts", **TINY_FPT)
    with pytest.raises(ValueError, match="reads none"):
        FPT(num_classes=3, head="side+prompts", pooled_img_size=32, **TINY_FPT)


def test_token_head_reads_the_stored_values_layer_means_with_a_fixed_standardisation(tmp_path):
    side_only = FPT(num_classes=3, **TINY_FPT).eval()
    net = FPT(num_classes=3, head="side+tokens", **TINY_FPT).eval()
    layers, dim = 6, 192
    assert count_parameters(net).trainable == count_parameters(side_only).trainable + layers * dim * 3 + 3
    assert net.prompt_head is None and net.pooled_head is None and not net.hybrid
    net.lpm.load_state_dict(side_only.lpm.state_dict(), strict=False)
    net.load_state_dict(side_only.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(net(x), side_only(x))  # zero-initialised: starts as the side network alone

    # a linear model on standardised features, as a fit would give: (x - mean) / scale, then the linear layer; a
    # binary fit's single row becomes the logits (0, w x + b)
    mean, scale = torch.randn(layers * dim), torch.rand(layers * dim) + 0.5
    weight, bias = torch.randn(3, layers * dim), torch.randn(3)
    net.token_head.load_linear_model(mean, scale, weight, bias)
    keys, values = net.extract(x)
    # independently: the mean over the selected tokens of each layer's values, heads merged in order
    features = torch.stack(
        [
            torch.cat([values[b, i, h].mean(dim=0) for i in range(layers) for h in range(values.shape[2])])
            for b in (0, 1)
        ]
    )
    torch.testing.assert_close(token_layer_means(values), features)
    expected = side_only(x) + ((features - mean) / scale) @ weight.T + bias
    torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=1e-5)
    state = net.state_dict()
    assert {"token_head.norm.mean", "token_head.norm.scale", "token_head.fc.weight"} <= set(state)

    # from stored half-precision tokens, in training mode the standardisation is the same (no batch statistics)
    light = FPT(num_classes=3, head="side+tokens", frozen_model=False, **TINY_FPT)
    light.load_state_dict(state, strict=True)
    side = net.make_side_view(x)
    light.eval()
    torch.testing.assert_close(light.forward_features(side, keys, values), net(x))
    light.train()  # a BatchNorm would standardise by the batch here; the fit's statistics stay
    torch.testing.assert_close(light.token_head(token_layer_means(values)), net.token_head(features))
    half = light.token_head(token_layer_means(values.half()))
    torch.testing.assert_close(half, net.token_head(features), atol=5e-2, rtol=1e-2)
    traced = convert_to_torchscript(net, tmp_path / "t.ts", verify=False, use_trace=True, inputs=[x])
    torch.testing.assert_close(traced(x), net(x), atol=1e-4, rtol=1e-5)

    with pytest.raises(ValueError, match="does not fit this head"):
        net.token_head.load_linear_model(torch.zeros(3), torch.ones(3), torch.ones(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="does not fit this head"):  # a binary fit's one row: map it first
        net.token_head.load_linear_model(mean, scale, weight[0], bias[:1])
    with pytest.raises(ValueError, match="positive"):
        net.token_head.load_linear_model(mean, torch.zeros(layers * dim), weight, bias)
    with pytest.raises(ValueError, match="feature_norm='fixed'"):
        FPT(num_classes=2, head="side+prompts", **TINY_FPT).prompt_head.load_linear_model(mean, scale, weight, bias)


def test_side_network_initialised_from_the_frozen_model(tmp_path):
    from safetensors.torch import save_file

    from fpt_monai.networks import create_vit_backbone

    vit = create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=64)
    weights = tmp_path / "w.safetensors"
    save_file(vit.state_dict(), str(weights))
    kwargs = {**TINY_FPT, "pretrained": str(weights)}
    for frozen_model in (True, False):  # training from stored tokens reads the weight file once for this
        net = FPT(num_classes=3, side_init="lpm", frozen_model=frozen_model, **kwargs)
        assert count_parameters(net).trainable == count_parameters(FPT(num_classes=3, **TINY_FPT)).trainable
        channels = torch.arange(24) * 192 // 24  # side width 24 of 192, evenly spaced
        for i, layer in enumerate(range(6, 12)):  # FPT+: side block i from frozen block 6 + i
            src = vit.blocks[layer]
            torch.testing.assert_close(net.side.blocks[i].norm1.weight, src.norm1.weight[channels])
            torch.testing.assert_close(net.side.blocks[i].mlp.fc1.weight, src.mlp.fc1.weight[::8, channels])
        torch.testing.assert_close(net.side.norm.weight, vit.norm.weight[channels])
        torch.testing.assert_close(net.side.cls_token[0, 0], vit.cls_token[0, 0, channels])
    random = FPT(num_classes=3, **kwargs)
    assert not torch.allclose(random.side.blocks[0].mlp.fc1.weight, vit.blocks[6].mlp.fc1.weight[::8, channels])
