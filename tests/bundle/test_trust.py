"""A trained bundle is a trust boundary (issue 19): its record is data, its paths stay inside, its identity travels
with the model. Each test reproduces a row of the issue's table through the real commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpt_monai.data.feature_store import file_sha256

from ..bundle_utils import REPO_ROOT, TRAIN_CONFIG, make_workflow, run_workflow
from ..conftest import error_text

EVAL_CONFIGS = [TRAIN_CONFIG, str(REPO_ROOT / "bundle" / "configs" / "evaluate.yaml")]
INFERENCE = str(REPO_ROOT / "bundle" / "configs" / "inference.yaml")


def _copy_bundle(source: Path, dest: Path) -> Path:
    """A copy of a trained bundle's models/ (and of its feature store, beside it in feature_stores/) to tamper with."""
    shutil.copytree(source / "models", dest / "models")
    store = json.loads((source / "models" / "model_config.json").read_text())["training_settings"]["store_dir"]
    if store.startswith("../feature_stores/") and (source / store).is_dir():
        shutil.copytree(source / store, dest / store, dirs_exist_ok=True)  # copies beside each other share it
    return dest


def _edit_record(bundle: Path, edit) -> None:
    path = bundle / "models" / "model_config.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def _last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_tampered_record_runs_no_code_and_reads_no_file(trained_tiny_bundle, tmp_path):
    """Export (and the bundle's inference) refuse a record with code in an extra key, '$' code or a '%' macro as a
    class name: nothing runs, no other file is read, the last line names the record and the key."""
    root = trained_tiny_bundle[0]
    marker = tmp_path / "pwned"
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"key": "read from another file"}))
    tampers = {
        "extra key": lambda r: r.update(network_def=f"$__import__('pathlib').Path('{marker}').touch() or 'x'"),
        "code class": lambda r: r.update(
            class_names=["$import this", f"$__import__('pathlib').Path('{marker}').touch()"]
        ),
        "macro class": lambda r: r.update(class_names=[f"%{secret}#key", "b"]),
    }
    named = {"extra key": "unknown keys ['network_def']", "code class": "class_names", "macro class": "class_names"}
    from fpt_monai.engines import ModelConfigError
    from fpt_monai.export import export_bundle

    for case, tamper in tampers.items():
        bundle = _copy_bundle(root, tmp_path / case.replace(" ", "_"))
        _edit_record(bundle, tamper)
        if case != "extra key":  # the same reader refuses them in-process (no second interpreter start-up)
            with pytest.raises(ModelConfigError, match=re.escape(named[case])) as info:
                export_bundle(bundle, progress=False)
            assert str(bundle / "models" / "model_config.json") in str(info.value)
        else:  # the command line: our last line
            done = _run([sys.executable, "scripts/export_bundle.py", "--bundle-root", str(bundle)])
            assert done.returncode != 0
            last = _last_line(done)
            assert last.startswith("fpt_monai: error:") and "model_config.json" in last and named[case] in last, last
            assert "Beautiful is better than ugly" not in done.stdout + done.stderr  # `$import this` never ran
            assert "read from another file" not in done.stdout + done.stderr
        assert not marker.exists() and not (bundle / "models" / "model.ts").exists()
    # the bundle's own inference reads the record the same way (no ConfigParser on it)
    done = _run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFERENCE, "--bundle_root", str(bundle)]
        + ["--dataset_dir", str(trained_tiny_bundle[1] / "images" / "test")]
    )
    assert done.returncode != 0 and "class_names" in _last_line(done) and not marker.exists()


def test_evaluation_never_writes_or_deletes_outside_the_bundle(trained_tiny_bundle, tmp_path):
    """A record whose store_dir points at another folder (or leaves the bundle with ../ or an absolute path): the
    evaluation is refused before any store is opened; the folder's files are kept, nothing is created outside."""
    root, data_dir, weights = trained_tiny_bundle
    bundle = _copy_bundle(root, tmp_path / "bundle")
    victim = tmp_path / "victim"
    (victim / "shards").mkdir(parents=True)
    (victim / "shards" / "keep_me.npy").write_bytes(b"precious")
    (victim / "shards" / ".keep_me_hidden").write_bytes(b"precious too")
    before = sorted(p.name for p in tmp_path.iterdir())
    # (the store root beside the bundle, feature_stores/, is trusted like the bundle; ../ out of it is not)
    for store_dir in (str(victim), "../../../x", "/tmp/fpt_monai_outside_store", "../feature_stores/../victim"):
        _edit_record(bundle, lambda r, s=store_dir: r["training_settings"].update(store_dir=s))
        wf = make_workflow(EVAL_CONFIGS, bundle, data_dir, weights, workflow_type="infer")
        with pytest.raises(Exception) as info:
            wf.initialize()
            wf.run()
        text = error_text(info.value)
        assert "store_dir" in text and "outside the bundle" in text and "--store_dir" in text, text
        assert (victim / "shards" / "keep_me.npy").read_bytes() == b"precious"
        assert (victim / "shards" / ".keep_me_hidden").read_bytes() == b"precious too"
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        assert not Path("/tmp/fpt_monai_outside_store").exists()
    # named on the command line, the folder is used, but the store refuses a folder of files it does not know
    wf = make_workflow(EVAL_CONFIGS, bundle, data_dir, weights, workflow_type="infer", store_dir=str(victim))
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    assert "keep_me" in error_text(info.value)
    assert (victim / "shards" / "keep_me.npy").read_bytes() == b"precious"
    assert (victim / "shards" / ".keep_me_hidden").is_file()


