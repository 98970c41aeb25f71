"""The whole study (:func:`run_study`): check the settings, split the data into folds, train and test every
(fold, method, lr, seed) through the bundle, add the logistic regression reference, then summarise and write the
outputs. The command line is :mod:`fpt_monai.commands.study`."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from fpt_monai.study.compare import summarize
from fpt_monai.study.defaults import DINOV2_WEIGHTS
from fpt_monai.study.folds import check_images_once, fold_datalists, load_datalist, num_classes, parse_list, write_folds
from fpt_monai.study.report import markdown, settings_line, write_outputs
from fpt_monai.study.runs import (
    LOGREG,
    Runner,
    common_overrides,
    logreg_runs,
    lr_grids,
    method_presets,
    parse_overrides,
    reference_method,
    study_method,
)

__all__ = ["default_weights", "run_study"]


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
    reference = reference_method(methods, args.reference)
    extra = parse_overrides(args.overrides)
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
    return 0
