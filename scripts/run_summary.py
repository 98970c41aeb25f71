"""Print what a trained bundle holds: its test metrics, its latest predictions, where the files are, and how to open
the MLflow UI on its store (`make demo` ends with it; the README's worked example too).

    python scripts/run_summary.py runs/my_fpt
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


class SummaryError(ValueError):
    """The folder is not a trained bundle, or it was not evaluated yet."""


def summary(bundle_root: str | Path) -> str:
    """The summary text of the bundle at ``bundle_root``.

    Raises:
        SummaryError: no ``models/model_config.json`` (not a trained bundle) or no ``eval/metrics.json``.
    """
    root = Path(bundle_root).resolve()
    record_file = root / "models" / "model_config.json"
    if not record_file.is_file():
        raise SummaryError(f"{record_file}: no such file; {root} is not a trained bundle (train it first).")
    from fpt_monai.engines.model_record import ModelConfigError, read_model_config

    try:  # the record is data: checked against its schema before a value of it is printed
        record = read_model_config(record_file, bundle_root=root)
    except ModelConfigError as err:
        raise SummaryError(str(err)) from err
    metrics_file = root / "eval" / "metrics.json"
    if not metrics_file.is_file():
        raise SummaryError(
            f"{metrics_file}: no such file; evaluate first (python -m monai.bundle run --config_file "
            f"\"['bundle/configs/train.yaml','bundle/configs/evaluate.yaml']\" --bundle_root {bundle_root})."
        )
    metrics = json.loads(metrics_file.read_text())
    model = f"{record.get('network_name', 'fpt')} {record.get('variant', '')} on {record['backbone']}"
    lines = [f"\n=== {root.name}: {model} at {record['img_size']} px, classes {', '.join(record['class_names'])} ==="]
    n = next(iter(metrics.values())).get("n", "?")
    keys = ("auc", "acc", "f1", "kappa")
    lines.append(f"test split ({n} images)  " + "  ".join(f"{k:>7s}" for k in keys))
    for name, values in metrics.items():
        lines.append(f"{name + ' weights':23s} " + "  ".join(f"{values[k]:7.3f}" for k in keys))
    predictions = root / "eval" / "predictions.csv"
    if predictions.is_file():
        rows = list(csv.DictReader(open(predictions, newline="")))
        lines.append(f"\nlatest inference, {len(rows)} image(s): {predictions}")
        lines += [f"  {row['id']}: {row['prediction']}" for row in rows[:5]]
    lines.append(f"checkpoints:  {root / 'models'} (model.pt = best validation AUC, model_final.pt, last.pt)")
    if (root / "models" / "model_card.md").is_file():
        lines.append(f"model card:   {root / 'models' / 'model_card.md'} (data, settings, identity, test metrics)")
    lines.append(f"plots:        {root / 'eval'} (roc_best.png, confusion_best.png)")
    run_record = root / "models" / "mlflow_run.json"
    if run_record.is_file():
        run = json.loads(run_record.read_text())
        uri = run.get("tracking_uri", "")
        lines.append(f"MLflow:       run {run.get('run_id')} in experiment {run.get('experiment_name')!r} at {uri}")
        lines.append(
            f"open the MLflow UI with:\n  mlflow ui --backend-store-uri {uri} --port 5000\n"
            "  then browse http://127.0.0.1:5000"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle_root", nargs="?", default="outputs/demo_bundle", help="the trained bundle's folder")
    args = p.parse_args(argv)
    try:
        print(summary(args.bundle_root))
    except SummaryError as err:
        print(f"fpt_monai: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from fpt_monai.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    sys.exit(main())