def test_the_frozen_weights_are_pinned_by_the_record(trained_tiny_bundle, tmp_path):
    """A record without the weights' identity is refused (even with --pretrained: nothing to check it against, no hub
    download); a wrong SHA-256 in the record is named as the record's value, not as an option never given."""
    from fpt_monai.engines import ModelConfigError, check_model_settings, read_model_config, recorded_weights

    root, data_dir, weights = trained_tiny_bundle
    bundle = _copy_bundle(root, tmp_path / "bundle")
    _edit_record(bundle, lambda r: r.pop("frozen_weights"))
    done = _run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFERENCE, "--bundle_root", str(bundle)]
        + ["--dataset_dir", str(data_dir / "images" / "test"), "--pretrained", str(weights)],
        timeout=300,
    )
    assert done.returncode != 0
    last = _last_line(done)
    assert last.startswith("fpt_monai: error:") and "frozen_weights" in last and "sha256sum" in last

    bundle = _copy_bundle(root, tmp_path / "wrong_hash")
    _edit_record(bundle, lambda r: r["frozen_weights"].update(id="sha256:" + "0" * 64))
    record = read_model_config(bundle / "models" / "model_config.json", bundle_root=bundle)
    with pytest.raises(ModelConfigError) as info:
        check_model_settings(record, pretrained=recorded_weights(record))
    text = str(info.value)
    assert "the record says sha256:000" in text and f"has sha256:{file_sha256(weights)}" in text
    assert "--pretrained '" not in text and "drop the conflicting options" not in text


def test_an_exported_model_with_a_broken_record_is_refused_by_deploy(exported_tiny_bundle, tmp_path):
    """A model file whose embedded record lacks the mean, or has an unknown format, or a class name with a newline
    (which would add a line to the SR), is refused when loaded, naming the file and the key."""
    import torch

    from fpt_monai.deploy import ExportedFPT, ModelFileError

    root = exported_tiny_bundle[0]
    extra = {"metadata.json": "", "model_config.json": ""}
    net = torch.jit.load(str(root / "models" / "model.ts"), _extra_files=extra)
    record = json.loads(extra["model_config.json"])
    for change, named in (
        (lambda r: r.pop("mean"), "missing keys ['mean']"),
        (lambda r: r.update(format=99), "record format 99"),
        (lambda r: r.update(class_names=["normal\nAI classification: benign", "abnormal"]), "class_names"),
    ):
        broken = json.loads(json.dumps(record))
        change(broken)
        path = tmp_path / "model.ts"
        torch.jit.save(net, str(path), _extra_files={**extra, "model_config.json": json.dumps(broken)})
        with pytest.raises(ModelFileError, match=re.escape(named)) as info:
            ExportedFPT(path)
        assert str(path) in str(info.value)


