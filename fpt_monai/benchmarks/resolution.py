"""Resolution sweep (issue 21): what FPT+ costs, and what full fine-tuning costs, from 512 to 2048 px input.

For every input size, each measurement in its own process (a fresh fork of a server that has only imported the
libraries, so that each peak is clean):

- ``tokens`` (``N``, prefix tokens included) and ``k`` (tokens kept per layer and head, ``int(token_ratio * N)``);
- **preload**: the frozen extractor selecting tokens (what preload runs, fp32, no gradients), seconds per image and
  peak memory, against a **bare** ``timm`` ``forward_features`` of the same model (``preload_vs_bare`` = bare time /
  preload time: 1.0 means token selection is free);
- the feature store's bytes per item (fp16 keys and values; int8 too when the store offers it);
- **FPT+ training** from stored tokens, as the paper means it (the frozen model is not loaded; the batch holds the
  side view and fp16 keys/values, as read from the store): seconds per step, training images/s and peak memory;
- **full fine-tuning** of the same ViT at that size, where it fits: peak memory and seconds per step, or why not
  (``"out of memory"``, ``"timeout"``, ``"skipped"``). Once it has not fitted (or timed out) at one size, the larger
  ones are skipped.

Peak memory is CUDA ``max_memory_allocated`` (weights included), or on CPU the peak resident set above the
process's baseline. On CPU every measurement runs under an address-space limit (``RLIMIT_AS``: the process's own
virtual size at start plus 80 % of the machine's available memory, or ``--cpu-memory-limit-mb``), so that a size
that does not fit fails inside the process with an allocation error instead of calling the kernel's OOM killer.

Usage::

    W=../shared/data/vit_small_patch14_dinov2_imgfocus/vit_small_patch14_dinov2_imgfocus.fp16.safetensors
    python -m fpt_monai.benchmarks.resolution --backbone vit_small_patch14_dinov2 --pretrained $W \\
        --img-sizes 518,1036,2044 --batch-size 2 --device cpu --out-dir outputs/resolution
    python scripts/benchmark.py --img-sizes 512,1024,2048 ...   # the same sweep through the old command

Writes ``<out-dir>/resolution.{json,md,png}`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MEASUREMENTS", "FULL_FINETUNE_STATUSES", "main", "run", "side_img_size", "sweep"]

# the measurements of one input size, in the order they run
MEASUREMENTS = ("preload", "bare_forward", "fpt_plus", "full_finetune")
FULL_FINETUNE_STATUSES = ("ok", "out of memory", "skipped", "timeout")
_CPU_MEMORY_FRACTION = 0.8  # of MemAvailable, what one measurement may add on CPU
# allocation failures as torch, glibc and the C++ runtime word them
_MODULE = "fpt_monai.benchmarks.resolution"  # by name: __name__ is "__main__" under python -m
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc", "not enough memory")
# oneDNN's words when its kernel (JIT code, scratchpad) cannot be allocated: a memory failure under RLIMIT_AS
_OOM_TEXT_UNDER_LIMIT = ("could not create a primitive",)


# ---- measurements (each runs in a process of its own) ----------------------------------------------------------
def _proc_status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmSize``, ``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def _warm_up_kernels() -> None:
    """One training step of a very small timm ViT: starts the thread pools and pages in the kernels' code (patch
    convolution, linear, norm, attention, GELU, AdamW), so that neither counts as the measurement's memory nor
    fails under its address-space limit (a thread that cannot be created aborts the process)."""
    import timm
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vit = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, embed_dim=64, depth=1, num_heads=2, num_classes=2
        )
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-4)
    vit(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    with torch.inference_mode():
        vit.forward_features(torch.randn(1, 3, 32, 32))


def _limit_cpu_memory(limit_mb: int) -> int:
    """Cap this process's address space at its current virtual size plus ``limit_mb`` (0: 80 % of MemAvailable), so
    that too large a size fails with an allocation error in this process rather than the OOM killer taking a
    process of the machine. Returns the bytes allowed on top of the current size."""

    _warm_up_kernels()  # thread stacks and kernel code are address space too; a thread not created aborts
    extra = limit_mb * 2**20 if limit_mb > 0 else int(_CPU_MEMORY_FRACTION * _mem_available_bytes())
    soft = _proc_status_kb("VmSize") * 1024 + extra
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return extra


def _is_oom(exc: BaseException, limited: bool) -> bool:
    """Whether ``exc`` is an allocation failure (``limited``: this process runs under RLIMIT_AS)."""
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    if isinstance(exc, OSError) and exc.errno == 12:  # ENOMEM, e.g. a file map or a thread under RLIMIT_AS
        return True
    texts = _OOM_TEXT + (_OOM_TEXT_UNDER_LIMIT if limited else ())
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in texts)


def _measure(kind: str, cfg: dict, size: int) -> dict:
    """One measurement at one input size, in this process."""
    warnings.filterwarnings("ignore")  # random weights warn
    import torch

    from fpt_monai.networks import FPT, FPT_VARIANTS, FrozenViTExtractor, ViTClassifier, create_vit_backbone

    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    if not cuda:
        _limit_cpu_memory(cfg["cpu_memory_limit_mb"])
    from fpt_monai.benchmarks.measure import peak_rss_mb

    base_rss = peak_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    B = cfg["batch_size"]
    pretrained = cfg["pretrained"] or False

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def timed(fn) -> float:
        """Mean seconds of ``fn()`` over ``steps`` runs after ``warmup`` untimed ones."""
        for _ in range(cfg["warmup"]):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(cfg["steps"]):
            fn()
        sync()
        return (time.perf_counter() - start) / cfg["steps"]

    def peak_mb() -> float:
        return torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb() - base_rss

    if kind in ("preload", "bare_forward"):
        if kind == "preload":
            net = FrozenViTExtractor(
                cfg["backbone"],
                pretrained=pretrained,
                img_size=size,
                layers=FPT_VARIANTS[cfg["variant"]]["layers"],
                token_ratio=cfg["token_ratio"],
            ).to(device)
            fn = lambda: net(x)  # noqa: E731  (preload's call: keys and values of the selected tokens, fp32)
        else:
            net = create_vit_backbone(cfg["backbone"], pretrained=pretrained, img_size=size).to(device).eval()
            fn = lambda: net.forward_features(x)  # noqa: E731
        x = torch.randn(B, 3, size, size, device=device)
        with torch.inference_mode():
            seconds = timed(fn)
        return {"s_per_image": seconds / B, "peak_mb": peak_mb()}

    labels = torch.randint(0, cfg["num_classes"], (B,), device=device)
    if kind == "fpt_plus":
        # trained from stored tokens: the frozen model is not built, the batch is the side view and fp16 tokens
        net = FPT(
            num_classes=cfg["num_classes"],
            variant=cfg["variant"],
            backbone=cfg["backbone"],
            pretrained=False,
            img_size=size,
            side_img_size=cfg["side_img_size"],
            token_ratio=cfg["token_ratio"],
            frozen_model=False,
        ).to(device)
        side = torch.randn(B, 3, net.side_img_size, net.side_img_size, device=device)
        # made in fp16 directly: an fp32 temporary would count in the peak (a store batch is read as fp16)
        keys = torch.randn(B, *net.token_shape, device=device, dtype=torch.float16)
        values = torch.randn_like(keys)
        forward = lambda: net(side, image_side=side, keys=keys, values=values)  # noqa: E731
    elif kind == "full_finetune":
        # random weights: memory and speed do not depend on them, and no weight file is read
        net = ViTClassifier(cfg["num_classes"], backbone=cfg["backbone"], pretrained=False, img_size=size).to(device)
        x = torch.randn(B, 3, size, size, device=device)
        forward = lambda: net(x)  # noqa: E731
    else:
        raise ValueError(f"unknown measurement {kind!r}; choose from {MEASUREMENTS}")
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(), labels).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    step_s = timed(step)
    return {"step_s": step_s, "train_img_s": B / step_s, "peak_mb": peak_mb()}


def _watch_sweep(pid: int) -> None:
    """End this measurement as soon as the sweep's process ``pid`` is gone (e.g. killed on a timeout): the server
    that forked it stays up while a measurement runs, so nothing else would stop it. Started before the memory limit
    is set (a thread's stack is address space)."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():  # no /proc: nothing to watch with
        return

    def alive() -> bool:
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone too
        except OSError:
            return False

    def watch() -> None:
        while alive():
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="watch-sweep", daemon=True).start()


