"""The sections of ``python -m fpt_monai.check``; each runs in its own process:
``python -m fpt_monai.check.sections <section> --settings <settings.json> --out <result.json>``.

A section returns ``{"figures": {name: number or text}, "details": {...}}``: ``figures`` are what the report lists
and the targets read (see :mod:`fpt_monai.check.report`); ``details`` keep the raw measurements.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fpt_monai.check.settings import SECTIONS, CheckSettings

__all__ = ["run_section", "paper_benchmark", "preload_precision", "bundle", "resolution"]

_NUM_CLASSES = 5  # the papers' benchmark (APTOS-like grading)


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _isolated(s: CheckSettings) -> bool:
    """Each measurement in its own process where memory is read as the process's peak RSS (a CPU run of the full
    setting); on CUDA the allocator's peak is reset per measurement, and the tiny run has no memory to speak of."""
    return s.device == "cpu" and not s.tiny


def _run_module(module: str, argv: list[str], timeout: float) -> None:
    """``python -m module argv`` with its output shown; an error names the module and its last lines."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=max(timeout, 1.0)
    )
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode:
        raise RuntimeError(f"python -m {module} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def _pct(part: float, whole: float) -> float | None:
    """``100 * part / whole``; None where ``whole`` was not measured (a CPU process's peak RSS that an earlier
    measurement in the same process already reached reads 0: the tiny run measures in one process)."""
    return 100.0 * part / whole if whole and whole > 0 else None


def paper_benchmark(s: CheckSettings) -> dict:
    """Peak training memory and speed of FPT+, FPT and full fine-tuning (fused SDPA and eager attention) in the
    papers' setting; FPT/FPT+ train from stored tokens, as the paper means it (the frozen model is not loaded)."""
    from fpt_monai.benchmarks import training_cost

    steps, warmup = (1, 0) if s.tiny else (3, 1)
    plan = {"sdpa": ("fpt_plus", "fpt", "full_finetune"), "eager": ("full_finetune",)}
    rows: dict[str, dict] = {}
    if _isolated(s):
        for attention, methods in plan.items():
            out = Path(s.work_dir) / f"paper_{attention}"
            argv = [
                *("--methods", ",".join(methods), "--backbone", s.backbone, "--img-size", str(s.img_size)),
                *("--batch-size", str(s.batch_size), "--num-classes", str(_NUM_CLASSES), "--steps", str(steps)),
                *("--warmup", str(warmup), "--device", s.device, "--attention", attention, "--out-dir", str(out)),
                "--no-inference",
            ]
            _run_module("fpt_monai.benchmarks.training_cost", argv, s.budgets["paper_benchmark"])
            for row in json.loads((out / "benchmark.json").read_text())["rows"]:
                rows[f"{row['method']}_{attention}"] = row
    else:
        from timm.layers import set_fused_attn

        args = argparse.Namespace(
            num_classes=_NUM_CLASSES,
            backbone=s.backbone,
            img_size=s.img_size,
            side_img_size=0,
            batch_size=s.batch_size,
            steps=steps,
            warmup=warmup,
            device=s.device,
            compile=False,
            no_inference=True,
        )
        try:
            for attention, methods in plan.items():
                set_fused_attn(attention == "sdpa")  # timm's Attention reads it when built
                for method in methods:
                    rows[f"{method}_{attention}"] = training_cost.worker(method, args)
                    _free(s.device)
        finally:
            set_fused_attn(True)
    full, eager, plus = rows["full_finetune_sdpa"], rows["full_finetune_eager"], rows["fpt_plus_sdpa"]
    figures = {
        "setting": f"{s.backbone} @ {s.img_size} px, batch {s.batch_size}, fp32, {s.device}",
        "fpt_plus_trainable_pct": plus["trainable_pct"],
        "fpt_plus_peak_mb": plus["peak_train_memory_mb"],
        "fpt_peak_mb": rows["fpt_sdpa"]["peak_train_memory_mb"],
        "full_finetune_sdpa_peak_mb": full["peak_train_memory_mb"],
        "full_finetune_eager_peak_mb": eager["peak_train_memory_mb"],
        "fpt_plus_memory_pct_of_full_sdpa": _pct(plus["peak_train_memory_mb"], full["peak_train_memory_mb"]),
        "fpt_plus_memory_pct_of_full_eager": _pct(plus["peak_train_memory_mb"], eager["peak_train_memory_mb"]),
        "fpt_plus_train_img_s": plus["train_img_s"],
        "fpt_train_img_s": rows["fpt_sdpa"]["train_img_s"],
        "full_finetune_sdpa_train_img_s": full["train_img_s"],
        "full_finetune_eager_train_img_s": eager["train_img_s"],
        "fpt_plus_speedup_vs_full_sdpa": plus["train_img_s"] / full["train_img_s"],
        "fpt_plus_speedup_vs_full_eager": plus["train_img_s"] / eager["train_img_s"],
        "fpt_plus_store_bytes_per_image": plus["store_bytes_per_image"],
    }
    return {"figures": figures, "details": {"rows": rows}}


