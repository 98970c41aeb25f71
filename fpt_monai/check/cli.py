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
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="sections run side by side (default: 1, so that no measurement times another; 2 for a tiny CPU run, "
        "which measures nothing and only exercises the code)",
    )
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


def _start_in_process_group(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` (output to ``log``) in its own process group, so that a timeout kills the whole group (the
    section's own benchmark processes included)."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended between the poll and the kill
        pass
    proc.wait()


def _section_entry(name: str, code: int | None, seconds: float, budget: float, log: Path, result_file: Path) -> dict:
    import json

    entry: dict = {"seconds": seconds, "budget_s": budget, "log": str(log)}
    if code is None:
        return entry | {"status": "timeout", "error": f"ran past its budget of {budget:.0f} s (--budget {name}=...)"}
    if code or not result_file.is_file():
        last = _last_line(log.read_text(errors="replace"))
        return entry | {"status": "failed", "error": f"exit {code}: {last} (log: {log})"}
    entry |= {"status": "ok", **json.loads(result_file.read_text())}
    # a section's optional steps (export, Deploy): a failure fails the section; a missing extra is a note
    steps = {k[: -len("_status")]: v for k, v in entry["figures"].items() if k.endswith("_status")}
    failed = [f"{k}: {v}" for k, v in steps.items() if v.startswith("failed")]
    absent = [f"{k}: {v}" for k, v in steps.items() if v.startswith("not installed")]
    if failed or absent:
        entry["error"] = "; ".join(failed + absent)
    if failed:
        entry["status"] = "failed"
    return entry


def run_sections(settings: CheckSettings, sections: list[str], progress: bool = True, jobs: int = 1) -> dict:
    """Run ``sections``, each in a process of its own within its budget, at most ``jobs`` at a time (1 for every
    measurement: sections running side by side would time each other); returns the report."""
    from tqdm.auto import tqdm

    from fpt_monai.check.report import environment, evaluate_targets

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}.")
    out = Path(settings.out_dir)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings_file = Path(settings.work_dir) / "settings.json"
    settings.save(settings_file)
    report: dict = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tiny": settings.tiny,
        "jobs": jobs,
        "settings": {k: v for k, v in vars(settings).items() if k != "work_dir"},
        "environment": environment(settings.device),
        "sections": {},
    }
    start = time.perf_counter()
    # side by side, the longest (by budget) first: the others fill the second lane while it runs
    pending = sorted(sections, key=lambda n: -settings.budgets[n]) if jobs > 1 else list(sections)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    entries: dict[str, dict] = {}
    bar = tqdm(total=len(sections), desc="check", unit="section", disable=not progress)
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            result_file = Path(settings.work_dir) / f"{name}.json"
            cmd = [sys.executable, "-m", "fpt_monai.check.sections", name, "--settings", str(settings_file)]
            running[name] = (
                _start_in_process_group([*cmd, "--out", str(result_file)], logs / f"{name}.log"),
                time.perf_counter(),
            )
            bar.set_postfix_str(",".join(running))
        time.sleep(0.05)
        for name, (proc, began) in list(running.items()):
            budget = settings.budgets[name]
            seconds = time.perf_counter() - began
            code = proc.poll()
            if code is None and seconds <= budget:
                continue
            if code is None:
                _kill_group(proc)
            result_file = Path(settings.work_dir) / f"{name}.json"
            entries[name] = _section_entry(name, code, seconds, budget, logs / f"{name}.log", result_file)
            del running[name]
            bar.update(1)
    bar.close()
    report["sections"] = {name: entries[name] for name in sections}  # in the order asked, whatever finished first
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
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give 1 or more sections to run side by side.")
    if args.jobs is not None and args.jobs > 1 and not settings.tiny:
        p.error(f"--jobs {args.jobs} measures sections while they slow each other down: use it with --tiny only.")
    jobs = args.jobs or (2 if settings.tiny and settings.device == "cpu" else 1)
    Path(settings.out_dir).mkdir(parents=True, exist_ok=True)
    settings.work_dir = tempfile.mkdtemp(prefix="work_", dir=settings.out_dir)
    try:
        report = run_sections(settings, sections, jobs=jobs)
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
