"""Time a store-based linear-probe training through the bundle (the preload is done first and not timed).

    python scripts/time_linear_probe.py --datalist outputs/study_isic224/all_datalist.json \\
        --store-root outputs/study_isic224/tokens --img-size 224 --epochs 20

Prints one JSON line: the seconds of ``trainer.run()`` (training and per-epoch validation and checkpoints), of the
whole workflow (parsing and set-up included) and the validation AUC; the frozen model is never built.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO.parent / "shared" / "data" / "vit_small_patch14_dinov2_imgfocus"
WEIGHTS = WEIGHTS_DIR / "vit_small_patch14_dinov2_imgfocus.fp16.safetensors"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datalist", required=True, help="datalist JSON; its training and validation splits are used")
    p.add_argument("--store-root", required=True, help="where the feature stores are (preloaded when missing)")
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from monai.bundle import ConfigWorkflow

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        wf = ConfigWorkflow(
            config_file=[str(REPO / "bundle/configs/train.yaml"), str(REPO / "configs/methods/linear_probe.yaml")],
            meta_file=str(REPO / "bundle/configs/metadata.json"),
            logging_file=False,
            workflow_type="train",
            bundle_root=tmp,
            dataset_dir=str(Path(args.datalist).parent),
            datalist=f"$fpt_monai.data.datalist_from_json('{Path(args.datalist).resolve()}')",
            check_images=False,
            backbone=args.backbone,
            pretrained=args.weights,
            img_size=args.img_size,
            normalization="backbone",
            epochs=args.epochs,
            learning_rate=1e-3,
            store_root=str(Path(args.store_root).resolve()),
            device="$torch.device('cpu')",
        )
        wf.initialize()
        wf.parser.get_parsed_content("feature_store")  # the preload (or the check that the store is complete)
        trainer = wf.parser.get_parsed_content("train#trainer")
        run_start = time.perf_counter()
        wf.run()
        run_seconds = time.perf_counter() - run_start
        auc = wf.parser.get_parsed_content("validate#evaluator").state.metrics["val_auc"]
        wf.finalize()
        print(
            json.dumps(
                {
                    "epochs": trainer.state.epoch,
                    "train_run_seconds": round(run_seconds, 2),
                    "workflow_seconds": round(time.perf_counter() - start, 2),
                    "final_val_auc": round(float(auc), 4),
                }
            )
        )


if __name__ == "__main__":
    main()