def preload_precision(s: CheckSettings) -> dict:
    """The frozen model's extraction in each precision the device supports, against a bare timm forward in the
    same precision, and the selected tokens' agreement with fp32 (:mod:`fpt_monai.benchmarks.precision`)."""
    from fpt_monai.benchmarks import precision

    batch = 2 if s.tiny else 8
    report = precision.main(
        [
            *("--backbone", s.backbone, "--img-size", str(s.img_size), "--device", s.device),
            *("--pretrained", s.pretrained or "false", "--num-images", str(s.precision_images)),
            *("--batch-size", str(batch), "--out", str(Path(s.work_dir) / "precision.json")),
        ]
    )
    figures: dict = {"setting": report["setting"]}
    for name, row in report["results"].items():
        figures[f"{name}_extract_img_s"] = row["extract_img_s"]
        figures[f"{name}_extract_vs_bare"] = row["extract_vs_bare"]
        if name != "fp32":
            figures[f"{name}_extract_speedup_vs_fp32"] = row["extract_speedup_vs_fp32"]
            figures[f"{name}_bare_speedup_vs_fp32"] = row["bare_speedup_vs_fp32"]
            figures[f"{name}_token_agreement"] = row["mean_set_overlap"]
            figures[f"{name}_identical_token_sets"] = row["identical_sets"]
    return {"figures": figures, "details": report}


def _demo_dicom_study(data_dir: Path, study_dir: Path) -> int:
    """The demo's DICOM images (every split) copied into one study folder; returns how many."""
    study_dir.mkdir(parents=True, exist_ok=True)
    files = sorted((data_dir / "images").rglob("*.dcm"))
    for n, path in enumerate(files):
        shutil.copy2(path, study_dir / f"{n:03d}_{path.name}")
    return len(files)


