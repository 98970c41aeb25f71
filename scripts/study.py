"""Accuracy study of any methods on any labelled dataset, by k-fold cross-validation through the MONAI bundle.

Every labelled image (training, validation and test of the datalist, pooled) is split into stratified folds. For
fold f the test part is fold f, and the rest is split again, stratified, into training and validation: each fold's
own validation part chooses the learning rate (best validation AUC with the first seed; a tie goes to the smaller
learning rate), then the other seeds train with it. Test AUC and accuracy are those of the best-validation weights.
Every run is the bundle itself (``bundle/configs/train.yaml`` + the method's preset, then ``evaluate.yaml`` on the
test part), and every store-based method and fold shares one feature store per backbone/size/variant under
``<out-dir>/tokens`` (item ids stay the original ones). Normalisation defaults to the backbone's statistics, so
the store does not depend on the fold.

The summary gives per method the mean ± sd of test AUC/accuracy over folds × seeds, the per-fold means and chosen
learning rates, and a paired comparison of test AUC against the linear probe (or ``--reference``): per (fold,
seed) differences, folds won and a fold-wise paired test (Wilcoxon signed-rank from 6 pairs, else paired t-test).
Beside it, DeLong's test for correlated AUCs on the pooled test predictions: every image is in one fold's test part,
so each method has one prediction per image (the chosen learning rate's probabilities averaged over seeds, read from
each run's ``eval/predictions_best.csv``), and both methods' AUCs over the same images are compared. A multi-class
task is tested one class against the rest, per class, without correction for testing several (the table shows the
smallest p). Runs without a predictions file (older studies) give DeLong "n/a".

    # the ISIC dermoscopy images in ../shared, 5 folds, the DINOv2 ViT-S/14 weights there
    python scripts/study.py --device cuda --methods fpt_plus,fpt,linear_probe,full_finetune --epochs 20

    # any datalist JSON / CSV / ImageFolder tree, with its own learning-rate grids and an extra bundle override
    python scripts/study.py --datalist /data/my/datalist.json --methods fpt_plus,lora,linear_probe \\
        --lrs "fpt_plus=1e-3,3e-4;linear_probe=1e-2,1e-3" --seeds 0,1,2 --set class_weighting=true
    python scripts/study.py --csv labels.csv --path-column file --label-column diagnosis --folds 10
    python scripts/study.py --image-folder /data/my_tree --folds 0   # its fixed train/val/test split as is

A method is a preset name, looked up in ``configs/methods`` then ``configs/recipes``; ``a+b`` merges the presets in
that order (``fpt_plus+small_data``: FPT+ with the small-data recipe).

Writes ``<out-dir>/study.{md,csv,json,png}``, ``<out-dir>/folds/fold<f>/datalist.json`` and one bundle folder per
run (``<out-dir>/runs/fold<f>/<method>_lr<lr>_seed<seed>``). Rerunning skips finished runs (``eval/metrics.json``
exists): use a new ``--out-dir`` when changing the data, the split or the training settings.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import statistics
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ISIC_CSV = SHARED / "isic_uda1" / "labels.csv"
ISIC_COLUMNS = {
    "path_column": "isic_id",
    "label_column": "label",
    "path_format": "images/{}.jpg",
    "class_names": "benign,malignant",
}
DINOV2_WEIGHTS = SHARED / "vit_small_patch14_dinov2_imgfocus" / "vit_small_patch14_dinov2_imgfocus.fp16.safetensors"
PRESET_DIRS = (REPO / "configs" / "methods", REPO / "configs" / "recipes")
TRAIN_CONFIG = REPO / "bundle" / "configs" / "train.yaml"
EVAL_CONFIG = REPO / "bundle" / "configs" / "evaluate.yaml"
META_FILE = REPO / "bundle" / "configs" / "metadata.json"
DEFAULT_LRS = "1e-3,3e-4"
METHOD_LRS = {
    "linear_probe": "1e-2,1e-3",
    "linear_probe_online": "1e-2,1e-3",
    "full_finetune": "1e-5,3e-6",
    "full_finetune_checkpointing": "1e-5,3e-6",
}
SPLITS = ("training", "validation", "test")


# ---------------------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--datalist", help="datalist JSON (fpt_monai.data.datalist_from_json)")
    source.add_argument("--csv", help=f"CSV of images and labels (default: the ISIC CSV {ISIC_CSV})")
    source.add_argument("--image-folder", help="root/<split>/<class>/<image> tree")
    p.add_argument("--path-column", help="CSV column with the image path or id (default 'path'; ISIC: isic_id)")
    p.add_argument("--label-column", help="CSV column with the label (default 'label')")
    p.add_argument("--path-format", help="turns the path column into a path, e.g. 'images/{}.jpg' (default '{}')")
    p.add_argument("--class-names", help="comma-separated class names in index order (CSV / image folder)")
    p.add_argument("--folds", type=int, default=5, help="stratified folds over all images; 0: the fixed split as is")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation part of each fold's non-test images")
    p.add_argument("--split-seed", type=int, default=0, help="random state of the fold and validation splits")
    p.add_argument("--methods", default="fpt_plus,fpt,linear_probe,full_finetune", help="preset names, comma-separated")
    p.add_argument("--lrs", default="", help=f"'method=lr1,lr2;...' (default: built-in grids, else {DEFAULT_LRS})")
    p.add_argument("--reference", help="method the others are compared with (default: linear_probe if studied)")
    p.add_argument("--seeds", default="0,1,2", help="the first one chooses the learning rate")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the bundle's, per CPUs)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--weights", default=str(DINOV2_WEIGHTS), help="pre-trained weights file (the bundle's pretrained)")
    p.add_argument("--img-size", type=int, default=518)
    p.add_argument("--side-img-size", type=int, default=0, help="FPT/FPT+ side view; 0: the preset's")
    p.add_argument("--normalization", default="backbone", help="the bundle's normalization (backbone keeps one store)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra bundle override for every run (value parsed as JSON when possible); repeatable",
    )
    p.add_argument("--out-dir", default="outputs/study")
    p.add_argument("--verbose", action="store_true", help="show the bundle's log messages and every warning")
    p.add_argument(
        "--no-logreg",
        action="store_true",
        help="skip the scikit-learn logistic regression on stored pooled features (C chosen on validation)",
    )
    from fpt_monai.runtime import add_runtime_arguments

    add_runtime_arguments(p, verbose=False)  # --threads, also passed to every bundle run
    return p.parse_args(argv)


def parse_list(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def lr_grids(methods: list[str], spec: str) -> dict[str, list[float]]:
    """Learning-rate grid per method: ``--lrs`` entries, else the method's default grid."""
    given = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        method, sep, values = entry.partition("=")
        if not sep or method.strip() not in methods:
            raise SystemExit(f"--lrs entry {entry!r}: expected METHOD=LR1,LR2 with METHOD one of {methods}.")
        given[method.strip()] = parse_list(values)
    return {m: given.get(m) or parse_list(METHOD_LRS.get(m, DEFAULT_LRS)) for m in methods}


