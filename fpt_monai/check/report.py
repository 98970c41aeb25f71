"""The check's report: the machine, every section's status and figures, and the targets of issue 21 read from them
(PASS / FAIL where a target applies to the device, ``n/a`` with the reason otherwise)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["TARGETS", "Target", "environment", "evaluate_targets", "write_report"]

#: Cards on which the absolute throughput target applies ("an H100-class card").
H100_CLASS = re.compile(r"\b(H100|H200|H800|GH200|B100|B200|GB200)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Target:
    """One target: ``value`` reads its figure from the sections' figures (None when missing), ``ok`` says whether
    the value meets it, ``applies`` whether it is a target on this device (the environment's description)."""

    name: str
    text: str
    value: Callable[[Mapping[str, Mapping]], float | None]
    ok: Callable[[float], bool]
    applies: Callable[[Mapping], bool]
    where: str


def _fig(section: str, key: str) -> Callable[[Mapping[str, Mapping]], float | None]:
    return lambda figures: figures.get(section, {}).get(key)


def _cuda(env: Mapping) -> bool:
    return env["device_type"] == "cuda"


def _cpu(env: Mapping) -> bool:
    return env["device_type"] == "cpu"


def _resolution_ratio_min(figures: Mapping[str, Mapping]) -> float | None:
    ratios = [v for k, v in figures.get("resolution", {}).items() if k.startswith("preload_vs_bare_") and v]
    return min(ratios) if ratios else None


def _nearest_1024(key: str) -> Callable[[Mapping[str, Mapping]], float | None]:
    """The figure ``key`` at the sweep's size closest to 1024 px (1036 for a patch-14 model)."""

    def read(figures: Mapping[str, Mapping]) -> float | None:
        sizes = {int(k.rsplit("_", 1)[1]): v for k, v in figures.get("resolution", {}).items() if k.startswith(key)}
        sizes = {size: v for size, v in sizes.items() if v is not None and 900 <= size <= 1100}
        return sizes[min(sizes, key=lambda size: abs(size - 1024))] if sizes else None

    return read


def _largest_fpt_plus_trained(figures: Mapping[str, Mapping]) -> float | None:
    sizes = [
        int(k.rsplit("_", 1)[1])
        for k, v in figures.get("resolution", {}).items()
        if k.startswith("fpt_plus_train_img_s_") and v
    ]
    return float(max(sizes)) if sizes else None


def _bf16_speedup_if_agreeing(figures: Mapping[str, Mapping]) -> float | None:
    section = figures.get("preload_precision", {})
    speedup, agreement = section.get("bf16_extract_speedup_vs_fp32"), section.get("bf16_token_agreement")
    if speedup is None or agreement is None:
        return None
    return speedup if agreement >= 0.99 else 0.0  # tokens that disagree make the speed-up worthless


TARGETS = (
    Target(
        "fpt_plus_memory_vs_full_sdpa",
        "FPT+ peak training memory <= 2.5 % of SDPA full fine-tuning's (papers' setting)",
        _fig("paper_benchmark", "fpt_plus_memory_pct_of_full_sdpa"),
        lambda v: v <= 2.5,
        _cuda,
        "GPU",
    ),
    Target(
        "fpt_plus_speedup_vs_full",
        "FPT+ training >= 50x full fine-tuning's images/s (papers' setting, SDPA)",
        _fig("paper_benchmark", "fpt_plus_speedup_vs_full_sdpa"),
        lambda v: v >= 50,
        _cuda,
        "GPU",
    ),
    Target(
        "fpt_plus_img_s",
        "FPT+ training >= 5,000 images/s on an H100-class card",
        _fig("paper_benchmark", "fpt_plus_train_img_s"),
        lambda v: v >= 5000,
        lambda env: _cuda(env) and bool(H100_CLASS.search(env.get("device_name", ""))),
        "H100-class GPU",
    ),
    Target(
        "bf16_preload_speedup",
        "preload in bf16 >= 2x fp32 images/s at >= 99 % token agreement (0 when the agreement is lower)",
        _bf16_speedup_if_agreeing,
        lambda v: v >= 2.0,
        _cuda,
        "GPU",
    ),
    Target(
        "fpt_plus_trains_at_2048",
        "FPT+ trains at 2048 px on one device (the largest size the sweep trained)",
        _largest_fpt_plus_trained,
        lambda v: v >= 2040,
        _cuda,
        "GPU",
    ),
    Target(
        "extractor_vs_bare",
        "extractor (preload) >= 0.8x a bare timm forward at every size of the sweep (the slowest size shown)",
        _resolution_ratio_min,
        lambda v: v >= 0.8,
        lambda env: True,
        "any device",
    ),
    Target(
        "fpt_plus_memory_vs_full_1024",
        "FPT+ training peak memory at ~1024 px <= 2.5 % of full fine-tuning's at ~1024 px",
        _nearest_1024("fpt_plus_memory_pct_of_full_"),
        lambda v: v <= 2.5,
        lambda env: True,
        "any device",
    ),
)


def environment(device: str) -> dict:
    """The machine and software versions the figures belong to (recorded next to every number)."""
    from importlib.metadata import version

    env = {
        "device": device,
        "device_type": device.split(":")[0],
        "torch": version("torch"),  # read from the installed metadata: a CPU check need not import torch here
        "timm": version("timm"),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
    }
    try:
        env["monai"] = version("monai")
    except Exception:  # the report still says which torch ran; a missing MONAI shows in the bundle section
        env["monai"] = None
    if env["device_type"] == "cuda":
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["torch"] = torch.__version__  # with its CUDA build tag
    if env["device_type"] == "cuda" and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        env |= {
            "device_name": props.name,
            "device_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        env["device_name"] = f"CPU ({env['cpu']}, {env['cpu_cores']} cores)"
        env["torch_threads"] = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count()
    return env


def evaluate_targets(figures: Mapping[str, Mapping], env: Mapping, tiny: bool) -> list[dict]:
    """Each target's value and verdict: PASS / FAIL, ``n/a`` (not a target on this device, or a tiny run), or
    ``missing`` (its section did not produce the figure)."""
    rows = []
    for t in TARGETS:
        value = t.value(figures)
        if tiny:
            verdict = "n/a (tiny run)"
        elif not t.applies(env):
            verdict = f"n/a (target on {t.where})"
        elif value is None:
            verdict = "missing"
        else:
            verdict = "PASS" if t.ok(value) else "FAIL"
        rows.append({"name": t.name, "target": t.text, "value": value, "verdict": verdict})
    return rows


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def write_report(out_dir: str | os.PathLike, report: Mapping) -> tuple[Path, Path]:
    """``check_report.json`` and ``check_report.md`` under ``out_dir`` (written whole, then renamed)."""
    from fpt_monai.utils.atomic import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = report["environment"]
    lines = [
        "# fpt_monai check report",
        "",
        f"- device: {env['device_name']} ({env['device']})"
        + (f", {env['device_memory_gib']} GiB, CUDA {env['cuda']}" if env.get("cuda") else ""),
        f"- torch {env['torch']}, timm {env['timm']}, MONAI {env.get('monai')}, Python {env['python']}, "
        f"{env['torch_threads']} threads",
        f"- {'tiny run (a test of the command, not a measurement)' if report['tiny'] else 'full setting'}, "
        f"started {report['started']}, {report['seconds']:.0f} s"
        + (f", {report['jobs']} sections side by side" if report.get("jobs", 1) > 1 else ""),
        "",
        "## Targets",
        "",
        "| target | value | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {_cell(t['value'])} | {t['verdict']} |" for t in report["targets"]]
    lines += ["", "## Sections", "", "| section | status | seconds | budget s | note |", "|---|---|---|---|---|"]
    for name, sec in report["sections"].items():
        lines.append(
            f"| {name} | {sec['status']} | {sec['seconds']:.1f} | {sec['budget_s']:.0f} | "
            f"{sec.get('error', '').replace('|', '/')[:300]} |"
        )
    for name, sec in report["sections"].items():
        figures = sec.get("figures") or {}
        if not figures:
            continue
        lines += ["", f"### {name}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in figures.items()]
    md, js = out / "check_report.md", out / "check_report.json"
    atomic_write_text(js, json.dumps(report, indent=1, default=str))
    atomic_write_text(md, "\n".join(lines) + "\n")
    return js, md
