from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from ..conftest import REPO_ROOT, error_text
from .conftest import META, TRAIN_CONFIG

INFER_CONFIG = TRAIN_CONFIG.replace("train.yaml", "inference.yaml")


def _inference(bundle_root, dataset_dir, weights, **extra) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=INFER_CONFIG,
        meta_file=META,
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
        pretrained=str(weights),
        num_workers=0,
        **extra,
    )


@pytest.fixture
def trained(trained_tiny_bundle):
    return trained_tiny_bundle


def test_inference_on_a_folder_of_mixed_formats(trained):
    root, data_dir, weights = trained
    images = data_dir / "images" / "test"
    wf = _inference(root, images, weights)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    rows = list(csv.DictReader(open(root / "eval" / "predictions.csv")))
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    assert sorted(r["id"] for r in rows) == files
    records = json.loads((root / "eval" / "predictions.json").read_text())
    for r in records:
        probs = r["probabilities"]
        assert set(probs) == {"normal", "abnormal"} and abs(sum(probs.values()) - 1) < 1e-5
        assert r["prediction"] == max(probs, key=probs.get)
    # the same model outside the bundle gives the same probabilities
    import torch

    from fpt_monai.networks import FPT
    from fpt_monai.transforms import fpt_transforms

    cfg = json.loads((root / "models" / "model_config.json").read_text())
    net = FPT(
        num_classes=2, backbone="vit_tiny_patch16_224", pretrained=str(weights), img_size=64, side_img_size=32
    ).eval()
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    t = fpt_transforms("inference", False, 64, 32, cfg["mean"], cfg["std"])
    first = records[0]
    x = t({"image": str(images / first["id"])})["image"].unsqueeze(0)
    with torch.no_grad():
        expected = net(x).softmax(-1)[0].numpy()
    np.testing.assert_allclose(list(first["probabilities"].values()), expected, atol=1e-5)


def test_inference_on_a_missing_folder(trained):
    root, _, weights = trained
    wf = _inference(root, root / "nothing_here", weights)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    text = error_text(info.value)
    assert "nothing_here" in text


def _monai_bundle_cli(*argv: str) -> None:
    """``python -m monai.bundle *argv`` through its own parser (fire over monai.bundle.__main__), in this process:
    what is tested is the command line; another interpreter would import MONAI again (~15 s of CPU)."""
    import fire
    import monai.bundle.__main__ as main

    commands = {name: f for name, f in vars(main).items() if callable(f) and not name.startswith("_")}
    fire.Fire(commands, command=list(argv))


def test_verify_metadata_and_net_in_out(trained, capsys, caplog):
    root, _, weights = trained
    schema = REPO_ROOT / "bundle" / "schema" / "meta_schema_20240725.json"
    caplog.set_level("INFO")
    _monai_bundle_cli("verify_metadata", "--meta_file", META, "--filepath", str(schema))
    out = capsys.readouterr()
    assert "metadata is verified with no error" in out.out + out.err + caplog.text
    caplog.clear()
    _monai_bundle_cli(
        *["verify_net_in_out", "network_def", "--meta_file", META, "--config_file", INFER_CONFIG],
        *["--bundle_root", str(root), "--pretrained", str(weights)],
        *["--_meta_#network_data_format#inputs#image#spatial_shape", "[64,64]"],
    )
    out = capsys.readouterr()
    assert "data shape of network is verified with no error" in out.out + out.err + caplog.text


def test_shipped_schema_rejects_incomplete_metadata():
    import jsonschema

    schema = json.loads((REPO_ROOT / "bundle" / "schema" / "meta_schema_20240725.json").read_text())
    meta = json.loads(open(META).read())
    jsonschema.validate(meta, schema)
    for key in ("version", "network_data_format"):
        broken = {k: v for k, v in meta.items() if k != key}
        with pytest.raises(jsonschema.ValidationError, match=key):
            jsonschema.validate(broken, schema)


def test_inference_writes_heatmaps_at_the_original_size(trained, tmp_path):
    import shutil

    from PIL import Image

    root, data_dir, weights = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(root / "models", bundle / "models")
    images = data_dir / "images" / "test"
    wf = _inference(bundle, images, weights, heatmaps="true")  # a string, as the CLI passes it
    wf.initialize()
    wf.run()
    wf.finalize()
    ids = [r["id"] for r in json.loads((bundle / "eval" / "predictions.json").read_text())]
    pngs = sorted((bundle / "eval" / "heatmaps").glob("*.png"))
    assert len(pngs) == len(ids) > 0
    for png in pngs:
        heat = np.asarray(Image.open(png))
        assert heat.shape == (96, 96, 3) and heat.std() > 1