def parse_overrides(pairs: list[str]) -> dict:
    """``--set key=value`` pairs as bundle overrides; values are JSON when they parse as JSON, else strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def find_preset(name: str) -> Path:
    """``configs/methods/<name>.yaml``, else ``configs/recipes/<name>.yaml``."""
    for folder in PRESET_DIRS:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    known = sorted({p.stem for folder in PRESET_DIRS if folder.is_dir() for p in folder.glob("*.yaml")})
    raise SystemExit(f"unknown method {name!r}: no preset in configs/methods or configs/recipes; known: {known}")


def method_presets(method: str) -> list[Path]:
    """The preset files of a method; ``a+b`` merges preset ``b`` after ``a`` (e.g. ``fpt_plus+small_data``)."""
    return [find_preset(name) for name in method.split("+")]


def reference_method(methods: list[str], reference: str | None) -> str | None:
    if reference is not None and reference not in methods:
        raise SystemExit(f"--reference {reference!r} is not among --methods {methods}.")
    return reference or ("linear_probe" if "linear_probe" in methods else None)


# --------------------------------------------------------------------------------------------------------- data
def load_datalist(args: argparse.Namespace) -> dict:
    """The datalist from ``--datalist``, ``--image-folder``, ``--csv`` or (default) the ISIC CSV in ../shared."""
    from fpt_monai.data import datalist_from_csv, datalist_from_image_folder, datalist_from_json

    class_names = parse_list(args.class_names, str) if args.class_names else None
    try:
        if args.datalist:
            return datalist_from_json(args.datalist)
        if args.image_folder:
            return datalist_from_image_folder(args.image_folder, class_names)
        columns = {} if args.csv else dict(ISIC_COLUMNS)
        given = {k: getattr(args, k) for k in ISIC_COLUMNS if getattr(args, k) is not None}
        columns.update(given)
        if "class_names" in columns:
            columns["class_names"] = parse_list(columns["class_names"], str)
        csv_path = Path(args.csv or ISIC_CSV)
        if not csv_path.is_file():
            where = "" if args.csv else " (the default ISIC data in ../shared/data/isic_uda1 is missing)"
            raise SystemExit(f"{csv_path} not found{where}; give --datalist, --csv or --image-folder.")
        return datalist_from_csv(csv_path, **columns)
    except ValueError as err:
        raise SystemExit(f"cannot read the dataset: {err}") from err


def check_images_once(datalist: dict, skip_unreadable) -> dict:
    """Read every image once, here: the runs then skip the bundle's own check (``check_images: false``)."""
    from fpt_monai.data import UnreadableImagesError, check_images

    try:
        return check_images(datalist, skip_unreadable=skip_unreadable)
    except UnreadableImagesError as err:
        raise SystemExit(f"{err}\nIn this study: --set skip_unreadable=true.") from err


def num_classes(datalist: dict) -> int:
    if datalist.get("classes"):
        return len(datalist["classes"])
    return 1 + max(item["label"] for split in SPLITS for item in datalist.get(split, []))


