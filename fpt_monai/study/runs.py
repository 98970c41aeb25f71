"""The study's runs: the method presets and learning-rate grids, the bundle overrides, one (fold, method, lr, seed)
trained and tested through the MONAI bundle (or read back when it finished), its test predictions, the choice of the
learning rate on validation, the feature stores the study builds through the bundle (timed), and the scikit-learn
logistic regression on the stored pooled features (at the study's resolution and any other)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fpt_monai.study.defaults import DEFAULT_LRS, METHOD_LRS
from fpt_monai.study.folds import SPLITS, num_classes, parse_list
from fpt_monai.utils.bundle_files import BUNDLE_CONFIGS, PRESETS_DIR

__all__ = [
    "EVAL_CONFIG",
    "LOGREG",
    "LOGREG_CS",
    "LOGREG_FEATURES",
    "META_FILE",
    "PRELOADS_FILE",
    "PRESET_DIRS",
    "PROBE_PRESET",
    "RUN_FILE",
    "TRAIN_CONFIG",
    "Runner",
    "bundle_logs",
    "bundle_parser",
    "choose_lr",
    "common_overrides",
    "dir_bytes",
    "find_preset",
    "finite_or_none",
    "logreg_name",
    "logreg_runs",
    "lr_grids",
    "method_presets",
    "parse_overrides",
    "prepare_store",
    "probe_features",
    "probe_store",
    "probe_views",
    "read_predictions",
    "read_preloads",
    "read_run",
    "reference_method",
    "run_bundle",
    "run_stores",
    "store_with",
    "study_method",
]

# what the study measured of a bundle run (its training's wall time), in the run's folder: a rerun reads it back
RUN_FILE = "study_run.json"
# the bundle's (folder, store) items of the feature stores a training preloads (train.yaml)
_STORE_ITEMS = (("store_dir", "feature_store"), ("pooled_store_dir", "pooled_feature_store"))
# under <out-dir>/tokens: the preload wall time of every store (or part of one) the study built, per store folder
PRELOADS_FILE = "study_preloads.json"

# the packaged bundle and presets: the same files from a clone and from an installed wheel
PRESET_DIRS = (PRESETS_DIR / "methods", PRESETS_DIR / "recipes")
TRAIN_CONFIG = BUNDLE_CONFIGS / "train.yaml"
EVAL_CONFIG = BUNDLE_CONFIGS / "evaluate.yaml"
META_FILE = BUNDLE_CONFIGS / "metadata.json"


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
    """The packaged preset ``methods/<name>.yaml``, else ``recipes/<name>.yaml`` (``fpt_monai/configs``; ``configs/``
    in a clone)."""
    for folder in PRESET_DIRS:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    known = sorted({p.stem for folder in PRESET_DIRS if folder.is_dir() for p in folder.glob("*.yaml")})
    raise SystemExit(f"unknown method {name!r}: no preset in {PRESET_DIRS[0]} or {PRESET_DIRS[1]}; known: {known}")


def method_presets(method: str) -> list[Path]:
    """The preset files of a method; ``a+b`` merges preset ``b`` after ``a`` (e.g. ``fpt_plus+small_data``)."""
    return [find_preset(name) for name in method.split("+")]


def reference_method(methods: list[str], reference: str | None, extra: list[str] = ()) -> str | None:
    """``--reference`` checked against the studied ``methods`` and the study's ``extra`` ones (the logistic
    regressions, the fusions); ``None`` when not given (the strongest probe on validation is chosen after the runs:
    :func:`fpt_monai.study.compare.choose_reference`)."""
    if reference is not None and reference not in [*methods, *extra]:
        raise SystemExit(f"--reference {reference!r} is not among --methods {methods} nor the study's {list(extra)}.")
    return reference


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
    """One bundle workflow (training, or training + evaluation configs) in this process, at ``bundle_root``."""
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
    """``value`` as a float, ``None`` when it is not finite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


