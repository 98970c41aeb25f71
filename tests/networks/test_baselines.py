from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import AdaptFormerViT, LoRAViT, ViTClassifier, VPTDeepViT, count_parameters

from ..conftest import TINY

TINY_BASE = {**TINY, "pretrained": False}


@pytest.mark.parametrize(
    "cls, kwargs, trainable, ratio",
    [
        (ViTClassifier, {}, 86_438_405, 100.0),
        (ViTClassifier, {"train_backbone": False}, 3_845, 0.0),
        (LoRAViT, {}, 589_824 + 3_845, 0.68),  # rank 16: the paper's 0.68 %
        (VPTDeepViT, {}, 147_456 + 3_845, 0.17),  # 16 prompts x 12 blocks x 768: the paper's 0.17 %
        (AdaptFormerViT, {}, 12 * 99_136 + 3_845, 1.36),  # bottleneck 64 in every block
    ],
)
def test_vit_b16_trainable_parameters(cls, kwargs, trainable, ratio):
    net = cls(num_classes=5, pretrained=False, img_size=512, **kwargs)
    count = count_parameters(net)
    assert count.trainable == trainable
    assert count.ratio == pytest.approx(ratio, abs=0.005)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ViTClassifier, {}),
        (ViTClassifier, {"grad_checkpointing": True}),
        (ViTClassifier, {"train_backbone": False}),
        (LoRAViT, {}),
        (VPTDeepViT, {}),
        (AdaptFormerViT, {}),
    ],
)
def test_one_training_step_updates_only_trainable_parameters(cls, kwargs):
    net = cls(num_classes=3, **TINY_BASE, **kwargs).train()
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    logits = net(torch.randn(2, 3, 64, 64), image_side=torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    opt.step()
    params = dict(net.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())


@pytest.mark.parametrize("cls", [LoRAViT, AdaptFormerViT])
def test_adapters_start_as_the_frozen_model(cls):
    """LoRA's B and AdaptFormer's up-projection are zero at init: the output equals backbone + head."""
    torch.manual_seed(0)
    net = cls(num_classes=2, **TINY_BASE).eval()
    probe = ViTClassifier(num_classes=2, **TINY_BASE, train_backbone=False).eval()
    vit = net.model.base_model.model if cls is LoRAViT else net.vit
    state = {k: v for k, v in vit.state_dict().items() if "lora_" not in k and "modules_to_save" not in k}
    state = {k.replace("base_layer.", "").replace("original_module.", ""): v for k, v in state.items()}
    probe.vit.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), probe(x), rtol=1e-5, atol=1e-5)


def test_vpt_prompts_change_the_output_and_are_fresh_per_block():
    net = VPTDeepViT(num_classes=2, **TINY_BASE, num_prompts=4).eval()
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1])) for blk in net.vit.blocks]
    x = torch.randn(1, 3, 64, 64)
    base = net(x)
    for h in hooks:
        h.remove()
    assert seen == [1 + 4 + 16] * 12  # CLS + 4 prompts + 16 patches in every block (not accumulated)
    with torch.no_grad():
        net.prompts[5].add_(torch.randn_like(net.prompts[5]))
    assert not torch.allclose(net(x), base)


def test_bad_arguments():
    with pytest.raises(ValueError, match="grad_checkpointing"):
        ViTClassifier(**TINY_BASE, train_backbone=False, grad_checkpointing=True)
    with pytest.raises(ValueError, match="rank"):
        LoRAViT(**TINY_BASE, rank=0)
    with pytest.raises(ValueError, match="num_prompts"):
        VPTDeepViT(**TINY_BASE, num_prompts=0)
    with pytest.raises(ValueError, match="bottleneck"):
        AdaptFormerViT(**TINY_BASE, bottleneck=0)
