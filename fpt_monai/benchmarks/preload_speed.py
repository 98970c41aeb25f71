"""Benchmark of preloading and of the feature store (issue: data pipeline and feature store).

Measures, for one backbone / resolution / batch size / device:

1. extraction throughput of ``FrozenViTExtractor`` vs a bare ``timm`` ``forward_features`` of the same backbone at
   the same size and batch (target: >= 0.8x), and of the whole preload (decode + resize + extract + store writes);
2. bytes per stored item (target for FPT+ ViT-B/16 @ 512 px: <= 3.8 MB, half the reference's fp32 file);
3. store read throughput (with the per-item CRC32 check) vs the throughput of a training step from stored tokens
   (forward, backward and AdamW step of the trainable part; target: reads >= 5x faster);
4. the cost of also extracting the pooled features (final class token and mean patch token, for the linear probe
   and the hybrid head): extra extraction time (target: small) and extra bytes per item (target: < 1 %).

Usage::

    python -m fpt_monai.benchmarks.preload_speed --backbone vit_base_patch16_384 --img-size 512 \\
        --batch-size 4 --device cpu

Writes a Markdown table to stdout and ``outputs/bench_preload.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fpt_monai.data import FeatureStore, make_demo_dataset, preload
from fpt_monai.networks import FPT, create_vit_backbone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, n_items: int, reps: int, device: torch.device, bar) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
        bar.update(1)
    _sync(device)
    return n_items * reps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_base_patch16_384")
    p.add_argument("--variant", default="fpt_plus", choices=["fpt_plus", "fpt"])
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--side-img-size", type=int, default=0, help="0: the variant's (a multiple of the patch size)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--store-items", type=int, default=64, help="items in the read benchmark's store")
    p.add_argument("--preload-items", type=int, default=8, help="demo images for the end-to-end preload timing")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="outputs/bench_preload.json")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    B = args.batch_size

    side = args.side_img_size or None
    net = FPT(
        num_classes=2,
        variant=args.variant,
        backbone=args.backbone,
        pretrained=False,
        img_size=args.img_size,
        side_img_size=side,
    )
    lpm = net.lpm.to(device)
    pooled_lpm = FPT(
        num_classes=2,
        variant=args.variant,
        backbone=args.backbone,
        pretrained=False,
        img_size=args.img_size,
        head="side+pooled",
    ).lpm.to(device)
    pooled_lpm.load_state_dict(lpm.state_dict(), strict=False)  # the same weights, plus the tail it keeps
    bare = create_vit_backbone(args.backbone, pretrained=False, img_size=args.img_size).to(device).eval()
    x = torch.randn(B, 3, args.img_size, args.img_size, device=device)
    results: dict = {
        "backbone": args.backbone,
        "variant": args.variant,
        "img_size": args.img_size,
        "batch_size": B,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "token_shape": list(lpm.token_shape),
    }
    read_reps = max(args.reps, args.store_items // B)
    steps = 4 * args.reps + 2 + 2 * read_reps
    with tqdm(total=steps, desc="benchmark", unit="run") as bar:
        with torch.inference_mode():
            results["bare_timm_img_s"] = _rate(lambda: bare.forward_features(x), B, args.reps, device, bar)
            results["extractor_img_s"] = _rate(lambda: lpm(x), B, args.reps, device, bar)
            results["extractor_pooled_img_s"] = _rate(lambda: pooled_lpm.forward_pooled(x), B, args.reps, device, bar)
        results["extractor_vs_bare"] = results["extractor_img_s"] / results["bare_timm_img_s"]
        results["pooled_extra_time"] = results["extractor_img_s"] / results["extractor_pooled_img_s"] - 1
        results["pooled_bytes_per_item"] = pooled_lpm.pooled_dim * torch.finfo(getattr(torch, args.dtype)).bits // 8

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            # end to end: decode + resize + normalise + extract + commit shards, on the offline demo images
            demo = make_demo_dataset(tmp / "demo", per_class=max(3, args.preload_items // 2), size=args.img_size)
            items = (demo["training"] + demo["validation"] + demo["test"])[: args.preload_items]
            start = time.perf_counter()
            report = preload(
                items,
                lpm,
                tmp / "preload",
                (0.5,) * 3,
                (0.25,) * 3,
                dtype=args.dtype,
                batch_size=B,
                device=device,
                progress=False,
            )
            _sync(device)
            results["preload_end_to_end_img_s"] = len(items) / (time.perf_counter() - start)
            bar.update(2)
            files = list((tmp / "preload" / "shards").glob("*.npy"))
            results["bytes_per_item"] = report.store.bytes_per_item
            results["bytes_per_item_on_disk"] = sum(f.stat().st_size for f in files) / len(items)
            results["reference_bytes_per_item_fp32"] = 2 * int(np.prod(lpm.token_shape)) * 4

            # read throughput: a store of random tokens (content does not matter for I/O)
            store = FeatureStore.create(tmp / "read", {"bench": True}, lpm.token_shape, args.dtype)
            n = args.store_items
            for start_i in range(0, n, 32):
                ids = [str(i) for i in range(start_i, min(n, start_i + 32))]
                shape = (len(ids), *lpm.token_shape)
                store.write_shard(ids, torch.randn(shape), torch.randn(shape))
            store = FeatureStore.open(tmp / "read")
            order = torch.randperm(n).tolist()
            cursor = {"i": 0}

            def read_batch() -> None:
                for _ in range(B):
                    store.get(str(order[cursor["i"] % n]))
                    cursor["i"] += 1

            results["store_read_items_s"] = _rate(read_batch, B, read_reps, device, bar)
            store.verify_reads = False
            results["store_read_items_s_no_crc"] = _rate(read_batch, B, read_reps, device, bar)

        # a training step from stored tokens (the LPM is not used)
        net = net.to(device).train()
        opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=1e-4, weight_decay=0.1)
        keys = torch.randn(B, *lpm.token_shape, device=device).to(getattr(torch, args.dtype))
        values = torch.randn_like(keys)
        side = torch.randn(B, 3, net.side_img_size, net.side_img_size, device=device)
        labels = torch.randint(0, 2, (B,), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net.forward_features(side, keys, values), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()

        results["train_step_items_s"] = _rate(step, B, args.reps, device, bar)
    results["read_vs_train_step"] = results["store_read_items_s"] / results["train_step_items_s"]
    results["pooled_extra_bytes"] = results["pooled_bytes_per_item"] / results["bytes_per_item"]

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(
        f"\n{args.backbone} @ {args.img_size} px, {args.variant}, batch {B}, {device} "
        f"({results['gpu'] or results['cpu']}, {results['threads']} threads), torch {torch.__version__}\n"
    )
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| bare timm forward_features | {results['bare_timm_img_s']:.2f} img/s | |")
    print(f"| FrozenViTExtractor (token selection) | {results['extractor_img_s']:.2f} img/s | |")
    print(f"| extractor / bare timm | {results['extractor_vs_bare']:.2f}x | >= 0.8x |")
    print(
        f"| preload end to end (decode, resize, extract, write) | {results['preload_end_to_end_img_s']:.2f} img/s | |"
    )
    print(
        f"| bytes per item ({args.dtype}) | {results['bytes_per_item']:,} B "
        f"({results['bytes_per_item_on_disk']:,.0f} B on disk) | FPT+ ViT-B/16@512: <= 3.8 MB |"
    )
    print(f"| reference bytes per item (fp32 safetensors) | {results['reference_bytes_per_item_fp32']:,} B | |")
    print(f"| store reads (CRC32 checked) | {results['store_read_items_s']:.0f} items/s | |")
    print(f"| store reads (no CRC32) | {results['store_read_items_s_no_crc']:.0f} items/s | |")
    print(f"| training step from stored tokens | {results['train_step_items_s']:.1f} items/s | |")
    print(f"| reads / training step | {results['read_vs_train_step']:.1f}x | >= 5x |")
    print(f"| FrozenViTExtractor with pooled features | {results['extractor_pooled_img_s']:.2f} img/s | |")
    print(f"| extra extraction time for pooled features | {100 * results['pooled_extra_time']:+.1f} % | small |")
    print(
        f"| pooled features per item | {results['pooled_bytes_per_item']:,} B "
        f"({100 * results['pooled_extra_bytes']:.2f} % of the tokens) | < 1 % |"
    )


def run() -> None:
    """Command-line entry point."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore")
    main()


if __name__ == "__main__":
    run()
