"""scripts/export_bundle.py: the MONAI CLI exports agree with PyTorch and carry their configs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fpt_monai.data.feature_store import file_sha256

from ..conftest import REPO_ROOT


@pytest.mark.slow
def test_exports_agree_with_pytorch(exported_tiny_bundle):
    root, data_dir, weights = exported_tiny_bundle
    models = root / "models"
    check = json.loads((models / "export_check.json").read_text())
    assert set(check["max_abs_prob_diff"]) == {"torchscript", "torchscript_explainer", "onnx"}
    assert check["batch"][0] == 3  # traced and exported at batch 1 / 2: the batch axis is free
    assert max(check["max_abs_prob_diff"].values()) <= check["tolerance"] == 1e-4
    assert check["heatmap_shape"] == [3, 1, 64, 64]

    from monai.data import load_net_with_metadata

    net, meta, extra = load_net_with_metadata(str(models / "model.ts"), more_extra_files=("model_config.json",))
    # the trained bundle's metadata: the real input shape and classes, and the model's identity
    trained = json.loads((models / "metadata.json").read_text())
    assert meta["network_data_format"] == trained["network_data_format"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "normal", "1": "abnormal"}
    digest = file_sha256(models / "model.pt")
    assert meta["fpt_monai"]["checkpoint_sha256"] == digest == check["identity"]["checkpoint_sha256"]
    embedded, record = json.loads(extra["model_config.json"]), json.loads((models / "model_config.json").read_text())
    # the model file names the frozen weights by their SHA-256, without the training machine's paths
    assert embedded["frozen_weights"] == {**record["frozen_weights"], "source": weights.name}
    assert set(record["training_settings"]) - set(embedded["training_settings"]) == {
        "store_dir",
        "dataset_dir",
        "datalist_file",
        "datalist_source",
    }
    assert {k: v for k, v in embedded.items() if k not in ("frozen_weights", "training_settings")} == {
        k: v for k, v in record.items() if k not in ("frozen_weights", "training_settings")
    }
    assert str(root) not in (models / "model.ts").read_bytes().decode("latin-1")  # no local path travels

    import onnx

    props = {p.key: p.value for p in onnx.load(str(models / "model.onnx")).metadata_props}
    assert json.loads(props["class_names"]) == ["normal", "abnormal"] and json.loads(props["input_size"]) == [64, 64]
    assert json.loads(props["mean"]) == record["mean"] and json.loads(props["std"]) == record["std"]
    assert props["checkpoint_sha256"] == digest and props["frozen_weights"] == record["frozen_weights"]["id"]

    # an image the check did not see: TorchScript and ONNX Runtime give the PyTorch model's probabilities
    import onnxruntime as ort

    from fpt_monai.networks import FPT

    ref = FPT(num_classes=2, backbone="vit_tiny_patch16_224", pretrained=str(weights), img_size=64, side_img_size=32)
    ref.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    x = torch.rand(1, 3, 64, 64) * 4 - 2
    with torch.no_grad():
        expected = ref.eval()(x).softmax(-1).numpy()
        np.testing.assert_allclose(net(x).softmax(-1).numpy(), expected, atol=1e-5)
    session = ort.InferenceSession(str(models / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), expected, atol=1e-4)


def test_export_without_checkpoint_says_what_to_do(tmp_path):
    done = subprocess.run(
        [sys.executable, "scripts/export_bundle.py", "--bundle-root", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "model.pt not found" in done.stderr and "train the bundle first" in done.stderr


def test_export_with_other_frozen_weights_is_refused(tmp_path, trained_tiny_bundle, capsys):
    """The export command's main in this process (the script's process and excepthook are tested just above): the
    error's last line (what the script's excepthook prints, :func:`error_line`) names the weights' mismatch."""
    from fpt_monai.commands.export import main
    from fpt_monai.utils.errors import error_line

    root, _, weights = trained_tiny_bundle
    from safetensors.torch import save_file

    from fpt_monai.networks import create_vit_backbone

    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)  # other random weights than the fixture's (seed 0)
    save_file(create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=224).state_dict(), str(other))
    assert other.read_bytes() != weights.read_bytes()
    capsys.readouterr()
    with pytest.raises(Exception) as info:
        main(["--bundle-root", str(root), "--pretrained", str(other)])
    last = error_line(info.value)
    assert last.startswith("fpt_monai: error:") and "the trained model's frozen weights are" in last
    captured = capsys.readouterr()
    assert "export:" not in captured.out + captured.err  # refused before the first export
