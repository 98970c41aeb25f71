"""``python -m fpt_monai.check``: the tiny run exercises every section's code on the CPU (so that the command cannot
rot between runs on a GPU), a section past its budget is reported without losing the others, and the targets are
read from the figures with the verdict that fits the device."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fpt_monai.check.report import TARGETS, evaluate_targets
from fpt_monai.check.settings import SECTIONS


def _check(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fpt_monai.check", "--device", "cpu", "--out-dir", str(tmp_path / "check"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_tiny_check_runs_every_section_and_writes_one_report(tmp_path):
    proc = _check(tmp_path, "--tiny")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "check" / "check_report.json").read_text())
    md = (tmp_path / "check" / "check_report.md").read_text()
    assert list(report["sections"]) == list(SECTIONS)
    assert all(s["status"] == "ok" for s in report["sections"].values()), report["sections"]
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["device_name"].startswith("CPU")
    paper = report["sections"]["paper_benchmark"]["figures"]
    # FPT+ trains ~1-2 % of the parameters and, from stored tokens, less memory than full fine-tuning
    assert 0 < paper["fpt_plus_trainable_pct"] < 5
    assert paper["fpt_plus_train_img_s"] > 0 and paper["full_finetune_eager_train_img_s"] > 0
    precision = report["sections"]["preload_precision"]["figures"]
    assert 0.5 < precision["bf16_token_agreement"] <= 1.0
    bundle = report["sections"]["bundle"]["figures"]
    assert bundle["export_status"] == bundle["deploy_status"] == "ok"
    assert bundle["train_img_s_store"] > 0 and bundle["train_img_s_resident"] > 0 and bundle["store_mb"] > 0
    assert bundle["export_torchscript_max_abs_prob_diff_on_device"] < 1e-4
    assert "export_onnx_max_abs_prob_diff_on_device" not in bundle  # ONNX: a full run's (tests/scripts cover it)
    # every demo DICOM reached the Deploy app and was classified
    assert bundle["deploy_dicom_files"] > 0 and bundle["deploy_classified"] == bundle["deploy_dicom_files"]
    sweep = report["sections"]["resolution"]["figures"]
    assert sweep["tokens_64"] > sweep["tokens_32"] and sweep["k_64"] > sweep["k_32"]
    # every target of the issue is listed; a tiny run is no measurement of them
    assert [t["name"] for t in report["targets"]] == [t.name for t in TARGETS]
    assert {t["verdict"] for t in report["targets"]} == {"n/a (tiny run)"}
    assert "## Targets" in md and "| bundle | ok |" in md
    # a tiny CPU run measures nothing, so its sections run two at a time; the report keeps the asked order
    assert report["jobs"] == 2 and "2 sections side by side" in md
    # the scratch folder (demo data, store, bundles) is removed; the logs stay
    assert sorted(p.name for p in (tmp_path / "check").iterdir()) == ["check_report.json", "check_report.md", "logs"]


def test_a_section_past_its_budget_is_reported_and_the_report_still_written(tmp_path):
    proc = _check(tmp_path, "--tiny", "--sections", "paper_benchmark", "--budget", "paper_benchmark=0.5")
    assert proc.returncode == 1
    assert "did not finish" in proc.stdout.splitlines()[-1] and "logs" in proc.stdout.splitlines()[-1]
    section = json.loads((tmp_path / "check" / "check_report.json").read_text())["sections"]["paper_benchmark"]
    assert section["status"] == "timeout" and "--budget paper_benchmark=" in section["error"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sections", "paper_benchmark,nope"], "--sections: unknown ['nope']"),
        (["--budget", "bundle=soon"], "expected SECTION=SECONDS"),
        (["--img-sizes", "512,big"], "comma-separated integers"),
        (["--pretrained", "/nonexistent/weights.safetensors"], "no such file"),
        (["--jobs", "2"], "use it with --tiny only"),
        (["--tiny", "--jobs", "0"], "give 1 or more"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, args, message):
    proc = _check(tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "check" / "check_report.json").exists()


def _env(device_type: str, name: str) -> dict:
    return {"device_type": device_type, "device_name": name}


def _figures(**paper) -> dict:
    return {
        "paper_benchmark": paper,
        "preload_precision": {"bf16_extract_speedup_vs_fp32": 2.4, "bf16_token_agreement": 0.995},
        "resolution": {
            "preload_vs_bare_512": 0.95,
            "preload_vs_bare_1024": 0.85,
            "fpt_plus_memory_pct_of_full_1024": 1.9,
            "fpt_plus_train_img_s_2048": 40.0,
        },
    }


def test_targets_pass_fail_and_apply_by_device():
    paper = {"fpt_plus_memory_pct_of_full_sdpa": 3.1, "fpt_plus_speedup_vs_full_sdpa": 80, "fpt_plus_train_img_s": 6000}
    figures = _figures(**paper)
    on_h100 = {t["name"]: t for t in evaluate_targets(figures, _env("cuda", "NVIDIA H100 80GB HBM3"), tiny=False)}
    assert on_h100["fpt_plus_memory_vs_full_sdpa"]["verdict"] == "FAIL"  # 3.1 % > 2.5 %
    assert on_h100["fpt_plus_speedup_vs_full"]["verdict"] == "PASS"
    assert on_h100["fpt_plus_img_s"]["verdict"] == "PASS"
    assert on_h100["bf16_preload_speedup"]["verdict"] == "PASS"
    assert on_h100["fpt_plus_trains_at_2048"]["verdict"] == "PASS"
    assert on_h100["extractor_vs_bare"]["value"] == 0.85 and on_h100["extractor_vs_bare"]["verdict"] == "PASS"
    assert on_h100["fpt_plus_memory_vs_full_1024"]["verdict"] == "PASS"
    # the absolute throughput is a target on an H100-class card only; GPU targets are not CPU targets
    on_a10 = {t["name"]: t["verdict"] for t in evaluate_targets(figures, _env("cuda", "NVIDIA A10G"), tiny=False)}
    assert on_a10["fpt_plus_img_s"].startswith("n/a") and on_a10["fpt_plus_speedup_vs_full"] == "PASS"
    on_cpu = {t["name"]: t["verdict"] for t in evaluate_targets(figures, _env("cpu", "CPU"), tiny=False)}
    assert on_cpu["fpt_plus_memory_vs_full_sdpa"] == "n/a (target on GPU)" and on_cpu["extractor_vs_bare"] == "PASS"
    # bf16 tokens that disagree with fp32 make its speed-up count as nothing
    figures["preload_precision"]["bf16_token_agreement"] = 0.97
    verdicts = {t["name"]: t for t in evaluate_targets(figures, _env("cuda", "NVIDIA H200"), tiny=False)}
    assert verdicts["bf16_preload_speedup"]["verdict"] == "FAIL"
    # a section that produced nothing leaves its targets missing, not passed
    verdicts = {t["name"]: t["verdict"] for t in evaluate_targets({}, _env("cuda", "NVIDIA H200"), tiny=False)}
    assert set(verdicts.values()) == {"missing"}
