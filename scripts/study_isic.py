"""Accuracy study on the real ISIC dermoscopy images in ../shared (melanoma vs benign nevus, fixed split).

For each method (FPT, FPT+, linear probe, full fine-tuning, optionally LoRA) on the pre-trained ViT-S/14 DINOv2
weights at the same LPM resolution (518 px): train once per learning rate of a small grid, choose the learning rate
by the best validation AUC only, then train a few seeds with it and report test AUC/accuracy (best-validation
weights) as mean and standard deviation. Everything runs through the MONAI bundle (train.yaml + method preset), so
the study exercises the product itself; FPT/FPT+ share one feature store per variant.

    python scripts/study_isic.py --device cuda --epochs 20 --seeds 0,1,2

Writes ``<out-dir>/study.{md,json}`` and one bundle folder per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_LRS = {
    "fpt_plus": "1e-3,3e-4",
    "fpt": "1e-3,3e-4",
    "linear_probe": "1e-2,1e-3",
    "full_finetune": "1e-5,3e-6",
    "lora": "1e-3,3e-4",
}
SIDE = {"fpt_plus": 126, "fpt": 224}  # multiples of the 14-px patch


def _run(configs: list[str], bundle_root: Path, overrides: dict) -> None:
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=configs,
        meta_file=str(REPO / "bundle/configs/metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=str(bundle_root),
        **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()


def train_and_test(method: str, lr: float, seed: int, args, out: Path) -> dict:
    bundle_root = out / "runs" / f"{method}_lr{lr:g}_seed{seed}"
    preset = REPO / "configs" / "methods" / f"{method}.yaml"
    configs = [str(REPO / "bundle/configs/train.yaml"), str(preset)]
    overrides = {
        "dataset_dir": str(out),
        "num_classes": 2,
        "backbone": args.backbone,
        "pretrained": args.weights,
        "img_size": args.img_size,
        "normalization": "backbone",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": lr,
        "seed": seed,
        "num_workers": args.num_workers,
        "device": f"$torch.device('{args.device}')",
        "store_dir": str(out / "tokens" / method),
    }
    if method in SIDE:
        overrides["side_img_size"] = args.side_img_size or SIDE[method]
    if not (bundle_root / "eval" / "metrics.json").is_file():
        _run(configs, bundle_root, overrides)
        _run(configs + [str(REPO / "bundle/configs/evaluate.yaml")], bundle_root, overrides)
    import torch

    last = torch.load(bundle_root / "models" / "last.pt", weights_only=True)
    test = json.loads((bundle_root / "eval" / "metrics.json").read_text())["best"]
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "val_auc": last["best_metric"],
        "test_auc": test["auc"],
        "test_acc": test["acc"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "isic_uda1"), help="folder with labels.csv and images/")
    p.add_argument("--datalist", default=None, help="use this datalist JSON instead of the ISIC CSV")
    p.add_argument(
        "--weights",
        default=str(
            SHARED / "vit_small_patch14_dinov2_imgfocus" / "vit_small_patch14_dinov2_imgfocus.fp16.safetensors"
        ),
    )
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--img-size", type=int, default=518)
    p.add_argument("--side-img-size", type=int, default=0, help="0: 126 (FPT+) / 224 (FPT)")
    p.add_argument("--methods", default="fpt_plus,fpt,linear_probe,full_finetune")
    p.add_argument("--lrs", default=None, help="method=lr1,lr2;... (default: a small grid per method)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out-dir", default="outputs/study_isic")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from tqdm.auto import tqdm

    from fpt_monai.data import datalist_from_csv, datalist_from_json, write_datalist

    out = Path(args.out_dir).resolve()
    if args.datalist:
        dl = datalist_from_json(args.datalist)
    else:
        csv_path = Path(args.data) / "labels.csv"
        if not csv_path.is_file():
            raise SystemExit(f"{csv_path} not found: the ISIC data lives in ../shared/data/isic_uda1")
        dl = datalist_from_csv(
            csv_path,
            path_column="isic_id",
            label_column="label",
            path_format="images/{}.jpg",
            class_names=["benign", "malignant"],
        )
    write_datalist(dl, out / "datalist.json")
    grids = {m: [float(v) for v in DEFAULT_LRS.get(m, "1e-3").split(",")] for m in args.methods.split(",")}
    for spec in filter(None, (args.lrs or "").split(";")):
        method, values = spec.split("=")
        grids[method] = [float(v) for v in values.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    total = sum(len(g) + len(seeds) - 1 for g in grids.values())
    with tqdm(total=total, desc="study", unit="run") as bar:
        for method, lrs in grids.items():
            tuning = []
            for lr in lrs:  # learning rate chosen on the validation split only (first seed)
                tuning.append(train_and_test(method, lr, seeds[0], args, out))
                bar.update(1)
            best = max(tuning, key=lambda r: r["val_auc"])
            runs.extend(tuning)
            for seed in seeds[1:]:
                runs.append(train_and_test(method, best["lr"], seed, args, out))
                bar.update(1)
    rows = []
    for method in grids:
        tuned = [r for r in runs if r["method"] == method and r["seed"] == seeds[0]]
        lr = max(tuned, key=lambda r: r["val_auc"])["lr"]
        chosen = [r for r in runs if r["method"] == method and r["lr"] == lr]
        aucs, accs = [r["test_auc"] for r in chosen], [r["test_acc"] for r in chosen]
        sd = statistics.stdev if len(chosen) > 1 else (lambda v: 0.0)
        rows.append(
            {
                "method": method,
                "lr": lr,
                "seeds": len(chosen),
                "test_auc_mean": statistics.mean(aucs),
                "test_auc_sd": sd(aucs),
                "test_acc_mean": statistics.mean(accs),
                "test_acc_sd": sd(accs),
            }
        )
    lines = [
        f"{args.backbone} @ {args.img_size} px, {args.epochs} epochs, batch {args.batch_size}, seeds {seeds}",
        "",
        "| method | lr (chosen on val) | seeds | test AUC | test accuracy |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['seeds']} | {r['test_auc_mean']:.3f} ± "
            f"{r['test_auc_sd']:.3f} | {r['test_acc_mean']:.3f} ± {r['test_acc_sd']:.3f} |"
        )
    (out / "study.md").write_text("\n".join(lines) + "\n")
    (out / "study.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