def _bundle_with_a_corrupt_image(trained, tmp_path):
    """A copy of the trained bundle's models and a folder of the test images plus one truncated PNG."""
    import shutil

    root, data_dir, weights = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(root / "models", bundle / "models")
    images = tmp_path / "images"
    shutil.copytree(data_dir / "images" / "test", images)
    good = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    broken = images / "normal" / "broken.png"
    broken.write_bytes(next(images.rglob("*.png")).read_bytes()[:80])
    return bundle, images, weights, good, broken


def test_unreadable_files_stop_inference_up_front_or_are_skipped_and_listed(trained, tmp_path):
    bundle, images, weights, good, broken = _bundle_with_a_corrupt_image(trained, tmp_path)
    listed = bundle / "eval" / "unreadable.csv"

    wf = _inference(bundle, images, weights)
    with pytest.raises(Exception) as info:  # before the model runs: every unreadable file, not the first one
        wf.initialize()
    text = error_text(info.value)
    assert f"{listed}: 1 of {len(good) + 1} images cannot be read" in text and str(broken) in text
    assert "--skip_unreadable true" in text
    assert not (bundle / "eval" / "predictions.csv").exists()
    rows = list(csv.DictReader(open(listed)))
    assert [(r["id"], r["image"]) for r in rows] == [("normal/broken.png", str(broken))] and rows[0]["reason"]

    wf = _inference(bundle, images, weights, skip_unreadable="true")
    wf.initialize()
    with pytest.raises(Exception) as info:  # the readable files are classified, then the run fails
        wf.run()
    text = error_text(info.value)
    assert f"{listed}: 1 of {len(good) + 1} images were skipped as unreadable" in text and "--allow_skipped" in text
    predicted = [r["id"] for r in csv.DictReader(open(bundle / "eval" / "predictions.csv"))]
    assert sorted(predicted) == good

    wf = _inference(bundle, images, weights, skip_unreadable="true", allow_skipped="true")
    wf.initialize()
    wf.run()
    wf.finalize()
    assert listed.is_file()

    broken.unlink()  # all readable again: the old list goes
    wf = _inference(bundle, images, weights)
    wf.initialize()
    assert not listed.exists()


