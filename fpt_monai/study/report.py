"""The study's outputs: the Markdown table (``study.md``, also printed), every run (``study.csv``), the settings,
runs and summary (``study.json``) and the test AUC plot (``study.png``)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fpt_monai.study.compare import chosen_runs, mean_sd

__all__ = [
    "DELONG_FOOTNOTE",
    "cost_lines",
    "delong_cells",
    "fmt",
    "fusion_lines",
    "markdown",
    "notes",
    "plot",
    "settings_line",
    "write_csv",
    "write_outputs",
]


def fmt(value, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``; ``"n/a"`` for ``None``."""
    return "n/a" if value is None else format(value, spec)


def settings_line(args: argparse.Namespace, seeds: list[int], grids: dict, folds: int) -> str:
    """The study's settings in one line (the header of ``study.md``)."""
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
    """``study.md``: the per-method table, the reference and why, the fusions' weights, the paired comparisons
    (with DeLong's footnote and the reason of each missing DeLong test) and each method's costs."""
    lines = [header, ""]
    choice = summary.get("reference_choice")
    if choice:
        probes = ", ".join(f"{m} {fmt(v)}" for m, v in choice["probes"].items())
        lines += [
            f"Reference: {choice['reference'] or 'none'} ({choice['why']}). Probes' mean validation AUC: "
            f"{probes or 'none studied'}.",
            "",
        ]
    lines += [
        "| method | lr (logreg: C; fuse: weight of the first) per fold, chosen on val | runs | test AUC "
        "| test accuracy | test AUC per fold |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary["methods"]:
        lines.append(
            f"| {s['method']} | {', '.join(f'{v:g}' for v in s['lr_per_fold'])} | {s['runs']} | "
            f"{fmt(s['test_auc_mean'])} ± {fmt(s['test_auc_sd'])} | {fmt(s['test_acc_mean'])} ± "
            f"{fmt(s['test_acc_sd'])} | {' '.join(fmt(v) for v in s['test_auc_per_fold'])} |"
        )
    per_seed = [
        f"{s['method']}: " + ", ".join(f"seed {seed} {fmt(v)}" for seed, v in s["test_auc_per_seed"].items())
        for s in summary["methods"]
        if len(set(s.get("test_auc_per_seed", {}).values())) > 1  # a probe repeats one fit per seed
    ]
    if per_seed:
        lines += ["", "Test AUC of each seed (mean over folds): " + "; ".join(per_seed) + "."]
    if any(s["method"].startswith("seeds(") for s in summary["methods"]):
        lines += [
            "",
            "seeds(A): A's test probabilities averaged over its seeds in each fold (at the fold's chosen lr), one "
            "model per fold; A's own row is the mean over single seeds.",
        ]
    if any("+views" in s["method"] and s["method"].startswith("logreg_sklearn") for s in summary["methods"]):
        lines += [
            "",
            "logreg_sklearn...+viewsK: the logistic regression fitted on K stored views of each training image (the "
            "plain one and the first K - 1 store_view_transforms), validation and test on the plain view; +tta: "
            "validation and test average the K views' probabilities (C chosen on that average).",
        ]
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
    lines += fusion_lines(summary.get("fusions") or [])
    lines += cost_lines(summary.get("costs") or [])
    return "\n".join(lines) + "\n"


def fusion_lines(fusions: list[dict]) -> list[str]:
    """The fusions' paragraph: each one's weight per fold (chosen on the fold's validation predictions) or why it is
    missing."""
    if not fusions:
        return []
    lines = [
        "",
        "Fusions: w * p(first) + (1 - w) * p(second), w chosen per fold on that fold's validation predictions "
        "(highest validation AUC; the test part is not read).",
    ]
    for f in fusions:
        if f["weights"]:
            weights = ", ".join(f"fold {k}: {w:g}" for k, w in sorted(f["weights"].items()))
            lines.append(f"- {f['method']}: {weights}")
        else:
            lines.append(f"- {f['method']}: not computed ({f['note']})")
    return lines


def cost_lines(costs: list[dict]) -> list[str]:
    """The costs table: mean training minutes per run, the feature stores used (GB on disk now) and their preload
    minutes when this study built them."""
    if not costs:
        return []
    lines = [
        "",
        "| method | runs (timed) | training min / run | feature stores (GB) | preload min |",
        "|---|---|---|---|---|",
    ]
    for c in costs:
        if c.get("parts"):
            lines.append(f"| {c['method']} | - | {' + '.join(c['parts'])} | - | - |")
            continue
        stores = ", ".join(f"{s['store']} ({s['gb']:.3g})" for s in c["stores"]) or "none"
        preload = ", ".join(
            "built before" if s["preload_minutes"] is None else f"{s['preload_minutes']:.1f}" for s in c["stores"]
        )
        lines.append(
            f"| {c['method']} | {c['runs']} ({c['timed_runs']}) | {fmt(c['train_minutes_mean'], '.2f')} | {stores} "
            f"| {preload or '-'} |"
        )
    lines.append(
        "training min / run: the bundle training's wall time (every run, the lr search included; logreg: the fits "
        "of a fold); preload min: the time this study took to build the store (shared by every method that uses "
        "it), 'built before' when it found the store ready."
    )
    return lines


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
    """One row per run (``study.csv``)."""
    columns = ["fold", "method", "lr", "seed", "val_auc", "test_auc", "test_acc", "train_seconds"]
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
    """``<out>/study.{md,csv,json,png}``."""
    (out / "study.md").write_text(text)
    write_csv(runs, out / "study.csv")
    (out / "study.json").write_text(json.dumps({**meta, "runs": runs, "summary": summary}, indent=1))
    plot(runs, chosen, [s["method"] for s in summary["methods"]], meta["reference"], out / "study.png")
