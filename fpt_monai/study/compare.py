"""The study's figures: per method the mean ± sd of test AUC/accuracy over folds × seeds, each method's test
predictions pooled over folds (seeds averaged), the paired comparisons with a reference: per (fold, seed)
differences, folds won and a fold-wise paired test, and DeLong's test on the pooled predictions; the choice of the
reference (the probe strongest on validation) and each method's costs (training time, feature stores)."""

from __future__ import annotations

import statistics
import warnings

import numpy as np

from fpt_monai.study.runs import finite_or_none

__all__ = [
    "DELONG_KEYS",
    "choose_reference",
    "chosen_runs",
    "delong_comparison",
    "delong_sides",
    "fold_means",
    "mean_sd",
    "method_costs",
    "method_predictions",
    "method_summary",
    "paired_comparison",
    "paired_p_value",
    "pool_predictions",
    "summarize",
]


def mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample sd of the values that are not ``None`` (sd 0 for one value; ``None`` for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def chosen_runs(runs: list[dict], chosen: dict, method: str) -> list[dict]:
    """The runs of ``method`` with the learning rate chosen for their fold (``chosen[method][fold]``)."""
    return [r for r in runs if r["method"] == method and r["lr"] == chosen[method][r["fold"]]]


def fold_means(rows: list[dict], key: str = "test_auc") -> dict[int, float | None]:
    """The mean of ``key`` per fold, in fold order."""
    return {f: mean_sd([r[key] for r in rows if r["fold"] == f])[0] for f in sorted({r["fold"] for r in rows})}


def method_summary(runs: list[dict], chosen: dict, method: str) -> dict:
    """One method's row of the summary: its chosen runs' test AUC and accuracy overall and per fold."""
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
        # each seed's mean over folds: how far one training's result moves with its seed
        "test_auc_per_seed": {
            seed: mean_sd([r["test_auc"] for r in rows if r["seed"] == seed])[0]
            for seed in sorted({r["seed"] for r in rows})
        },
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


def comparison_order(reference: str | None, baseline: str | None, methods: list[str]) -> list[str]:
    """The methods every other one is compared with, in the report's order: the reference, then ``baseline`` (the
    plain recipe whose options are studied, ``--baseline``: each option's gain alone), then every probe; only those
    with runs (``methods``), each once."""
    from fpt_monai.study.fusion import is_probe

    return [m for m in dict.fromkeys([reference, baseline, *(m for m in methods if is_probe(m))]) if m in methods]


def choose_reference(runs: list[dict], chosen: dict, methods: list[str], given: str | None = None) -> dict:
    """The method the others are compared with first: ``given`` (``--reference``), else the probe (a logistic
    regression or a ``linear_probe*`` method, :func:`fpt_monai.study.fusion.is_probe`) with the highest mean
    VALIDATION AUC of its chosen settings; test figures never choose (ties: the first studied).

    Returns:
        ``{"reference", "why", "probes": {probe: mean validation AUC}}``; ``reference`` ``None`` without probes.
    """
    from fpt_monai.study.fusion import is_probe

    probes = {m: mean_sd([r["val_auc"] for r in chosen_runs(runs, chosen, m)])[0] for m in methods if is_probe(m)}
    if given is not None:
        return {"reference": given, "why": "given by --reference", "probes": probes}
    scored = {m: v for m, v in probes.items() if v is not None}
    if not scored:
        return {"reference": None, "why": "no probe with a validation AUC was studied", "probes": probes}
    best = max(scored, key=lambda m: (scored[m], -list(probes).index(m)))
    others = ", ".join(f"{m} {v:.3f}" for m, v in scored.items() if m != best)
    why = f"the probe with the highest mean validation AUC of its chosen settings ({scored[best]:.3f}"
    why += f"; {others})" if others else ")"
    return {"reference": best, "why": why + "; test AUC is not used to choose", "probes": probes}


def method_costs(runs: list[dict], method: str, preloads: dict[str, float], parts: list[str] | None = None) -> dict:
    """What ``method`` cost: the mean training wall time of its runs (every run, learning-rate search included; runs
    of an older study have none), and the feature stores its runs used: size on disk now and the preload time when
    this study built the store (``preloads``: :func:`fpt_monai.study.runs.read_preloads`; otherwise built before).
    A fusion (``parts``) costs its two methods' runs and adds none of its own.

    Returns:
        ``{"method", "runs", "timed_runs", "train_minutes_mean", "stores": [{"store", "gb", "preload_minutes"}],
        "store_gb", "preload_minutes", "parts"}``; ``preload_minutes`` ``None`` when no store was built here.
    """
    from pathlib import Path

    from fpt_monai.study.runs import dir_bytes

    rows = [r for r in runs if r["method"] == method]
    if method.startswith("logreg_sklearn"):  # one fit per fold, repeated per seed
        rows = list({r["fold"]: r for r in rows}.values())
    seconds = [r.get("train_seconds") for r in rows if r.get("train_seconds") is not None]
    stores = []
    for store in sorted({s for r in rows for s in r.get("stores") or []}):
        built = preloads.get(store)
        stores.append(
            {
                "store": Path(store).name,
                "gb": dir_bytes(store) / 1e9,
                "preload_minutes": None if built is None else built / 60,
            }
        )
    built = [s["preload_minutes"] for s in stores if s["preload_minutes"] is not None]
    return {
        "method": method,
        "runs": len(rows),
        "timed_runs": len(seconds),
        "train_minutes_mean": statistics.mean(seconds) / 60 if seconds else None,
        "stores": stores,
        "store_gb": sum(s["gb"] for s in stores),
        "preload_minutes": sum(built) if built else None,
        "parts": parts,
    }
