# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI Deploy application: a DICOM study folder in, an FPT classification out (``output.json`` + a text SR).

    python -m fpt_monai.deploy -i dicom_dir -o out -m bundle/models/model.ts [--rules rules.json] [--heatmaps]

Pipeline (MONAI Deploy App SDK operators, holoscan graph): ``DICOMDataLoaderOperator`` ->
``DICOMSeriesSelectorOperator`` (configurable rules, by default every image series) -> :class:`FPTClassifierOperator`
(the bundle's preprocessing and the exported model) -> ``DICOMTextSRWriterOperator`` (a Basic Text SR in the source
study). Outputs appear only when
the whole run succeeded: the app writes into a staging folder inside ``out`` and moves the files in at the end.
Settings also come from the environment, for packaged apps: ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``,
``HOLOSCAN_MODEL_PATH``, ``FPT_DEPLOY_RULES`` (a file or JSON text), ``FPT_DEPLOY_HEATMAPS=1``, ``FPT_DEPLOY_DEVICE``.
"""

from __future__ import annotations

import argparse
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

from fpt_monai.deploy.dicom_input import check_dicom_folder
from fpt_monai.deploy.model import ExportedFPT
from fpt_monai.deploy.operators import FPTClassifierOperator
from fpt_monai.flags import as_bool

__all__ = ["DEFAULT_RULES", "FPTDeployApp", "load_rules", "main"]

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
    """

    def __init__(self, model: ExportedFPT, rules: str = DEFAULT_RULES, argv: list[str] | None = None) -> None:
        self.model = model
        self.rules = rules
        super().__init__(argv)

    def compose(self) -> None:
        ctx = Application.init_app_context(self.argv)
        output = Path(ctx.output_path)
        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(ctx.input_path), name="loader"
        )
        selector = DICOMSeriesSelectorOperator(self, rules=self.rules, all_matched=True, name="selector")
        classifier = FPTClassifierOperator(
            self, model=self.model, output_folder=output, input_folder=ctx.input_path, name="fpt_classifier"
        )
        sr_writer = DICOMTextSRWriterOperator(
            self,
            copy_tags=True,
            model_info=ModelInfo("fpt_monai", self.model.name, self.model.version, ""),
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


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m fpt_monai.deploy", description=__doc__.splitlines()[0])
    p.add_argument("-i", "--input", default=env("HOLOSCAN_INPUT_PATH", "input"), help="DICOM study folder")
    p.add_argument("-o", "--output", default=env("HOLOSCAN_OUTPUT_PATH", "output"), help="output folder")
    p.add_argument("-m", "--model", default=env("HOLOSCAN_MODEL_PATH", "models"), help="model.ts or its folder")
    p.add_argument("--rules", default=env("FPT_DEPLOY_RULES"), help="series-selection rules: JSON file or text")
    p.add_argument("--heatmaps", action="store_true", default=as_bool(env("FPT_DEPLOY_HEATMAPS")), help="heatmap PNGs")
    p.add_argument("--device", default=env("FPT_DEPLOY_DEVICE", "cpu"), help="torch device, e.g. cuda:0")
    p.add_argument("-l", "--log-level", default="INFO")
    return p


def run(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model_path: str | os.PathLike,
    rules: str | os.PathLike | None = None,
    heatmaps: bool = False,
    device: str = "cpu",
) -> dict:
    """Run the app once; returns the ``output.json`` content. Nothing is written to ``output_path`` on failure."""
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.exists():
        raise FileNotFoundError(f"DICOM input {input_path} does not exist.")
    rules_text = load_rules(rules)
    model = ExportedFPT(model_path, device=device, heatmaps=heatmaps)
    check_dicom_folder(input_path)
    output_path.mkdir(parents=True, exist_ok=True)
    staging = output_path / f".fpt_deploy_staging_{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        argv = [sys.executable, "fpt_monai.deploy", "-i", str(input_path), "-o", str(staging), "-m", str(model.path)]
        FPTDeployApp(model, rules_text, argv=argv).run()
        if not (staging / "output.json").is_file():  # holoscan may log an operator's error instead of raising
            raise RuntimeError(f"the deploy app did not finish for {input_path}: see the log above for the cause.")
        for entry in sorted(staging.iterdir()):
            target = output_path / entry.name
            if target.is_dir() and entry.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
        return json.loads((output_path / "output.json").read_text())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        output = run(args.input, args.output, args.model, args.rules, args.heatmaps, args.device)
    except Exception as err:  # one clear line for the operator of the pipeline; the traceback is in the log
        logging.getLogger("fpt_monai.deploy").debug("failed", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{output['class']} ({', '.join(f'{c} {p:.3f}' for c, p in output['probabilities'].items())})")
    return 0
