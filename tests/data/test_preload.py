from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from fpt_monai.data import (
    CorruptStoreError,
    FeatureStore,
    StoreMismatchError,
    datalist_from_json,
    ensure_feature_store,
    make_demo_dataset,
    preload,
)
from fpt_monai.data.feature_store import UnknownFilesError
from fpt_monai.networks import FrozenViTExtractor, create_vit_backbone
from fpt_monai.transforms import fpt_transforms

from ..conftest import REPO_ROOT

MEAN, STD = (0.4, 0.4, 0.4), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, per_class=8, size=96)
    weights = root / "vit_tiny.safetensors"
    save_file(create_vit_backbone("vit_tiny_patch16_224", pretrained=False, img_size=224).state_dict(), str(weights))
    return root, datalist_from_json(root / "datalist.json"), weights


def _extractor(weights, img_size=64, layers="10-11"):
    return FrozenViTExtractor("vit_tiny_patch16_224", pretrained=str(weights), img_size=img_size, layers=layers)


def _all(dl):
    return dl["training"] + dl["validation"] + dl["test"]


def test_store_equals_extractor_output(demo, tmp_path):
    root, dl, weights = demo
    ext = _extractor(weights)
    items = _all(dl)
    report = preload(items, ext, tmp_path / "store", MEAN, STD, batch_size=3, shard_size=5, progress=False)
    assert (report.computed, report.skipped, len(report.store)) == (16, 0, 16)
    assert len(list((tmp_path / "store" / "shards").glob("*.npy"))) == 4  # 5 + 5 + 5 + 1
    t = fpt_transforms("inference", False, 64, mean=MEAN, std=STD)
    for item in items[::5]:
        x = t({"image": item["image"]})["image"].unsqueeze(0)
        keys, values = ext(x)
        k, v = report.store.get(item["id"])
        torch.testing.assert_close(k.float(), keys[0], rtol=1e-3, atol=2e-3)
        torch.testing.assert_close(v.float(), values[0], rtol=1e-3, atol=2e-3)
    again = preload(items, ext, tmp_path / "store", MEAN, STD, progress=False)
    assert (again.computed, again.skipped) == (0, 16)
    with pytest.raises(StoreMismatchError, match="layers"):
        preload(items, _extractor(weights, layers="9-11"), tmp_path / "store", MEAN, STD, progress=False)
    with pytest.raises(StoreMismatchError, match="normalization"):
        preload(items, ext, tmp_path / "store", (0.5, 0.5, 0.5), STD, progress=False)


def test_killed_preload_resumes_without_recomputing(demo, tmp_path):
    root, dl, weights = demo
    store_dir = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "fpt_monai.data.preload",
        "--datalist",
        str(root / "datalist.json"),
        "--store",
        str(store_dir),
        "--backbone",
        "vit_tiny_patch16_224",
        "--pretrained",
        str(weights),
        "--img-size",
        "224",
        "--layers",
        "10-11",
        "--normalization",
        json.dumps([MEAN, STD]),
        "--batch-size",
        "1",
        "--shard-size",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    shards = store_dir / "shards"
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.json"))) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = len(FeatureStore.open(store_dir))
    assert 4 <= done < 16, "the preload finished before it could be killed"
    report = preload(_all(dl), _extractor(weights, img_size=224), store_dir, MEAN, STD, progress=False)
    assert (report.skipped, report.computed) == (done, 16 - done)
    report.store.verify()
    fresh = preload(_all(dl), _extractor(weights, img_size=224), tmp_path / "fresh", MEAN, STD, progress=False)
    for item in _all(dl):
        torch.testing.assert_close(report.store.get(item["id"])[0], fresh.store.get(item["id"])[0])


