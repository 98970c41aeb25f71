"""The study's seed ensembles: a method trained with several seeds, its probabilities averaged over the seeds of each
fold (at the fold's chosen learning rate), tested as one model. With a few hundred images one seed moves a fold's test
AUC by about +-0.02 (docs/benchmarks.md, issue 22), the size of the gains a small-data study looks for; the mean of the
seeds' AUCs measures a single model, the ensemble measures what averaging the seeds' predictions buys. An ensemble
``seeds(A)`` has one row per fold (``seed`` = the first seed, ``lr`` = the fold's chosen learning rate), so it is
paired with the reference by fold; its cost is its method's runs (``K`` trainings and ``K`` side passes at inference,
one frozen pass)."""

from __future__ import annotations

from fpt_monai.study.fusion import is_probe, mean_prediction
from fpt_monai.study.runs import finite_or_none

__all__ = ["ensemble_name", "seed_ensemble", "seed_ensemble_methods"]


def ensemble_name(method: str) -> str:
    """``seeds(method)``."""
    return f"seeds({method})"


def seed_ensemble_methods(methods: list[str], seeds: list[int]) -> list[str]:
    """The methods that get a seed ensemble: every studied method trained through the bundle (not a probe: the
    logistic regression is deterministic and repeats per seed), when there are two seeds or more."""
    return [m for m in methods if not is_probe(m)] if len(seeds) >= 2 else []


def seed_ensemble(
    method: str, runs: list[dict], chosen: dict, predictions: dict, val_predictions: dict
) -> tuple[list[dict], dict[tuple, dict], dict[tuple, dict], str]:
    """The seed ensemble of ``method``: per fold, the mean of its chosen runs' test (and validation) probabilities.

    Args:
        method: a method with runs of two seeds or more per fold.
        runs, chosen: the study's rows and the chosen learning rate per method and fold.
        predictions, val_predictions: test and validation predictions per run key ``(fold, method, lr, seed)``.

    Returns:
        ``(rows, {key: test prediction}, {key: validation prediction}, why not)``: empty with the reason when a fold
        has fewer than two seeds or misses a run's predictions (e.g. runs of an older study).
    """
    from fpt_monai.engines.metrics import classification_metrics

    name = ensemble_name(method)
    rows, test_out, val_out = [], {}, {}
    for fold in sorted(chosen.get(method, {})):
        lr = chosen[method][fold]
        picked = sorted(
            (r for r in runs if r["method"] == method and r["fold"] == fold and r["lr"] == lr), key=lambda r: r["seed"]
        )
        if len(picked) < 2:
            return [], {}, {}, f"{name}: fold {fold} has {len(picked)} seed(s) at its chosen lr {lr:g}"
        keys = [(fold, method, lr, r["seed"]) for r in picked]
        test, val = [predictions.get(k) for k in keys], [val_predictions.get(k) for k in keys]
        if any(p is None for p in test + val):
            return [], {}, {}, f"{name}: fold {fold} lacks validation or test predictions of a seed"
        try:
            mean_test, mean_val = mean_prediction(test), mean_prediction(val)
        except ValueError as err:
            return [], {}, {}, f"{name}: fold {fold}: {err}"
        seed = picked[0]["seed"]
        test_out[(fold, name, lr, seed)] = mean_test
        val_out[(fold, name, lr, seed)] = mean_val
        t = classification_metrics(mean_test["probs"], mean_test["labels"], num_classes=mean_test["probs"].shape[1])
        v = classification_metrics(mean_val["probs"], mean_val["labels"], num_classes=mean_val["probs"].shape[1])
        rows.append(
            {
                "fold": fold,
                "method": name,
                "lr": lr,
                "seed": seed,
                "seeds": [r["seed"] for r in picked],
                "val_auc": finite_or_none(v["auc"]),
                "test_auc": finite_or_none(t["auc"]),
                "test_acc": finite_or_none(t["acc"]),
                "train_seconds": None,
                "stores": [],
            }
        )
    if not rows:
        return [], {}, {}, f"{name}: no fold has runs of {method}"
    return rows, test_out, val_out, ""
