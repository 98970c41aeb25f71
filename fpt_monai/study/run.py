"""The whole study (:func:`run_study`): check the settings, split the data into folds, build each method's feature
store (timed), train and test every (fold, method, lr, seed) through the bundle, add the logistic regressions (at
the study's resolution and ``--probe-img-sizes``), choose the reference (the probe strongest on validation), add
the fusions, then summarise and write the outputs. The command line is :mod:`fpt_monai.commands.study`."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path

from fpt_monai.study.compare import choose_reference, comparison_order, method_costs, summarize
from fpt_monai.study.defaults import DINOV2_WEIGHTS
from fpt_monai.study.folds import check_images_once, fold_datalists, load_datalist, num_classes, parse_list, write_folds
from fpt_monai.study.fusion import default_fusions, fuse_method, fusion_name, parse_fuse
from fpt_monai.study.report import markdown, settings_line, write_outputs
from fpt_monai.study.runs import (
    LOGREG_FEATURES,
    TRAIN_CONFIG,
    Runner,
    common_overrides,
    logreg_name,
    logreg_runs,
    lr_grids,
    method_presets,
    parse_overrides,
    prepare_store,
    probe_store,
    read_preloads,
    reference_method,
    study_method,
)
from fpt_monai.study.seed_ensemble import ensemble_name, seed_ensemble, seed_ensemble_methods

__all__ = ["default_weights", "run_study"]


def check_probe_views(views: int, transforms: Sequence[str] | str | None = None) -> int:
    """``--probe-views``, checked: 1 (the plain view only) up to 1 + the number of ``transforms`` (the bundle's
    ``store_view_transforms``, a ``--set`` override included; ``None``: its default).

    Raises:
        SystemExit: a number outside that range (naming the views it would read), or unknown transforms.
    """
    from fpt_monai.study.runs import probe_views
    from fpt_monai.transforms.frozen_views import DEFAULT_STORE_VIEW_TRANSFORMS

    names = list(DEFAULT_STORE_VIEW_TRANSFORMS if transforms is None else transforms)
    if isinstance(transforms, str):
        names = [t.strip() for t in transforms.split(",") if t.strip()]
    if not 1 <= int(views) <= 1 + len(names):
        raise SystemExit(
            f"--probe-views must be between 1 and {1 + len(names)} (the plain view, then the store_view_transforms "
            f"{', '.join(names)} in that order), got {views}."
        )
    try:
        return len(probe_views(views, transforms))
    except ValueError as err:
        raise SystemExit(f"--probe-views {views}: {err}") from None


def default_weights(weights: str) -> str:
    """``--weights`` for the runs: the default (the shared DINOv2 file, relative to the current directory) as an
    absolute path, which the runs' records keep; a given value as it is (a file, or what the bundle's
    ``pretrained`` accepts).

    Raises:
        SystemExit: the default weights file is missing.
    """
    if weights != str(DINOV2_WEIGHTS):
        return weights
    if not Path(weights).is_file():
        raise SystemExit(
            f"{weights} not found (the default pre-trained weights: the shared DINOv2 ViT-S/14 file, relative to "
            f"{Path.cwd()}); give --weights with the backbone's weights file."
        )
    return str(Path(weights).resolve())


def run_study(args: argparse.Namespace) -> int:
    """Run the study of the parsed command line ``args`` (:func:`fpt_monai.commands.study.build_parser`).

    Returns:
        The exit code, 0. A setting or input that cannot work raises ``SystemExit`` with the reason before any run.
    """
    from fpt_monai.utils.runtime import setup_cli

    setup_cli(args)
    if not args.verbose:
        warnings.filterwarnings("ignore")  # hundreds of runs: the study's table is the output
    methods = parse_list(args.methods, str)
    for method in methods:
        method_presets(method)
    grids = lr_grids(methods, args.lrs)
    seeds = parse_list(args.seeds, int)
    probe_sizes = [s for s in parse_list(args.probe_img_sizes or "", int) if s != args.img_size]
    sizes = [None, *probe_sizes]
    extra = parse_overrides(args.overrides)
    view_transforms = extra.get("store_view_transforms")  # what the bundle stores as views, a --set included
    probe_views = check_probe_views(args.probe_views, view_transforms)
    variants = [(1, False)] + ([(probe_views, False), (probe_views, True)] if probe_views > 1 else [])
    logregs = [logreg_name(s, f, *v) for s in sizes for f in LOGREG_FEATURES for v in variants]
    logregs = [] if args.no_logreg else logregs
    fuse = parse_fuse(args.fuse, methods + logregs)
    fusions = [fusion_name(a, b) for a, b in fuse or []]
    reference = reference_method(methods, args.reference, logregs + fusions)
    out = Path(args.out_dir).resolve()

    datalist = load_datalist(args)
    if "pretrained" not in extra:  # --set pretrained=... replaces --weights in every run
        args.weights = default_weights(args.weights)
    datalist = check_images_once(datalist, extra.get("skip_unreadable", False))
    folds = fold_datalists(datalist, args.folds, args.val_fraction, args.split_seed)
    fold_dirs = write_folds(folds, out)
    from tqdm.auto import tqdm

    total = len(folds) * sum(len(g) + len(seeds) - 1 for g in grids.values())
    runs, chosen = [], {m: {} for m in methods}
    overrides = {**common_overrides(args, num_classes(datalist), out), **extra}
    # each method's store first, timed: the runs' training times then hold no preload
    for method in methods:
        first = {"learning_rate": grids[method][0], "seed": seeds[0]}
        prepare_store(out, [TRAIN_CONFIG, *method_presets(method)], fold_dirs, {**overrides, **first}, args.verbose)
    with tqdm(total=total, desc="study", unit="run") as bar:
        run = Runner(out, fold_dirs, overrides, bar, args.verbose)
        for fold in range(len(folds)):
            for method in methods:
                fold_runs, chosen[method][fold] = study_method(run, fold, method, grids[method], seeds)
                runs.extend(fold_runs)
    bundle_runs = len(runs)
    predictions, val_predictions = dict(run.predictions), dict(run.val_predictions)
    for size in sizes if logregs else []:
        store = probe_store(out, folds, overrides, size, args.verbose, views=probe_views)
        # the pooled features and the stored tokens' layer means of the same store (its preload keeps both), each
        # from the plain view and (--probe-views) from the stored views
        for features in LOGREG_FEATURES:
            for views, tta in variants:
                name = logreg_name(size, features, views, tta)
                extra_rows, test_preds, val_preds = logreg_runs(
                    store, folds, seeds, name, features, views, tta, view_transforms
                )
                predictions.update(test_preds)
                val_predictions.update(val_preds)
                if extra_rows:
                    methods.append(name)
                    chosen[name] = {r["fold"]: r["lr"] for r in extra_rows}
                    runs.extend(extra_rows)
    ensembles = {}  # seeds(A) -> A
    for method in seed_ensemble_methods(list(chosen), seeds):
        rows, test_preds, val_preds, why = seed_ensemble(method, runs, chosen, predictions, val_predictions)
        if rows:
            name = ensemble_name(method)
            ensembles[name] = method
            methods.append(name)
            chosen[name] = {r["fold"]: r["lr"] for r in rows}
            runs.extend(rows)
            predictions.update(test_preds)
            val_predictions.update(val_preds)
        else:
            print(f"no seed ensemble: {why}")
    studied = list(methods)
    choice = choose_reference(runs, chosen, studied, reference if reference in studied else None)
    if reference is not None and reference not in studied and reference not in fusions:
        raise SystemExit(f"--reference {reference!r} has no runs (no store of pooled features for it?).")
    reference = reference or choice["reference"]
    if reference is not None and reference != choice["reference"]:
        choice.update(reference=reference, why="given by --reference")

    fusion_rows = []
    for a, b in default_fusions(studied, choice["reference"]) if fuse is None else fuse:
        if a not in studied or b not in studied:
            fusion_rows.append({"method": fusion_name(a, b), "weights": {}, "note": f"{a} or {b} has no runs"})
            continue
        rows, weights, blended, why = fuse_method(a, b, runs, chosen, predictions, val_predictions)
        fusion_rows.append({"method": fusion_name(a, b), "parts": [a, b], "weights": weights, "note": why})
        if rows:
            methods.append(fusion_name(a, b))
            chosen[fusion_name(a, b)] = weights
            runs.extend(rows)
            predictions.update(blended)
    if reference is not None and reference not in methods:
        notes = [f["note"] for f in fusion_rows if f["method"] == reference and f.get("note")]
        why = notes[0] if notes else "it is neither a studied method, a probe of --probe-img-sizes nor a fusion"
        raise SystemExit(f"--reference {reference!r} has no runs: {why}; choose one of {', '.join(methods)}.")
    # the reference first, then every comparison against each probe
    if args.baseline is not None and args.baseline not in methods:
        raise SystemExit(f"--baseline {args.baseline!r} has no runs; choose one of {', '.join(methods)}.")
    references = comparison_order(reference, args.baseline, methods)
    summary = summarize(runs, chosen, methods, references, predictions)
    preloads = read_preloads(out)
    parts = {**{f["method"]: f.get("parts") for f in fusion_rows}, **{e: [m] for e, m in ensembles.items()}}
    summary["reference_choice"] = choice
    summary["fusions"] = fusion_rows
    summary["costs"] = [method_costs(runs, m, preloads, parts.get(m)) for m in methods]
    text = markdown(summary, settings_line(args, seeds, grids, len(folds)))
    meta = {"settings": vars(args), "reference": reference, "new_runs": run.new_runs, "total_runs": len(runs)}
    write_outputs(out, runs, chosen, summary, text, meta)
    print(f"{run.new_runs} new runs, {bundle_runs - run.new_runs} reused; results in {out}")
    print(text)
    return 0
