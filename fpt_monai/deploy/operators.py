# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI Deploy operator that classifies the selected DICOM series with an exported FPT model.

Why our own operator instead of the SDK's ``MonaiBundleInferenceOperator``: that one fails on single-frame DICOM and
maps probabilities to class names value by value (docs/deploy.md). This operator reads each selected instance's file
with the bundle's own inference preprocessing (``LoadMedicalImaged``: rescale slope/intercept, VOI LUT or window,
MONOCHROME1 inversion, colour lookup tables), so deployed and bundle predictions are the same. An instance that cannot
be read is reported as failed, with the reason; it never stops the others or disappears.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from fpt_monai.deploy.dicom_input import CLASSIFIED, FAILED, SKIPPED, InputFile
from fpt_monai.deploy.model import ExportedFPT
from fpt_monai.transforms import ImageReadError
from fpt_monai.transforms.dicom_objects import frame_count, frame_indices
from fpt_monai.utils.atomic import atomic_write_text
from fpt_monai.utils.safe_paths import output_path

__all__ = ["FPTClassifierOperator", "NoMatchingSeriesError"]


class NoMatchingSeriesError(RuntimeError):
    """No DICOM series of the input matches the selection rules."""


def _series_label(series) -> str:
    return f"Modality={series.Modality!r} SeriesDescription={getattr(series, 'SeriesDescription', '')!r}"