def test_cli_reports_json(demo, tmp_path, capsys):
    """The CLI's report, the last line of stdout, is JSON (its main in this process: the process boundary is tested
    by the killed and the concurrent preloads below)."""
    from fpt_monai.data.preload import main

    root, _, weights = demo
    args = ["--datalist", root / "datalist.json", "--store", tmp_path / "s", "--backbone", "vit_tiny_patch16_224"]
    args += ["--pretrained", weights, "--img-size", "64", "--layers", "11", "--normalization", "auto"]
    capsys.readouterr()
    assert main([str(a) for a in [*args, "--splits", "test", "--no-progress"]]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["items"] == report["computed"] == 4 and report["bytes_per_item"] == 2 * 1 * 3 * 3 * 64 * 2
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["settings"]["weights"].startswith("sha256:") and manifest["dtype"] == "float16"
    assert len(manifest["settings"]["normalization"]["mean"]) == 3  # 'auto' was resolved and recorded


def _preload_cli(root, weights, store_dir, *args):
    cmd = [sys.executable, "-m", "fpt_monai.data.preload", "--datalist", str(root / "datalist.json")]
    cmd += ["--store", str(store_dir), "--backbone", "vit_tiny_patch16_224", "--pretrained", str(weights)]
    cmd += ["--img-size", "64", "--layers", "10-11", "--normalization", json.dumps([MEAN, STD]), "--no-progress"]
    return cmd + list(args)


def test_preloads_started_together_into_one_store_keep_every_item(demo, tmp_path):
    # issue 19: two preloads of different splits (the folds of a study) both wrote r000-000000...: the last writer
    # won and the other split's items were gone. Here they overlap too (validation), so both compute some items.
    root, dl, weights = demo
    store_dir = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    splits = ("training,validation", "validation,test")
    procs = [
        subprocess.Popen(
            _preload_cli(root, weights, store_dir, "--splits", split, "--batch-size", "1", "--shard-size", "1"),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for split in splits
    ]
    outs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["computed"] + r["skipped"] for r in reports] == [12, 8]
    store = FeatureStore.open(store_dir)  # an item stored twice would be a CorruptStoreError here
    assert sorted(store.ids) == sorted(item["id"] for item in _all(dl))
    store.verify()
    writers = {p.stem.split("-")[1] for p in (store_dir / "shards").glob("*.npy")}
    assert len(writers) == 2, writers  # both processes committed shards, each under names of its own
    single = preload(_all(dl), _extractor(weights), tmp_path / "single", MEAN, STD, progress=False).store
    for item in _all(dl):
        for a, b in zip(store.get(item["id"]), single.get(item["id"]), strict=True):
            torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_ensure_feature_store_refuses_a_folder_that_is_not_a_store_before_loading_the_model(demo, tmp_path):
    # issue 19: a record's store_dir pointing at another folder; a store whose manifest.json was deleted
    root, dl, weights = demo
    kwargs = {"backbone": "vit_tiny_patch16_224", "pretrained": str(weights), "img_size": 64, "layers": "10-11"}
    other = tmp_path / "other"
    (other / "shards").mkdir(parents=True)
    (other / "shards" / "keep_me.npy").write_bytes(b"precious")
    (other / "shards" / ".keep_me_hidden").write_bytes(b"precious")
    with pytest.raises(UnknownFilesError, match=r"shards/\.keep_me_hidden, shards/keep_me\.npy"):
        ensure_feature_store(dl["test"], other, MEAN, STD, kwargs, progress=False)
    assert sorted(p.name for p in (other / "shards").iterdir()) == [".keep_me_hidden", "keep_me.npy"]
    assert sorted(p.name for p in other.iterdir()) == ["shards"]
    store = ensure_feature_store(dl["test"], tmp_path / "s", MEAN, STD, kwargs, progress=False)
    assert len(store) == 4
    shards = sorted((tmp_path / "s" / "shards").iterdir())  # tokens and pooled features: data and index each
    assert len(shards) == 4
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(CorruptStoreError, match="no manifest.json"):
        ensure_feature_store(dl["test"], tmp_path / "s", MEAN, STD, kwargs, progress=False)
    assert not (tmp_path / "s" / "manifest.json").exists() and sorted((tmp_path / "s" / "shards").iterdir()) == shards


@pytest.mark.slow
def test_torchrun_preload_equals_single_process(demo, tmp_path):
    root, dl, weights = demo
    store_dir = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "fpt_monai.data.preload", "--datalist", str(root / "datalist.json"), "--store", str(store_dir)]
    cmd += ["--backbone", "vit_tiny_patch16_224", "--pretrained", str(weights), "--img-size", "64"]
    cmd += ["--layers", "10-11", "--normalization", json.dumps([MEAN, STD]), "--batch-size", "3", "--shard-size", "2"]
    cmd += ["--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["items"] == 16  # one report, from rank 0
    shards = {p.name.split("-")[0] for p in (store_dir / "shards").glob("*.npy")}
    assert shards == {"r000", "r001"}  # both ranks wrote their share
    dist_store = FeatureStore.open(store_dir)
    dist_store.verify()
    single = preload(_all(dl), _extractor(weights), tmp_path / "single", MEAN, STD, progress=False).store
    assert sorted(dist_store.ids) == sorted(single.ids)
    for item in _all(dl):
        for a, b in zip(dist_store.get(item["id"]), single.get(item["id"]), strict=True):
            torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)  # fp16 storage; batches differ