def test_skipped_files_end_the_cli_run_with_our_line(trained, tmp_path):
    bundle, images, weights, good, _ = _bundle_with_a_corrupt_image(trained, tmp_path)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFER_CONFIG, "--meta_file", META]
    cmd += ["--bundle_root", str(bundle), "--dataset_dir", str(images), "--pretrained", str(weights)]
    cmd += ["--num_workers", "0", "--skip_unreadable", "true"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert lines[-1].startswith(f"fpt_monai: error: {bundle / 'eval' / 'unreadable.csv'}: 1 of "), lines[-1]
    assert len(list(csv.DictReader(open(bundle / "eval" / "predictions.csv")))) == len(good)


def _multiframe_folder(trained, tmp_path):
    """A copy of the trained bundle's models and a folder of one 3-frame DICOM clip (frames of different brightness,
    written with pydicom) and one single-frame PNG."""
    import shutil

    import pydicom

    from fpt_monai.data import write_dicom

    root, data_dir, weights = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(root / "models", bundle / "models")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(next((data_dir / "images" / "test").rglob("*.png")), images / "still.png")
    clip = write_dicom(images / "clip.dcm", np.zeros((96, 96), np.uint16))
    ds = pydicom.dcmread(clip)
    ramp = np.linspace(0, 1, 96)[None, :] * np.linspace(0, 1, 96)[:, None]
    frames = np.stack([(ramp * scale * 4095).astype(np.uint16) for scale in (0.2, 0.6, 1.0)])
    frames[2, :48] = 0  # not just brighter: a different picture
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    for key in ("WindowCenter", "WindowWidth"):
        if key in ds:
            del ds[key]
    ds.save_as(clip)
    return bundle, images, weights


def test_multiframe_policies(trained, tmp_path):
    bundle, images, weights = _multiframe_folder(trained, tmp_path)

    wf = _inference(bundle, images, weights)  # refuse: the clip is named, with the policies to choose from
    with pytest.raises(Exception) as info:
        wf.initialize()
    text = error_text(info.value)
    assert "clip.dcm" in text and "multi-frame image with 3 frames" in text and "--frames" in text

    def predictions(frames):
        wf = _inference(bundle, images, weights, frames=frames)
        wf.initialize()
        wf.run()
        wf.finalize()
        return list(csv.DictReader(open(bundle / "eval" / "predictions.csv")))

    every = predictions("every")
    assert [(r["id"], r["frame"]) for r in every] == [
        ("clip.dcm", "0"),
        ("clip.dcm", "1"),
        ("clip.dcm", "2"),
        ("still.png", "0"),
    ]
    probs = {r["frame"]: r["prob_normal"] for r in every if r["id"] == "clip.dcm"}
    assert len(set(probs.values())) == 3  # three different frames were read
    for policy, frame in (("first", "0"), ("middle", "1"), (2, "2")):
        rows = predictions(policy)
        assert [(r["id"], r["frame"]) for r in rows] == [("clip.dcm", frame), ("still.png", "0")], policy
        assert rows[0]["prob_normal"] == probs[frame]  # the same frame gives the same prediction
    records = json.loads((bundle / "eval" / "predictions.json").read_text())
    assert records[0]["frame"] == 2


def _cli(bundle_root, dataset_dir, weights, output_dir, *extra: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of the inference config, as a user runs it."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFER_CONFIG, "--meta_file", META]
    cmd += ["--bundle_root", str(bundle_root), "--dataset_dir", str(dataset_dir), "--pretrained", str(weights)]
    cmd += ["--output_dir", str(output_dir), "--num_workers", "0", *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_every_image_gets_its_own_heatmap_named_in_its_prediction_row(trained, tmp_path):
    """One stem in three formats, and ids 'a/b.png' and 'a__b.png' (one name once sanitised): five predictions, five
    heatmaps, each prediction row naming its own."""
    from PIL import Image

    from fpt_monai.data.demo import synthetic_image, write_dicom

    root, _, weights = trained
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    pictures = [(synthetic_image(n % 2, 96, seed=10 + n) * 255).astype(np.uint8) for n in range(5)]
    Image.fromarray(pictures[0]).save(images / "case.png")
    Image.fromarray(pictures[1]).save(images / "case.jpg", quality=95)
    write_dicom(images / "case.dcm", pictures[2].astype(np.uint16) * 16)
    Image.fromarray(pictures[3]).save(images / "a" / "b.png")
    Image.fromarray(pictures[4]).save(images / "a__b.png")
    out = tmp_path / "eval"
    done = _cli(root, images, weights, out, "--heatmaps", "true")
    assert done.returncode == 0, done.stderr[-3000:]

    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["id"] for r in rows) == ["a/b.png", "a__b.png", "case.dcm", "case.jpg", "case.png"]
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "heatmaps").iterdir())
    assert sorted(r["heatmap"] for r in rows) == pngs and len(pngs) == 5  # one file each, each named by its row
    by_id = {r["id"]: r["heatmap"] for r in rows}
    assert by_id["case.png"] == "heatmaps/case.png.png" and by_id["case.dcm"] == "heatmaps/case.dcm.png"
    assert by_id["a/b.png"].startswith("heatmaps/a__b.png__") and by_id["a__b.png"].startswith("heatmaps/a__b.png__")
    records = json.loads((out / "predictions.json").read_text())
    assert {r["id"]: r["heatmap"] for r in records} == by_id
    # each heatmap is of its own image: five different pictures
    assert len({(out / name).read_bytes() for name in pngs}) == 5

    # without heatmaps the column is there, empty (null in the JSON)
    done = _cli(root, images, weights, tmp_path / "plain")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {r["heatmap"] for r in csv.DictReader(open(tmp_path / "plain" / "predictions.csv"))} == {""}
    assert {r["heatmap"] for r in json.loads((tmp_path / "plain" / "predictions.json").read_text())} == {None}


def test_a_dangling_link_is_skipped_as_unreadable_not_lost(trained, tmp_path):
    """A symbolic link whose target is gone, with --skip_unreadable true: listed in unreadable.csv with its target
    and counted in the run's last line, the other images classified."""
    import shutil

    root, data_dir, weights = trained
    images = tmp_path / "images"
    shutil.copytree(data_dir / "images" / "test", images)
    good = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    target = tmp_path / "archive" / "moved.png"
    (images / "normal" / "moved.png").symlink_to(target)
    out = tmp_path / "eval"
    done = _cli(root, images, weights, out, "--skip_unreadable", "true")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0
    assert lines[-1].startswith(f"fpt_monai: error: {out / 'unreadable.csv'}: 1 of {len(good) + 1} images were "), (
        lines[-1]
    )
    rows = list(csv.DictReader(open(out / "unreadable.csv")))
    assert [(r["id"], r["reason"]) for r in rows] == [("normal/moved.png", f"broken symbolic link to {target}")]
    assert sorted(r["id"] for r in csv.DictReader(open(out / "predictions.csv"))) == good
