"""``python -m fpt_monai.check [--device cuda] [--tiny] [--out-dir outputs/check]``: run every section in its own
process within its time budget and write the report (see :mod:`fpt_monai.check`).

Exit status: 0 when every section ran and no target that applies failed, 1 when a section failed or ran out of
time (the report still holds the others), 2 when a target failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from fpt_monai.check.settings import SECTIONS, CheckSettings

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpt-monai check",
        description="Measure every speed and memory claim of FPT/FPT+ on one device and write check_report.{json,md}.",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--tiny", action="store_true", help="a tiny model and sizes: every code path in about a minute")
    p.add_argument("--out-dir", default="outputs/check", help="where check_report.json and .md go")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument("--backbone", default=None, help="frozen model (default: vit_base_patch16_384, tiny: ViT-Tiny)")
    p.add_argument("--pretrained", default="", help="weight file of the frozen model (default: random weights)")
    p.add_argument("--img-sizes", default=None, help="sizes of the resolution sweep (default: 512,1024,2048)")
    p.add_argument(
        "--budget", action="append", default=[], metavar="SECTION=SECONDS", help="a section's time budget (repeatable)"
    )
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (demo data, store, bundle)")
    return p


def _settings(args: argparse.Namespace, p: argparse.ArgumentParser) -> CheckSettings:
    device = args.device
    if device is None or device.startswith("cuda"):  # torch only when CUDA matters (its import takes seconds)
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            p.error(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu.")
    overrides: dict = {"device": device, "out_dir": args.out_dir, "pretrained": args.pretrained}
    if args.backbone:
        overrides["backbone"] = args.backbone
    if args.img_sizes:
        try:
            overrides["resolution_sizes"] = tuple(int(v) for v in args.img_sizes.split(",") if v.strip())
        except ValueError:
            p.error(f"--img-sizes takes comma-separated integers, got {args.img_sizes!r}")
    if args.pretrained and not Path(args.pretrained).is_file():
        p.error(f"--pretrained {args.pretrained}: no such file; give the frozen model's weight file or leave it out.")
    settings = CheckSettings.tiny_defaults(**overrides) if args.tiny else CheckSettings(**overrides)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in SECTIONS or not seconds.replace(".", "", 1).isdigit():
            p.error(f"--budget {item!r}: expected SECTION=SECONDS with SECTION one of {', '.join(SECTIONS)}")
        settings.budgets[name] = float(seconds)
    return settings


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _run_in_process_group(cmd: list[str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Run ``cmd`` (output to ``log``) in its own process group; on timeout the whole group (the section's own
    benchmark processes included) is killed. Returns (exit code or None on timeout, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, time.perf_counter() - start


def run_sections(settings: CheckSettings, sections: list[str], progress: bool = True) -> dict:
    """Run ``sections`` one after another, each in a process of its own within its budget; returns the report."""
    import json

    from tqdm.auto import tqdm

    from fpt_monai.check.report import environment, evaluate_targets

    out = Path(settings.out_dir)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings_file = Path(settings.work_dir) / "settings.json"
    settings.save(settings_file)
    report: dict = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tiny": settings.tiny,
        "settings": {k: v for k, v in vars(settings).items() if k != "work_dir"},
        "environment": environment(settings.device),
        "sections": {},
    }
    start = time.perf_counter()
    bar = tqdm(sections, desc="check", unit="section", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        result_file = Path(settings.work_dir) / f"{name}.json"
        budget = settings.budgets[name]
        cmd = [sys.executable, "-m", "fpt_monai.check.sections", name, "--settings", str(settings_file)]
        code, seconds = _run_in_process_group([*cmd, "--out", str(result_file)], logs / f"{name}.log", budget)
        entry: dict = {"seconds": seconds, "budget_s": budget, "log": str(logs / f"{name}.log")}
        if code is None:
            entry |= {"status": "timeout", "error": f"ran past its budget of {budget:.0f} s (--budget {name}=...)"}
        elif code or not result_file.is_file():
            last = _last_line((logs / f"{name}.log").read_text(errors="replace"))
            entry |= {"status": "failed", "error": f"exit {code}: {last} (log: {logs / f'{name}.log'})"}
        else:
            entry |= {"status": "ok", **json.loads(result_file.read_text())}
            # a section's optional steps (export, Deploy): a failure fails the section; a missing extra is a note
            steps = {k[: -len("_status")]: v for k, v in entry["figures"].items() if k.endswith("_status")}
            failed = [f"{k}: {v}" for k, v in steps.items() if v.startswith("failed")]
            absent = [f"{k}: {v}" for k, v in steps.items() if v.startswith("not installed")]
            if failed or absent:
                entry["error"] = "; ".join(failed + absent)
            if failed:
                entry["status"] = "failed"
        report["sections"][name] = entry
    report["seconds"] = time.perf_counter() - start
    figures = {name: sec.get("figures", {}) for name, sec in report["sections"].items()}
    report["targets"] = evaluate_targets(figures, report["environment"], settings.tiny)
    return report


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        p.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    settings = _settings(args, p)
    Path(settings.out_dir).mkdir(parents=True, exist_ok=True)
    settings.work_dir = tempfile.mkdtemp(prefix="work_", dir=settings.out_dir)
    try:
        report = run_sections(settings, sections)
    finally:
        if not args.keep_work:  # this run's own scratch folder only
            shutil.rmtree(settings.work_dir, ignore_errors=True)
    from fpt_monai.check.report import write_report

    js, md = write_report(settings.out_dir, report)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    failed = [n for n, s in report["sections"].items() if s["status"] != "ok"]
    missed = [t["name"] for t in report["targets"] if t["verdict"] == "FAIL"]
    if failed:
        print(f"fpt_monai: error: sections {failed} did not finish; their logs are under {settings.out_dir}/logs.")
        return 1
    if missed:
        print(f"fpt_monai: targets missed: {missed} (see {md}).")
        return 2
    return 0


def run() -> None:
    """Command-line entry point."""
    sys.exit(main())