class Runner:
    """Trains and tests one (fold, method, lr, seed) through the bundle, unless it already finished."""

    def __init__(self, out: Path, fold_dirs: list[Path], overrides: dict, bar, verbose: bool = False) -> None:
        self.out, self.fold_dirs, self.overrides, self.bar, self.verbose = out, fold_dirs, overrides, bar, verbose
        self.new_runs = 0
        # (fold, method, lr, seed) -> the run's test predictions (read_predictions), None without the file
        self.predictions: dict[tuple, dict | None] = {}
        # the same for model.pt's validation predictions (eval/predictions_validation.csv, written by the training)
        self.val_predictions: dict[tuple, dict | None] = {}

    def __call__(self, fold: int, method: str, lr: float, seed: int) -> dict:
        bundle_root = self.out / "runs" / f"fold{fold}" / f"{method}_lr{lr:g}_seed{seed}"
        metrics = bundle_root / "eval" / "metrics.json"
        if not metrics.is_file():
            configs = [TRAIN_CONFIG, *method_presets(method)]
            overrides = {"dataset_dir": str(self.fold_dirs[fold]), "learning_rate": lr, "seed": seed}
            overrides.update(self.overrides)  # the shared ones and --set, which may override anything
            self.bar.set_postfix_str(f"fold {fold} {method} lr {lr:g} seed {seed}")
            start = time.monotonic()
            run_bundle(configs, bundle_root, overrides, self.verbose)
            seconds = time.monotonic() - start
            run_bundle(configs + [EVAL_CONFIG], bundle_root, overrides, self.verbose)
            from fpt_monai.utils.atomic import atomic_write_text

            atomic_write_text(bundle_root / RUN_FILE, json.dumps({"train_seconds": seconds}))
            self.new_runs += 1
        self.bar.update(1)
        key = (fold, method, lr, seed)
        self.predictions[key] = read_predictions(bundle_root / "eval" / "predictions_best.csv")
        self.val_predictions[key] = read_predictions(bundle_root / "eval" / "predictions_validation.csv")
        return read_run(bundle_root, fold, method, lr, seed)


def read_run(bundle_root: Path, fold: int, method: str, lr: float, seed: int) -> dict:
    """A finished run's row: its best validation AUC (``last.pt``), the best weights' test AUC and accuracy, its
    training's wall time (``train_seconds``; ``None`` for a run of an older study) and the feature stores it used
    (``stores``, :func:`run_stores`)."""
    import torch

    last = torch.load(bundle_root / "models" / "last.pt", weights_only=True, map_location="cpu")
    test = json.loads((bundle_root / "eval" / "metrics.json").read_text())["best"]
    measured = bundle_root / RUN_FILE
    seconds = json.loads(measured.read_text()).get("train_seconds") if measured.is_file() else None
    return {
        "fold": fold,
        "method": method,
        "lr": lr,
        "seed": seed,
        "val_auc": finite_or_none(last["best_metric"]),
        "test_auc": finite_or_none(test["auc"]),
        "test_acc": finite_or_none(test["acc"]),
        "train_seconds": seconds,
        "stores": run_stores(bundle_root),
    }


def run_stores(bundle_root: Path) -> list[str]:
    """The feature stores a bundle run trained from, as its record names them (``models/model_config.json``,
    ``training_settings``: ``store_dir`` and ``pooled_store_dir``, the second store of ``pooled_img_size``) when it
    trained in preload mode."""
    record = bundle_root / "models" / "model_config.json"
    if not record.is_file():
        return []
    settings = json.loads(record.read_text()).get("training_settings") or {}
    if settings.get("mode", "preload") != "preload":
        return []
    stores = []
    for key in sorted(k for k, _ in _STORE_ITEMS if k in settings):
        value = settings[key]
        stores += [str(v) for v in (value if isinstance(value, list) else [value]) if v]
    return sorted(set(stores))


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


# the token probe's 2,304 features (DINOv2 ViT-S/14) chose C down to 1e-3 on ISIC: the grid reaches below it (the
# bundle's token head fits the same grid: engines.token_head.DEFAULT_TOKEN_HEAD_CS, train.yaml's token_head_cs)
LOGREG_CS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
# what a logistic regression reads from a store: the pooled features (final class token and mean patch token), or
# the mean of every extracted layer's stored values ([L * D], the tokens FPT's prompts attend to)
LOGREG_FEATURES = ("pooled", "tokens")

