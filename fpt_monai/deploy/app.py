# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI Deploy application: a DICOM study folder in, an FPT classification out (``output.json`` + a text SR).

    python -m fpt_monai.deploy -i dicom_dir -o out -m bundle/models/model.ts [--rules rules.json] [--heatmaps]
        [--frames refuse|first|middle|every|<index>]

A pre-flight (:func:`~fpt_monai.deploy.dicom_input.inventory_dicom_folder`) triages every input file. Then, for each
study, a holoscan graph of MONAI Deploy App SDK operators runs: ``DICOMDataLoaderOperator`` ->
``DICOMSeriesSelectorOperator`` (configurable rules, by default every image series) -> :class:`FPTClassifierOperator`
(the bundle's preprocessing and the exported model) -> ``DICOMTextSRWriterOperator`` (a Basic Text SR in the study).
``output.json`` reports every input file as classified, skipped or failed, with the reason. The exit code is 0 only
when every image instance the rules select was classified; otherwise ``output.json`` is still written (without SRs)
and the exit code is 2. The app writes into a staging folder inside ``out`` and moves the files in at the end.
Settings also come from the environment, for packaged apps: ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``,
``HOLOSCAN_MODEL_PATH``, ``FPT_DEPLOY_RULES`` (a file or JSON text), ``FPT_DEPLOY_HEATMAPS=1``, ``FPT_DEPLOY_DEVICE``,
``FPT_DEPLOY_FRAMES``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from importlib import resources
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_text_sr_writer_operator import DICOMTextSRWriterOperator
from monai.deploy.operators.dicom_utils import EquipmentInfo, ModelInfo

from fpt_monai.deploy.dicom_input import (
    CLASSIFIED,
    FAILED,
    IMAGE,
    SKIPPED,
    InputFile,
    inventory_dicom_folder,
    relative_name,
)
from fpt_monai.deploy.model import ExportedFPT
from fpt_monai.deploy.operators import FPTClassifierOperator, NoMatchingSeriesError
from fpt_monai.transforms.dicom_objects import frame_indices
from fpt_monai.utils.atomic import atomic_write_text

__all__ = ["DEFAULT_RULES", "FPTDeployApp", "IncompleteRunError", "load_rules", "main", "run"]


class IncompleteRunError(RuntimeError):
    """Some input files failed: ``output.json`` lists them (and the classified ones); no SR was written.

    Attributes:
        output: the ``output.json`` content.
    """

    def __init__(self, message: str, output: dict) -> None:
        super().__init__(message)
        self.output = output


DEFAULT_RULES = resources.files("fpt_monai.deploy").joinpath("rules.json").read_text()


def load_rules(rules: str | os.PathLike | None) -> str:
    """Series-selection rules as the SDK's JSON text, from a file, JSON text, or the shipped default."""
    if not rules:
        return DEFAULT_RULES
    text = Path(rules).read_text() if Path(str(rules)).is_file() else str(rules)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"series-selection rules {str(rules)[:200]!r} are neither a file nor JSON: {err}") from err
    if not isinstance(parsed, dict) or not isinstance(parsed.get("selections"), list):
        raise ValueError('series-selection rules need a "selections" list, see fpt_monai/deploy/rules.json.')
    return text


