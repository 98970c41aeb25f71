"""A training step under ``torch.autocast`` on the device, as the bundle's ``amp: true`` runs it on a GPU: finite loss
and gradients, close to the same step in fp32, from stored tokens (preload mode) and from images (online mode, the
frozen model under autocast too)."""

from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import FPT

from ..conftest import TINY
from .conftest import is_cuda, relative_error

pytestmark = pytest.mark.cuda

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# relative error against fp32 of the loss and of all gradients together (one vector: a single small parameter's
# gradient, e.g. a LayerNorm's, may be off by 20 % when the frozen model selects another token under autocast).
# Measured on a CPU with the CUDA path's half-precision prompt attention: loss <= 6e-4; gradients fp16 1e-3,
# bf16 7e-3 (stored tokens) and 1.6e-2 (online)
LOSS_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 2e-2}
GRAD_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _network(device: torch.device, online: bool) -> FPT:
    torch.manual_seed(0)
    net = FPT(
        num_classes=3,
        variant="fpt_plus",
        **TINY,
        side_img_size=32,
        pretrained=False,
        fusion_dropout=0.0,
        frozen_model=online,
    )
    with torch.no_grad():  # attention that depends on the prompts (they start at 1e-6)
        net.fusion.prompts.normal_(0.0, 0.5)
    return net.to(device).train()


def _step(net, inputs, kwargs, labels, amp_dtype=None):
    """One optimiser step's loss and unscaled gradients (fp16 on CUDA: with a GradScaler, as MONAI's trainer)."""
    device = labels.device
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    # a smaller first scale than the default 2**16: a first step that overflows is skipped by design (the bundle's
    # training, with the default, runs in test_bundle.py); here every gradient must be finite
    scaled = amp_dtype == torch.float16 and is_cuda(device)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10) if scaled else None
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = net(inputs, **kwargs)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in net.named_parameters() if p.requires_grad}
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())  # the step wrote finite weights
    return loss.detach().float(), logits, grads


@pytest.mark.parametrize("mode", ["preload_fp16", "preload_fp32", "online"])
@pytest.mark.parametrize("amp", list(AMP_DTYPES))
def test_autocast_training_step_is_finite_and_close_to_fp32(device, amp, mode):
    """``preload_fp16``/``preload_fp32``: stored tokens in that dtype (``store_dtype``); ``online``: from images.
    On a CPU, half-precision tokens (``preload_fp16``; ``online``, whose frozen model runs under autocast) take the
    fusion module's layer-by-layer training kernel (fusion.py ``_LayerwisePromptAttention``) under autocast."""
    amp_dtype = AMP_DTYPES[amp]
    online = mode == "online"
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1, 2, 1], device=device)
    if online:  # the frozen model runs under autocast too (its reduced-precision path)
        image = torch.randn(4, 3, 64, 64, generator=g).to(device)
        inputs, kwargs = image, {}
    else:  # tokens as the store holds them
        shape = (4, *_network(torch.device("cpu"), False).token_shape)
        token_dtype = torch.float16 if mode == "preload_fp16" else torch.float32
        keys = (2 * torch.randn(shape, generator=g)).to(token_dtype).to(device)
        values = torch.randn(shape, generator=g).to(token_dtype).to(device)
        side = torch.randn(4, 3, 32, 32, generator=g).to(device)
        inputs, kwargs = side, {"image_side": side, "keys": keys, "values": values}

    loss, logits, grads = _step(_network(device, online), inputs, kwargs, labels, amp_dtype)
    ref_loss, ref_logits, ref_grads = _step(_network(device, online), inputs, kwargs, labels)

    assert ref_logits.dtype == torch.float32
    assert logits.dtype == amp_dtype  # the classifier's matmul ran under autocast
    assert bool(torch.isfinite(loss)) and loss > 0
    assert relative_error(loss, ref_loss) < LOSS_TOLERANCE[amp_dtype]
    assert set(grads) == set(ref_grads)
    for name, grad in grads.items():
        assert bool(torch.isfinite(grad).all()), name
    every = torch.cat([grads[n].flatten() for n in sorted(grads)])
    ref_every = torch.cat([ref_grads[n].flatten() for n in sorted(grads)])
    assert relative_error(every, ref_every) < GRAD_TOLERANCE[amp_dtype]