# the preset whose store settings the logistic regression's pooled features follow
PROBE_PRESET = "linear_probe"


def logreg_name(img_size: int | None = None, features: str = "pooled", views: int = 1, tta: bool = False) -> str:
    """``logreg_sklearn`` (pooled features) or ``logreg_sklearn_tokens`` (the stored tokens' layer means), with
    ``+views<K>`` when it is fitted on K stored views of each training image (``+views<K>+tta``: validation and test
    average the probabilities of the same K views) and ``@<img_size>`` at another resolution than the study's."""
    name = LOGREG if features == "pooled" else f"{LOGREG}_{features}"
    if views > 1:
        name += f"+views{views}" + ("+tta" if tta else "")
    return name if img_size is None else f"{name}@{img_size}"


def probe_views(views: int = 1, transforms: Sequence[str] | str | None = None) -> tuple[str, ...]:
    """The stored views a probe with ``views`` reads: ``""`` (the plain image), then the first ``views - 1`` of
    ``transforms`` (the bundle's ``store_view_transforms``; ``None``: its default), what ``store_views: K`` stores.

    Raises:
        ValueError: as :func:`fpt_monai.transforms.frozen_views.check_store_views` (too few or unknown names).
    """
    from fpt_monai.transforms.frozen_views import DEFAULT_STORE_VIEW_TRANSFORMS, check_store_views

    return ("", *check_store_views(views, DEFAULT_STORE_VIEW_TRANSFORMS if transforms is None else transforms))


def probe_features(store, item_id: str, features: str = "pooled") -> np.ndarray:
    """One item's features for the logistic regression: its stored pooled features ``[2 * D]``, or (``"tokens"``)
    the mean over the selected tokens of every extracted layer's stored values, heads merged, ``[L * D]``: a linear
    probe of the frozen model's intermediate layers, read from the tokens FPT trains from (what FPT's fusion prompts
    compute with uniform attention)."""
    if features == "pooled":
        return store.get_pooled(item_id).float().numpy()
    if features == "tokens":
        from fpt_monai.networks.fpt import token_layer_means

        _, values = store.get(item_id)  # [L, heads, k, head_dim]
        return token_layer_means(values[None])[0].numpy()  # what FPT's token head reads
    raise ValueError(f"features must be one of {LOGREG_FEATURES}, got {features!r}.")


def dir_bytes(path: str | Path) -> int:
    """The bytes of the files under ``path`` (0 when it does not exist)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def bundle_parser(configs: list[Path], fold_dir: Path, overrides: dict):
    """The bundle's training config (``configs`` merged, ``overrides`` and the fold's ``dataset_dir`` applied) as a
    parsed :class:`monai.bundle.ConfigParser`: its items are evaluated on demand, nothing else runs."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.read_meta(str(META_FILE))
    parser.update({"bundle_root": str(fold_dir), **overrides, "dataset_dir": str(fold_dir)})
    parser.parse()
    return parser