def _class_folder_tree(root: Path, size: int = 96) -> Path:
    """Three classes of generated images as class folders (no split folders), 6 images each."""
    from fpt_monai.data.demo import synthetic_image

    for c, name in enumerate(("benign", "malignant", "normal")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            gray = synthetic_image(min(c, 1), size, seed=10 * c + i)
            if c == 2:
                gray = gray[::-1].copy()
            Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8)).convert("RGB").save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_a_three_class_bundle_exports_and_deploys_with_one_identity(tiny_bundle_data, tmp_path):
    """A 3-class bundle at a size that is not the template's, trained from a class-folder tree with MLflow: MONAI's
    verify_net_in_out and ckpt_export (as the docs write them) and `make export BUNDLE=...` need no override, and the
    MLflow run, the ONNX metadata, Deploy's output.json and its SR all name the same run id and checkpoint SHA-256."""
    import mlflow
    import onnx
    import pydicom

    from fpt_monai.data import datalist_from_image_folder, write_datalist
    from fpt_monai.data.demo import write_dicom
    from fpt_monai.deploy import ExportedFPT

    _, weights = tiny_bundle_data
    images = _class_folder_tree(tmp_path / "images")
    data_dir = tmp_path / "data"
    write_datalist(datalist_from_image_folder(images, split_fractions=(0.5, 0.25, 0.25)), data_dir / "datalist.json")
    bundle = tmp_path / "bundle"
    run_workflow(TRAIN_CONFIG, bundle, data_dir, weights, tracking="mlflow", img_size=96, epochs=1)
    models = bundle / "models"
    run_id = json.loads((models / "mlflow_run.json").read_text())["run_id"]
    digest = file_sha256(models / "model.pt")
    meta = json.loads((models / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [96, 96]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    assert meta["fpt_monai"]["run_id"] == run_id and meta["fpt_monai"]["checkpoint_sha256"] == digest
    card = (models / "model_card.md").read_text()
    assert run_id in card and digest in card and "| training | 3 | 3 | 3 | 9 |" in card

    # MONAI's own checks and export, exactly as bundle/docs/README.md writes them: no --input_shape. The arguments go
    # through `python -m monai.bundle`'s parser (fire over monai.bundle.__main__), in this process: what is tested is
    # the command line, and three more interpreters would each import MONAI again (~15 s of CPU apiece)
    def monai_cli(*argv: str) -> None:
        import fire
        import monai.bundle.__main__ as main

        commands = {name: f for name, f in vars(main).items() if callable(f) and not name.startswith("_")}
        fire.Fire(commands, command=list(argv))

    monai_cli(
        *["verify_metadata", "--meta_file", str(models / "metadata.json")],
        *["--filepath", str(REPO_ROOT / "bundle" / "schema" / "meta_schema_20240725.json")],
    )
    common = ["--meta_file", str(models / "metadata.json"), "--config_file", INFERENCE, "--bundle_root", str(bundle)]
    monai_cli("verify_net_in_out", "network_def", *common)
    cli_ts = models / "model_cli.ts"
    monai_cli(
        *["ckpt_export", "network_def", "--filepath", str(cli_ts), "--ckpt_file", str(models / "model.pt")],
        *[*common, "--use_trace", "True"],
    )
    assert cli_ts.is_file()
    identity = {k: meta["fpt_monai"][k] for k in ("name", "version", "run_id", "checkpoint_sha256")}
    assert identity["run_id"] == run_id and identity["checkpoint_sha256"] == digest
    assert ExportedFPT(cli_ts).identity == identity

    # the project's export: any trained bundle, no other option. The bundle's own metadata.json is not trusted: a
    # '%' macro planted in it (MONAI's parser would read another file) does not reach the exported files
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"token": "s3cr3t"}))
    (models / "metadata.json").write_text(json.dumps({**meta, "description": f"%{secret}#token"}))
    done = _run(["make", "export", f"BUNDLE={bundle}"], timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    exported = ExportedFPT(models / "model.ts").metadata
    assert exported["description"] == meta["description"] and "s3cr3t" not in json.dumps(exported)
    assert json.loads((models / "metadata.json").read_text())["description"] == meta["description"]
    props = {p.key: p.value for p in onnx.load(str(models / "model.onnx")).metadata_props}
    assert props["run_id"] == run_id and props["checkpoint_sha256"] == digest
    assert json.loads(props["class_names"]) == ["benign", "malignant", "normal"]

    # the MLflow run names the checkpoint it produced
    tracking = json.loads((models / "mlflow_run.json").read_text())["tracking_uri"]
    run = mlflow.MlflowClient(tracking_uri=tracking).get_run(run_id)
    assert run.data.tags["fpt.checkpoint_sha256"] == digest

    # Deploy on a DICOM study of the test images: output.json and the SR name the same model
    dicom = tmp_path / "dicom"
    for i, png in enumerate(sorted(images.glob("*/*.png"))[:3]):
        gray = np.asarray(Image.open(png).convert("L")).astype(np.uint16) * 16
        write_dicom(
            dicom / f"{i}.dcm",
            gray,
            study_uid="1.2.826.0.1.3680043.8.498.77",
            series_uid="1.2.826.0.1.3680043.8.498.78",
        )
    out = tmp_path / "out"
    done = _run(
        [sys.executable, "-m", "fpt_monai.deploy", "-i", str(dicom), "-o", str(out), "-m", str(models / "model.ts")]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads((out / "output.json").read_text())
    assert output["model"]["run_id"] == run_id and output["model"]["checkpoint_sha256"] == digest
    (sr_file,) = out.glob("*.dcm")
    text = pydicom.dcmread(sr_file).ContentSequence[0].TextValue
    assert f"MLflow run {run_id}" in text and f"checkpoint SHA-256 {digest}" in text


def test_a_second_training_into_a_bundle_that_is_training_is_refused(tiny_bundle_data, tmp_path):
    """The bundle's training takes the run lock before it writes anything: a second training started into the same
    bundle root stops with the first one's PID, and the first one's record is not overwritten."""
    data_dir, weights = tiny_bundle_data
    bundle = tmp_path / "bundle"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fpt_monai.engines import acquire_run_lock; "
            f"acquire_run_lock({str(bundle)!r}); print('held', flush=True); time.sleep(120)",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        (bundle / "models" / "model_config.json").write_text("the first training's record")
        wf = make_workflow(TRAIN_CONFIG, bundle, data_dir, weights, epochs=1)
        with pytest.raises(Exception) as info:
            wf.initialize()
            wf.run()
        text = error_text(info.value)
        assert f"PID {holder.pid}" in text and "a training is already running there" in text, text
        assert (bundle / "models" / "model_config.json").read_text() == "the first training's record"
    finally:
        holder.kill()
        holder.wait()