def stratified_holdout(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """Split ``indices`` into (rest, held out) with ``fraction`` of every class (at least one of each class with two
    or more images) held out; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels[indices]):
        members = rng.permutation(indices[labels[indices] == c])
        n = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.extend(members[:n])
    held = np.sort(np.asarray(held, dtype=int))
    return np.setdiff1d(indices, held), held


def fold_datalists(datalist: dict, folds: int, val_fraction: float, seed: int) -> list[dict]:
    """Stratified ``folds``-fold datalists over all labelled items (``folds`` 0: the datalist itself)."""
    if folds == 0:
        empty = [s for s in SPLITS if not datalist.get(s)]
        if empty:
            raise SystemExit(f"--folds 0 uses the datalist's fixed split, but its {empty} split(s) are empty.")
        return [datalist]
    from sklearn.model_selection import StratifiedKFold

    items = [item for split in SPLITS for item in datalist.get(split, [])]
    labels = np.asarray([item["label"] for item in items])
    smallest = np.bincount(labels)[np.unique(labels)].min()
    if not 2 <= folds <= smallest:
        raise SystemExit(f"--folds {folds}: needs 2 <= folds <= {smallest}, the images of the smallest class.")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for f, (rest, test) in enumerate(splitter.split(np.zeros(len(items)), labels)):
        train, val = stratified_holdout(rest, labels, val_fraction, seed + f)
        fold = {name: [items[i] for i in idx] for name, idx in zip(SPLITS, (train, val, test), strict=True)}
        if "classes" in datalist:
            fold["classes"] = datalist["classes"]
        out.append(fold)
    return out


def split_ids(datalist: dict) -> dict[str, list[str]]:
    return {s: [str(item["id"]) for item in datalist.get(s, [])] for s in SPLITS}


def write_folds(folds: list[dict], out: Path) -> list[Path]:
    """``<out>/folds/fold<f>/datalist.json``; refuses to change the split of an existing study."""
    from fpt_monai.data import datalist_from_json, write_datalist

    dirs = []
    for f, fold in enumerate(folds):
        path = out / "folds" / f"fold{f}" / "datalist.json"
        if path.is_file() and split_ids(datalist_from_json(path)) != split_ids(fold):
            raise SystemExit(f"{path} holds another split: finished runs would not match; use a new --out-dir.")
        write_datalist(fold, path)
        dirs.append(path.parent)
    return dirs


# --------------------------------------------------------------------------------------------------------- runs
def common_overrides(args: argparse.Namespace, classes: int, out: Path) -> dict:
    """Bundle overrides shared by every run (the fold's dataset_dir, learning rate and seed come per run)."""
    overrides = {
        "num_classes": classes,
        "backbone": args.backbone,
        "pretrained": args.weights,
        "img_size": args.img_size,
        "normalization": args.normalization,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "num_threads": args.threads,
        "verbose": args.verbose,
        "device": f"$torch.device('{args.device}')",
        "store_root": str(out / "tokens"),
        "check_images": False,  # checked once by check_images_once
    }
    if args.side_img_size:
        overrides["side_img_size"] = args.side_img_size
    if args.num_workers is not None:
        overrides["num_workers"] = args.num_workers
    return overrides


@contextlib.contextmanager
def bundle_logs(verbose: bool):
    """Hide the bundle's log messages (INFO and WARNING; errors still raise) unless ``verbose``."""
    logging.disable(logging.NOTSET if verbose else logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def run_bundle(configs: list[Path], bundle_root: Path, overrides: dict, verbose: bool = False) -> None:
    from monai.bundle import ConfigWorkflow

    with bundle_logs(verbose):
        wf = ConfigWorkflow(
            config_file=[str(c) for c in configs],
            meta_file=str(META_FILE),
            logging_file=False,
            workflow_type="train",
            bundle_root=str(bundle_root),
            **overrides,
        )
        wf.initialize()
        wf.run()
        wf.finalize()


def finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class Runner:
    """Trains and tests one (fold, method, lr, seed) through the bundle, unless it already finished."""

    def __init__(self, out: Path, fold_dirs: list[Path], overrides: dict, bar, verbose: bool = False) -> None:
        self.out, self.fold_dirs, self.overrides, self.bar, self.verbose = out, fold_dirs, overrides, bar, verbose
        self.new_runs = 0
        # (fold, method, lr, seed) -> the run's test predictions (read_predictions), None without the file
        self.predictions: dict[tuple, dict | None] = {}

    def __call__(self, fold: int, method: str, lr: float, seed: int) -> dict:
        bundle_root = self.out / "runs" / f"fold{fold}" / f"{method}_lr{lr:g}_seed{seed}"
        metrics = bundle_root / "eval" / "metrics.json"
        if not metrics.is_file():
            configs = [TRAIN_CONFIG, *method_presets(method)]
            overrides = {"dataset_dir": str(self.fold_dirs[fold]), "learning_rate": lr, "seed": seed}
            overrides.update(self.overrides)  # the shared ones and --set, which may override anything
            self.bar.set_postfix_str(f"fold {fold} {method} lr {lr:g} seed {seed}")
            run_bundle(configs, bundle_root, overrides, self.verbose)
            run_bundle(configs + [EVAL_CONFIG], bundle_root, overrides, self.verbose)
            self.new_runs += 1
        self.bar.update(1)
        self.predictions[(fold, method, lr, seed)] = read_predictions(bundle_root / "eval" / "predictions_best.csv")
        return read_run(bundle_root, fold, method, lr, seed)


def read_run(bundle_root: Path, fold: int, method: str, lr: float, seed: int) -> dict:
    import torch

    last = torch.load(bundle_root / "models" / "last.pt", weights_only=True, map_location="cpu")
    test = json.loads((bundle_root / "eval" / "metrics.json").read_text())["best"]
    return {
        "fold": fold,
        "method": method,
        "lr": lr,
        "seed": seed,
        "val_auc": finite_or_none(last["best_metric"]),
        "test_auc": finite_or_none(test["auc"]),
        "test_acc": finite_or_none(test["acc"]),
    }


def read_predictions(path: Path) -> dict | None:
    """A run's test predictions (``id, label, prob_<class>...``, written by the bundle's evaluation) as ``{"ids",
    "labels" [N], "probs" [N, C], "class_names"}``; ``None`` when the file does not exist (a run of an older study).
    The file is checked as any input: a malformed one is an error naming it."""
    if not path.is_file():
        return None

    def bad(reason: str) -> SystemExit:
        return SystemExit(
            f"{path}: {reason}; move that run's folder out of the study to rerun it, or use a new --out-dir."
        )

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise bad("empty predictions file")
    header = rows[0]
    class_names = [h[len("prob_") :] for h in header[2:]]
    if header[:2] != ["id", "label"] or len(class_names) < 2 or not all(h.startswith("prob_") for h in header[2:]):
        raise bad(f"expected the columns id, label, prob_<class>... (two classes or more), found {header[:6]}")
    ids, labels, probs = [], [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise bad(f"line {n} has {len(row)} fields, the header {len(header)}")
        try:
            label, values = int(row[1]), [float(v) for v in row[2:]]
        except ValueError:
            raise bad(f"line {n}: the label is not an integer or a probability is not a number") from None
        if not 0 <= label < len(class_names) or not all(math.isfinite(v) for v in values):
            raise bad(f"line {n}: label {label} outside 0..{len(class_names) - 1} or a probability is not finite")
        ids.append(row[0])
        labels.append(label)
        probs.append(values)
    if len(set(ids)) != len(ids):
        raise bad("an id appears twice")
    return {
        "ids": ids,
        "labels": np.asarray(labels, dtype=int),
        "probs": np.asarray(probs, dtype=float).reshape(len(ids), len(class_names)),
        "class_names": class_names,
    }


def choose_lr(tuning: list[dict]) -> float:
    """The learning rate with the best validation AUC; a tie goes to the smaller one."""
    best = max(tuning, key=lambda r: (-math.inf if r["val_auc"] is None else r["val_auc"], -r["lr"]))
    return best["lr"]


def study_method(run: Runner, fold: int, method: str, lrs: list[float], seeds: list[int]) -> tuple[list, float]:
    """Every lr with the first seed, then the other seeds with the chosen lr: (runs, chosen lr)."""
    tuning = [run(fold, method, lr, seeds[0]) for lr in lrs]
    lr = choose_lr(tuning)
    return tuning + [run(fold, method, lr, seed) for seed in seeds[1:]], lr


LOGREG = "logreg_sklearn"
LOGREG_CS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)


def pooled_store(out: Path, ids: list[str]):
    """A feature store under ``<out>/tokens`` that holds the pooled features of every id, or ``None``."""
    from fpt_monai.data import FeatureStore

    for manifest in sorted((out / "tokens").glob("*/manifest.json")):
        store = FeatureStore.open(manifest.parent)
        if "pooled" in store.fields and not store.missing(ids, "pooled"):
            return store
    return None


def logreg_runs(out: Path, folds: list[dict], seeds: list[int]) -> tuple[list[dict], dict[tuple, dict]]:
    """scikit-learn logistic regression on the stored pooled features of each fold (standardised; C chosen on the
    fold's validation AUC): the strongest cheap reference, outside the bundle. One row per fold and seed (it is
    deterministic, so seeds repeat it), ``lr`` holding the chosen C; empty without a store of pooled features.
    Also its test predictions per ``(fold, method, C, seed)``, as :func:`read_predictions` gives a bundle run's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fpt_monai.engines import classification_metrics

    ids = [str(item["id"]) for item in folds[0]["training"] + folds[0]["validation"] + folds[0]["test"]]
    store = pooled_store(out, ids)
    if store is None:
        return [], {}
    class_names = [str(c) for c in folds[0].get("classes") or range(num_classes(folds[0]))]
    predictions = {}
    features = {i: store.get_pooled(i).float().numpy() for i in ids}  # read once, shared by every fold
    rows = []
    for fold, dl in enumerate(folds):
        x = {s: np.stack([features[str(i["id"])] for i in dl[s]]) for s in SPLITS}
        y = {s: np.array([int(i["label"]) for i in dl[s]]) for s in SPLITS}
        best = None
        for c in LOGREG_CS:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
            model.fit(x["training"], y["training"])
            val = classification_metrics(model.predict_proba(x["validation"]), y["validation"])["auc"]
            if best is None or val > best[0]:
                best = (val, c, model)
        val_auc, c, model = best
        probs = model.predict_proba(x["test"])
        test = classification_metrics(probs, y["test"])
        # predict_proba has a column per class seen in training; the folds are stratified, so every class is there
        full = np.zeros((len(probs), len(class_names)))
        full[:, model.classes_] = probs
        pred = {
            "ids": [str(i["id"]) for i in dl["test"]],
            "labels": y["test"],
            "probs": full,
            "class_names": class_names,
        }
        for seed in seeds:
            predictions[(fold, LOGREG, c, seed)] = pred
            rows.append(
                {
                    "fold": fold,
                    "method": LOGREG,
                    "lr": c,
                    "seed": seed,
                    "val_auc": finite_or_none(val_auc),
                    "test_auc": finite_or_none(test["auc"]),
                    "test_acc": finite_or_none(test["acc"]),
                }
            )
    return rows, predictions


# ------------------------------------------------------------------------------------------------------ summary
def mean_sd(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def chosen_runs(runs: list[dict], chosen: dict, method: str) -> list[dict]:
    return [r for r in runs if r["method"] == method and r["lr"] == chosen[method][r["fold"]]]


def fold_means(rows: list[dict], key: str = "test_auc") -> dict[int, float | None]:
    return {f: mean_sd([r[key] for r in rows if r["fold"] == f])[0] for f in sorted({r["fold"] for r in rows})}


def method_summary(runs: list[dict], chosen: dict, method: str) -> dict:
    rows = chosen_runs(runs, chosen, method)
    auc, auc_sd = mean_sd([r["test_auc"] for r in rows])
    acc, acc_sd = mean_sd([r["test_acc"] for r in rows])
    return {
        "method": method,
        "runs": len(rows),
        "lr_per_fold": [chosen[method][f] for f in sorted(chosen[method])],
        "test_auc_mean": auc,
        "test_auc_sd": auc_sd,
        "test_acc_mean": acc,
        "test_acc_sd": acc_sd,
        "test_auc_per_fold": list(fold_means(rows, "test_auc").values()),
        "test_acc_per_fold": list(fold_means(rows, "test_acc").values()),
    }


def pool_predictions(per_fold: dict[int, list[dict]]) -> dict:
    """One prediction per test image from the runs of each fold: the probabilities of a fold's runs (its seeds)
    averaged per image id, then the folds concatenated (in fold order; their test parts are disjoint).

    Args:
        per_fold: ``{fold: [predictions of each run]}``, each as :func:`read_predictions` gives it.

    Returns:
        ``{"ids", "labels", "probs", "class_names"}`` as :func:`read_predictions`.

    Raises:
        ValueError: a fold without runs, runs of one fold on different images, labels or classes, or an image in
            two folds' test parts.
    """
    ids: list[str] = []
    labels, probs, class_names = [], [], None
    for fold in sorted(per_fold):
        preds = per_fold[fold]
        if not preds:
            raise ValueError(f"fold {fold} has no predictions")
        first = preds[0]
        order = {item: k for k, item in enumerate(first["ids"])}
        total = np.zeros_like(first["probs"], dtype=float)
        for pred in preds:
            if sorted(pred["ids"]) != sorted(first["ids"]) or pred["class_names"] != first["class_names"]:
                raise ValueError(f"the runs of fold {fold} predict different images or classes")
            rows = np.asarray([order[item] for item in pred["ids"]], dtype=int)  # into the first run's order
            if not np.array_equal(np.asarray(first["labels"])[rows], pred["labels"]):
                raise ValueError(f"the runs of fold {fold} give an image two labels")
            total[rows] += pred["probs"]
        if class_names is not None and first["class_names"] != class_names:
            raise ValueError(f"fold {fold} predicts other classes than the folds before it")
        class_names = first["class_names"]
        ids += first["ids"]
        labels.append(np.asarray(first["labels"], dtype=int))
        probs.append(total / len(preds))
    if len(set(ids)) != len(ids):
        raise ValueError("an image is in the test part of two folds")
    return {"ids": ids, "labels": np.concatenate(labels), "probs": np.concatenate(probs), "class_names": class_names}


def method_predictions(runs: list[dict], chosen: dict, method: str, predictions: dict) -> tuple[dict | None, str]:
    """The pooled test predictions of ``method`` (its chosen learning rate's runs, :func:`pool_predictions`), or
    ``None`` and why not."""
    per_fold: dict[int, list[dict]] = {}
    for r in chosen_runs(runs, chosen, method):
        pred = predictions.get((r["fold"], r["method"], r["lr"], r["seed"]))
        if pred is None:
            return None, f"{method}: a run without eval/predictions_best.csv (an older study)"
        per_fold.setdefault(r["fold"], []).append(pred)
    if not per_fold:
        return None, f"{method}: no runs"
    try:
        return pool_predictions(per_fold), ""
    except ValueError as err:
        return None, f"{method}: {err}"


DELONG_KEYS = (
    "delong_auc_method",
    "delong_auc_reference",
    "delong_difference",
    "delong_ci",
    "delong_p",
    "delong_per_class",
    "delong_p_min",
    "delong_n",
    "delong_note",
)


def delong_comparison(pred: dict | None, ref: dict | None, note: str = "") -> dict:
    """DeLong's test of the pooled predictions ``pred`` against ``ref`` over the image ids both have.

    Binary tasks: the AUCs of class 1's probability, their difference with its 95 % interval and p
    (``delong_p``). Multi-class tasks: one class against the rest per class (``delong_per_class``), the mean of
    the tested classes' AUCs and the smallest p (``delong_p_min``), uncorrected for testing several classes.
    Every ``DELONG_KEYS`` entry is there; those that do not apply are ``None``, and ``delong_note`` says why
    the test is missing (``note``: the reason a side has no predictions).
    """
    from fpt_monai.engines.statistics import delong_test, delong_test_ovr

    out = dict.fromkeys(DELONG_KEYS)
    out["delong_n"] = 0
    if pred is None or ref is None:
        out["delong_note"] = note or "no pooled predictions"
        return out
    ref_row = {item: k for k, item in enumerate(ref["ids"])}
    common = [(k, ref_row[item]) for k, item in enumerate(pred["ids"]) if item in ref_row]
    rows_p = np.asarray([k for k, _ in common], dtype=int)
    rows_r = np.asarray([k for _, k in common], dtype=int)
    out["delong_n"] = len(common)
    labels = pred["labels"][rows_p]
    if pred["class_names"] != ref["class_names"]:
        out["delong_note"] = "the two methods predict different classes"
        return out
    if not np.array_equal(labels, ref["labels"][rows_r]):
        out["delong_note"] = "the two methods' prediction files give an image two labels"
        return out
    pm, pr = pred["probs"][rows_p], ref["probs"][rows_r]
    try:
        if pm.shape[1] == 2:
            result = delong_test(labels == 1, pm[:, 1], pr[:, 1])
            out.update(
                delong_auc_method=result["auc_a"],
                delong_auc_reference=result["auc_b"],
                delong_difference=result["difference"],
                delong_ci=[result["ci_low"], result["ci_high"]],
                delong_p=finite_or_none(result["p_value"]),
            )
            return out
        per_class = delong_test_ovr(labels, pm, pr, class_names=pred["class_names"])
    except ValueError as err:
        out["delong_note"] = str(err)
        return out
    if not per_class:
        out["delong_note"] = "no class has 2 images and 2 others among the common images"
        return out
    out["delong_per_class"] = {
        name: {
            "auc_method": r["auc_a"],
            "auc_reference": r["auc_b"],
            "difference": r["difference"],
            "ci": [r["ci_low"], r["ci_high"]],
            "p": finite_or_none(r["p_value"]),
            "n_positive": r["n_positive"],
        }
        for name, r in per_class.items()
    }
    out["delong_auc_method"] = statistics.mean(r["auc_a"] for r in per_class.values())
    out["delong_auc_reference"] = statistics.mean(r["auc_b"] for r in per_class.values())
    out["delong_difference"] = out["delong_auc_method"] - out["delong_auc_reference"]
    out["delong_p_min"] = min((v["p"] for v in out["delong_per_class"].values() if v["p"] is not None), default=None)
    out["delong_note"] = f"per class, one against the rest ({len(per_class)} tests), no correction for several tests"
    return out


def paired_p_value(a: list[float], b: list[float]) -> tuple[float | None, str]:
    """Wilcoxon signed-rank (6 pairs or more) or paired t-test: (p, test); p 1 when all differences are 0, None
    when undefined (fewer than 2 pairs, or a t-test of identical differences)."""
    from scipy import stats

    name = "wilcoxon" if len(a) >= 6 else "ttest_rel"
    diffs = np.subtract(a, b)
    if len(diffs) < 2:
        return None, name
    if np.allclose(diffs, 0):
        return 1.0, name
    if name == "ttest_rel" and np.ptp(diffs) < 1e-12:  # identical non-zero differences: t is undefined
        return None, name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = stats.wilcoxon(a, b).pvalue if name == "wilcoxon" else stats.ttest_rel(a, b).pvalue
        except ValueError:
            return None, name
    return finite_or_none(p), name


def paired_comparison(runs: list[dict], chosen: dict, method: str, reference: str, pooled: dict | None = None) -> dict:
    """Test AUC of ``method`` minus ``reference`` per (fold, seed), with folds won and a fold-wise paired test; and
    DeLong's test on the pooled test predictions (``pooled``: ``{method: (predictions or None, why not)}`` from
    :func:`method_predictions`; without it, DeLong's fields say n/a)."""
    ref = {(r["fold"], r["seed"]): r["test_auc"] for r in chosen_runs(runs, chosen, reference)}
    pairs = [
        (r["fold"], r["test_auc"], ref[(r["fold"], r["seed"])])
        for r in chosen_runs(runs, chosen, method)
        if r["test_auc"] is not None and ref.get((r["fold"], r["seed"])) is not None
    ]
    diffs = [m - b for _, m, b in pairs]
    per_fold = fold_means([{"fold": f, "d": d} for (f, _, _), d in zip(pairs, diffs, strict=True)], "d")
    mean, sd = mean_sd(diffs)
    p, test = paired_p_value([m for _, m, _ in pairs], [b for _, _, b in pairs])
    return {
        "method": method,
        "reference": reference,
        "pairs": len(pairs),
        "auc_diff_mean": mean,
        "auc_diff_sd": sd,
        "folds_won": sum(d > 0 for d in per_fold.values()),
        "folds": len(per_fold),
        "p_value": p,
        "test": test,
        **delong_comparison(*delong_sides((pooled or {}).get(method), (pooled or {}).get(reference))),
    }


def delong_sides(pred: tuple | None, ref: tuple | None) -> tuple[dict | None, dict | None, str]:
    """Arguments of :func:`delong_comparison` from two :func:`method_predictions` results."""
    pred, why_pred = pred or (None, "no predictions")
    ref, why_ref = ref or (None, "no predictions")
    return pred, ref, "; ".join(w for w, side in ((why_pred, pred), (why_ref, ref)) if side is None)


def summarize(
    runs: list[dict], chosen: dict, methods: list[str], references: list[str], predictions: dict | None = None
) -> dict:
    """Per-method summaries and the paired comparisons against each reference; ``predictions`` (per run key, see
    :attr:`Runner.predictions`) feed DeLong's test."""
    pooled = {m: method_predictions(runs, chosen, m, predictions or {}) for m in methods}
    return {
        "methods": [method_summary(runs, chosen, m) for m in methods],
        "paired": [paired_comparison(runs, chosen, m, ref, pooled) for ref in references for m in methods if m != ref],
    }


# ------------------------------------------------------------------------------------------------------ outputs
def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def settings_line(args: argparse.Namespace, seeds: list[int], grids: dict, folds: int) -> str:
    split = "fixed split"
    if args.folds:
        split = f"{folds}-fold CV (split seed {args.split_seed}, val {args.val_fraction:g})"
    side = f", side {args.side_img_size} px" if args.side_img_size else ""
    lrs = "; ".join(f"{m} {','.join(f'{v:g}' for v in g)}" for m, g in grids.items())
    extra = f", overrides {' '.join(args.overrides)}" if args.overrides else ""
    return (
        f"{args.backbone} @ {args.img_size} px{side}, {args.normalization} normalization, {args.epochs} epochs, "
        f"batch {args.batch_size}, {split}, seeds {seeds}, lr grids: {lrs}{extra}"
    )


def markdown(summary: dict, header: str) -> str:
    lines = [
        header,
        "",
        "| method | lr (logreg: C) per fold, chosen on val | runs | test AUC | test accuracy | test AUC per fold |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary["methods"]:
        lines.append(
            f"| {s['method']} | {', '.join(f'{v:g}' for v in s['lr_per_fold'])} | {s['runs']} | "
            f"{fmt(s['test_auc_mean'])} ± {fmt(s['test_auc_sd'])} | {fmt(s['test_acc_mean'])} ± "
            f"{fmt(s['test_acc_sd'])} | {' '.join(fmt(v) for v in s['test_auc_per_fold'])} |"
        )
    if summary["paired"]:
        lines += [
            "",
            "| method | vs | pairs (fold × seed) | test AUC difference | folds won | fold-wise p (test) "
            "| pooled AUC (DeLong) | DeLong p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in summary["paired"]:
            lines.append(
                f"| {c['method']} | {c['reference']} | {c['pairs']} | {fmt(c['auc_diff_mean'], '+.3f')} ± "
                f"{fmt(c['auc_diff_sd'])} | {c['folds_won']}/{c['folds']} | {fmt(c['p_value'])} ({c['test']}) | "
                f"{delong_cells(c)} |"
            )
        lines += ["", DELONG_FOOTNOTE]
        lines += [f"- {c['method']} vs {c['reference']}: {c['delong_note']}" for c in summary["paired"] if notes(c)]
    return "\n".join(lines) + "\n"


DELONG_FOOTNOTE = (
    "pooled AUC (DeLong): each method's AUC on every test image once (each fold's test part; the chosen lr's "
    "probabilities averaged over seeds), method vs reference, their difference and its 95 % interval; DeLong p: "
    "DeLong's test for correlated AUCs on the same images. Multi-class: mean of the per-class AUCs (one class "
    "against the rest) and the smallest per-class p, without correction for testing several classes "
    "(study.json has each class)."
)


def notes(c: dict) -> bool:
    """Whether a comparison's DeLong note says why the test is missing (multi-class notes are in the footnote)."""
    return c["delong_note"] is not None and c["delong_per_class"] is None


def delong_cells(c: dict) -> str:
    """The "pooled AUC (DeLong)" and "DeLong p" cells of a paired comparison."""
    if c["delong_auc_method"] is None:
        return "n/a | n/a"
    ci = f" [{fmt(c['delong_ci'][0], '+.3f')}, {fmt(c['delong_ci'][1], '+.3f')}]" if c["delong_ci"] else ""
    auc = (
        f"{fmt(c['delong_auc_method'])} vs {fmt(c['delong_auc_reference'])}, "
        f"{fmt(c['delong_difference'], '+.3f')}{ci} (n={c['delong_n']})"
    )
    if c["delong_per_class"] is not None:
        return f"{auc} | min {fmt(c['delong_p_min'])} of {len(c['delong_per_class'])} classes, uncorrected"
    return f"{auc} | {fmt(c['delong_p'])}"


def write_csv(runs: list[dict], path: Path) -> None:
    columns = ["fold", "method", "lr", "seed", "val_auc", "test_auc", "test_acc"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(runs)


def plot(runs: list[dict], chosen: dict, methods: list[str], reference: str | None, path: Path) -> None:
    """Test AUC per method: one point per run (colour = fold), the mean as a bar; the reference hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 * len(methods) + 4.5, 4.5))
    folds = sorted({r["fold"] for r in runs})
    aucs = {m: [r for r in chosen_runs(runs, chosen, m) if r["test_auc"] is not None] for m in methods}
    for x, method in enumerate(methods):
        mean = mean_sd([r["test_auc"] for r in aucs[method]])[0]
        if mean is not None and method == reference:
            ax.bar(x, mean, width=0.6, color="white", hatch="//", edgecolor="k", zorder=1)
            ax.axhline(mean, color="k", ls="--", lw=1, label=f"{method} (reference) mean", zorder=0)
        elif mean is not None:
            ax.bar(x, mean, width=0.6, color="lightgray", edgecolor="k", zorder=1)
        for f in folds:
            values = [r["test_auc"] for r in aucs[method] if r["fold"] == f]
            offset = (f - (len(folds) - 1) / 2) * 0.5 / len(folds)
            label = f"fold {f}" if x == 0 else None
            ax.scatter([x + offset] * len(values), values, s=18, color=f"C{f % 10}", zorder=2, label=label)
    lowest = min([r["test_auc"] for rows in aucs.values() for r in rows], default=0.0)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set(ylabel="test AUC", ylim=(max(0.0, lowest - 0.05) - 0.02, 1.02))
    ax.set_title("test AUC per run (points, by fold) and mean over folds × seeds (bars)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out: Path, runs: list[dict], chosen: dict, summary: dict, text: str, meta: dict) -> None:
    (out / "study.md").write_text(text)
    write_csv(runs, out / "study.csv")
    (out / "study.json").write_text(json.dumps({**meta, "runs": runs, "summary": summary}, indent=1))
    plot(runs, chosen, [s["method"] for s in summary["methods"]], meta["reference"], out / "study.png")


# --------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from fpt_monai.runtime import setup_cli

    setup_cli(args)
    if not args.verbose:
        warnings.filterwarnings("ignore")  # hundreds of runs: the study's table is the output
    methods = parse_list(args.methods, str)
    for method in methods:
        method_presets(method)
    grids = lr_grids(methods, args.lrs)
    seeds = parse_list(args.seeds, int)
    reference = reference_method(methods, args.reference)
    extra = parse_overrides(args.overrides)
    out = Path(args.out_dir).resolve()

    datalist = check_images_once(load_datalist(args), extra.get("skip_unreadable", False))
    folds = fold_datalists(datalist, args.folds, args.val_fraction, args.split_seed)
    fold_dirs = write_folds(folds, out)
    from tqdm.auto import tqdm

    total = len(folds) * sum(len(g) + len(seeds) - 1 for g in grids.values())
    runs, chosen = [], {m: {} for m in methods}
    with tqdm(total=total, desc="study", unit="run") as bar:
        overrides = {**common_overrides(args, num_classes(datalist), out), **extra}
        run = Runner(out, fold_dirs, overrides, bar, args.verbose)
        for fold in range(len(folds)):
            for method in methods:
                fold_runs, chosen[method][fold] = study_method(run, fold, method, grids[method], seeds)
                runs.extend(fold_runs)
    bundle_runs = len(runs)
    predictions = dict(run.predictions)
    if not args.no_logreg:
        extra_rows, logreg_predictions = logreg_runs(out, folds, seeds)
        predictions.update(logreg_predictions)
        if extra_rows:
            methods.append(LOGREG)
            chosen[LOGREG] = {r["fold"]: r["lr"] for r in extra_rows}
            runs.extend(extra_rows)
    references = [m for m in (reference, LOGREG) if m in methods]
    summary = summarize(runs, chosen, methods, references, predictions)
    text = markdown(summary, settings_line(args, seeds, grids, len(folds)))
    meta = {"settings": vars(args), "reference": reference, "new_runs": run.new_runs, "total_runs": len(runs)}
    write_outputs(out, runs, chosen, summary, text, meta)
    print(f"{run.new_runs} new runs, {bundle_runs - run.new_runs} reused; results in {out}")
    print(text)


if __name__ == "__main__":
    from fpt_monai.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    main()