class FPTDeployApp(Application):
    """DICOM in, FPT classification out: ``output.json`` and a DICOM text SR (see the module docstring).

    Args:
        model: the exported model (loaded once, before the graph starts).
        rules: series-selection rules JSON text (:func:`load_rules`).
        argv: ``[python, program, -i, ..., -o, ..., -m, ...]`` as for any MONAI Deploy app.
        staged: the loader's input files mapped to the pre-flight's verdicts on the originals (see :func:`run`).
        frames: the multi-frame policy.
    """

    def __init__(
        self,
        model: ExportedFPT,
        rules: str = DEFAULT_RULES,
        argv: list[str] | None = None,
        staged: dict[str, InputFile] | None = None,
        frames: str | int = "refuse",
    ) -> None:
        self.model = model
        self.rules = rules
        self.staged = staged
        self.frames = frames
        super().__init__(argv)

    def compose(self) -> None:
        ctx = Application.init_app_context(self.argv)
        output = Path(ctx.output_path)
        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(ctx.input_path), name="loader"
        )
        selector = DICOMSeriesSelectorOperator(self, rules=self.rules, all_matched=True, name="selector")
        classifier = FPTClassifierOperator(
            self,
            model=self.model,
            output_folder=output,
            input_folder=ctx.input_path,
            staged=self.staged,
            frames=self.frames,
            name="fpt_classifier",
        )
        sr_writer = DICOMTextSRWriterOperator(
            self,
            copy_tags=True,
            # IHE AIR: the Device UID changes with each trained model: a UID derived from the checkpoint's SHA-256
            model_info=ModelInfo("fpt_monai", self.model.name, self.model.version, self.model.device_uid),
            equipment_info=EquipmentInfo(manufacturer="fpt_monai", manufacturer_model=self.model.name),
            custom_tags={"SeriesDescription": "AI classification (FPT). Not for diagnostic use."},
            output_folder=output,
            name="sr_writer",
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(loader, classifier, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, classifier, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(classifier, sr_writer, {("result_text", "text")})
        self.add_flow(selector, sr_writer, {("study_selected_series_list", "study_selected_series_list")})


def _stage(items: list[InputFile], folder: Path) -> dict[str, InputFile]:
    """Give the SDK loader one study: links to the original files, or copies without the attributes that would make
    it drop an instance (``InputFile.loader_fix``). Returns the pre-flight's item of each staged path."""
    import pydicom

    folder.mkdir(parents=True)
    staged = {}
    for n, item in enumerate(items):
        target = folder / f"{n:06d}.dcm"
        if item.loader_fix:
            ds = pydicom.dcmread(item.path)
            for keyword in item.loader_fix:
                del ds[keyword]
            ds.save_as(target)
        else:
            try:
                target.symlink_to(item.path.resolve())
            except OSError:  # no symlinks on this file system
                shutil.copyfile(item.path, target)
        staged[str(target)] = item
    return staged


def _move_outputs(source: Path, output_path: Path) -> None:
    for entry in sorted(source.iterdir()):
        target = output_path / entry.name
        if target.is_dir() and entry.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)


def run(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model_path: str | os.PathLike,
    rules: str | os.PathLike | None = None,
    heatmaps: bool = False,
    device: str = "cpu",
    frames: str | int = "refuse",
) -> dict:
    """Run the app on every study of ``input_path``; returns the ``output.json`` content.

    Raises:
        DicomInputError: no DICOM image in the input (nothing is written).
        NoMatchingSeriesError: no series matches the rules (nothing is written).
        IncompleteRunError: some files failed; ``output.json`` (with every file's verdict) is written, no SR.
    """
    # absolute: the SDK loader reports the files it read by path, and they are matched back to the originals
    input_path, output_path = Path(input_path).absolute(), Path(output_path).absolute()
    frame_indices(1, frames)  # an unknown policy fails here, before the model loads
    rules_text = load_rules(rules)
    model = ExportedFPT(model_path, device=device, heatmaps=heatmaps)
    inventory = inventory_dicom_folder(input_path)
    studies: dict[str, list[InputFile]] = {}
    for item in inventory:
        if item.status == IMAGE:
            studies.setdefault(item.study_instance_uid, []).append(item)
    output_path.mkdir(parents=True, exist_ok=True)
    staging = output_path / f".fpt_deploy_staging_{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    final = staging / "final"
    final.mkdir(parents=True)
    try:
        results, srs = [], []
        for n, items in enumerate(studies.values()):
            staged = _stage(items, staging / "input" / str(n))
            out = staging / "output" / str(n)
            argv = [sys.executable, "fpt_monai.deploy", "-i", str(staging / "input" / str(n)), "-o", str(out)]
            argv += ["-m", str(model.path)]
            FPTDeployApp(model, rules_text, argv=argv, staged=staged, frames=frames).run()
            if not (out / "study.json").is_file():  # holoscan may log an operator's error instead of raising
                raise RuntimeError(f"{input_path}: the deploy app did not finish; the log above shows the cause.")
            study = json.loads((out / "study.json").read_text())
            by_path = {str(item.path): item for item in items}
            for path, verdict in study["files"].items():
                by_path[path].status, by_path[path].reason = verdict["status"], verdict.get("reason", "")
            for item in items:
                if item.status == IMAGE:  # parsed by the pre-flight but not handed on by the SDK loader
                    item.status = FAILED
                    item.reason = (
                        "the MONAI Deploy DICOM loader dropped this instance (its WARNING above says why); "
                        "re-export the file"
                    )
            if study["study"] is not None:
                for record in study["study"]["instances"]:  # the original file, as in "files"
                    record["file"] = relative_name(Path(record["file"]), input_path)
                for sr in sorted(out.glob("*.dcm")):  # the SR writer's one file
                    study["study"]["sr_file"] = sr.name
                    srs.append(sr)
                results.append(study["study"])
            if (out / "heatmaps").is_dir():
                (final / "heatmaps").mkdir(exist_ok=True)
                for png in (out / "heatmaps").iterdir():
                    if (final / "heatmaps" / png.name).exists():  # names are unique per SOP instance: never overwrite
                        raise RuntimeError(f"{png.name}: two studies wrote a heatmap of this name; report this bug.")
                    os.replace(png, final / "heatmaps" / png.name)
        counts = {s: sum(item.status == s for item in inventory) for s in (CLASSIFIED, SKIPPED, FAILED)}
        counts["duplicates"] = sum(bool(item.duplicate_of) for item in inventory)  # among the skipped: analysed once
        if not results and not counts[FAILED]:
            found = sorted({f"Modality={i.modality!r}" for i in inventory if i.status == SKIPPED and i.modality})
            raise NoMatchingSeriesError(
                f"{input_path}: no DICOM series matches the selection rules; found "
                f"{'; '.join(found) if found else 'no image series'}. Pass other rules with --rules rules.json "
                "(see docs/deploy.md)."
            )
        complete = counts[FAILED] == 0
        output = {
            "status": "complete" if complete else "incomplete",
            "model": {**model.identity, "file": model.path.name, "calibration": model.calibration},
            "frames": frames,
            "counts": counts,
            "studies": results,
            "files": [item.record(input_path) for item in inventory],
        }
        if complete:
            for sr in srs:
                os.replace(sr, final / sr.name)
        else:
            for study in results:
                study.pop("sr_file", None)
        atomic_write_text(final / "output.json", json.dumps(output, indent=1))
        _move_outputs(final, output_path)
        if not complete:
            failed = [item for item in inventory if item.status == FAILED]
            first = failed[0]
            raise IncompleteRunError(
                f"{first.path}: {first.reason.rstrip('.')}. {len(failed)} of {len(inventory)} input file(s) failed "
                f"(listed with their reasons in {output_path / 'output.json'}); no SR was written. Fix or remove "
                "them and run again.",
                output,
            )
        return output
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _error_line(err: BaseException) -> str:
    """Details first, then ``fpt_monai: error: <file>: <reason>. <fix>`` as the last line (our errors put the file,
    the reason and the fix in their first line and a listing below it)."""
    from fpt_monai.utils.errors import PREFIX, error_line, find_error, is_ours

    cause = find_error(err)
    if not is_ours(cause):
        return error_line(err)
    first, *details = str(cause).splitlines() or [type(cause).__name__]
    return "\n".join([*details, f"{PREFIX}{first}"])


def main(argv: list[str] | None = None) -> int:
    """The CLI: 0 when every selected image instance was classified, 2 when some failed (``output.json`` written,
    no SR), 1 on any other error (nothing written)."""
    from fpt_monai.commands.deploy import build_parser

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("fpt_monai.deploy")
    try:
        output = run(args.input, args.output, args.model, args.rules, args.heatmaps, args.device, args.frames)
    except IncompleteRunError as err:
        log.debug("incomplete run", exc_info=True)
        print(_error_line(err), file=sys.stderr)
        return 2
    except Exception as err:  # one clear last line for the operator of the pipeline
        from fpt_monai.utils.errors import find_error, is_ours

        # ours name the file and the fix: their traceback only at DEBUG; anything else shows where it happened
        log.log(logging.DEBUG if is_ours(find_error(err)) else logging.ERROR, "failed", exc_info=True)
        print(_error_line(err), file=sys.stderr)
        return 1
    for study in output["studies"]:
        probs = ", ".join(f"{c} {p:.3f}" for c, p in study["probabilities"].items())
        print(f"study {study['study_instance_uid']}: {study['class']} ({probs})")
    print(f"{output['counts'][CLASSIFIED]} classified, {output['counts'][SKIPPED]} skipped (see output.json)")
    return 0