def read_preloads(out: Path) -> dict[str, float]:
    """``{store folder: preload seconds}`` of the stores the study built (``<out>/tokens/study_preloads.json``)."""
    path = out / "tokens" / PRELOADS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def prepare_store(
    out: Path, configs: list[Path], fold_dirs: list[Path], overrides: dict, verbose: bool = False
) -> str | None:
    """Build (or complete) the feature store of a method before its runs, through the bundle's own ``feature_store``
    item (and ``pooled_feature_store``, the second store of ``pooled_img_size``) evaluated for every fold (what
    each fold's training would preload: its training and validation items, any stored views included), and add the
    wall time it took to ``<out>/tokens/study_preloads.json``: the runs' training times then hold no preload, and
    the report shows what the store cost. Nothing is timed when the store already held everything (built before).

    Returns:
        The store folder, ``None`` for a method that does not train from a store (``mode`` not ``preload``).
    """
    from fpt_monai.utils.atomic import atomic_write_text

    store, seconds = None, {}
    with bundle_logs(verbose):
        for fold_dir in fold_dirs:
            parser = bundle_parser(configs, fold_dir, overrides)
            if parser.get_parsed_content("mode") != "preload":
                return None
            store = str(parser.get_parsed_content("store_dir"))
            # the stores a training preloads: its own and, with pooled_img_size, the second one (pooled features)
            for dir_item, store_item in _STORE_ITEMS:
                folder = parser.get_parsed_content(dir_item)
                if folder is None:
                    continue
                before = dir_bytes(folder)
                start = time.monotonic()
                parser.get_parsed_content(store_item)
                if dir_bytes(folder) != before:  # the preload ran (a complete store is only opened)
                    seconds[str(folder)] = seconds.get(str(folder), 0.0) + time.monotonic() - start
    if seconds:
        preloads = read_preloads(out)
        for folder, spent in seconds.items():
            preloads[folder] = preloads.get(folder, 0.0) + spent
        atomic_write_text(out / "tokens" / PRELOADS_FILE, json.dumps(preloads, indent=1))
    return store


def probe_store(
    out: Path,
    folds: list[dict],
    overrides: dict,
    img_size: int | None = None,
    verbose: bool = False,
    fields: tuple[str, ...] = LOGREG_FEATURES,
    views: int = 1,
) -> str | None:
    """A store of every image's ``fields`` for the logistic regressions (the pooled features, and the tokens whose
    layer means :func:`probe_features` reads), with ``views`` stored views of every image (:func:`probe_views`):
    one under ``<out>/tokens`` that already holds them at ``img_size`` (default: the study's), else built or
    completed by :func:`prepare_store` with the linear probe's preset and ``fields`` over a datalist of every image
    (``<out>/folds/probe@<size>``)."""
    from fpt_monai.data import write_datalist
    from fpt_monai.transforms.frozen_views import view_id

    plain = [str(item["id"]) for split in SPLITS for item in folds[0].get(split, [])]
    # the views the bundle stores (its store_view_transforms, a --set override included)
    ids = [view_id(i, name) for i in plain for name in probe_views(views, overrides.get("store_view_transforms"))]
    size = img_size if img_size is not None else overrides["img_size"]
    found = store_with(out, ids, size, fields)
    if found is not None:
        return str(found.path)
    items = [item for split in SPLITS for item in folds[0].get(split, [])]
    # every image once, as training items (the store's name depends on the images, not on their split)
    datalist = {"training": items, "validation": [], "test": []}
    if "classes" in folds[0]:
        datalist["classes"] = folds[0]["classes"]
    folder = out / "folds" / f"probe@{size}"
    write_datalist(datalist, folder / "datalist.json")
    # the plain view of each image (and its views); the tokens beside the pooled features for the token probe (a
    # store of the study's own size usually holds them already: FPT's runs preloaded it)
    probe = {**overrides, "img_size": size, "store_views": int(views), "store_fields": list(fields)}
    return prepare_store(out, [TRAIN_CONFIG, find_preset(PROBE_PRESET)], [folder], probe, verbose)


def store_with(out: Path, ids: list[str], img_size: int | None = None, fields: tuple[str, ...] = ("pooled",)):
    """A feature store under ``<out>/tokens`` that holds every one of ``fields`` of every id (at ``img_size``,
    when given: the frozen model's resolution in the store's settings), or ``None``."""
    from fpt_monai.data import FeatureStore

    for manifest in sorted((out / "tokens").glob("*/manifest.json")):
        store = FeatureStore.open(manifest.parent)
        if img_size is not None and store.settings.get("img_size") not in (img_size, [img_size, img_size]):
            continue
        if all(f in store.fields and not store.missing(ids, f) for f in fields):
            return store
    return None


