"""FPT's claims side by side: trainable parameters, peak training memory and speed of FPT, FPT+ and the baselines.

Every method is measured in its own process (clean memory accounting) with the same backbone, resolution, batch
size and device:

- trainable / total parameters and their ratio;
- peak training memory: CUDA max allocated (weights included), or on CPU the peak RSS above the process's
  baseline after imports; FPT and FPT+ are measured as the paper means it, training from stored tokens (the
  frozen model is not loaded; the batch holds the side view and fp16 keys/values, as read from the store);
- seconds per training step and training images/s after warm-up (forward, backward, AdamW step);
- inference images/s of the one-tensor forward (for FPT: frozen model included);
- feature-store bytes per image for FPT/FPT+ (fp16).

Usage::

    python -m fpt_monai.benchmarks.training_cost --backbone vit_base_patch16_384 --img-size 512 \\
        --batch-size 16 --device cuda
    python -m fpt_monai.benchmarks.training_cost ... --attention eager  # timm unfused: the papers' denominator

Writes ``<out-dir>/benchmark.{md,csv,json,png}`` and prints the Markdown table. With ``--img-sizes 512,1024,2048``
instead of ``--img-size`` it runs the resolution sweep (:mod:`fpt_monai.benchmarks.resolution`) with the same
arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

METHODS = (
    "fpt_plus",
    "fpt",
    "full_finetune",
    "full_finetune_checkpointing",
    "linear_probe_online",
    "lora",
    "vpt",
    "adaptformer",
)


def _build(method: str, args, frozen_model: bool):
    from fpt_monai import networks as N

    common = {
        "num_classes": args.num_classes,
        "backbone": args.backbone,
        "pretrained": False,
        "img_size": args.img_size,
    }
    if method in ("fpt", "fpt_plus"):
        return N.FPT(variant=method, frozen_model=frozen_model, side_img_size=args.side_img_size or None, **common)
    if method == "full_finetune":
        return N.ViTClassifier(**common)
    if method == "full_finetune_checkpointing":
        return N.ViTClassifier(grad_checkpointing=True, **common)
    if method == "linear_probe_online":
        return N.ViTClassifier(train_backbone=False, **common)
    if method == "lora":
        return N.LoRAViT(**common)
    if method == "vpt":
        return N.VPTDeepViT(**common)
    if method == "adaptformer":
        return N.AdaptFormerViT(**common)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def worker(method: str, args) -> dict:
    """Measure one method in this process."""
    warnings.filterwarnings("ignore")
    import torch

    from fpt_monai.networks import FPT, count_parameters

    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = cuda and method == "full_finetune_checkpointing"  # the realistic modern setting: checkpointing + AMP
    B = args.batch_size
    from fpt_monai.benchmarks.measure import peak_rss_mb

    base_rss = peak_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    fpt = method in ("fpt", "fpt_plus")
    net = _build(method, args, frozen_model=False).to(device).train()
    count = count_parameters(net)
    if fpt:
        # the paper's denominator: trainable + the frozen model as it would be loaded (counted on the meta device,
        # so that building it does not touch the memory being measured)
        with torch.device("meta"):
            count = count_parameters(_build(method, args, frozen_model=True))
    labels = torch.randint(0, args.num_classes, (B,), device=device)
    if fpt:
        side = torch.randn(B, 3, net.side_img_size, net.side_img_size, device=device)
        # made in fp16 directly: an fp32 temporary would count in the peak memory (a store batch is read as fp16)
        keys = torch.randn(B, *net.token_shape, device=device, dtype=torch.float16)
        values = torch.randn_like(keys)
        inputs = (side,)
        kwargs = {"image_side": side, "keys": keys, "values": values}
    else:
        inputs, kwargs = (torch.randn(B, 3, args.img_size, args.img_size, device=device),), {}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    model = torch.compile(net) if args.compile else net

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(*inputs, **kwargs), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0)
        scaler.step(opt)
        scaler.update()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    step_s = (time.perf_counter() - start) / args.steps
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb() - base_rss

    if args.no_inference:
        return _row(method, count, peak_mb, step_s, None, net, fpt, B)
    # inference: the one-tensor forward at the LPM resolution (FPT with its frozen model)
    infer_net = (
        FPT(
            variant=method,
            num_classes=args.num_classes,
            backbone=args.backbone,
            pretrained=False,
            img_size=args.img_size,
            side_img_size=args.side_img_size or None,
        )
        if fpt
        else net
    )
    infer_net = infer_net.to(device).eval()
    x = torch.randn(B, 3, args.img_size, args.img_size, device=device)
    with torch.inference_mode():
        infer_net(x)
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            infer_net(x)
        if cuda:
            torch.cuda.synchronize(device)
    infer_img_s = B * args.steps / (time.perf_counter() - start)
    return _row(method, count, peak_mb, step_s, infer_img_s, net, fpt, B)


def _row(method: str, count, peak_mb: float, step_s: float, infer_img_s, net, fpt: bool, batch: int) -> dict:
    import math

    from timm.layers import use_fused_attn

    return {
        "method": method,
        "trainable": count.trainable,
        "total": count.total,
        "trainable_pct": count.ratio,
        "peak_train_memory_mb": peak_mb,
        "step_s": step_s,
        "train_img_s": batch / step_s,
        "infer_img_s": infer_img_s,
        "store_bytes_per_image": 2 * math.prod(net.token_shape) * 2 if fpt else None,
        "timm_fused_attention": bool(use_fused_attn()),  # what --attention set, as timm in the worker saw it
    }


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, title in zip(
        axes,
        ("trainable_pct", "memory_pct", "train_img_s"),
        ("trainable parameters (% of total)", "peak training memory (% of full FT)", "training throughput (images/s)"),
        strict=True,
    ):
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        bars = ax.barh(names, values, color=["tab:orange" if n.startswith("fpt") else "tab:blue" for n in names])
        ax.set_xscale("log")
        ax.set_title(title)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    if any(a == "--img-sizes" or a.startswith("--img-sizes=") for a in sys.argv[1:]):
        # several sizes: the resolution sweep (python -m fpt_monai.benchmarks.resolution), with the same arguments
        from fpt_monai.benchmarks import resolution

        resolution.main(sys.argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--backbone", default="vit_base_patch16_384")
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--side-img-size", type=int, default=0, help="0: each FPT variant's default")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-classes", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--out-dir", default="outputs/benchmark")
    p.add_argument(
        "--attention",
        choices=("sdpa", "eager"),
        default="sdpa",
        help="timm attention of the baselines: fused SDPA, or eager (TIMM_FUSED_ATTN=0, the papers' protocol)",
    )
    p.add_argument("--no-inference", action="store_true", help="measure training only")
    p.add_argument(
        "--compile", action="store_true", help="train through torch.compile(network) (warm-up steps compile it)"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return

    from tqdm.auto import tqdm

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {METHODS}")
    rows = []
    argv = [a for a in sys.argv[1:]]
    for method in tqdm(methods, desc="benchmark", unit="method"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fpt_monai.benchmarks.training_cost",
                *argv,
                "--device",
                args.device,
                "--worker",
                method,
            ],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "PYTHONWARNINGS": "ignore",
                "TIMM_FUSED_ATTN": "0" if args.attention == "eager" else "1",
            },
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT ") :]))
    full = next((r for r in rows if r["method"] == "full_finetune"), None)
    for r in rows:
        r["memory_pct"] = 100.0 * r["peak_train_memory_mb"] / full["peak_train_memory_mb"] if full else None
        r["speedup_vs_full"] = r["train_img_s"] / full["train_img_s"] if full else None

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    header = (
        f"{args.backbone} @ {args.img_size} px, batch {args.batch_size}, {args.num_classes} classes, "
        f"{args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}, "
        f"{torch.get_num_threads()} threads), fp32 unless noted, {args.attention} attention, torch {torch.__version__}"
    )
    lines = [
        header,
        "",
        "| method | trainable | % params | peak train memory (MB) | % of full FT | s/step | train img/s | "
        "x full FT | infer img/s | store B/img |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {r['trainable_pct']:.2f} | {r['peak_train_memory_mb']:.0f} | "
            + (f"{r['memory_pct']:.2f}" if r["memory_pct"] is not None else "-")
            + f" | {r['step_s']:.3f} | {r['train_img_s']:.2f} | "
            + (f"{r['speedup_vs_full']:.1f}" if r["speedup_vs_full"] is not None else "-")
            + (f" | {r['infer_img_s']:.2f} | " if r["infer_img_s"] is not None else " | - | ")
            + (f"{r['store_bytes_per_image']:,}" if r["store_bytes_per_image"] else "-")
            + " |"
        )
    table = "\n".join(lines)
    (out / "benchmark.md").write_text(table + "\n")
    (out / "benchmark.json").write_text(json.dumps({"setting": header, "rows": rows}, indent=1))
    with open(out / "benchmark.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if full:
        _plot(rows, out / "benchmark.png")
    print(table)


def run() -> None:
    """Command-line entry point."""
    main()


if __name__ == "__main__":
    run()
