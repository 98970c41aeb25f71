"""End-to-end training epochs from a real feature store, through the bundle itself: how the stored tokens reach the
network (read per item from the store, with or without DataLoader workers, or a resident copy on the device).

Each variant is one ``train.yaml`` training run in its own process (the same datalist, store and settings; only
``resident_store`` and ``num_workers`` differ). Per epoch it records the training time up to the last step (the
validation that follows is not counted) and reports images per second over the epochs after the first, the time to
build the resident copy, and the peak memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: peak RSS).

Usage (the ISIC study's store: DINOv2 ViT-S/14 at 518 px, FPT+; fold 0 of outputs/study_isic518)::

    W=../shared/data/vit_small_patch14_dinov2_imgfocus/vit_small_patch14_dinov2_imgfocus.fp16.safetensors
    python -m fpt_monai.benchmarks.epoch --datalist outputs/study_isic518/folds/fold0/datalist.json \\
        --store-dir "$(echo outputs/study_isic518/tokens/vit_small_patch14_dinov2_518_*)" \\
        --set backbone=vit_small_patch14_dinov2 --set img_size=518 --set side_img_size=126 \\
        --set normalization=backbone --set pretrained=$W --epochs 3

Writes ``<out>`` (JSON) and prints a Markdown table. The store must hold every training and validation item with the
run's settings (build it with the preload step first): the benchmark never runs the frozen model.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fpt_monai.utils.bundle_files import BUNDLE_CONFIGS  # the packaged bundle, in a clone or a wheel

REPO = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = BUNDLE_CONFIGS / "train.yaml"
META_FILE = BUNDLE_CONFIGS / "metadata.json"
DEFAULT_VARIANTS = "store:0,store:2,resident:0"


def _literal(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_variant(args: argparse.Namespace, resident: bool, workers: int, bundle_root: str | None = None) -> dict:
    """One training run in this process; returns its timings.

    Args:
        args: the parsed command line (``datalist``, ``store_dir``, ``config``, ``set``, ``epochs``, ``batch_size``,
            ``device``); ``store_dir`` None: the bundle's own store location.
        resident: keep a resident copy of the store on the device.
        workers: DataLoader workers.
        bundle_root: where the trained bundle stays (default: a temporary folder, removed afterwards).
    """
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from fpt_monai.benchmarks.measure import peak_rss_mb

    overrides = {k: _literal(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.store_dir is not None:
        overrides["store_dir"] = str(args.store_dir)
    with tempfile.TemporaryDirectory() as scratch:
        wf = ConfigWorkflow(
            config_file=[str(TRAIN_CONFIG), *args.config],
            meta_file=str(META_FILE),
            logging_file=False,
            workflow_type="train",
            bundle_root=bundle_root or scratch,
            dataset_dir=str(Path(args.datalist).parent),
            datalist_file=str(args.datalist),
            resident_store="true" if resident else "false",
            num_workers=workers,
            epochs=args.epochs,
            batch_size=args.batch_size,
            device=args.device,
            check_images=False,
            **overrides,
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        wf.initialize()
        # set-up before the first epoch: the store check and, if resident, the copy to the device
        wf.parser.get_parsed_content("train#trainer")
        setup_s = time.perf_counter() - start
        trainer = wf.parser.get_parsed_content("train#trainer")
        starts: dict[int, float] = {}
        last_step: dict[int, float] = {}

        def mark(engine, times: dict[int, float]) -> None:
            times[engine.state.epoch] = time.perf_counter()

        trainer.add_event_handler(Events.EPOCH_STARTED, mark, starts)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, mark, last_step)
        wf.run()
        n_train = len(wf.parser.get_parsed_content("train#dataloader").dataset)
        wf.finalize()
    epochs = {epoch: last_step[epoch] - starts[epoch] for epoch in sorted(starts)}
    later = [s for epoch, s in epochs.items() if epoch > 1] or list(epochs.values())
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else peak_rss_mb()
    return {
        "variant": ("resident" if resident else "store") + f":{workers}",
        "resident": resident,
        "num_workers": workers,
        "train_images": n_train,
        "setup_s": setup_s,
        "epoch_s": epochs,
        "train_img_per_s": n_train * len(later) / sum(later),
        "peak_mb": peak,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datalist", required=True, help="datalist JSON with training and validation items")
    p.add_argument("--store-dir", required=True, help="feature store holding those items with the run's settings")
    p.add_argument("--config", action="append", default=[], help="preset merged after train.yaml (repeatable)")
    p.add_argument("--set", action="append", default=[], help="bundle override key=value (repeatable)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated store|resident:<num_workers>")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="outputs/bench_epoch.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    args = p.parse_args(argv)
    if args.one:
        kind, workers = args.one.split(":")
        print("BENCH_EPOCH " + json.dumps(run_variant(args, kind == "resident", int(workers))))
        return {}
    import torch

    rows = []
    for variant in args.variants.split(","):
        kind, workers = variant.strip().split(":")
        if kind not in ("store", "resident") or not workers.isdigit():
            p.error(f"--variants: {variant!r} is not store:<n> or resident:<n>")
        # one process per variant: no page cache, allocator or thread state carried over in Python
        argv_one = list(argv if argv is not None else sys.argv[1:]) + ["--one", f"{kind}:{workers}"]
        proc = subprocess.run(
            [sys.executable, "-m", "fpt_monai.benchmarks.epoch", *argv_one], capture_output=True, text=True, cwd=REPO
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_EPOCH ")), None)
        if proc.returncode or line is None:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"fpt_monai: error: variant {variant} failed (exit {proc.returncode}), stderr above.")
        rows.append(json.loads(line[len("BENCH_EPOCH ") :]))
        print(f"{variant}: {rows[-1]['train_img_per_s']:.1f} img/s", file=sys.stderr)
    base = rows[0]["train_img_per_s"]
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {"device": device, "torch": torch.__version__, "settings": vars(args), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"device: {device}, torch {torch.__version__}, batch {args.batch_size}, epochs {args.epochs}")
    print("| tokens from | workers | set-up s | train img/s (epochs 2+) | x first | peak MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {'resident copy' if r['resident'] else 'store, per item'} | {r['num_workers']} | {r['setup_s']:.1f} | "
            f"{r['train_img_per_s']:.1f} | {r['train_img_per_s'] / base:.2f} | {r['peak_mb']:,.0f} |"
        )
    return result


def run() -> None:
    """Command-line entry point: errors end with our message."""
    from fpt_monai.utils.errors import install_excepthook

    install_excepthook()
    main()


if __name__ == "__main__":
    run()