def _child(kind: str, cfg: dict, size: int, conn, sweep_pid: int) -> None:
    """Process entry: run one measurement and send ``{"status": ..., ...}`` back through ``conn``."""
    _watch_sweep(sweep_pid)
    try:
        result = {"status": "ok", **_measure(kind, cfg, size)}
    except BaseException as exc:  # noqa: BLE001  (every failure is reported to the parent, which decides)
        oom = _is_oom(exc, limited=not cfg["device"].startswith("cuda"))
        text = f"{type(exc).__name__}: {exc}" if oom else traceback.format_exc()
        del exc  # the traceback holds the tensors that did not fit
        result = {"status": "out of memory" if oom else "error", "error": text[-4000:]}
    conn.send(result)
    conn.close()


def _context() -> mp.context.BaseContext:
    """Processes forked from a server that has imported the libraries once: a clean process per measurement
    without paying torch's, timm's and MONAI's imports every time (and never a fork of a process using CUDA)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "timm", "fpt_monai.networks", _MODULE])
    return ctx


def _run_one(ctx: mp.context.BaseContext, kind: str, cfg: dict, size: int, timeout: float) -> dict:
    """Run one measurement in its own process; ``{"status": "ok" | "out of memory" | "timeout" | "error", ...}``."""
    import importlib

    target = importlib.import_module(_MODULE)._child  # not __main__'s copy: the server has this module imported
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(kind, cfg, size, send, os.getpid()), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            proc.kill()
            return {"status": "timeout", "error": f"no result within --timeout {timeout:g} s"}
        try:
            return recv.recv()
        except EOFError:  # the process died without a word
            proc.join()
            code = proc.exitcode
            if code is not None and code < 0:
                name = signal.Signals(-code).name
                # SIGKILL is the kernel's OOM killer; under RLIMIT_AS an allocation failure can also end in an abort
                oom = -code == signal.SIGKILL or not cfg["device"].startswith("cuda")
                return {
                    "status": "out of memory" if oom else "error",
                    "error": f"{kind} at {size} px died of {name}",
                }
            return {"status": "error", "error": f"{kind} at {size} px exited with {code} without a result"}
    finally:
        recv.close()
        proc.join()


# ---- the sweep --------------------------------------------------------------------------------------------------
def _token_geometry(cfg: dict, size: int) -> dict:
    """Tokens, k and the store's bytes per item at ``size``, from the network's own shapes (meta device)."""
    from fpt_monai.data.feature_store import STORE_DTYPES
    from fpt_monai.networks import FPT_VARIANTS, FrozenViTExtractor

    ext = FrozenViTExtractor.skeleton(
        backbone=cfg["backbone"],
        img_size=size,
        layers=FPT_VARIANTS[cfg["variant"]]["layers"],
        token_ratio=cfg["token_ratio"],
    )
    elements = 2 * math.prod(ext.token_shape)  # keys and values
    return {
        "tokens": ext.num_tokens,
        "k": ext.num_selected,
        "token_shape": list(ext.token_shape),
        "store_bytes_per_item": elements * 2,  # fp16
        "store_bytes_per_item_int8": elements if "int8" in STORE_DTYPES else None,
    }


def side_img_size(backbone: str, variant: str) -> int:
    """The variant's side resolution (128 px for FPT+, 224 for FPT) rounded down to a multiple of the backbone's
    patch: 126 px for a /14 backbone such as DINOv2 (the side network's patches are the frozen model's)."""
    from fpt_monai.networks import FPT_VARIANTS, FrozenViTExtractor

    patch = FrozenViTExtractor.skeleton(backbone=backbone, img_size=224, layers=0).patch_size
    return FPT_VARIANTS[variant]["side_img_size"] // patch * patch


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sweep(cfg: dict, sizes: Sequence[int], progress: bool = True) -> dict:
    """Measure every size (ascending); returns ``{"setting", "rows", "full_finetune_stops_fitting_at"}``."""
    from tqdm.auto import tqdm

    ctx = _context()
    rows: list[dict] = []
    stops_fitting_at: int | None = None
    full_ft_stopped: str | None = None  # why larger sizes are not tried any more
    bar = tqdm(total=len(sizes) * len(MEASUREMENTS), desc="resolution", unit="measurement", disable=not progress)
    for size in sizes:
        row: dict = {"img_size": size, **_token_geometry(cfg, size)}
        results: dict[str, dict] = {}
        for kind in MEASUREMENTS:
            bar.set_postfix_str(f"{size} px {kind}")
            if kind == "full_finetune" and cfg["skip_full_finetune_above"] and size > cfg["skip_full_finetune_above"]:
                results[kind] = {
                    "status": "skipped",
                    "error": f"above --skip-full-finetune-above {cfg['skip_full_finetune_above']}",
                }
            elif kind == "full_finetune" and full_ft_stopped:
                results[kind] = {"status": "skipped", "error": full_ft_stopped}
            else:
                results[kind] = _run_one(ctx, kind, cfg, size, cfg["timeout"])
            if results[kind]["status"] == "error":
                bar.close()
                raise SystemExit(f"{kind} at {size} px failed:\n{results[kind]['error']}")
            bar.update()
        pre, bare, side, full = (results[k] for k in MEASUREMENTS)
        ok = {k: r["status"] == "ok" for k, r in results.items()}
        row.update(
            {
                "preload_s_per_image": pre.get("s_per_image"),
                "bare_forward_s_per_image": bare.get("s_per_image"),
                "preload_vs_bare": bare["s_per_image"] / pre["s_per_image"]
                if ok["preload"] and ok["bare_forward"]
                else None,
                "preload_peak_mb": pre.get("peak_mb"),
                "bare_forward_peak_mb": bare.get("peak_mb"),
                "fpt_plus_step_s": side.get("step_s"),
                "fpt_plus_train_img_s": side.get("train_img_s"),
                "fpt_plus_peak_mb": side.get("peak_mb"),
                "full_finetune_peak_mb": full.get("peak_mb"),
                "full_finetune_step_s": full.get("step_s"),
                "full_finetune_status": full["status"],
                "fpt_plus_memory_pct_of_full": 100.0 * side["peak_mb"] / full["peak_mb"]
                if ok["fpt_plus"] and ok["full_finetune"]
                else None,
                "preload_status": pre["status"],
                "bare_forward_status": bare["status"],
                "fpt_plus_status": side["status"],
                "errors": {k: r["error"] for k, r in results.items() if "error" in r} or None,
            }
        )
        rows.append(row)
        if full["status"] == "out of memory" and stops_fitting_at is None:
            stops_fitting_at = size
        if full["status"] in ("out of memory", "timeout") and not full_ft_stopped:
            full_ft_stopped = f"not tried: full fine-tuning gave '{full['status']}' at {size} px already"
    bar.close()
    return {"rows": rows, "full_finetune_stops_fitting_at": stops_fitting_at}


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _table(result: dict) -> str:
    s = result["setting"]
    header = (
        f"{s['backbone']} ({'pre-trained' if s['pretrained'] else 'random weights'}), {s['variant']}, token_ratio "
        f"{s['token_ratio']}, side view {s['side_img_size']} px, batch {s['batch_size']}, {s['device']} "
        f"({s['device_name']}, {s['threads']} threads), "
        f"fp32, {s['steps']} timed step(s) after {s['warmup']} warm-up, torch {s['torch']}; peak memory: "
        f"{s['peak_memory']}"
    )
    int8 = any(r["store_bytes_per_item_int8"] is not None for r in result["rows"])
    lines = [
        header,
        "",
        "| input | tokens N | k / layer | preload s/img | bare forward s/img | preload / bare speed | "
        "preload peak MB | bare peak MB | store MB/img (fp16"
        + (", int8" if int8 else "")
        + ") | FPT+ s/step | FPT+ train img/s | "
        "FPT+ peak MB | full FT peak MB | full FT s/step | full FT | FPT+ % of full FT memory |",
        "|---" * 16 + "|",
    ]
    for r in result["rows"]:
        store = f"{r['store_bytes_per_item'] / 1e6:.2f}"
        if int8:
            store += f", {_fmt(r['store_bytes_per_item_int8'] and r['store_bytes_per_item_int8'] / 1e6)}"
        lines.append(
            f"| {r['img_size']} px | {r['tokens']:,} | {r['k']:,} | {_fmt(r['preload_s_per_image'], '.3f')} | "
            f"{_fmt(r['bare_forward_s_per_image'], '.3f')} | {_fmt(r['preload_vs_bare'], '.2f', 'x')} | "
            f"{_fmt(r['preload_peak_mb'], '.0f')} | {_fmt(r['bare_forward_peak_mb'], '.0f')} | {store} | "
            f"{_fmt(r['fpt_plus_step_s'], '.3f')} | {_fmt(r['fpt_plus_train_img_s'], '.2f')} | "
            f"{_fmt(r['fpt_plus_peak_mb'], '.0f')} | {_fmt(r['full_finetune_peak_mb'], '.0f')} | "
            f"{_fmt(r['full_finetune_step_s'], '.2f')} | {r['full_finetune_status']} | "
            f"{_fmt(r['fpt_plus_memory_pct_of_full'], '.2f', ' %')} |"
        )
    stop = result["full_finetune_stops_fitting_at"]
    lines += ["", f"Full fine-tuning stops fitting at: {f'{stop} px' if stop else 'never, in the sizes tried'}."]
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    sizes = [r["img_size"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (
        (
            "peak memory (MB)",
            (
                ("preload", "preload_peak_mb"),
                ("bare forward", "bare_forward_peak_mb"),
                ("FPT+ training", "fpt_plus_peak_mb"),
                ("full fine-tuning", "full_finetune_peak_mb"),
            ),
        ),
        (
            "seconds",
            (
                ("preload, per image", "preload_s_per_image"),
                ("bare forward, per image", "bare_forward_s_per_image"),
                ("FPT+ training step", "fpt_plus_step_s"),
                ("full fine-tuning step", "full_finetune_step_s"),
            ),
        ),
        ("feature store per image (MB)", (("fp16", "store_bytes_per_item"), ("int8", "store_bytes_per_item_int8"))),
    )
    for ax, (title, series) in zip(axes, panels, strict=True):
        for label, key in series:
            points = [(s, r[key]) for s, r in zip(sizes, rows, strict=True) if r[key] is not None]
            if not points:
                continue
            scale = 1e-6 if key.startswith("store_bytes") else 1.0
            ax.plot([p[0] for p in points], [p[1] * scale for p in points], marker="o", label=label)
        for r in rows:  # where full fine-tuning did not run
            if title.startswith("peak") and r["full_finetune_status"] != "ok":
                ax.axvline(r["img_size"], color="tab:red", alpha=0.3, linestyle="--")
                ax.annotate(
                    f"full FT: {r['full_finetune_status']}",
                    (r["img_size"], 0.5),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    fontsize=8,
                    color="tab:red",
                    ha="right",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("input resolution (px)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    s = result["setting"]
    fig.suptitle(f"{s['backbone']}, batch {s['batch_size']}, {s['device']} ({s['device_name']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_base_patch16_384", help="timm ViT name")
    p.add_argument("--pretrained", default="", help="weight file of the frozen model; random weights when empty")
    p.add_argument("--img-sizes", default="512,1024,2048", help="comma-separated input sizes (px)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--variant", default="fpt_plus", choices=("fpt_plus", "fpt"))
    p.add_argument("--token-ratio", type=float, default=0.2)
    p.add_argument("--device", default=None, help="cuda if available, else cpu")
    p.add_argument("--steps", type=int, default=3, help="timed steps (passes) per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    p.add_argument("--out-dir", default="outputs/resolution")
    p.add_argument(
        "--skip-full-finetune-above",
        type=int,
        default=0,
        help="do not try full fine-tuning above this many px (0: try every size)",
    )
    p.add_argument("--num-classes", type=int, default=5)
    p.add_argument(
        "--side-img-size", type=int, default=0, help="0: the variant's (128 or 224), down to a multiple of the patch"
    )
    p.add_argument(
        "--cpu-memory-limit-mb",
        type=int,
        default=0,
        help="on CPU, the memory one measurement may add (RLIMIT_AS); 0: 80%% of MemAvailable at its start",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the sweep from command-line arguments (``sys.argv`` when ``None``); returns what ``resolution.json``
    holds."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.img_sizes.split(",") if s.strip()})
    except ValueError:
        p.error(f"--img-sizes takes comma-separated integers (px), got {args.img_sizes!r}")
    if not sizes or min(sizes) < 1:
        p.error(f"--img-sizes needs at least one positive size, got {args.img_sizes!r}")
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.timeout <= 0:
        p.error("--batch-size and --steps must be >= 1, --warmup >= 0, --timeout > 0")
    if not 0.0 < args.token_ratio <= 1.0:
        p.error(f"--token-ratio must be in (0, 1], got {args.token_ratio}")
    if args.skip_full_finetune_above < 0 or args.cpu_memory_limit_mb < 0 or args.side_img_size < 0:
        p.error("--skip-full-finetune-above, --cpu-memory-limit-mb and --side-img-size must be >= 0")
    if args.pretrained and not Path(args.pretrained).is_file():
        p.error(f"--pretrained {args.pretrained!r} is not a file; give a weight file, or leave it empty for random")
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here; use --device cpu")
    cuda = args.device.startswith("cuda")
    cfg = {
        "backbone": args.backbone,
        "pretrained": str(Path(args.pretrained).resolve()) if args.pretrained else None,
        "variant": args.variant,
        "token_ratio": args.token_ratio,
        "batch_size": args.batch_size,
        "num_classes": args.num_classes,
        "side_img_size": args.side_img_size or side_img_size(args.backbone, args.variant),
        "device": args.device,
        "steps": args.steps,
        "warmup": args.warmup,
        "timeout": args.timeout,
        "skip_full_finetune_above": args.skip_full_finetune_above,
        "cpu_memory_limit_mb": args.cpu_memory_limit_mb,
    }
    result = sweep(cfg, sizes, progress=not args.no_progress)
    result = {
        "setting": {
            **cfg,
            "img_sizes": sizes,
            "device_name": _device_name(args.device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "peak_memory": "CUDA max_memory_allocated"
            if cuda
            else "peak RSS above the process's baseline, under RLIMIT_AS "
            + (
                f"+{args.cpu_memory_limit_mb} MB"
                if args.cpu_memory_limit_mb
                else f"+{int(100 * _CPU_MEMORY_FRACTION)} % of MemAvailable"
            ),
        },
        **result,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resolution.json").write_text(json.dumps(result, indent=1))
    table = _table(result)
    (out / "resolution.md").write_text(table + "\n")
    _plot(result, out / "resolution.png")
    print(table)
    return result


def run() -> None:
    """Command-line entry point."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the measurement processes inherit it
    main()


if __name__ == "__main__":
    run()
