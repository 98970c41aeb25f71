"""Device portability of the networks without a GPU: traced (exported) graphs hold no device constant, so a model
traced on the CPU runs on any device (here the ``meta`` device, which refuses a CPU tensor as a GPU does), and the
fusion module's half-precision training kernel works under CPU autocast with the result of the computation without
it. The same checks on a real GPU: tests/cuda (test_export.py, test_amp.py)."""

from __future__ import annotations

import pytest
import torch

from fpt_monai.networks import FPT, FPTExplainer, FrozenViTExtractor
from fpt_monai.networks.fusion import _LayerwisePromptAttention

from ..conftest import TINY

META = torch.device("meta")


def _code(traced: torch.jit.ScriptModule) -> str:
    """The TorchScript code of a traced module and of every submodule that kept its own."""
    parts = []
    for _, module in traced.named_modules():
        try:
            parts.append(module.code)
        except AttributeError:  # inlined into its parent
            continue
    return "\n".join(parts)


def _trace(module: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad():
        return torch.jit.trace(module, example, check_trace=False)


def _outputs(result) -> tuple[torch.Tensor, ...]:
    return result if isinstance(result, tuple) else (result,)


def test_a_traced_device_constant_is_caught_on_the_meta_device():
    """The check below can fail: ``torch.zeros(..., device=x.device)`` traced on the CPU breaks on another device."""
    traced = torch.jit.trace(lambda x: x + torch.zeros(x.shape[0], device=x.device), torch.randn(3))
    assert 'device=torch.device("cpu")' in traced.code
    with pytest.raises(RuntimeError):
        traced(torch.randn(3, device=META))


@pytest.mark.parametrize(
    "options",
    [
        {},  # FPT+, global importance, the side head (the bundle's default)
        {"variant": "fpt", "token_importance": "class_token", "head": "side+pooled"},
    ],
)
def test_traced_fpt_and_explainer_fix_no_device(options):
    """What export.py traces on the CPU (model.ts, model_explain.ts): no device in the graph; the traced modules
    moved to another device run there, and on the CPU they give the eager outputs."""
    torch.manual_seed(0)
    net = FPT(num_classes=3, pretrained=False, **TINY, **options).eval()
    image = torch.randn(2, 3, 64, 64)
    for module in (net, FPTExplainer(net).eval()):
        traced = _trace(module, image)
        assert "torch.device(" not in _code(traced), type(module).__name__
        with torch.no_grad():
            for got, expected in zip(_outputs(traced(image)), _outputs(module(image)), strict=True):
                torch.testing.assert_close(got, expected)
            on_meta = _outputs(traced.to(META)(image.to(META)))
        assert [t.device for t in on_meta] == [META] * len(on_meta)
        assert [t.shape for t in on_meta] == [t.shape for t in _outputs(module(image))]


def test_traced_reduced_precision_extractor_fixes_no_device():
    """The bf16 extractor's batched importance (its reduced-precision path) traces without a device as well."""
    torch.manual_seed(0)
    ext = FrozenViTExtractor(**TINY, pretrained=False, importance_path="batched").to(torch.bfloat16)
    image = torch.randn(2, 3, 64, 64, dtype=torch.bfloat16)
    traced = _trace(ext, image)
    assert "torch.device(" not in _code(traced)
    with torch.no_grad():
        for got, expected in zip(traced(image), ext(image), strict=True):
            torch.testing.assert_close(got, expected)
        keys, values = traced.to(META)(image.to(META))
    assert keys.device == META and keys.shape == (2, *ext.token_shape) and values.dtype == torch.bfloat16


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("token_dtype", [torch.float16, torch.bfloat16])
def test_layerwise_prompt_attention_ignores_cpu_autocast(amp, token_dtype):
    """The CPU training kernel for half-precision tokens, forward and backward inside ``torch.autocast('cpu')``:
    exactly the computation without autocast (it wrote bf16/fp16 matmul results into fp32 buffers and raised)."""
    torch.manual_seed(0)
    q = torch.randn(3, 2, 4, 16, requires_grad=True)
    keys = (2 * torch.randn(5, 3, 2, 7, 16)).to(token_dtype)
    values = torch.randn(5, 3, 2, 7, 16).to(token_dtype)
    grad = torch.randn(5, 3, 2, 4, 16)
    with torch.autocast("cpu", dtype=amp):
        out = _LayerwisePromptAttention.apply(q, keys, values, 0.25)
        (grad_q,) = torch.autograd.grad(out, q, grad)  # backward inside the autocast region as well
    ref = _LayerwisePromptAttention.apply(q, keys, values, 0.25)
    (ref_grad,) = torch.autograd.grad(ref, q, grad)
    assert out.dtype == grad_q.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(grad_q, ref_grad, rtol=0, atol=0)
    # and the softmax attention it computes (fp64 from the same half tokens)
    probs = torch.softmax(q.double() @ keys.double().transpose(-2, -1) * 0.25, dim=-1)
    torch.testing.assert_close(out, (probs @ values.double()).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["fpt_plus", "fpt"])
@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_fusion_trains_from_half_tokens_under_cpu_autocast(variant, amp):
    """The fusion module (FPT+: fp32 queries; FPT: queries from a Linear, in the autocast dtype) in training from
    fp16 tokens under CPU autocast: finite, and close to the same step without autocast."""
    torch.manual_seed(0)
    net = FPT(num_classes=3, variant=variant, pretrained=False, frozen_model=False, fusion_dropout=0.0, **TINY)
    fusion = net.fusion.train()
    with torch.no_grad():
        fusion.prompts.normal_(0.0, 0.5)  # attention that depends on the prompts
    shape = (4, *net.token_shape)
    keys, values = (2 * torch.randn(shape)).half(), torch.randn(shape).half()
    params = [p for p in fusion.parameters() if p.requires_grad]
    with torch.autocast("cpu", dtype=amp):
        out = fusion(keys, values)
        loss = out.float().square().mean()
    grads = torch.autograd.grad(loss, params)
    ref = fusion(keys, values)
    ref_grads = torch.autograd.grad(ref.square().mean(), params)
    assert not torch.equal(out.float(), ref)  # autocast was in effect (out_proj in its dtype)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    every, ref_every = torch.cat([g.float().flatten() for g in grads]), torch.cat([g.flatten() for g in ref_grads])
    # bf16 keeps 8 significant bits (relative rounding 4e-3), fp16 11
    tolerance = 2e-2 if amp == torch.bfloat16 else 5e-3
    assert float((out.float() - ref).norm() / ref.norm()) < tolerance
    assert float((every - ref_every).norm() / ref_every.norm()) < tolerance
