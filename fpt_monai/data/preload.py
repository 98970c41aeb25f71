# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Preloading: run the frozen model once over a datalist and keep the selected tokens in a :class:`FeatureStore`.

Python: :func:`preload`. Command line (:mod:`fpt_monai.commands.preload`, ``fpt-monai preload``)::

    python -m fpt_monai.data.preload --datalist data/datalist.json --store outputs/tokens \\
        --backbone vit_base_patch16_384 --pretrained weights.safetensors --variant fpt_plus --normalization auto
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fpt_monai.data.datalist import datalist_from_json
from fpt_monai.data.feature_store import POOLED, STORE_DTYPES, STORE_FIELDS, TOKENS, FeatureStore, file_sha256
from fpt_monai.data.normalization import resolve_normalization
from fpt_monai.data.splits import SPLITS
from fpt_monai.data.store_options import PRECISION_NAMES
from fpt_monai.networks.frozen_vit import FrozenViTExtractor
from fpt_monai.transforms.frozen_views import FROZEN_VIEW_KEY, FROZEN_VIEW_TRANSFORMS, FrozenViewd
from fpt_monai.transforms.pipeline import fpt_transforms
from fpt_monai.utils.flags import as_weights
from fpt_monai.utils.runtime import setup_cli

__all__ = [
    "PRECISIONS",
    "PreloadReport",
    "check_precision",
    "ensure_feature_store",
    "preload",
    "store_settings",
    "weights_id",
]