def logreg_runs(
    store_dir: str | Path | None,
    folds: list[dict],
    seeds: list[int],
    method: str = LOGREG,
    features: str = "pooled",
    views: int = 1,
    tta: bool = False,
    transforms: Sequence[str] | str | None = None,
) -> tuple[list[dict], dict[tuple, dict], dict[tuple, dict]]:
    """scikit-learn logistic regression on the stored features of each fold (:func:`probe_features`: the pooled
    features, or the stored tokens' layer means; standardised; C chosen on the fold's validation AUC): the strongest
    cheap references, outside the bundle. One row per fold and seed (it is deterministic, so seeds repeat it), ``lr``
    holding the chosen C and ``train_seconds`` the fold's fits; empty without a store that holds those features of
    every image (and view). Also its test and validation predictions per ``(fold, method, C, seed)``, as
    :func:`read_predictions` gives a bundle run's (the validation ones feed the fusions' weights).

    With ``views`` K > 1 the fit reads K stored views of each training image (:func:`probe_views`: the augmented
    frozen views FPT+ trains from with ``store_views: K``, the probe's fair counterpart; ``transforms``: the bundle's
    ``store_view_transforms``, default its default); validation and test read the plain view, or with ``tta`` the
    mean of the K views' probabilities (C chosen on that mean)."""
    from fpt_monai.data import FeatureStore
    from fpt_monai.engines import classification_metrics
    from fpt_monai.engines.logistic_probe import fit_logistic_probe

    if store_dir is None:
        return [], {}, {}
    from fpt_monai.transforms.frozen_views import view_id

    store = FeatureStore.open(store_dir)
    plain = [str(item["id"]) for item in folds[0]["training"] + folds[0]["validation"] + folds[0]["test"]]
    names = probe_views(views, transforms)
    ids = [view_id(i, name) for i in plain for name in names]
    field = "pooled" if features == "pooled" else "tokens"
    if field not in store.fields or store.missing(ids, field):
        return [], {}, {}
    class_names = [str(c) for c in folds[0].get("classes") or range(num_classes(folds[0]))]
    predictions, val_predictions = {}, {}
    table = {i: probe_features(store, i, features) for i in ids}  # read once, shared by every fold
    rows = []

    def features_of(items: list[dict], split: str) -> np.ndarray:
        # training: every view is one more row; evaluation: the plain view [N, F], or the views [K, N, F] (tta)
        if split == "training":
            return np.concatenate([np.stack([table[view_id(str(i["id"]), n)] for i in items]) for n in names])
        if not tta:
            return np.stack([table[str(i["id"])] for i in items])
        return np.stack([np.stack([table[view_id(str(i["id"]), n)] for i in items]) for n in names])

    def as_prediction(dl: dict, split: str, probs: np.ndarray) -> dict:
        labels = np.array([int(i["label"]) for i in dl[split]])
        return {"ids": [str(i["id"]) for i in dl[split]], "labels": labels, "probs": probs, "class_names": class_names}

    for fold, dl in enumerate(folds):
        start = time.monotonic()
        x = {s: features_of(dl[s], s) for s in SPLITS}
        y = {s: np.array([int(i["label"]) for i in dl[s]]) for s in SPLITS}
        # the fit FPT's token head starts from (engines.logistic_probe): C on the fold's validation part
        y_train = np.concatenate([y["training"]] * len(names))  # the views' rows, in features_of's order
        fit = fit_logistic_probe(x["training"], y_train, x["validation"], y["validation"], LOGREG_CS, len(class_names))
        val_auc, c = fit.val_auc, fit.C
        probs, val_probs = fit.predict_proba(x["test"]), fit.predict_proba(x["validation"])
        seconds = time.monotonic() - start
        test = classification_metrics(probs, y["test"], num_classes=len(class_names))
        pred = as_prediction(dl, "test", probs)
        val_pred = as_prediction(dl, "validation", val_probs)
        for seed in seeds:
            predictions[(fold, method, c, seed)] = pred
            val_predictions[(fold, method, c, seed)] = val_pred
            rows.append(
                {
                    "fold": fold,
                    "method": method,
                    "lr": c,
                    "seed": seed,
                    "val_auc": finite_or_none(val_auc),
                    "test_auc": finite_or_none(test["auc"]),
                    "test_acc": finite_or_none(test["acc"]),
                    "train_seconds": seconds,
                    "stores": [str(store.path)],
                }
            )
    return rows, predictions, val_predictions
