"""Export (:func:`fpt_monai.export.export_bundle`: TorchScript, and ONNX when onnxruntime is installed) of the bundle
trained on the device, and the exported models run on the device as MONAI Deploy runs them
(``python -m fpt_monai.deploy --device cuda:0`` loads ``model.ts`` with ``map_location``): they agree with the PyTorch
network on the device."""

from __future__ import annotations

import importlib.util
import re
import shutil

import pytest
import torch

from fpt_monai.engines import load_checkpoint, read_model_config
from fpt_monai.export import export_bundle
from fpt_monai.networks import FPTExplainer, network_from_model_config

from .conftest import is_cuda

pytestmark = pytest.mark.cuda

HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
# largest difference of a class probability between an export and PyTorch on the same device (CUDA: its kernels may
# differ between the traced graph and eager mode, e.g. TF32 convolutions)
TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}
# a fixed device in a traced graph's code: ``torch.zeros(..., device=x.device)`` is recorded with the tracing device
_FIXED_DEVICE = re.compile(r'device=torch\.device\("(?:cpu|cuda[:0-9]*)"\)')


@pytest.fixture(scope="module")
def exported(device_bundle, tmp_path_factory):
    """A copy of the device-trained bundle after :func:`export_bundle`: ``(bundle_root, weights, report)``."""
    root, _, weights, _ = device_bundle
    bundle = tmp_path_factory.mktemp("export") / "bundle"
    shutil.copytree(root, bundle)
    report = export_bundle(bundle, pretrained=weights, onnx=HAVE_ORT, progress=False)
    return bundle, weights, report


def _pytorch_network(bundle, weights, device):
    record = read_model_config(bundle / "models" / "model_config.json", bundle_root=bundle)
    net = network_from_model_config(record, pretrained=str(weights), frozen_model=True)
    net.load_state_dict(load_checkpoint(bundle / "models" / "model.pt"), strict=True)
    return net.to(device).eval(), int(record["img_size"])


def test_export_of_the_device_trained_bundle_agrees_with_pytorch(exported):
    bundle, _, report = exported
    models = bundle / "models"
    expected = {"model.ts", "model_explain.ts"} | ({"model.onnx"} if HAVE_ORT else set())
    assert set(report["files"]) == expected and all((models / name).is_file() for name in expected)
    checked = {"torchscript", "torchscript_explainer"} | ({"onnx"} if HAVE_ORT else set())
    assert set(report["max_abs_prob_diff"]) == checked
    assert max(report["max_abs_prob_diff"].values()) <= report["tolerance"]


def test_exports_run_on_the_device_like_pytorch(exported, device):
    """The CPU-made exports on the device (TorchScript as Deploy loads it; ONNX Runtime with the device's provider)
    and a trace made on the device, against the PyTorch network there."""
    bundle, weights, _ = exported
    net, size = _pytorch_network(bundle, weights, device)
    image = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    tolerance = TOLERANCE[device.type]
    with torch.no_grad():
        reference = torch.softmax(net(image), dim=1)
        _, ref_heatmap = FPTExplainer(net).eval()(image)
        probs = {"trace on the device": torch.softmax(torch.jit.trace(net, image)(image), dim=1)}
        model = torch.jit.load(str(bundle / "models" / "model.ts"), map_location=device).eval()
        assert all(p.device == device for p in model.parameters())
        probs["model.ts"] = torch.softmax(model(image), dim=1)
        explainer = torch.jit.load(str(bundle / "models" / "model_explain.ts"), map_location=device).eval()
        logits, heatmap = explainer(image)
        probs["model_explain.ts"] = torch.softmax(logits, dim=1)
    assert heatmap.device == device and heatmap.shape == ref_heatmap.shape
    assert (heatmap - ref_heatmap).abs().max() <= 1e-3
    if HAVE_ORT:
        import onnxruntime as ort

        cuda_provider = is_cuda(device) and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = (["CUDAExecutionProvider"] if cuda_provider else []) + ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(bundle / "models" / "model.onnx"), providers=providers)
        (logits,) = session.run(None, {"image": image.cpu().numpy()})
        probs["model.onnx"] = torch.softmax(torch.from_numpy(logits), dim=1).to(device)
    for name, p in probs.items():
        assert p.device == device, name
        assert (p - reference).abs().max() <= tolerance, name


def test_exported_graphs_fix_no_device(exported):
    """A model exported on the CPU must run on any device: no device may be a constant of its traced graph."""
    bundle, _, _ = exported
    fixed = set()
    for name in ("model.ts", "model_explain.ts"):
        model = torch.jit.load(str(bundle / "models" / name))
        for module_name, module in model.named_modules():
            try:
                code = module.code
            except AttributeError:  # a traced submodule that was inlined into its parent has no code of its own
                continue
            lines = (line.strip() for line in code.splitlines() if _FIXED_DEVICE.search(line))
            fixed |= {f"{name} {module_name or '(top)'}: {line}" for line in lines}
    assert not fixed, "devices fixed in the exported graphs:\n" + "\n".join(sorted(fixed))
