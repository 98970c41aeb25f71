"""Benchmark of the frozen extractor's token importance at high resolution (issue 21, part 4).

For each input size, in one run and interleaved (so that a shared machine slows every measure alike), times a bare
``timm`` ``forward_features`` of the backbone and ``FrozenViTExtractor`` with each importance path (``tiled``: the
CPU default, per head the fused kernel's output and log-sum-exp and the column sums in cache-sized blocks;
``batched``: the whole batch's attention map in query chunks, the path before), reports extractor / bare speed
(target: >= 0.8x; wall clock, and in brackets process CPU time, steadier on a shared machine) and the fraction of
(sample, layer, head) token sets on which the paths agree (they differ only where two tokens' importance ties within
fp32 rounding).

Usage::

    W=../shared/data/vit_small_patch14_dinov2_imgfocus/vit_small_patch14_dinov2_imgfocus.fp16.safetensors
    python -m fpt_monai.benchmarks.importance --backbone vit_small_patch14_dinov2 --pretrained $W \\
        --image ../shared/data/isic_uda1/images/ISIC_0000000.jpg --img-sizes 518,1036 --layers 6-11

Writes a Markdown table to stdout and ``outputs/bench_importance.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import torch

from fpt_monai.benchmarks.measure import pil_view
from fpt_monai.networks import FrozenViTExtractor, create_vit_backbone
from fpt_monai.networks.frozen_vit import IMPORTANCE_PATHS


def _image(path: str | None, size: int, batch: int) -> torch.Tensor:
    """``batch`` copies of the image at ``path`` resized to ``size`` and normalised, or seeded noise without one."""
    if not path:
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = pil_view(path, size)
    return x.unsqueeze(0).expand(batch, -1, -1, -1).contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``. On a shared machine the CPU time (all threads of this
    process) is the steadier measure: it leaves out the time other processes hold the cores."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_size(args: argparse.Namespace, size: int, paths: list[str], device: torch.device) -> dict:
    """Times (best of ``--reps`` interleaved runs after ``--warmup`` untimed ones) and token agreement at one input
    size."""
    pretrained = args.pretrained or False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn
        bare = create_vit_backbone(args.backbone, pretrained=pretrained, img_size=size).to(device).eval()
        ext = FrozenViTExtractor(
            args.backbone, pretrained=pretrained, img_size=size, layers=args.layers, token_ratio=args.token_ratio
        ).to(device)
    x = _image(args.image, size, args.batch_size).to(device)
    indices: dict[str, torch.Tensor] = {}

    def run_path(path: str) -> None:
        ext.importance_path = path
        indices[path] = ext.select(x)[2]  # the selected tokens of each path

    runs = {"bare": lambda: bare.forward_features(x), **{p: (lambda p=p: run_path(p)) for p in paths}}
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu_times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        for _ in range(args.reps):
            for name, fn in runs.items():
                wall, cpu = _seconds(fn, device)
                times[name].append(wall)
                cpu_times[name].append(cpu)
    best = {name: min(t) for name, t in times.items()}
    best_cpu = {name: min(t) for name, t in cpu_times.items()}
    ref = indices[paths[-1]]
    return {
        "img_size": size,
        "tokens": ext.num_tokens,
        "k": ext.num_selected,
        "bare_s": best["bare"],
        "extractor_s": {p: best[p] for p in paths},
        "extractor_vs_bare": {p: best["bare"] / best[p] for p in paths},
        "times_s": times,
        "cpu_s": cpu_times,
        "extractor_vs_bare_cpu_time": {p: best_cpu["bare"] / best_cpu[p] for p in paths},
        # a token set counts as the same when it holds the same tokens (the order may differ at ties)
        f"same_token_sets_vs_{paths[-1]}": {
            p: float((indices[p].sort(-1).values == ref.sort(-1).values).all(-1).float().mean()) for p in paths
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--pretrained", default="", help="weight file; random weights without one")
    p.add_argument("--image", default="", help="an image to extract from; seeded noise without one")
    p.add_argument("--img-sizes", default="518,1036", help="comma-separated input sizes")
    p.add_argument("--layers", default="6-11")
    p.add_argument("--token-ratio", type=float, default=0.2)
    p.add_argument("--paths", default="tiled,batched", help=f"importance paths to time, of {IMPORTANCE_PATHS[1:]}")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each before timing (0 at 2044 px)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="outputs/bench_importance.json")
    args = p.parse_args()
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    bad = [s for s in paths if s not in IMPORTANCE_PATHS[1:]]
    if bad or not paths:
        p.error(f"--paths takes a comma-separated subset of {IMPORTANCE_PATHS[1:]}, got {args.paths!r}")
    if args.reps < 1 or args.batch_size < 1 or args.warmup < 0:
        p.error("--reps and --batch-size must be >= 1, --warmup >= 0")
    sizes = [int(s) for s in args.img_sizes.split(",") if s.strip()]
    device = torch.device(args.device)
    results = {
        "backbone": args.backbone,
        "pretrained": bool(args.pretrained),
        "image": args.image or None,
        "layers": args.layers,
        "batch_size": args.batch_size,
        "reps": args.reps,
        "warmup": args.warmup,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "sizes": [bench_size(args, size, paths, device) for size in sizes],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(
        f"\n{args.backbone} (layers {args.layers}), batch {args.batch_size}, {device} "
        f"({results['cpu']}, {results['threads']} threads), torch {torch.__version__}, best of {args.reps} "
        f"after {args.warmup} warm-up run(s)\n"
    )
    head = " | ".join(f"extractor ({p}) | {p} / bare speed (CPU time)" for p in paths)
    print(f"| input | tokens | bare forward | {head} | same token sets ({paths[-1]} = 1) |")
    print("|---|---|---|" + "---|---|" * len(paths) + "---|")
    for row in results["sizes"]:
        cells = " | ".join(
            f"{row['extractor_s'][p]:.2f} s | {row['extractor_vs_bare'][p]:.2f}x "
            f"({row['extractor_vs_bare_cpu_time'][p]:.2f}x)"
            for p in paths
        )
        same = ", ".join(f"{p} {v:.3f}" for p, v in row[f"same_token_sets_vs_{paths[-1]}"].items())
        print(f"| {row['img_size']} px | {row['tokens']:,} | {row['bare_s']:.2f} s | {cells} | {same} |")


def run() -> None:
    """Command-line entry point."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()


if __name__ == "__main__":
    run()
