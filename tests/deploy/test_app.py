"""The MONAI Deploy app on generated DICOM: output.json, the text SR, heatmaps, and clean failures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fpt_monai.data.demo import write_dicom

from ..conftest import REPO_ROOT

pytest.importorskip("holoscan", reason="the MONAI Deploy App SDK needs holoscan (extra fpt-monai[deploy])")
pytest.importorskip("highdicom", reason="the SDK's DICOM operators need highdicom (extra fpt-monai[deploy])")

DX_ONLY = json.dumps({"selections": [{"name": "DX", "conditions": {"Modality": "(?i)^DX$"}}]})


def _deploy(capsys, *args) -> tuple[int, str, str]:
    """``python -m fpt_monai.deploy *args`` in this process: ``(exit code, stdout, stderr)`` of the CLI's ``main``.

    The tests whose subject is the app's verdicts, not the interpreter boundary, run the CLI here rather than in an
    interpreter that imports torch, MONAI and holoscan again (~15 s of CPU each); the process itself is tested by
    test_cli_classifies_the_selected_series_and_writes_json_sr_and_heatmaps and by the first run of
    test_cli_errors_end_with_one_line_naming_the_input_and_write_nothing (``sys.exit(main())``, exit codes 0 and 1).
    """
    from fpt_monai.deploy.app import main

    capsys.readouterr()  # what the fixtures printed
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_classifies_the_selected_series_and_writes_json_sr_and_heatmaps(
    exported_tiny_bundle, dicom_study, tmp_path
):
    root, _, weights = exported_tiny_bundle
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fpt_monai.deploy", "-i", str(dicom_study), "-o", str(out)]
    cmd += ["-m", str(root / "models" / "model.ts"), "--rules", DX_ONLY, "--heatmaps"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    output = json.loads((out / "output.json").read_text())
    from fpt_monai.data.feature_store import file_sha256

    ident = json.loads((root / "models" / "metadata.json").read_text())["fpt_monai"]
    # the trained model's identity: no MLflow run in this bundle, model.pt's SHA-256
    digest = file_sha256(root / "models" / "model.pt")
    assert output["model"] == {
        "name": ident["name"],
        "version": ident["version"],
        "run_id": None,
        "checkpoint_sha256": digest,
        "file": "model.ts",
        "calibration": None,  # no operating point or temperature chosen: the most probable class
    }
    assert output["status"] == "complete"
    assert output["counts"] == {"classified": 2, "skipped": 1, "failed": 0, "duplicates": 0}
    (study,) = output["studies"]
    assert study["study_instance_uid"] == "1.2.826.0.1.3680043.8.498.1"
    instances = {r["file"]: r for r in study["instances"]}
    assert set(instances) == {"dx/m1.dcm", "dx/m2.dcm"}  # the CT series is not selected: reported as skipped
    files = {f["file"]: f for f in output["files"]}
    assert files["ct/ct.dcm"]["status"] == "skipped" and "not selected by the rules" in files["ct/ct.dcm"]["reason"]
    assert "Modality='CT'" in files["ct/ct.dcm"]["reason"]
    assert files["dx/m1.dcm"]["status"] == files["dx/m2.dcm"]["status"] == "classified"
    import pydicom

    for name, record in instances.items():
        ds = pydicom.dcmread(dicom_study / name)
        assert record["sop_instance_uid"] == ds.SOPInstanceUID
        assert record["series_instance_uid"] == "1.2.826.0.1.3680043.8.498.2"
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-5
        assert record["class"] == max(record["probabilities"], key=record["probabilities"].get)
    # MONOCHROME1 with slope 2 is the same picture as MONOCHROME2 with an offset: the same probabilities
    p1, p2 = instances["dx/m1.dcm"]["probabilities"], instances["dx/m2.dcm"]["probabilities"]
    assert p1 == pytest.approx(p2, abs=1e-4)
    # the probabilities are the PyTorch model's on the bundle's preprocessing of the same file
    from fpt_monai.networks import FPT
    from fpt_monai.transforms import fpt_transforms

    cfg = json.loads((root / "models" / "model_config.json").read_text())
    net = FPT(num_classes=2, backbone="vit_tiny_patch16_224", pretrained=str(weights), img_size=64, side_img_size=32)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    x = fpt_transforms("inference", False, 64, 32, cfg["mean"], cfg["std"])(
        {"image": str(dicom_study / "dx" / "m2.dcm")}
    )
    with torch.no_grad():
        expected = net.eval()(x["image"][None]).softmax(-1)[0].tolist()
    assert list(p2.values()) == pytest.approx(expected, abs=1e-5)

    # the Structured Report: a Basic Text SR in the source study whose text carries the result
    (sr_file,) = out.glob("*.dcm")
    assert study["sr_file"] == sr_file.name
    sr = pydicom.dcmread(sr_file)
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
    assert sr.StudyInstanceUID == study["study_instance_uid"] and sr.PatientID == "P1"
    text = sr.ContentSequence[0].TextValue
    assert f": {study['class']}." in text and instances["dx/m1.dcm"]["sop_instance_uid"] in text
    assert f"checkpoint SHA-256 {digest}" in text and "MLflow run not recorded" in text
    # IHE AIR contributing equipment: the Device UID is derived from the checkpoint, so it changes with training
    assert sr.ContributingEquipmentSequence[0].DeviceUID == f"2.25.{int(digest[:32], 16)}"
    assert done.stdout.splitlines()[-1] == "2 classified, 1 skipped (see output.json)"

    # heatmaps: the input's size, not constant
    from PIL import Image

    for record in instances.values():
        heat = np.asarray(Image.open(out / record["heatmap"]))
        assert heat.shape == (96, 96, 3) and heat.std() > 1
    assert not list(out.glob(".fpt_deploy_staging*"))


@pytest.mark.slow
def test_no_matching_series_fails_clearly_and_writes_nothing(exported_tiny_bundle, dicom_study, tmp_path):
    from fpt_monai.deploy.app import run
    from fpt_monai.deploy.operators import NoMatchingSeriesError

    root = exported_tiny_bundle[0]
    out = tmp_path / "out"
    mammo = json.dumps({"selections": [{"name": "MG", "conditions": {"Modality": "MG"}}]})
    with pytest.raises(NoMatchingSeriesError) as info:
        run(dicom_study, out, root / "models", rules=mammo)
    message = str(info.value)
    assert "matches the selection rules" in message and "'DX'" in message and "'CT'" in message and "--rules" in message
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_corrupt_files_are_reported_the_rest_classified_and_the_exit_code_says_so(
    exported_tiny_bundle, dicom_study, tmp_path, capsys
):
    """Corrupt files fail with their reason in output.json, the good ones are classified, no SR is written (the
    study is incomplete), the exit code is 2 and the last line names the first failed file."""
    root = exported_tiny_bundle[0]
    good = (dicom_study / "dx" / "m2.dcm").read_bytes()
    (dicom_study / "dx" / "cut.dcm").write_bytes(good[: len(good) // 2])
    (dicom_study / "dx" / "junk.dcm").write_bytes(good[:132] + b"\xff" * 64)
    (dicom_study / "notes.txt").write_text("not DICOM: skipped")
    out = tmp_path / "out"
    code, _, stderr = _deploy(capsys, "-i", dicom_study, "-o", out, "-m", root / "models")
    assert code == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    cut = dicom_study / "dx" / "cut.dcm"
    assert last.startswith(f"fpt_monai: error: {cut}: pixel data has") and "truncated" in last
    assert "2 of 6 input file(s) failed" in last and str(out / "output.json") in last and "Fix or remove" in last
    output = json.loads((out / "output.json").read_text())
    assert output["status"] == "incomplete"
    assert output["counts"] == {"classified": 3, "skipped": 1, "failed": 2, "duplicates": 0}
    files = {f["file"]: f for f in output["files"]}
    assert files["dx/cut.dcm"]["status"] == files["dx/junk.dcm"]["status"] == "failed"
    skipped = {"file": "notes.txt", "status": "skipped", "reason": "not a DICOM file (no DICM marker)"}
    assert files["notes.txt"] == skipped
    assert len(output["studies"][0]["instances"]) == 3 and "sr_file" not in output["studies"][0]
    assert not list(out.glob("*.dcm")) and not list(out.glob(".fpt_deploy_staging*"))


def test_model_errors_name_the_file_and_the_fix(exported_tiny_bundle, tmp_path):
    from fpt_monai.deploy import ExportedFPT, ModelFileError

    with pytest.raises(ModelFileError, match="make export"):
        ExportedFPT(tmp_path)
    # a plain TorchScript file without the bundle's configs
    plain = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ModelFileError, match="has no embedded metadata.json"):
        ExportedFPT(plain)
    # heatmaps without the explainer next to the model
    root = exported_tiny_bundle[0]
    lonely = tmp_path / "models"
    lonely.mkdir()
    (lonely / "model.ts").write_bytes((root / "models" / "model.ts").read_bytes())
    with pytest.raises(ModelFileError, match="model_explain.ts"):
        ExportedFPT(lonely, heatmaps=True)
    assert ExportedFPT(lonely).class_names == ["normal", "abnormal"]


def test_rules_are_a_file_or_json_text(tmp_path):
    from fpt_monai.deploy.app import DEFAULT_RULES, load_rules

    assert load_rules(None) == DEFAULT_RULES and "selections" in json.loads(DEFAULT_RULES)
    f = tmp_path / "rules.json"
    f.write_text(DX_ONLY)
    assert json.loads(load_rules(f)) == json.loads(DX_ONLY)
    with pytest.raises(ValueError, match="neither a file nor JSON"):
        load_rules("{not json")
    with pytest.raises(ValueError, match='"selections" list'):
        load_rules('{"rules": []}')


@pytest.mark.slow
def test_a_malicious_sop_instance_uid_cannot_write_outside_the_output_folder(exported_tiny_bundle, tmp_path, capsys):
    """The heatmap is named after the input's SOPInstanceUID: a UID of '../../..' must not choose where it goes."""
    from .conftest import _stored

    root, _, _ = exported_tiny_bundle
    target = tmp_path / "victim"
    evil = "../../../../../../../../../.." + str(target / "x")
    study = tmp_path / "study"
    write_dicom(study / "a.dcm", _stored(1, seed=5), study_uid="1.2.826.0.1.3680043.8.498.9", instance_uid=evil)
    out = tmp_path / "out"
    code, _, stderr = _deploy(capsys, "-i", study, "-o", out, "-m", root / "models" / "model.ts", "--heatmaps")
    assert not target.exists() and not list(tmp_path.glob("victim*"))  # nothing outside -o
    assert code == 0, stderr[-3000:]
    (record,) = json.loads((out / "output.json").read_text())["studies"][0]["instances"]
    assert record["sop_instance_uid"] == evil  # reported as it is, only the file name is sanitised
    heatmap = (out / record["heatmap"]).resolve()
    assert heatmap.is_file() and heatmap.parent == (out / "heatmaps").resolve()


