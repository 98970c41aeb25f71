"""What a reduced-precision preload changes: speed of the frozen model and the tokens it selects (issue: fast preload
in bf16).

For one backbone, image size and set of images, in every precision the device supports (CPU: fp32, bf16; CUDA: fp32,
bf16, fp16), measures in the same run:

1. extraction throughput of ``FrozenViTExtractor`` (token importance always from fp32 scores) and of a bare timm
   ``forward_features`` at the same precision, and each precision's speed-up over fp32;
2. against the fp32 extraction: the fraction of identical selected-token sets (per image, layer and head, as sets),
   the mean overlap of the sets, and the relative error of the keys where the set is identical.

Usage (ISIC images and the offline DINOv2 ViT-S/14 of ../shared, the study's 518 px)::

    W=../shared/data/vit_small_patch14_dinov2_imgfocus
    python -m fpt_monai.benchmarks.precision --backbone vit_small_patch14_dinov2 --img-size 518 \\
        --pretrained $W/vit_small_patch14_dinov2_imgfocus.fp16.safetensors \\
        --images ../shared/data/isic_uda1/images --num-images 32

Without ``--images`` it uses generated demo images. Writes ``<out>`` (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fpt_monai.benchmarks.measure import pil_view
from fpt_monai.data import make_demo_dataset
from fpt_monai.networks import FrozenViTExtractor, create_vit_backbone
from fpt_monai.transforms.formats import IMAGE_SUFFIXES

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _images(args, scratch: Path) -> list[Path]:
    if args.images:
        files = sorted(p for p in Path(args.images).rglob("*") if p.name.lower().endswith(IMAGE_SUFFIXES))
    else:
        root = scratch
        # PNG only: generated images are read with PIL, so the benchmark needs no MONAI (16 s of imports here)
        make_demo_dataset(root, per_class=(args.num_images + 1) // 2, size=args.img_size, formats=("png",))
        files = sorted(p for p in (root / "images").rglob("*") if p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise SystemExit(f"no images under {args.images}")
    return files[: args.num_images]


def _load(path: Path, size: int, mean, std, generated: bool) -> torch.Tensor:
    """The frozen model's view of one image: the bundle's own reader and transforms for a user's images (any format);
    PIL for the generated PNGs (the same resize-and-normalise, without importing MONAI)."""
    if not generated:
        from fpt_monai.transforms import fpt_transforms

        return fpt_transforms("inference", False, size, mean=mean, std=std)({"image": str(path)})["image"].as_tensor()
    return pil_view(str(path), size, mean, std, resample="BILINEAR")


def _timed(fn, batches, device: torch.device, dtype) -> tuple[float, list]:
    outputs = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        fn(batches[0])  # warm-up (kernels, caches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in batches:
            outputs.append(fn(x))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start, outputs


def main(argv: list[str] | None = None) -> dict:
    """Measure every precision; returns ``{"setting": ..., "results": {precision: figures}}`` (also written to
    ``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_base_patch16_384")
    p.add_argument("--pretrained", default="false", help="'false' (random) or a weight file")
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--layers", default="second_half", help="the extracted layers (FPT+: second_half)")
    p.add_argument("--token-ratio", type=float, default=0.2)
    p.add_argument("--images", default=None, help="a folder of images (default: generated demo images)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precisions", default=None, help="default: fp32,bf16 on CPU; fp32,bf16,fp16 on CUDA")
    p.add_argument("--out", default="outputs/bench_precision.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    precisions = (args.precisions or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32,bf16")).split(",")
    pretrained = False if args.pretrained.lower() == "false" else args.pretrained

    ext = FrozenViTExtractor(
        args.backbone, pretrained=pretrained, img_size=args.img_size, layers=args.layers, token_ratio=args.token_ratio
    )
    ext = ext.to(device).eval()
    bare = create_vit_backbone(args.backbone, pretrained=False, img_size=args.img_size)
    bare.load_state_dict(ext.vit.state_dict(), strict=False)
    bare = bare.to(device).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as scratch:  # generated images: removed once read
        files = _images(args, Path(scratch))
        images = torch.stack([_load(f, args.img_size, mean, std, generated=not args.images) for f in files])
    batches = [images[i : i + args.batch_size].to(device) for i in range(0, len(images), args.batch_size)]

    results, reference = {}, None
    for name in tqdm(precisions, desc="precision", unit="dtype"):
        dtype = DTYPES[name]
        ext_s, outs = _timed(ext.select, batches, device, dtype)
        bare_s, _ = _timed(bare.forward_features, batches, device, dtype)
        keys = torch.cat([o[0].float().cpu() for o in outs])
        idx = torch.cat([o[2].cpu() for o in outs])
        row = {"extract_img_s": len(images) / ext_s, "bare_img_s": len(images) / bare_s}
        row["extract_vs_bare"] = row["extract_img_s"] / row["bare_img_s"]
        if reference is None:
            reference = (keys, idx, row)
        else:
            ref_keys, ref_idx, ref_row = reference
            a, b = idx.sort(-1).values, ref_idx.sort(-1).values
            same = (a == b).all(-1)  # [N, L, H]: the same set of tokens
            flat_a, flat_b = a.flatten(0, 2), b.flatten(0, 2)
            overlap = torch.stack([torch.isin(flat_a[i], flat_b[i]).float().mean() for i in range(len(flat_a))])
            # keys of the tokens both selected, matched by token index (the sets may differ at the boundary)
            order, ref_order = idx.argsort(-1), ref_idx.argsort(-1)
            ks = keys.gather(-2, order.unsqueeze(-1).expand_as(keys))
            rks = ref_keys.gather(-2, ref_order.unsqueeze(-1).expand_as(ref_keys))
            err = (ks - rks).norm(dim=-1) / rks.norm(dim=-1).clamp_min(1e-12)  # per token, in index order
            key_err = [float(err[same].mean())] if bool(same.any()) else []
            row |= {
                "identical_sets": float(same.float().mean()),
                "mean_set_overlap": float(overlap.mean()),
                "key_relative_error": key_err[0] if key_err else None,
                "extract_speedup_vs_fp32": row["extract_img_s"] / ref_row["extract_img_s"],
                "bare_speedup_vs_fp32": row["bare_img_s"] / ref_row["bare_img_s"],
            }
        results[name] = row
    weights = "random weights" if pretrained is False else Path(args.pretrained).name
    setting = (
        f"{args.backbone} @ {args.img_size} px ({weights}), "
        f"{len(images)} images ({args.images or 'generated'}), batch {args.batch_size}, layers {args.layers}, "
        f"{device} ({torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'CPU'}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    lines = [
        setting,
        "",
        "| precision | extract img/s | bare timm img/s | extract / bare | x fp32 (extract) | x fp32 (bare) | "
        "identical token sets | mean set overlap | key rel. error (identical sets) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['extract_img_s']:.2f} | {r['bare_img_s']:.2f} | {r['extract_vs_bare']:.2f} | "
            f"{r.get('extract_speedup_vs_fp32', 1.0):.2f} | {r.get('bare_speedup_vs_fp32', 1.0):.2f} | "
            f"{r.get('identical_sets', 1.0):.3f} | {r.get('mean_set_overlap', 1.0):.3f} | "
            + (f"{r['key_relative_error']:.1e} |" if r.get("key_relative_error") is not None else "- |")
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"setting": setting, "device": str(device), "results": results}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    return report


def run() -> None:
    """Command-line entry point."""
    main()


if __name__ == "__main__":
    run()