def weights_id(pretrained: bool | str) -> str:
    """Identity of the LPM weights for the store manifest and the model record: the SHA-256 of a weight file, the
    timm hub name, or ``"random"``. A file is hashed once per process while its size and modification time stay the
    same (a run's start asks for it several times: the record, the settings check, the store)."""
    pretrained = as_weights(pretrained)
    if pretrained is True:
        return "timm-hub"
    if pretrained is False or pretrained is None:
        return "random"
    path = Path(pretrained)
    if not path.is_file():  # checked here: hashing comes before the backbone would name the file
        raise FileNotFoundError(
            f"{pretrained}: no such weight file. Pass an existing file (--pretrained), or true (timm hub weights)."
        )
    stat = path.stat()
    return _weights_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _weights_digest(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key only: a rewritten file is hashed again
    return f"sha256:{file_sha256(path)}"


# precision -> the autocast dtype of the frozen model (None: fp32, without autocast)
PRECISIONS = dict(zip(PRECISION_NAMES, (None, torch.bfloat16, torch.float16), strict=True))


def check_precision(precision: str, device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype of a preload precision (``None`` for fp32).

    Raises:
        ValueError: an unknown precision, or fp16 on a CPU (use bf16 there).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "fp16" and device is not None and torch.device(device).type == "cpu":
        raise ValueError("precision 'fp16' needs a GPU: CPU autocast runs in bf16; use precision 'bf16' there.")
    return PRECISIONS[precision]


def store_settings(
    extractor: FrozenViTExtractor,
    mean: Sequence[float],
    std: Sequence[float],
    weights: str | None = None,
    precision: str = "fp32",
) -> dict:
    """Everything that determines the stored tokens (compared when a store is opened); ``weights`` overrides the
    identity of the extractor's weights (for an extractor built on the meta device); ``precision`` is the frozen
    model's compute precision."""
    settings = {
        "backbone": extractor.backbone,
        "weights": weights if weights is not None else weights_id(extractor.pretrained),
        "img_size": extractor.img_size,
        "pos_interp": extractor.pos_interp,
        "layers": list(extractor.layers),
        "token_ratio": extractor.token_ratio,
        "token_importance": extractor.importance_mode,
        "include_cls": extractor.include_cls,
        "k": extractor.num_selected,
        "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "lpm_view": "resize-bilinear-antialias",
    }
    if extractor.layer_norm_eps_set:  # recorded only when set, so stores made before the option stay valid
        settings["layer_norm_eps"] = extractor.layer_norm_eps
    if precision != "fp32":  # likewise: an fp32 store's settings are those of the stores made before the option
        settings["precision"] = precision
    return settings


@dataclass
class PreloadReport:
    """What a preload run did."""

    store: FeatureStore
    computed: int
    skipped: int


def preload(
    items: Sequence[Mapping],
    extractor: FrozenViTExtractor,
    store_dir: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: str = "float16",
    batch_size: int = 16,
    num_workers: int = 0,
    shard_size: int = 128,
    device: str | torch.device | None = None,
    progress: bool = True,
    shard_prefix: str = "r000",
    fields: Sequence[str] = (TOKENS,),
    precision: str = "fp32",
) -> PreloadReport:
    """Extract and store the tokens (and, if asked, the pooled features) of every item not yet in the store at
    ``store_dir``.

    Items already stored are skipped (an item whose tokens are stored but not its pooled features gets only those
    added), so an interrupted run continues where it stopped; shards of ``shard_size``
    items are committed atomically as they fill. The store's manifest must match the extractor and normalisation
    (a store built with other settings raises :class:`~fpt_monai.data.StoreMismatchError`).

    Args:
        items: datalist items with ``image`` and ``id``; an item may name a geometric transform under
            ``frozen_view`` (an augmented frozen view, :func:`fpt_monai.transforms.frozen_views.expand_store_views`),
            applied to the loaded image before the frozen model's view is made.
        extractor: the frozen model (e.g. ``FPT(...).lpm``).
        store_dir: the store directory (created if needed).
        mean, std: the LPM view's normalisation.
        dtype: ``"float16"`` (default), ``"bfloat16"`` or ``"float32"``.
        batch_size, num_workers: data loading.
        shard_size: items per shard file.
        device: where the extractor runs (default: CUDA if available).
        progress: show a progress bar.
        shard_prefix: shard name prefix, 1-16 lowercase letters and digits (``r<rank>`` under ``torchrun``); the
            store adds a token of its own per writer, so writers sharing a prefix never overwrite each other.
        fields: what every item must have: ``"tokens"`` (always stored) and optionally ``"pooled"`` (needs an
            extractor built with ``pooled=True``).
        precision: the frozen model's compute precision: ``"fp32"`` (default), ``"bf16"`` (autocast on CUDA and
            CPUs) or ``"fp16"`` (CUDA). The token importance is computed from fp32 scores in every precision; the
            precision is recorded in the store's settings (docs/benchmarks.md measures what it changes).

    Under ``torch.distributed`` (e.g. ``torchrun``) every rank calls this with the same items: rank 0 opens or
    creates the store, each rank extracts every ``world_size``-th missing item into its own shards (``r<rank>-*``),
    and all ranks return the complete store after a barrier. The result equals a single-process preload.

    Several preloads (e.g. of the folds of a study, started together) may write into one store at once: shards are
    named per writer and committed under the store's lock, and an item another writer stored first is not stored
    again (:class:`~fpt_monai.data.FeatureStore`).
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {STORE_DTYPES}, got {dtype!r}.")
    check_precision(precision, device)
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be positive.")
    fields = tuple(dict.fromkeys((TOKENS, *fields)))
    if any(f not in STORE_FIELDS for f in fields):
        raise ValueError(f"fields must be among {STORE_FIELDS}, got {fields!r}.")
    if POOLED in fields and not extractor.pooled:
        raise ValueError("pooled features need the whole frozen model: build the extractor with pooled=True.")
    ids = [str(item["id"]) for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("items repeat ids; build the datalist with fpt_monai.data (ids are relative paths).")
    views = {str(item.get(FROZEN_VIEW_KEY) or "") for item in items} - {""}
    unknown = sorted(views - set(FROZEN_VIEW_TRANSFORMS))
    if unknown:
        raise ValueError(f"items name unknown frozen views {unknown}; supported: {list(FROZEN_VIEW_TRANSFORMS)}.")
    settings = store_settings(extractor, mean, std, precision=precision)
    rank, world = _dist_rank_world()
    if world > 1:  # rank 0 creates the store (and clears leftovers) before any rank writes; each rank writes its own
        if rank == 0:
            _declare_fields(
                FeatureStore.open_or_create(store_dir, settings, extractor.token_shape, dtype), fields, extractor
            )
        torch.distributed.barrier()
        store = FeatureStore.open(store_dir, settings, dtype, extractor.token_shape)
        if shard_prefix == "r000":
            shard_prefix = f"r{rank:03d}"
    else:
        store = FeatureStore.open_or_create(store_dir, settings, extractor.token_shape, dtype)
        _declare_fields(store, fields, extractor)
    pending = [
        # the view's transform only when some item has one: a store without views is made exactly as before
        {"image": item["image"], "id": str(item["id"]), **({FROZEN_VIEW_KEY: _view(item)} if views else {})}
        for item in items
        if any(not store.has(str(item["id"]), f) for f in fields)
    ]
    skipped = len(items) - len(pending)
    report = _preload_pending(
        pending[rank::world],  # under torchrun each rank takes every world-th missing item; alone: all of them
        store,
        extractor,
        mean,
        std,
        dtype,
        batch_size,
        num_workers,
        shard_size,
        device,
        progress and rank == 0,
        shard_prefix,
        len(items),
        skipped,
        fields,
        precision,
    )
    if world == 1:
        return report
    torch.distributed.barrier()  # every rank's shards are committed: re-index them all
    return PreloadReport(FeatureStore.open(store_dir), len(pending), skipped)


def _view(item: Mapping) -> str:
    return str(item.get(FROZEN_VIEW_KEY) or "")


def _declare_fields(store: FeatureStore, fields: Sequence[str], extractor: FrozenViTExtractor) -> None:
    if POOLED in fields:
        store.add_field(POOLED, (extractor.pooled_dim,))


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _preload_pending(
    pending,
    store,
    extractor,
    mean,
    std,
    dtype,
    batch_size,
    num_workers,
    shard_size,
    device,
    progress,
    shard_prefix,
    total,
    skipped,
    fields,
    precision="fp32",
) -> PreloadReport:
    if not pending:
        return PreloadReport(store, 0, skipped)
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    extractor = extractor.to(device).eval()
    # an augmented view's transform is applied to the loaded image, before the frozen model's view is made
    frozen_view = FrozenViewd("image") if any(FROZEN_VIEW_KEY in item for item in pending) else None
    transform = fpt_transforms("inference", False, extractor.img_size, mean=mean, std=std, frozen_view=frozen_view)
    loader = DataLoader(
        # the same LPM view as inference (fpt_transforms "inference"), so stored and online tokens match
        Dataset(pending, transform=transform),
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    store_dtype = getattr(torch, dtype)
    autocast_dtype = check_precision(precision, device)
    want_pooled = POOLED in fields
    # one buffer per field: ids and rows still to be committed (an item may lack only some of its fields)
    buffers: dict[str, tuple[list[str], list[torch.Tensor]]] = {f: ([], []) for f in fields}

    def commit(field: str, n: int) -> None:
        """Write the first ``n`` buffered items of ``field`` as one shard, keep the rest buffered."""
        ids, rows = buffers[field]
        data = torch.cat(rows)
        # items another writer committed since they were buffered (seen when this one last committed) are left out;
        # the store drops those committed since then itself, under its lock
        keep = [i for i, item_id in enumerate(ids[:n]) if not store.has(item_id, field)]
        if keep:
            store.write_field_shard(field, [ids[i] for i in keep], data[keep], prefix=shard_prefix)
        del ids[:n]
        rows[:] = [data[n:]] if ids else []

    bar = tqdm(total=total, initial=skipped, desc="preload", unit="img", disable=not progress)
    with torch.inference_mode():
        for batch in loader:
            image = batch["image"].to(device, non_blocking=True)
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                if want_pooled:
                    keys, values, pooled = extractor.forward_pooled(image)
                    outputs = {TOKENS: torch.stack([keys, values], dim=1), POOLED: pooled.float()}
                else:
                    outputs = {TOKENS: torch.stack(extractor(image), dim=1)}
            for field, data in outputs.items():
                need = [i for i, item_id in enumerate(batch["id"]) if not store.has(item_id, field)]
                ids, rows = buffers[field]
                ids.extend(batch["id"][i] for i in need)
                rows.append(data[need].to(store_dtype).cpu())
                while len(ids) >= shard_size:  # commit each shard as soon as it is full
                    commit(field, shard_size)
            bar.update(len(batch["id"]))
    for field, (ids, _) in buffers.items():
        if ids:
            commit(field, len(ids))
    bar.close()
    return PreloadReport(store, len(pending), skipped)


def ensure_feature_store(
    items: Sequence[Mapping],
    store_dir: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    extractor_kwargs: Mapping,
    dtype: str = "float16",
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    fields: Sequence[str] = (TOKENS,),
    precision: str = "fp32",
) -> FeatureStore:
    """Return the feature store at ``store_dir`` holding ``fields`` of every item, preloading what is missing.

    When the store already holds all items with matching settings the frozen model is not even loaded (only its
    architecture is built, on the meta device, to derive the settings). Otherwise the frozen model is built from
    ``extractor_kwargs`` (:class:`FrozenViTExtractor` arguments), the missing items are preloaded, and the model is
    released before returning, so training never holds it in memory. ``fields`` may add ``"pooled"`` (the frozen
    model's pooled features, for a linear probe or FPT's hybrid head); a store built without them gets them added.
    ``precision`` is the frozen model's compute precision (:func:`preload`).
    """
    import gc

    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    kwargs = dict(extractor_kwargs)
    if POOLED in fields:
        kwargs["pooled"] = True
    skeleton = FrozenViTExtractor.skeleton(**kwargs)
    check_precision(precision)
    settings = store_settings(
        skeleton, mean, std, weights=weights_id(kwargs.get("pretrained", True)), precision=precision
    )
    # the frozen model runs anyway: its pooled features come almost free (the final norm of the last block), so a
    # store that holds them for every item keeps doing so; a linear probe or the hybrid head trained on the same
    # data later finds them instead of running the frozen model again. Not for an older store whose items lack them
    # (that would extract every item again).
    if Path(store_dir, "manifest.json").is_file():
        store = FeatureStore.open(store_dir, settings, dtype, skeleton.token_shape)
        if all(
            field in store.fields and not store.missing((str(item["id"]) for item in items), field) for field in fields
        ):
            return store
        also_pooled = POOLED not in fields and POOLED in store.fields and not store.missing(store.ids, POOLED)
    else:  # a folder that is not a store (or shards without a manifest) is refused before the frozen model loads
        FeatureStore.open_or_create(store_dir, settings, skeleton.token_shape, dtype)
        also_pooled = POOLED not in fields
    import torch.distributed as dist

    # under torchrun every rank must ask for the same fields, and a rank may see the store another rank just created:
    # the extra field only for a single process
    if also_pooled and not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        fields, kwargs["pooled"] = (*fields, POOLED), True
    extractor = FrozenViTExtractor(**kwargs)
    # the preload's own random draws (its DataLoader's seed) must not shift the training's: with shared stores a
    # run finds its store ready or not, and its results must not depend on which
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        report = preload(
            items,
            extractor,
            store_dir,
            mean,
            std,
            dtype=dtype,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            progress=progress,
            fields=fields,
            precision=precision,
        )
    del extractor
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return report.store


def run_command(args: argparse.Namespace) -> int:
    """The command line on its parsed arguments (:func:`fpt_monai.commands.preload.build_parser`): preload the
    splits of the datalist, print a JSON summary (rank 0), return 0. Under ``torchrun`` it starts and ends the
    process group."""
    setup_cli(args)  # threads for this machine (torchrun's OMP_NUM_THREADS=1 is kept), known warnings quiet
    started_dist = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        # launched by torchrun: one process per device, each extracting its share of the items
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started_dist = True
        if torch.cuda.is_available() and args.device is None:
            args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    try:
        return _main(args)
    finally:
        if started_dist:
            torch.distributed.destroy_process_group()


def _main(args: argparse.Namespace) -> int:
    datalist = datalist_from_json(args.datalist)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise SystemExit(f"unknown splits {unknown}; choose from {SPLITS}")
    items = [item for split in splits for item in datalist.get(split, [])]
    pretrained: bool | str = {"true": True, "false": False}.get(args.pretrained.lower(), args.pretrained)
    layers = args.layers or ("second_half" if args.variant == "fpt_plus" else "all")
    norm = json.loads(args.normalization) if args.normalization.startswith("[") else args.normalization
    mean, std = resolve_normalization(norm, backbone=args.backbone, items=datalist["training"], size=args.img_size)
    extractor = FrozenViTExtractor(
        backbone=args.backbone,
        pretrained=pretrained,
        img_size=args.img_size,
        layers=layers,
        token_ratio=args.token_ratio,
        token_importance=args.token_importance,
        pos_interp=args.pos_interp,
        pooled=args.pooled,
        layer_norm_eps=args.layer_norm_eps,
    )
    report = preload(
        items,
        extractor,
        args.store,
        mean,
        std,
        dtype=args.dtype,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        shard_size=args.shard_size,
        device=args.device,
        progress=not args.no_progress,
        fields=(TOKENS, POOLED) if args.pooled else (TOKENS,),
        precision=args.precision,
    )
    if _dist_rank_world()[0] != 0:
        return 0
    print(
        json.dumps(
            {
                "store": str(report.store.path),
                "items": len(report.store),
                "computed": report.computed,
                "skipped": report.skipped,
                "bytes_per_item": report.store.bytes_per_item,
            }
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fpt_monai.data.preload``: :func:`fpt_monai.commands.preload.main` (``fpt-monai preload``) under
    this module's name."""
    from fpt_monai.commands.preload import main as command

    return command(argv, prog="python -m fpt_monai.data.preload")


if __name__ == "__main__":
    from fpt_monai.utils.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    sys.exit(main())
