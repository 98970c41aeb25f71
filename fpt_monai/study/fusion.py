"""The study's fusions: two studied methods' probabilities blended per fold, with the weight chosen on that fold's
validation predictions (:func:`fpt_monai.engines.probability_blend.choose_blend_weight`), then tested like any
method. A fusion ``fuse(A,B)`` has one row per (fold, seed) its two methods share: ``lr`` holds A's weight ``w``
(``w * p_A + (1 - w) * p_B``), the same for every seed of the fold, chosen on the seeds' averaged validation
probabilities; its test predictions are each seed's blend, pooled like any method's."""

from __future__ import annotations

import numpy as np

from fpt_monai.study.runs import finite_or_none

__all__ = [
    "FPT_FAMILY",
    "align",
    "default_fusions",
    "fuse_method",
    "fusion_name",
    "is_probe",
    "mean_prediction",
    "parse_fuse",
]

# methods whose first preset starts so are FPT-family (fpt, fpt_plus, fpt_plus_hybrid, fpt_plus_lpm, ...)
FPT_FAMILY = "fpt"


def fusion_name(a: str, b: str) -> str:
    """``fuse(a,b)``."""
    return f"fuse({a},{b})"


def is_probe(method: str) -> bool:
    """A probe of the frozen model's pooled features: the logistic regressions and any ``linear_probe*`` method."""
    return method.startswith("logreg_sklearn") or method.split("+")[0].startswith("linear_probe")


def parse_fuse(spec: str | None, known: list[str]) -> list[tuple[str, str]] | None:
    """``--fuse "A:B;C:D"`` as ``[(A, B), (C, D)]``; ``None`` when not given (the default fusions), ``[]`` for
    ``--fuse none``.

    Raises:
        SystemExit: an entry that is not ``A:B``, a method not among ``known``, or ``A`` the same as ``B``.
    """
    if spec is None:
        return None
    if spec.strip().lower() in ("", "none"):
        return []
    pairs = []
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        a, sep, b = (v.strip() for v in entry.partition(":"))
        if not sep or a not in known or b not in known or a == b:
            raise SystemExit(f"--fuse entry {entry!r}: expected A:B with two different methods of {known}.")
        pairs.append((a, b))
    return pairs


def default_fusions(methods: list[str], reference: str | None) -> list[tuple[str, str]]:
    """Every FPT-family method studied (its seed ensemble ``seeds(...)`` included) fused with the reference probe
    (none without a probe as reference)."""
    if reference is None or not is_probe(reference):
        return []
    return [(m, reference) for m in methods if m.removeprefix("seeds(").split("+")[0].startswith(FPT_FAMILY)]


def align(pred: dict, ids: list[str]) -> np.ndarray:
    """``pred``'s probabilities in the order of ``ids``.

    Raises:
        ValueError: ``pred`` lacks one of the ids.
    """
    row = {item: k for k, item in enumerate(pred["ids"])}
    missing = [i for i in ids if i not in row]
    if missing:
        raise ValueError(f"no prediction of {len(missing)} image(s), e.g. {missing[0]!r}")
    return pred["probs"][[row[i] for i in ids]]


def mean_prediction(preds: list[dict]) -> dict:
    """The mean of ``preds``' probabilities, in the first one's image order (``ValueError`` if one lacks an image)."""
    first = preds[0]
    probs = np.mean([align(p, first["ids"]) for p in preds], axis=0)
    return {**first, "probs": probs}


def fuse_method(
    a: str,
    b: str,
    runs: list[dict],
    chosen: dict,
    predictions: dict,
    val_predictions: dict,
) -> tuple[list[dict], dict, dict[tuple, dict], str]:
    """The fusion of ``a`` with ``b``: per fold, the weight chosen on the validation predictions of their chosen runs
    (seeds averaged), then each shared seed's test probabilities blended with it.

    Args:
        a, b: the two methods (``a`` gets the weight ``w``).
        runs, chosen: the study's rows and chosen learning rates (or C) per method and fold.
        predictions, val_predictions: test and validation predictions per run key ``(fold, method, lr, seed)``.

    Returns:
        ``(rows, {fold: weight}, {run key: blended test predictions}, why not)``: empty with the reason when a
        fold misses validation or test predictions of either method (e.g. runs of an older study).
    """
    from fpt_monai.engines.metrics import classification_metrics
    from fpt_monai.engines.probability_blend import blend_probabilities, choose_blend_weight

    name = fusion_name(a, b)
    rows, weights, blended = [], {}, {}
    picked = {m: [r for r in runs if r["method"] == m and r["lr"] == chosen[m].get(r["fold"])] for m in (a, b)}
    for fold in sorted(set(chosen[a]) & set(chosen[b])):
        side = {m: {r["seed"]: r for r in picked[m] if r["fold"] == fold} for m in (a, b)}
        seeds = sorted(set(side[a]) & set(side[b]))
        key = {m: {s: (fold, m, side[m][s]["lr"], s) for s in seeds} for m in (a, b)}
        val = {m: [val_predictions.get(key[m][s]) for s in seeds] for m in (a, b)}
        test = {m: [predictions.get(key[m][s]) for s in seeds] for m in (a, b)}
        if not seeds or any(p is None for m in (a, b) for p in val[m] + test[m]):
            return [], {}, {}, f"{name}: fold {fold} lacks validation or test predictions of {a} or {b}"
        try:
            val_a = mean_prediction(val[a])
            ids = val_a["ids"]
            choice = choose_blend_weight(val_a["probs"], align(mean_prediction(val[b]), ids), val_a["labels"])
            w = choice["weight"]
            weights[fold] = w
            for s, pa, pb in zip(seeds, test[a], test[b], strict=True):
                probs = blend_probabilities(pa["probs"], align(pb, pa["ids"]), w)
                blended[(fold, name, w, s)] = {**pa, "probs": probs}
                m = classification_metrics(probs, pa["labels"], num_classes=probs.shape[1])
                rows.append(
                    {
                        "fold": fold,
                        "method": name,
                        "lr": w,
                        "seed": s,
                        "val_auc": finite_or_none(choice["val_auc"]),
                        "test_auc": finite_or_none(m["auc"]),
                        "test_acc": finite_or_none(m["acc"]),
                        "train_seconds": None,
                        "stores": [],
                    }
                )
        except ValueError as err:
            return [], {}, {}, f"{name}: fold {fold}: {err}"
    if not rows:
        return [], {}, {}, f"{name}: {a} and {b} share no fold and seed"
    return rows, weights, blended, ""