def test_cli_errors_end_with_one_line_naming_the_input_and_write_nothing(exported_tiny_bundle, tmp_path, capsys):
    from pydicom.data import get_testdata_file

    models = exported_tiny_bundle[0] / "models"
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "report.dcm").write_bytes(open(get_testdata_file("reportsi.dcm"), "rb").read())
    out = tmp_path / "out"
    base = [sys.executable, "-m", "fpt_monai.deploy", "-i", str(folder), "-o", str(out), "-m", str(models)]
    done = subprocess.run(base, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"fpt_monai: error: {folder}: no DICOM image to classify (1 skipped). Pass a folder with DICOM image "
        "instances (files with the DICM marker); re-export or remove the failed files."
    )
    assert not out.exists() or list(out.iterdir()) == []
    code, _, stderr = _deploy(capsys, *base[3:], "--frames", "all")  # the CLI's main, in this process
    assert code == 1
    assert stderr.strip().splitlines()[-1].startswith("fpt_monai: error: unknown multi-frame policy 'all'")


@pytest.mark.slow
def test_three_files_with_one_sop_instance_uid_are_analysed_once(exported_tiny_bundle, tmp_path, capsys):
    """Copies of one instance (the same SOP Instance UID in three files): one classified, two skipped as its
    duplicates, counted once in output.json and in the SR, with one heatmap."""
    import pydicom

    from .conftest import _stored

    root = exported_tiny_bundle[0]
    study = tmp_path / "study"
    uid = "1.2.826.0.1.3680043.8.498.77001"
    for name in ("b/copy.dcm", "a.dcm", "c.dcm"):
        write_dicom(study / name, _stored(1, seed=5), study_uid="1.2.826.0.1.3680043.8.498.77", instance_uid=uid)
    out = tmp_path / "out"
    code, _, stderr = _deploy(capsys, "-i", study, "-o", out, "-m", root / "models", "--heatmaps")
    assert code == 0, stderr[-3000:]

    output = json.loads((out / "output.json").read_text())
    assert output["counts"] == {"classified": 1, "skipped": 2, "failed": 0, "duplicates": 2}
    files = {f["file"]: f for f in output["files"]}
    assert files["a.dcm"]["status"] == "classified"
    for name in ("b/copy.dcm", "c.dcm"):
        assert files[name]["status"] == "skipped" and files[name]["reason"] == "duplicate SOPInstanceUID of a.dcm"
        assert files[name]["duplicate_of"] == "a.dcm"
    (record,) = output["studies"][0]["instances"]
    assert record["file"] == "a.dcm" and record["sop_instance_uid"] == uid
    assert [p.name for p in (out / "heatmaps").iterdir()] == [f"{uid}.png"]
    assert record["heatmap"] == f"heatmaps/{uid}.png"
    (sr_file,) = out.glob("*.dcm")
    text = pydicom.dcmread(sr_file).ContentSequence[0].TextValue
    assert "Images analysed: 1." in text and text.count(uid) == 1