def _device_agreement(bundle_root: Path, device: str, batch: int = 2) -> dict:
    """The exported TorchScript (and ONNX, on the device's execution provider where onnxruntime has it) against the
    PyTorch network rebuilt from the bundle's record, all on ``device``: the largest class-probability difference."""
    import torch

    from fpt_monai.engines import load_checkpoint, read_model_config, recorded_weights
    from fpt_monai.networks import network_from_model_config

    models = bundle_root / "models"
    record = read_model_config(models / "model_config.json", bundle_root=bundle_root)
    net = network_from_model_config(record, pretrained=recorded_weights(record), frozen_model=True)
    net.load_state_dict(load_checkpoint(models / "model.pt"))
    net = net.to(device).eval()
    size = int(record["img_size"])
    image = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    out: dict = {}
    with torch.no_grad():
        reference = torch.softmax(net(image.to(device)), dim=1).cpu()
        scripted = torch.jit.load(str(models / "model.ts"), map_location=device)
        out["torchscript_max_abs_prob_diff"] = float(
            (torch.softmax(scripted(image.to(device)), dim=1).cpu() - reference).abs().max()
        )
    onnx_path = models / "model.onnx"
    if onnx_path.is_file():
        import onnxruntime as ort

        wanted = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
        providers = [p for p in (wanted, "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(str(onnx_path), providers=providers)
        (logits,) = session.run(None, {"image": image.numpy()})
        out["onnx_provider"] = session.get_providers()[0]
        out["onnx_max_abs_prob_diff"] = float((torch.softmax(torch.from_numpy(logits), dim=1) - reference).abs().max())
    return out


def bundle(s: CheckSettings) -> dict:
    """The bundle end to end on generated demo data: preload through the bundle, FPT+ training epochs from the store
    with the resident copy off and on, export and its agreement on the device, and MONAI Deploy on the demo DICOMs."""
    import torch
    from monai.bundle import ConfigWorkflow
    from safetensors.torch import save_file

    from fpt_monai.benchmarks import epoch
    from fpt_monai.data import make_demo_dataset
    from fpt_monai.networks import create_vit_backbone

    work = Path(s.work_dir)
    data_dir = work / "demo_data"
    make_demo_dataset(data_dir, per_class=s.demo_per_class, size=s.demo_img_size)
    weights = Path(s.pretrained) if s.pretrained else work / "frozen_model.safetensors"
    if not s.pretrained:  # random weights: speed and memory do not depend on them
        torch.manual_seed(0)
        save_file(create_vit_backbone(s.backbone, pretrained=False).state_dict(), str(weights))
    overrides = {
        "backbone": s.backbone,
        "pretrained": str(weights),
        "img_size": s.demo_img_size,
        "batch_size": min(s.batch_size, 8) if s.tiny else s.batch_size,
        "num_workers": 0,
    }
    if s.tiny:
        overrides["side_img_size"] = 32
    figures: dict = {"setting": f"{s.backbone} @ {s.demo_img_size} px, FPT+, {2 * s.demo_per_class} demo images"}

    # the preload, as the bundle runs it (its store location, settings and precision)
    wf = ConfigWorkflow(
        config_file=str(epoch.TRAIN_CONFIG),
        meta_file=str(epoch.META_FILE),
        logging_file=False,
        workflow_type="train",
        bundle_root=str(work / "bundle_preload"),
        dataset_dir=str(data_dir),
        device=s.device,
        **overrides,
    )
    start = time.perf_counter()
    wf.initialize()  # checks the datalist and builds the store
    wf.parser.get_parsed_content("feature_store")
    figures["preload_s"] = time.perf_counter() - start
    datalist = wf.parser.get_parsed_content("datalist")
    n_items = len(datalist["training"]) + len(datalist["validation"])
    figures["preload_img_s"] = n_items / figures["preload_s"]
    store_dir = Path(wf.parser.get_parsed_content("store_dir"))
    figures["store_mb"] = sum(f.stat().st_size for f in store_dir.rglob("*") if f.is_file()) / 2**20
    del wf
    _free(s.device)

    args = argparse.Namespace(
        datalist=str(data_dir / "datalist.json"),
        store_dir=str(store_dir),
        config=[],
        # run_variant sets the batch, the workers and the device itself
        set=[f"{k}={v}" for k, v in overrides.items() if k not in ("batch_size", "num_workers")],
        epochs=s.bundle_epochs,
        batch_size=overrides["batch_size"],
        device=s.device,
    )
    runs = {}
    for resident in (False, True):
        name = "resident" if resident else "store"
        if s.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runs[name] = epoch.run_variant(args, resident=resident, workers=0, bundle_root=str(work / f"bundle_{name}"))
        figures[f"train_img_s_{name}"] = runs[name]["train_img_per_s"]
        figures[f"setup_s_{name}"] = runs[name]["setup_s"]
        if s.device.startswith("cuda"):
            figures[f"train_peak_mb_{name}"] = runs[name]["peak_mb"]
        _free(s.device)
    figures["resident_speedup"] = figures["train_img_s_resident"] / figures["train_img_s_store"]

    # export (the artefacts are device-independent: traced on the CPU) and agreement on the device; then Deploy.
    # Each is optional where its extra is not installed (a borrowed GPU machine may lack holoscan): the figures say so
    trained = work / "bundle_resident"
    report = _step(figures, "export", lambda: _export(trained, s))
    if report is not None:
        figures |= report.pop("figures")
        _step(figures, "deploy", lambda: _deploy(data_dir, work, trained, s, figures))
    return {"figures": figures, "details": {"runs": runs, "export": report}}


def _step(figures: dict, name: str, fn):
    """Run one optional step of a section: its status (``ok``, ``not installed: ...``, or the error) goes into
    ``figures[name + "_status"]``; returns its result or None."""
    try:
        result = fn()
    except ModuleNotFoundError as err:
        figures[f"{name}_status"] = f"not installed: {err.name} (pip install 'fpt-monai[export,deploy]')"
        return None
    except Exception as err:  # one step's failure must not hide the section's other figures
        figures[f"{name}_status"] = (
            f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        )
        return None
    figures[f"{name}_status"] = "ok"
    return result


def _export(trained: Path, s: CheckSettings) -> dict:
    import importlib.util

    from fpt_monai.export import export_bundle

    # ONNX's exporter alone takes ~45 s on a 2-core CPU even for a tiny model: the tiny run leaves it to the export
    # tests (tests/scripts/test_export_bundle.py, tests/cuda/test_export.py)
    onnx = not s.tiny and importlib.util.find_spec("onnxruntime") is not None
    report = export_bundle(trained, onnx=onnx, progress=False)
    figures = {f"export_{kind}_max_abs_prob_diff_cpu": diff for kind, diff in report["max_abs_prob_diff"].items()}
    figures |= {f"export_{key}_on_device": value for key, value in _device_agreement(trained, s.device).items()}
    report["figures"] = figures
    return report


def _deploy(data_dir: Path, work: Path, trained: Path, s: CheckSettings, figures: dict) -> None:
    from fpt_monai.deploy.app import run as deploy

    n_dicom = _demo_dicom_study(data_dir, work / "dicom_study")
    start = time.perf_counter()
    output = deploy(work / "dicom_study", work / "deploy_out", trained / "models" / "model.ts", device=s.device)
    figures["deploy_s"] = time.perf_counter() - start
    figures["deploy_dicom_files"] = n_dicom
    figures["deploy_classified"] = sum(1 for f in output["files"] if f["status"] == "classified")
    figures["deploy_studies"] = len(output["studies"])


def resolution(s: CheckSettings) -> dict:
    """The resolution sweep (:mod:`fpt_monai.benchmarks.resolution`): per input size, tokens, k, preload against a
    bare forward, store bytes per item, FPT+ and full fine-tuning peak memory and step time."""
    out = Path(s.work_dir) / "resolution"
    steps, warmup = ("1", "0") if s.tiny else ("2", "1")
    argv = [
        *("--backbone", s.backbone, "--img-sizes", ",".join(map(str, s.resolution_sizes))),
        *("--batch-size", str(s.resolution_batch_size), "--device", s.device, "--steps", steps, "--warmup", warmup),
        *("--timeout", str(int(s.budgets["resolution"])), "--out-dir", str(out)),
    ]
    if s.pretrained:
        argv += ["--pretrained", s.pretrained]
    if s.tiny:  # full fine-tuning once (the smallest size) is enough to exercise its path
        argv += ["--skip-full-finetune-above", str(min(s.resolution_sizes))]
    _run_module("fpt_monai.benchmarks.resolution", argv, s.budgets["resolution"])
    result = json.loads((out / "resolution.json").read_text())
    figures: dict = {"full_finetune_stops_fitting_at": result.get("full_finetune_stops_fitting_at")}
    for row in result["rows"]:
        size = row["img_size"]
        for key in (
            "tokens",
            "k",
            "preload_vs_bare",
            "preload_peak_mb",
            "store_bytes_per_item",
            "fpt_plus_step_s",
            "fpt_plus_train_img_s",
            "fpt_plus_peak_mb",
            "full_finetune_peak_mb",
            "full_finetune_status",
            "fpt_plus_memory_pct_of_full",
        ):
            if key in row:
                figures[f"{key}_{size}"] = row[key]
    return {"figures": figures, "details": result}


def run_section(name: str, settings: CheckSettings) -> dict:
    """Run the section ``name`` in this process."""
    functions = {
        "paper_benchmark": paper_benchmark,
        "preload_precision": preload_precision,
        "bundle": bundle,
        "resolution": resolution,
    }
    return functions[name](settings)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one section of python -m fpt_monai.check (run by the check itself)")
    p.add_argument("section", choices=SECTIONS)
    p.add_argument("--settings", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = run_section(args.section, CheckSettings.load(args.settings))
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