def _reason(err: BaseException) -> str:
    """The reader's message, not MONAI's ``applying transform <...>`` wrapper around it."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    ours = [e for e in chain if isinstance(e, ImageReadError)]
    return str(ours[0] if ours else chain[-1]) or type(chain[-1]).__name__


def _heatmap_name(record: dict, frame: int | None) -> str:
    """The heatmap's file name (without ``.png``): the SOP Instance UID (unique in the run: the pre-flight skips
    duplicates), ``_frame<k>`` for a frame. A UID that is not digits and dots (untrusted text) gets a hash of itself
    (:func:`~fpt_monai.engines.heatmaps.heatmap_name`), so two UIDs that sanitise, or fold case, alike stay apart."""
    from fpt_monai.engines.heatmaps import heatmap_name

    uid = record["sop_instance_uid"]
    return heatmap_name(uid, frame, hashed=re.fullmatch(r"[0-9][0-9.]*", uid) is None)


def _mean(probabilities: list[dict[str, float]]) -> dict[str, float]:
    return {c: sum(p[c] for p in probabilities) / len(probabilities) for c in probabilities[0]}


class FPTClassifierOperator(Operator):
    """Classify every instance of the selected series of one study; write ``study.json``, emit the report text.

    Input ports: ``study_selected_series_list`` (from ``DICOMSeriesSelectorOperator``) and ``dicom_study_list``
    (from ``DICOMDataLoaderOperator``: every loaded instance, so the ones the rules leave out are reported as
    skipped). Output port: ``result_text`` (emitted when at least one instance was classified).

    ``study.json`` holds ``study`` (the study UID, the mean of the instances' probabilities with its class, and one
    record per instance: series and SOP instance UIDs, file, class, probabilities, heatmap, frames) or ``None``, and
    ``files``: the verdict on every loaded file (classified, skipped because its series was not selected, or failed
    with the reason), keyed by the original file. :func:`fpt_monai.deploy.app.run` merges them into ``output.json``.

    Args:
        fragment: the application.
        model: the exported model.
        output_folder: where ``study.json`` (and ``heatmaps/``) go.
        input_folder: the DICOM input, named in messages.
        staged: the files the loader reads (staged copies or links) mapped to the pre-flight's verdicts on the
            original files; defaults to each file being its own original.
        frames: the multi-frame policy (:func:`fpt_monai.transforms.dicom_objects.frame_indices`).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        model: ExportedFPT,
        output_folder: str | Path,
        input_folder: str | Path = "",
        staged: dict[str, InputFile] | None = None,
        frames: str | int = "refuse",
        **kwargs,
    ) -> None:
        self.model = model
        self.output_folder = Path(output_folder)
        self.input_folder = str(input_folder)
        self.staged = dict(staged or {})
        self.frames = frames
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)  # must be last: it calls setup()

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.input("dicom_study_list")
        spec.output("result_text").condition(ConditionType.NONE)

    def _original(self, filename: str) -> str:
        item = self.staged.get(str(filename))
        return str(item.path) if item is not None else str(filename)

    def compute(self, op_input, op_output, context) -> None:
        selected = op_input.receive("study_selected_series_list") or []
        studies = op_input.receive("dicom_study_list") or []
        verdicts: dict[str, dict] = {}
        chosen = {id(item.series) for study in selected for item in study.selected_series}
        for study in studies:
            for series in study.get_all_series():
                if id(series) in chosen:
                    continue
                for sop in series.get_sop_instances():
                    reason = f"series not selected by the rules ({_series_label(series)})"
                    verdicts[self._original(sop.get_native_sop_instance().filename)] = {
                        "status": SKIPPED,
                        "reason": reason,
                    }
        instances = [
            (study.study, item.series, sop)
            for study in selected[:1]  # one study per run: the app stages each study on its own
            for item in study.selected_series
            for sop in item.series.get_sop_instances()
        ]
        records: list[dict] = []
        inputs: list[tuple[dict, int | None, torch.Tensor]] = []  # (record, frame or None, network input)
        for _, series, sop in instances:
            native = sop.get_native_sop_instance()
            original = self._original(native.filename)
            num_frames = frame_count(native)
            try:
                frames = frame_indices(num_frames, self.frames, original)
                picked = [None] if num_frames == 1 else frames  # a single-frame file is read as it is
                tensors = [(k, self.model.preprocess(native.filename, k)) for k in picked]
            except Exception as err:  # any unreadable instance is reported with its reason, never dropped
                reason = _reason(err).replace(str(native.filename), original).removeprefix(f"{original}: ")
                verdicts[original] = {"status": FAILED, "reason": reason}
                self.logger.warning("failed to classify %s", reason)
                continue
            verdicts[original] = {"status": CLASSIFIED}
            record = {
                "series_instance_uid": str(series.SeriesInstanceUID),
                "sop_instance_uid": str(native.SOPInstanceUID),
                "file": original,  # made relative to the input folder by the app
            }
            records.append(record)
            inputs.extend((record, k, x) for k, x in tensors)
        per_record: dict[int, list[tuple[int | None, dict]]] = {}
        for (record, k, x), result in zip(inputs, self.model.predict([x for _, _, x in inputs]), strict=True):
            if result["heatmap"] is not None:
                result["heatmap_file"] = self._save_heatmap(x, result["heatmap"], _heatmap_name(record, k))
            per_record.setdefault(id(record), []).append((k, result))
        for record in records:
            results = per_record[id(record)]
            record["probabilities"] = _mean([r["probabilities"] for _, r in results])
            record["class"] = self.model.decide(record["probabilities"])  # at the recorded operating point
            if results[0][0] is None:  # single-frame
                if "heatmap_file" in results[0][1]:
                    record["heatmap"] = results[0][1]["heatmap_file"]
                continue
            record["frames"] = [
                {"frame": k, "class": r["class"], "probabilities": r["probabilities"]}
                | ({"heatmap": r["heatmap_file"]} if "heatmap_file" in r else {})
                for k, r in results
            ]
        study_result = None
        if records:
            study_result = {
                "study_instance_uid": str(instances[0][0].StudyInstanceUID),
                "class": "",
                "probabilities": _mean([r["probabilities"] for r in records]),
                "instances": records,
            }
            study_result["class"] = self.model.decide(study_result["probabilities"])
        self.output_folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_folder / "study.json", json.dumps({"study": study_result, "files": verdicts}))
        if study_result is not None:
            op_output.emit(self.report_text(study_result, self.model), "result_text")

    def _save_heatmap(self, image: torch.Tensor, heatmap: torch.Tensor, name: str) -> str:
        from fpt_monai.engines.heatmaps import save_heatmap

        # the UID comes from the input file: never let it choose where the file goes
        path = output_path(self.output_folder, name, ".png", subfolder="heatmaps")
        config = self.model.model_config
        save_heatmap(path, image, heatmap, config["mean"], config["std"])
        return path.relative_to(self.output_folder).as_posix()

    @staticmethod
    def report_text(study: dict, model: ExportedFPT) -> str:
        """The narrative text of the Structured Report of one study."""
        probs = ", ".join(f"{c} {p:.3f}" for c, p in study["probabilities"].items())
        lines = [
            f"AI classification ({model.name}, fpt_monai {model.version}): {study['class']}.",
            f"Model: MLflow run {model.run_id or 'not recorded'}, checkpoint SHA-256 "
            f"{model.checkpoint_sha256 or 'not recorded'}.",
            f"Class probabilities: {probs}.",
            f"Images analysed: {len(study['instances'])}.",
        ]
        from fpt_monai.engines.operating_point import describe_calibration

        # how the class was decided (the temperature and threshold training chose on its validation split)
        lines[3:3] = [f"Decision: {line}." for line in describe_calibration(model.calibration)]
        for r in study["instances"]:
            frames = f" ({len(r['frames'])} frame(s))" if "frames" in r else ""
            lines.append(f"- SOP Instance {r['sop_instance_uid']}{frames}: {r['class']}")
        lines.append("Not for diagnostic use without review by a qualified clinician.")
        return "\n".join(lines)
