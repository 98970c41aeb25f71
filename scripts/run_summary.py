"""Print what `make demo` produced: test metrics, where the files are, and how to open the MLflow UI."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def main(bundle_root: str) -> None:
    root = Path(bundle_root).resolve()
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    print("\n=== fpt_monai demo: FPT+ on the offline demo set ===")
    print("test split        " + "  ".join(f"{k:>9s}" for k in ("auc", "acc", "f1", "kappa")))
    for name, values in metrics.items():
        print(f"{name + ' weights':17s} " + "  ".join(f"{values[k]:9.3f}" for k in ("auc", "acc", "f1", "kappa")))
    rows = list(csv.DictReader(open(root / "eval" / "predictions.csv")))
    print(f"\ninference on {len(rows)} test images (PNG, JPEG, DICOM, NIfTI): {root / 'eval' / 'predictions.csv'}")
    for row in rows[:3]:
        print(f"  {row['id']}: {row['prediction']}")
    print(f"checkpoints:      {root / 'models'} (model.pt = best validation AUC, model_final.pt, last.pt)")
    print(f"feature store:    {next((root / 'tokens').iterdir())}")
    print(f"plots:            {root / 'eval'} (roc_best.png, confusion_best.png)")
    db = root / "eval" / "mlruns.db"
    print(f"MLflow store:     {db}")
    print(
        f"open the MLflow UI with:\n  .venv/bin/mlflow ui --backend-store-uri sqlite:///{db} --port 5000\n"
        "  then browse http://127.0.0.1:5000 (experiment 'fpt_demo')"
    )


if __name__ == "__main__":
    from fpt_monai.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo_bundle")
