# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI Deploy operator that classifies the selected DICOM series with an exported FPT model.

Why our own operator instead of the SDK's ``MonaiBundleInferenceOperator``: that one fails on single-frame DICOM and
maps probabilities to class names value by value (docs/deploy.md). This operator reads each selected instance's file
with the bundle's own inference preprocessing (``LoadMedicalImaged``: rescale slope/intercept, VOI LUT or window,
MONOCHROME1 inversion), so deployed and bundle predictions are the same.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from fpt_monai.atomic import atomic_write_text
from fpt_monai.deploy.model import ExportedFPT
from fpt_monai.safe_paths import output_path

__all__ = ["FPTClassifierOperator", "NoMatchingSeriesError"]


class NoMatchingSeriesError(RuntimeError):
    """No DICOM series of the input matches the selection rules."""


def _series_summary(studies) -> list[str]:
    found = []
    for study in studies or []:
        for series in study.get_all_series():
            found.append(
                f"Modality={series.Modality!r} SeriesDescription={getattr(series, 'SeriesDescription', '')!r} "
                f"({len(series.get_sop_instances())} instances)"
            )
    return found


class FPTClassifierOperator(Operator):
    """Classify every instance of the selected series; write ``output.json`` and emit the report text for the SR.

    Input ports: ``study_selected_series_list`` (from ``DICOMSeriesSelectorOperator``) and ``dicom_study_list``
    (from ``DICOMDataLoaderOperator``, for the error message when nothing matches). Output port: ``result_text``.

    ``output.json`` holds the model (name, version, file), the study UID, the mean of the instances' probabilities
    with its class, and one record per instance (series and SOP instance UIDs, class, probabilities, heatmap file).

    Args:
        fragment: the application.
        model: the exported model.
        output_folder: where ``output.json`` (and ``heatmaps/``) go.
        input_folder: the DICOM input, named in error messages.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        model: ExportedFPT,
        output_folder: str | Path,
        input_folder: str | Path = "",
        **kwargs,
    ) -> None:
        self.model = model
        self.output_folder = Path(output_folder)
        self.input_folder = str(input_folder)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)  # must be last: it calls setup()

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.input("dicom_study_list")
        spec.output("result_text").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        selected = op_input.receive("study_selected_series_list") or []
        studies = op_input.receive("dicom_study_list")
        instances = [
            (study.study, item.series, sop)
            for study in selected[:1]  # the SR references one study: the first with a match
            for item in study.selected_series
            for sop in item.series.get_sop_instances()
        ]
        if not instances:
            found = _series_summary(studies)
            raise NoMatchingSeriesError(
                f"no DICOM series in {self.input_folder!r} matches the selection rules; found "
                f"{'; '.join(found) if found else 'no readable DICOM image series at all'}. "
                "Pass other rules with --rules rules.json (see docs/deploy.md)."
            )
        files = [sop.get_native_sop_instance().filename for _, _, sop in instances]
        results = self.model(files)
        records = []
        for (_, series, sop), result in zip(instances, results, strict=True):
            native = sop.get_native_sop_instance()
            record = {
                "series_instance_uid": str(series.SeriesInstanceUID),
                "sop_instance_uid": str(native.SOPInstanceUID),
                "file": Path(result["file"]).name,
                "class": result["class"],
                "probabilities": result["probabilities"],
            }
            if result["heatmap"] is not None:
                record["heatmap"] = self._save_heatmap(result, record["sop_instance_uid"])
            records.append(record)
        names = self.model.class_names
        mean = {c: sum(r["probabilities"][c] for r in records) / len(records) for c in names}
        output = {
            "model": {"name": self.model.name, "version": self.model.version, "file": self.model.path.name},
            "study_instance_uid": str(instances[0][0].StudyInstanceUID),
            "class": max(mean, key=mean.get),
            "probabilities": mean,
            "instances": records,
        }
        self.output_folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_folder / "output.json", json.dumps(output, indent=1))
        op_output.emit(self.report_text(output), "result_text")

    def _save_heatmap(self, result: dict, sop_instance_uid: str) -> str:
        from fpt_monai.engines.heatmaps import save_heatmap

        # the UID comes from the input file: never let it choose where the file goes
        path = output_path(self.output_folder, sop_instance_uid, ".png", subfolder="heatmaps")
        config = self.model.model_config
        save_heatmap(path, result["image"], result["heatmap"], config["mean"], config["std"])
        return path.relative_to(self.output_folder).as_posix()

    @staticmethod
    def report_text(output: dict) -> str:
        """The narrative text of the Structured Report."""
        probs = ", ".join(f"{c} {p:.3f}" for c, p in output["probabilities"].items())
        lines = [
            f"AI classification ({output['model']['name']} {output['model']['version']}): {output['class']}.",
            f"Class probabilities: {probs}.",
            f"Images analysed: {len(output['instances'])}.",
        ]
        lines += [f"- SOP Instance {r['sop_instance_uid']}: {r['class']}" for r in output["instances"]]
        lines.append("Not for diagnostic use without review by a qualified clinician.")
        return "\n".join(lines)