@pytest.mark.slow
def test_a_truncated_jpeg_2000_file_and_a_dangling_link_fail_with_their_true_reasons(
    exported_tiny_bundle, tmp_path, capsys
):
    """A JPEG 2000 file cut inside its pixel data fails as truncated with the UIDs its header has (pydicom's full
    read loses the whole dataset); a symbolic link whose target is gone fails naming the target. Both are in
    output.json; the good image is classified; the exit code is 2."""
    from pathlib import Path

    import pydicom
    from pydicom.data import get_testdata_file

    from .conftest import _stored

    source = get_testdata_file("MR_small_jp2klossless.dcm")
    if source is None:
        pytest.skip("pydicom's test file MR_small_jp2klossless.dcm is not installed with this pydicom")
    root = exported_tiny_bundle[0]
    study = tmp_path / "study"
    write_dicom(study / "good.dcm", _stored(1, seed=5))
    data = Path(source).read_bytes()
    (study / "mr_j2k.dcm").write_bytes(data[: len(data) * 2 // 3])
    header = pydicom.dcmread(source, stop_before_pixels=True)
    target = tmp_path / "moved" / "scan.dcm"
    (study / "scan.dcm").symlink_to(target)
    out = tmp_path / "out"
    code, _, stderr = _deploy(capsys, "-i", study, "-o", out, "-m", root / "models")
    assert code == 2, stderr[-3000:]

    output = json.loads((out / "output.json").read_text())
    assert output["counts"] == {"classified": 1, "skipped": 0, "failed": 2, "duplicates": 0}
    files = {f["file"]: f for f in output["files"]}
    assert files["good.dcm"]["status"] == "classified"
    cut = files["mr_j2k.dcm"]
    assert cut["status"] == "failed" and cut["reason"].startswith("incomplete pixel data")
    assert "truncated" in cut["reason"] and "no StudyInstanceUID" not in cut["reason"]
    assert cut["sop_instance_uid"] == header.SOPInstanceUID and cut["study_instance_uid"] == header.StudyInstanceUID
    assert files["scan.dcm"] == {"file": "scan.dcm", "status": "failed", "reason": f"broken symbolic link to {target}"}
    last = stderr.strip().splitlines()[-1]
    assert "2 of 3 input file(s) failed" in last and str(out / "output.json") in last
