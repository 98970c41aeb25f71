"""FPT and FPT+ trained from half-precision stored tokens on the device: the forward outputs and the gradients of every
trainable parameter agree with the same network fed the same tokens in fp32.

On CUDA the prompt attention runs in the tokens' own dtype (fp16/bf16 SDPA, :class:`~fpt_monai.networks.FusionModule`),
so the tolerances are those of the dtype; on a CPU the layer-by-layer kernel computes in fp32 and agrees to rounding.
"""

from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import FPT

from ..conftest import TINY
from .conftest import is_cuda, relative_error

pytestmark = pytest.mark.cuda

# relative error (norm of the difference over the norm of the fp32 result) of outputs and gradients: the dtype's
# rounding (fp16: 11 bits, bf16: 8 bits of mantissa) through softmax and two matrix products; the fp16/bf16 SDPA on
# a CPU gives at most 2e-3 / 6e-3 (gradients of the prompt norm or projection), so about 5x margin
CUDA_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 4e-2}
CPU_TOLERANCE = 1e-5  # the CPU kernel upcasts the tokens: only fp32 summation order differs


def _network(variant: str, device: torch.device) -> FPT:
    """A tiny FPT/FPT+ without the frozen model (training from stored tokens), dropout off, peaked prompt attention."""
    torch.manual_seed(0)
    net = FPT(
        num_classes=3,
        variant=variant,
        **TINY,
        side_img_size=32,
        pretrained=False,
        fusion_dropout=0.0,
        frozen_model=False,
    )
    with torch.no_grad():  # the prompts start at 1e-6 (uniform attention): make the attention depend on them
        net.fusion.prompts.normal_(0.0, 0.5)
    return net.to(device).train()


def _step(net: FPT, side: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, labels: torch.Tensor):
    """Logits and the gradients of the trainable parameters of one cross-entropy step."""
    net.zero_grad(set_to_none=True)
    logits = net(side, image_side=side, keys=keys, values=values)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    grads = {name: p.grad.detach().clone() for name, p in net.named_parameters() if p.requires_grad}
    return logits.detach(), grads


@pytest.mark.parametrize("variant", ["fpt_plus", "fpt"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_training_from_half_tokens_matches_fp32_tokens(device, variant, dtype):
    net = _network(variant, device)
    layers, heads, k, head_dim = net.token_shape
    g = torch.Generator().manual_seed(1)
    batch = 4
    # tokens as a store holds them: the fp32 network gets exactly the same (rounded) values
    keys = (2 * torch.randn(batch, layers, heads, k, head_dim, generator=g)).to(dtype).to(device)
    values = torch.randn(batch, layers, heads, k, head_dim, generator=g).to(dtype).to(device)
    side = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    labels = torch.tensor([0, 1, 2, 1], device=device)

    logits, grads = _step(net, side, keys, values, labels)
    ref_logits, ref_grads = _step(net, side, keys.float(), values.float(), labels)

    assert logits.dtype == torch.float32 and logits.device == side.device  # half tokens, fp32 network and logits
    assert all(g.dtype == torch.float32 and g.device == side.device for g in grads.values())
    assert set(grads) == set(ref_grads) and "fusion.prompts" in grads
    tolerance = CUDA_TOLERANCE[dtype] if is_cuda(device) else CPU_TOLERANCE
    assert bool(torch.isfinite(logits).all())
    assert relative_error(logits, ref_logits) < tolerance
    for name, grad in grads.items():
        assert bool(torch.isfinite(grad).all()), name
        assert ref_grads[name].norm() > 0, name  # every trainable parameter takes part
        assert relative_error(grad, ref_grads[name]) < tolerance, name