def test_pooled_features_are_added_to_an_existing_store_without_recomputing_tokens(demo, tmp_path):
    root, dl, weights = demo
    items = dl["training"][:6]
    preload(items, _extractor(weights), tmp_path / "s", MEAN, STD, batch_size=4, progress=False)
    token_shards = sorted((tmp_path / "s" / "shards").glob("r000-*"))
    before = {p.name: p.read_bytes() for p in token_shards}

    full = FrozenViTExtractor("vit_tiny_patch16_224", pretrained=str(weights), img_size=64, layers="10-11", pooled=True)
    report = preload(items, full, tmp_path / "s", MEAN, STD, batch_size=4, progress=False, fields=("pooled",))
    assert report.computed == 6
    store = FeatureStore.open(tmp_path / "s")
    assert store.fields == ("tokens", "pooled") and not store.missing([i["id"] for i in items], "pooled")
    assert {p.name: p.read_bytes() for p in token_shards} == before  # the tokens were kept as they were
    assert len(list((tmp_path / "s" / "shards").glob("pooled-*.npy"))) == 1

    image = fpt_transforms("inference", False, 64, mean=MEAN, std=STD)({"image": items[0]["image"]})["image"]
    expected = full.pool(image.as_tensor()[None])[0]  # plain timm blocks: the same features another way
    assert torch.allclose(store.get_pooled(items[0]["id"]).float(), expected, atol=2e-2, rtol=1e-2)
    again = preload(items, full, tmp_path / "s", MEAN, STD, progress=False, fields=("pooled",))
    assert (again.computed, again.skipped) == (0, 6)
    with pytest.raises(ValueError, match="pooled=True"):
        preload(items, _extractor(weights), tmp_path / "t", MEAN, STD, progress=False, fields=("pooled",))


def test_reduced_precision_preload_is_recorded_and_not_mixed_with_fp32(demo, tmp_path):
    root, dl, weights = demo
    ext = _extractor(weights)
    items = _all(dl)[:4]
    fp32 = preload(items, ext, tmp_path / "fp32", MEAN, STD, batch_size=2, progress=False).store
    bf16 = preload(items, ext, tmp_path / "bf16", MEAN, STD, batch_size=2, progress=False, precision="bf16").store
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["settings"]["precision"] == "bf16"
    assert "precision" not in json.loads((tmp_path / "fp32" / "manifest.json").read_text())["settings"]
    for item in items:  # stored as fp16 whatever the compute precision
        (k32, _), (k16, _) = fp32.get(item["id"]), bf16.get(item["id"])
        assert k16.shape == k32.shape and k16.dtype == torch.float16 and bool(torch.isfinite(k16.float()).all())
    # a store is built in one precision: continuing it in another is refused, naming the setting
    with pytest.raises(StoreMismatchError, match="precision"):
        preload(items, ext, tmp_path / "bf16", MEAN, STD, progress=False)
    with pytest.raises(ValueError, match="fp16' needs a GPU"):
        preload(items, ext, tmp_path / "fp16", MEAN, STD, progress=False, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        preload(items, ext, tmp_path / "x", MEAN, STD, progress=False, precision="int8")


def test_weights_are_hashed_once_while_the_file_stays_the_same(tmp_path, monkeypatch):
    import importlib

    preload_module = importlib.import_module("fpt_monai.data.preload")  # the module, not the function of that name
    hashed = []
    real = preload_module.file_sha256
    monkeypatch.setattr(preload_module, "file_sha256", lambda path: hashed.append(path) or real(path))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"first weights")
    first = preload_module.weights_id(str(weights))
    assert preload_module.weights_id(weights) == first and len(hashed) == 1  # the record, the check, the store
    weights.write_bytes(b"other weights")
    os.utime(weights, ns=(1, 1))  # another modification time, whatever the clock's resolution
    assert preload_module.weights_id(weights) != first and len(hashed) == 2
