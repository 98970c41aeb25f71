"""What a trained bundle holds: its test metrics, its latest predictions, where the files are, and how to open the
MLflow UI on its store (:func:`summary`); with a second bundle of the same datalist, DeLong's paired test of their best
weights on the same test images (:func:`comparison`). The command line is ``fpt-monai summary`` (`make demo` ends with
it; the README's worked example too):

    fpt-monai summary runs/my_fpt
    fpt-monai summary runs/my_fpt runs/my_probe   # both, and DeLong's paired test on their test images
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["MAX_AUC_INTERVAL", "SummaryError", "comparison", "summary"]

# a wider test AUC interval is warned about: such a figure cannot tell two models apart
MAX_AUC_INTERVAL = 0.2


def _with_interval(values: dict, key: str, bare: bool = False) -> str:
    """``"auc 0.912 [0.850, 0.962]"`` (``bare``: without the name); per-class keys are ``"<figure>/<class>"``."""
    figure, _, cls = key.partition("/")
    value = values.get("per_class", {}).get(cls, {}).get(figure) if cls else values.get(key)
    text = "-" if value is None else f"{value:.3f}"
    low_high = values.get("ci", {}).get(key)
    if low_high:
        text += f" [{low_high[0]:.3f}, {low_high[1]:.3f}]"
    return text if bare else f"{key} {text}"


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
    first = next(iter(metrics.values()))
    n = first.get("n", "?")
    level = f"{100 * first.get('ci_level', 0.95):.0f} % intervals" if "ci" in first else "no intervals"
    kappa = "kappa_quadratic" if "kappa_quadratic" in first else "kappa"
    keys = ("auc", "acc", "balanced_acc", kappa)
    lines.append(f"test split ({n} images; {level}, stratified bootstrap)")
    warnings = []
    for name, values in metrics.items():
        cells = [_with_interval(values, k) for k in keys if k in values]
        lines.append(f"  {name + ' weights':14s} " + "  ".join(cells))
        per_class = values.get("per_class") or {}
        if per_class:
            lines.append(
                "  "
                + " " * 15
                + "sensitivity: "
                + ", ".join(
                    f"{c} {_with_interval(values, f'sensitivity/{c}', bare=True)} (n={v['support']})"
                    for c, v in per_class.items()
                )
            )
        if "temperature" in values:
            lines.append(
                " " * 17 + f"temperature {values['temperature']:.3f} (chosen on validation): ECE {values['ece']:.3f}, "
                f"{values['ece_uncalibrated']:.3f} without"
            )
        point = values.get("operating_point")
        if point:
            sens_ci, spec_ci = point["ci"]["sensitivity"], point["ci"]["specificity"]
            lines.append(
                " "
                * 17
                + f"at the operating point ({point['positive_class']} when p >= {point['threshold']:.3f}, chosen on "
                f"validation): sensitivity {point['sensitivity']:.3f} [{sens_ci[0]:.3f}, {sens_ci[1]:.3f}] "
                f"({point['tp']}/{point['tp'] + point['fn']}), specificity {point['specificity']:.3f} "
                f"[{spec_ci[0]:.3f}, {spec_ci[1]:.3f}] ({point['tn']}/{point['tn'] + point['fp']})"
            )
        low_high = values.get("ci", {}).get("auc")
        if low_high and low_high[1] - low_high[0] > MAX_AUC_INTERVAL:
            warnings.append(
                f"warning: the {name} weights' test AUC interval [{low_high[0]:.3f}, {low_high[1]:.3f}] is wider than "
                f"{MAX_AUC_INTERVAL}: the test split is too small for this figure to decide anything (more test "
                "images, or cross-validation with fpt-monai study)."
            )
    datalist = root / "models" / "datalist.json"
    if datalist.is_file():
        from fpt_monai.data import datalist_from_json, datalist_warnings

        warnings += [f"warning: {w}" for w in datalist_warnings(datalist_from_json(datalist), source=str(datalist))]
    lines += warnings
    predictions = root / "eval" / "predictions.csv"
    if predictions.is_file():
        rows = list(csv.DictReader(open(predictions, newline="")))
        lines.append(f"\nlatest inference, {len(rows)} image(s): {predictions}")
        lines += [f"  {row['id']}: {row['prediction']}" for row in rows[:5]]
    lines.append(f"checkpoints:  {root / 'models'} (model.pt = best validation AUC, model_final.pt, last.pt)")
    if (root / "models" / "model_card.md").is_file():
        lines.append(f"model card:   {root / 'models' / 'model_card.md'} (data, settings, identity, test metrics)")
    lines.append(f"plots:        {root / 'eval'} (roc_best.png, confusion_best.png, reliability_best.png)")
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


def _best_predictions(root: Path) -> tuple[list[str], list[int], list[list[float]], list[str]]:
    """ids, labels, probabilities and class names of ``eval/predictions_best.csv`` (model.pt on the test split)."""
    file = root / "eval" / "predictions_best.csv"
    if not file.is_file():
        raise SummaryError(f"{file}: no such file; evaluate {root} first.")
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [k[len("prob_") :] for k in (rows[0] if rows else {}) if k.startswith("prob_")]
    return (
        [r["id"] for r in rows],
        [int(r["label"]) for r in rows],
        [[float(r[f"prob_{c}"]) for c in names] for r in rows],
        names,
    )


def comparison(first: str | Path, second: str | Path) -> str:
    """DeLong's test for the correlated test AUCs of two bundles' best weights on the same test images (binary: the
    second class's AUC; more classes: each class against the rest, uncorrected).

    Raises:
        SummaryError: a bundle not evaluated, or test splits with other images or classes.
    """
    import numpy as np

    from fpt_monai.engines.statistics import delong_test

    a, b = Path(first).resolve(), Path(second).resolve()
    ids_a, labels_a, probs_a, names_a = _best_predictions(a)
    ids_b, labels_b, probs_b, names_b = _best_predictions(b)
    if names_a != names_b or sorted(zip(ids_a, labels_a, strict=True)) != sorted(zip(ids_b, labels_b, strict=True)):
        raise SummaryError(
            f"{a.name} and {b.name} were evaluated on different test images or classes: a paired comparison needs the "
            "same test split (train both from the same datalist)."
        )
    order = {item: n for n, item in enumerate(ids_b)}
    labels = np.array(labels_a)
    pa = np.array(probs_a)
    pb = np.array(probs_b)[[order[i] for i in ids_a]]
    classes = [1] if len(names_a) == 2 else range(len(names_a))
    lines = [f"\n=== paired comparison on the same {len(labels)} test images (best weights, DeLong's test) ==="]
    for k in classes:
        label = names_a[k] if len(names_a) == 2 else f"{names_a[k]} vs rest"
        try:
            t = delong_test((labels == k).astype(int), pa[:, k], pb[:, k])
        except ValueError as err:
            lines.append(f"  AUC ({label}): not testable: {err}")
            continue
        lines.append(
            f"  AUC ({label}): {a.name} {t['auc_a']:.3f}, {b.name} {t['auc_b']:.3f}; difference {t['difference']:+.3f} "
            f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}], p = {t['p_value']:.3g}"
        )
    if len(classes) > 1:
        lines.append(
            f"  (one test per class, uncorrected: with {len(classes)} classes compare p with 0.05/{len(classes)})"
        )
    return "\n".join(lines)
