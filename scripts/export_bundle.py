"""Export a trained FPT bundle with MONAI's own CLI and check that the exports agree with PyTorch.

Runs, in separate processes, exactly what a user would type:

    python -m monai.bundle ckpt_export network_def --filepath <bundle>/models/model.ts ...      (TorchScript, traced)
    python -m monai.bundle ckpt_export explainer   --filepath <bundle>/models/model_explain.ts ...  (+ heatmaps; FPT)
    python -m monai.bundle onnx_export network_def --filepath <bundle>/models/model.onnx ...     (ONNX, dynamic batch)

The TorchScript files embed ``metadata.json``, ``inference.json`` and the training's ``model_config.json``, so a
model file is self-contained (MONAI Deploy and ``fpt_monai.deploy`` read them from it). Then the PyTorch model (the
bundle's ``network_def`` with the checkpoint), the TorchScript model, the explainer and ONNX Runtime classify the same
random batch; the largest absolute difference of the class probabilities is written to
``<bundle>/models/export_check.json`` and must stay below ``--tolerance``.

    python scripts/export_bundle.py --bundle-root outputs/demo_bundle --config bundle/configs/demo.yaml
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INFERENCE = REPO / "bundle" / "configs" / "inference.yaml"
METADATA = REPO / "bundle" / "configs" / "metadata.json"
ONNX_KWARGS = {
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}},
}


def export_command(
    kind: str,
    net_id: str,
    filepath: Path,
    bundle_root: Path,
    configs: list[str],
    extra: dict,
    record: Path | None = None,
) -> list:
    """The ``python -m monai.bundle <kind> <net_id> ...`` command line for one export (``record``: the model record
    embedded in the file; the bundle's own by default)."""
    record = record or bundle_root / "models" / "model_config.json"
    model_config = json.loads(record.read_text())
    size = int(model_config["img_size"])
    cmd = [sys.executable, "-m", "monai.bundle", kind, net_id, "--filepath", str(filepath)]
    cmd += ["--ckpt_file", str(bundle_root / "models" / "model.pt"), "--meta_file", str(METADATA)]
    cmd += ["--config_file", repr([str(INFERENCE), *configs, str(record)])]
    # torch.export specialises a batch of 1 into the graph: the ONNX example batch is 2, the batch axis dynamic
    batch = 2 if kind == "onnx_export" else 1
    cmd += ["--bundle_root", str(bundle_root), "--use_trace", "True", "--input_shape", f"[{batch},3,{size},{size}]"]
    if kind == "onnx_export":
        cmd += ["--converter_kwargs", repr(ONNX_KWARGS)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _parser(bundle_root: Path, configs: list[str], extra: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(INFERENCE), *configs])
    parser.update({"bundle_root": str(bundle_root), **{k: _literal(v) for k, v in extra.items()}})
    return parser


def check_settings(bundle_root: Path, configs: list[str], extra: dict) -> None:
    """Refuse an export whose configs or --pretrained contradict the trained model's record (other frozen weights,
    another size, ...): ``ckpt_export`` itself builds only ``network_def`` and would export such a model silently."""
    _parser(bundle_root, configs, extra).get_parsed_content("model_check")


def embedded_record(record_file: Path, folder: Path) -> Path:
    """A copy of the record for the model files, without the training machine's paths (the frozen weights are still
    named by their SHA-256); the name stays ``model_config.json``, which the Deploy app reads."""
    record = json.loads(record_file.read_text())
    if isinstance(record.get("frozen_weights"), dict) and not isinstance(record["frozen_weights"].get("source"), bool):
        record["frozen_weights"] = {**record["frozen_weights"], "source": Path(record["frozen_weights"]["source"]).name}
    settings = record.get("training_settings")
    if isinstance(settings, dict):
        record["training_settings"] = {
            k: v for k, v in settings.items() if k not in ("store_dir", "dataset_dir", "datalist_file")
        }
    out = folder / "model_config.json"
    out.write_text(json.dumps(record, indent=1))
    return out


def pytorch_model(bundle_root: Path, configs: list[str], extra: dict):
    net = _parser(bundle_root, configs, extra).get_parsed_content("network_def")
    import torch

    net.load_state_dict(torch.load(bundle_root / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def _literal(value: str):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle-root", required=True, help="bundle folder with models/model.pt and model_config.json")
    p.add_argument("--config", action="append", default=[], help="extra config merged over inference.yaml")
    p.add_argument("--pretrained", default=None, help="frozen model weights (overrides the configs)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--batch-size", type=int, default=3, help="batch of the agreement check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed probability difference")
    args = p.parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    bundle_root = Path(args.bundle_root).resolve()
    if not (bundle_root / "models" / "model.pt").is_file():
        raise SystemExit(f"{bundle_root / 'models' / 'model.pt'} not found: train the bundle first (make demo).")
    from fpt_monai.engines import verify_checkpoint

    verify_checkpoint(bundle_root / "models" / "model.pt")  # never export a corrupt checkpoint
    configs = [str(Path(c).resolve()) for c in args.config]
    extra = {} if args.pretrained is None else {"pretrained": str(Path(args.pretrained).resolve())}
    models = bundle_root / "models"
    model_config = json.loads((models / "model_config.json").read_text())
    explain = model_config.get("network_name", "fpt") == "fpt"  # heatmaps are FPT's prompt attention
    exports = [("ckpt_export", "network_def", models / "model.ts")]
    if explain:
        exports.append(("ckpt_export", "explainer", models / "model_explain.ts"))
    if not args.no_onnx:
        exports.append(("onnx_export", "network_def", models / "model.onnx"))
    check_settings(bundle_root, configs, extra)
    with tempfile.TemporaryDirectory() as tmp:
        record = embedded_record(models / "model_config.json", Path(tmp))
        for kind, net_id, path in tqdm(exports, desc="export", unit="model"):
            cmd = export_command(kind, net_id, path, bundle_root, configs, extra, record)
            tqdm.write("$ python " + shlex.join(cmd[1:]))
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{kind} {net_id} failed:\n{done.stderr[-4000:]}")

    size = int(model_config["img_size"])
    image = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = torch.softmax(pytorch_model(bundle_root, configs, extra)(image), dim=1)
        probs = {"torchscript": torch.softmax(torch.jit.load(str(models / "model.ts"))(image), dim=1)}
        heatmap = None
        if explain:
            logits, heatmap = torch.jit.load(str(models / "model_explain.ts"))(image)
            probs["torchscript_explainer"] = torch.softmax(logits, dim=1)
    if not args.no_onnx:
        import onnxruntime as ort

        session = ort.InferenceSession(str(models / "model.onnx"), providers=["CPUExecutionProvider"])
        (onnx_logits,) = session.run(None, {"image": image.numpy()})
        probs["onnx"] = torch.softmax(torch.from_numpy(onnx_logits), dim=1)
    report = {
        "batch": list(image.shape),
        "tolerance": args.tolerance,
        "max_abs_prob_diff": {name: float((p - reference).abs().max()) for name, p in probs.items()},
        "heatmap_shape": None if heatmap is None else list(heatmap.shape),
        "files": {path.name: path.stat().st_size for _, _, path in exports},
    }
    (models / "export_check.json").write_text(json.dumps(report, indent=1))
    for name, diff in report["max_abs_prob_diff"].items():
        print(f"{name:>22}: max |p - p_pytorch| = {diff:.2e}")
    worst = max(report["max_abs_prob_diff"].values())
    if worst > args.tolerance:
        raise SystemExit(f"exports disagree with PyTorch: {worst:.2e} > tolerance {args.tolerance:g}")
    return report


if __name__ == "__main__":
    from fpt_monai.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    main()
