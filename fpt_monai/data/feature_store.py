# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Store of the frozen model's selected keys/values per item ("preloading", FPT spec §2.6), done right.

The reference writes one fp32 safetensors file per image keyed by the file stem: names collide across classes and
splits, each image costs 7.6 MB (FPT+, ViT-B/16 @ 512 px) and nothing records how the tokens were made. Here:

- items are keyed by their datalist ``id`` (a relative path), never by stem;
- tokens are stored in few large shards, ``shards/<name>.npy`` arrays ``[n, 2, L, heads, k, head_dim]``
  (keys and values together), read through memory maps; fp16 by default (3.8 MB per FPT+ item), fp32 and bf16
  optional;
- optional further per-item fields live in shards of their own (``shards/<field>-<name>.npy``) and are declared in
  the manifest: ``pooled`` holds the frozen model's final class token and mean patch token ``[2 * D]`` (what a linear
  probe and FPT's hybrid head use; 1.5 KB per ViT-B item in fp16). A store built without a field gets it added by
  a later preload, which computes only what is missing;
- ``manifest.json`` records every setting that determines the tokens; opening a store with other settings fails;
- a shard is committed atomically (data file, then its index ``shards/<name>.json`` with per-item CRC32 and the
  file's SHA-256, each written to a temporary file, fsynced and renamed), so an interrupted preload leaves only
  whole shards behind and resumes where it stopped; every read checks the item's CRC32 and :meth:`verify` checks
  whole files, so a corrupt shard is never used silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fpt_monai.atomic import atomic_write

__all__ = [
    "POOLED",
    "STORE_DTYPES",
    "STORE_FIELDS",
    "TOKENS",
    "CorruptStoreError",
    "FeatureStore",
    "MissingItemsError",
    "StoreMismatchError",
    "file_sha256",
]

STORE_DTYPES = ("float16", "bfloat16", "float32")
_NUMPY_DTYPE = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}  # bf16 stored as raw uint16
_FORMAT = "fpt_monai.feature_store"
_VERSION = 1
TOKENS = "tokens"
POOLED = "pooled"
STORE_FIELDS = (TOKENS, POOLED)


class StoreMismatchError(ValueError):
    """The store was built with other settings than the ones asked for."""


class MissingItemsError(KeyError):
    """Items asked for are not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as text
        return str(self.args[0])


class CorruptStoreError(ValueError):
    """A shard or the manifest is damaged (truncated, modified, unreadable)."""


def _json_normal(obj):
    return json.loads(json.dumps(obj))


def _read_manifest(path: Path) -> dict:
    """The manifest at ``path``, checked field by field: any damage (a flipped byte that breaks the UTF-8 or the
    JSON, a missing or mistyped key) is a :class:`CorruptStoreError` naming the file and the fix."""
    fix = (
        f"The store cannot be trusted: delete the folder {path.parent} and run the preload step again (the bundle "
        "run or `python -m fpt_monai.data.preload`), which rebuilds it."
    )
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:  # ValueError: UnicodeDecodeError and JSONDecodeError
        raise CorruptStoreError(
            f"{path}: unreadable feature-store manifest ({type(err).__name__}: {err}). {fix}"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise CorruptStoreError(f"{path}: not an fpt_monai feature-store manifest. {fix}")
    if manifest.get("version") != _VERSION:
        raise CorruptStoreError(
            f"{path}: feature-store version {manifest.get('version')!r}, this fpt_monai reads version {_VERSION}. {fix}"
        )

    def is_shape(value: object) -> bool:
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)

    fields = manifest.get("fields", {})
    problems = []
    if manifest.get("dtype") not in STORE_DTYPES:
        problems.append(f"dtype {manifest.get('dtype')!r} is not one of {STORE_DTYPES}")
    if not is_shape(manifest.get("token_shape")):
        problems.append(f"token_shape {manifest.get('token_shape')!r} is not a list of integers")
    if not isinstance(manifest.get("settings"), dict):
        problems.append("settings is missing or not an object")
    if not isinstance(fields, dict) or not all(
        isinstance(spec, dict) and is_shape(spec.get("shape")) for spec in fields.values()
    ):
        problems.append(f"fields {fields!r} is not an object of {{field: {{'shape': [...]}}}}")
    if problems:
        raise CorruptStoreError(f"{path}: damaged feature-store manifest ({'; '.join(problems)}). {fix}")
    return manifest


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class FeatureStore:
    """A directory of preloaded tokens. Use :meth:`open` to read and :meth:`create` (or :meth:`open_or_create`)
    to write; see the module docstring for the layout.

    Args:
        path: the store directory.
        verify_reads: check each item's CRC32 when it is read (about 1 ms per 3.8 MB item). Defaults to ``True``.
    """

    def __init__(self, path: str | os.PathLike, verify_reads: bool = True) -> None:
        self.path = Path(path)
        self.verify_reads = bool(verify_reads)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a feature store (no manifest.json); build it with the preload step first."
            )
        manifest = _read_manifest(manifest_path)
        self.manifest = manifest
        self.settings: dict = manifest["settings"]
        self.dtype: str = manifest["dtype"]
        self.token_shape: tuple[int, ...] = tuple(manifest["token_shape"])
        # per-item shape of every field: the tokens (keys and values stacked) and the declared extra fields
        self.field_shapes: dict[str, tuple[int, ...]] = {TOKENS: (2, *self.token_shape)}
        for field, spec in manifest.get("fields", {}).items():
            self.field_shapes[field] = tuple(spec["shape"])
        self._index: dict[str, dict[str, tuple[str, int]]] = {field: {} for field in self.field_shapes}
        self._crc: dict[str, list[int]] = {}
        self._shards: dict[str, dict] = {}
        self._maps: dict[str, np.ndarray] = {}
        (self.path / "shards").mkdir(exist_ok=True)
        for meta_path in sorted((self.path / "shards").glob("*.json")):
            self._register(meta_path)

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | os.PathLike, settings: Mapping, token_shape: Sequence[int], dtype: str = "float16"
    ) -> FeatureStore:
        """Create an empty store (the directory must not contain a store yet)."""
        if dtype not in STORE_DTYPES:
            raise ValueError(f"dtype must be one of {STORE_DTYPES}, got {dtype!r}.")
        path = Path(path)
        if (path / "manifest.json").exists():
            raise FileExistsError(f"{path} already holds a feature store; open it or choose another directory.")
        (path / "shards").mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "dtype": dtype,
            "token_shape": [int(s) for s in token_shape],
            "settings": _json_normal(dict(settings)),
        }
        atomic_write(path / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        return cls(path)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        settings: Mapping | None = None,
        dtype: str | None = None,
        token_shape: Sequence[int] | None = None,
        verify_reads: bool = True,
    ) -> FeatureStore:
        """Open an existing store; with ``settings`` (and ``dtype``/``token_shape``) it must have been built with
        exactly those, else :class:`StoreMismatchError` lists the differences."""
        store = cls(path, verify_reads=verify_reads)
        store.check_settings(settings, dtype, token_shape)
        return store

    @classmethod
    def open_or_create(
        cls, path: str | os.PathLike, settings: Mapping, token_shape: Sequence[int], dtype: str = "float16"
    ) -> FeatureStore:
        """Open the store at ``path`` if it exists (settings must match), else create it. Leftovers of an
        interrupted shard write are removed."""
        path = Path(path)
        if (path / "manifest.json").is_file():
            store = cls.open(path, settings, dtype, token_shape)
        else:
            store = cls.create(path, settings, token_shape, dtype)
        for orphan in (path / "shards").iterdir():
            if orphan.name.startswith(".") or (orphan.suffix == ".npy" and orphan.stem not in store._shards):
                orphan.unlink()
        return store

    def check_settings(
        self, settings: Mapping | None = None, dtype: str | None = None, token_shape: Sequence[int] | None = None
    ) -> None:
        """Raise :class:`StoreMismatchError` if the store was built with other settings."""
        problems = []
        if settings is not None:
            wanted = _json_normal(dict(settings))
            for key in sorted(set(wanted) | set(self.settings)):
                if wanted.get(key) != self.settings.get(key):
                    problems.append(f"{key}: store has {self.settings.get(key)!r}, asked for {wanted.get(key)!r}")
        if dtype is not None and dtype != self.dtype:
            problems.append(f"dtype: store has {self.dtype!r}, asked for {dtype!r}")
        if token_shape is not None and tuple(token_shape) != self.token_shape:
            problems.append(f"token_shape: store has {self.token_shape}, asked for {tuple(token_shape)}")
        if problems:
            raise StoreMismatchError(
                f"feature store {self.path} was built with other settings:\n  " + "\n  ".join(problems) + "\n"
                "Preload into a new directory (or delete this one) so the tokens match the model."
            )

    # ---- index --------------------------------------------------------------------------------------------------
    def _register(self, meta_path: Path) -> None:
        name = meta_path.stem
        data_path = meta_path.with_suffix(".npy")
        try:
            meta = json.loads(meta_path.read_text())
            ids, crcs = list(meta["ids"]), [int(c) for c in meta["crc32"]]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CorruptStoreError(
                f"{meta_path}: unreadable shard index ({err}); delete it and {data_path.name}, "
                "then preload again (finished shards are kept)."
            ) from err
        field = meta.get("field", TOKENS)
        if field not in self.field_shapes:
            raise CorruptStoreError(
                f"{meta_path}: shard of field {field!r}, which the manifest does not declare; delete {meta_path.name} "
                f"and {data_path.name} and preload again."
            )
        expected = (len(ids), *self.field_shapes[field])
        try:
            arr = np.load(data_path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            raise CorruptStoreError(
                f"{data_path}: missing, truncated or unreadable shard ({err}); delete {meta_path.name} "
                "and preload again to recompute its items."
            ) from err
        if (
            arr.shape != expected
            or arr.dtype != np.dtype(_NUMPY_DTYPE[self.dtype])
            or len(crcs) != len(ids)
            or data_path.stat().st_size != meta.get("nbytes")
        ):
            raise CorruptStoreError(
                f"{data_path}: shard is truncated or does not match its index (shape {arr.shape}, expected "
                f"{expected}); delete {data_path.name} and {meta_path.name} and preload again."
            )
        index = self._index[field]
        for row, item_id in enumerate(ids):
            if item_id in index:
                raise CorruptStoreError(
                    f"{self.path}: {field} of item {item_id!r} are stored twice ({index[item_id][0]}, {name})."
                )
            index[item_id] = (name, row)
        self._crc[name] = crcs
        self._shards[name] = meta

    @property
    def ids(self) -> list[str]:
        """Ids of the items whose tokens are stored."""
        return list(self._index[TOKENS])

    @property
    def fields(self) -> tuple[str, ...]:
        """The per-item fields this store declares (``"tokens"`` always, ``"pooled"`` when added)."""
        return tuple(self.field_shapes)

    def __len__(self) -> int:
        return len(self._index[TOKENS])

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index[TOKENS]

    def has(self, item_id: str, field: str = TOKENS) -> bool:
        """Whether ``field`` of the item is stored."""
        return item_id in self._index.get(field, {})

    def missing(self, ids: Iterable[str], field: str = TOKENS) -> list[str]:
        """The ids among ``ids`` whose ``field`` the store does not hold (all of them if the field is undeclared)."""
        index = self._index.get(field, {})
        return [i for i in ids if i not in index]

    def require(self, ids: Iterable[str], field: str = TOKENS) -> None:
        """Raise :class:`MissingItemsError` naming the items whose ``field`` is not in the store."""
        self.require_field(field)
        missing = self.missing(ids, field)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:10])
            raise MissingItemsError(
                f"feature store {self.path} lacks the {field} of {len(missing)} item(s): {shown}"
                f"{' ...' if len(missing) > 10 else ''}. Run the preload step on this datalist (it only computes the "
                "missing items)."
            )

    def require_field(self, field: str) -> None:
        """Raise :class:`MissingItemsError` if the store does not declare ``field`` at all."""
        if field not in STORE_FIELDS:
            raise ValueError(f"unknown store field {field!r}; choose from {STORE_FIELDS}.")
        if field not in self.field_shapes:
            raise MissingItemsError(
                f"feature store {self.path} holds no {field} features (it was built without them). Run the preload "
                f"step again asking for them (`python -m fpt_monai.data.preload ... --pooled`, or a bundle run of a "
                f"method that needs them): it adds only the missing field and keeps the stored tokens."
            )

    def add_field(self, field: str, shape: Sequence[int]) -> None:
        """Declare a new per-item field (e.g. ``"pooled"`` of shape ``[2 * D]``) in the manifest; a no-op if it is
        already declared with that shape."""
        if field not in STORE_FIELDS or field == TOKENS:
            raise ValueError(f"field must be one of {STORE_FIELDS[1:]}, got {field!r}.")
        shape = tuple(int(s) for s in shape)
        if field in self.field_shapes:
            if self.field_shapes[field] != shape:
                raise StoreMismatchError(
                    f"feature store {self.path}: field {field} has shape {self.field_shapes[field]}, asked for {shape}."
                    " Preload into a new directory."
                )
            return
        manifest = dict(self.manifest)
        manifest["fields"] = {**manifest.get("fields", {}), field: {"shape": list(shape)}}
        atomic_write(self.path / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        self.manifest = manifest
        self.field_shapes[field] = shape
        self._index[field] = {}

    # ---- reading ------------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict:  # DataLoader workers re-open the memory maps lazily
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def _map(self, name: str) -> np.ndarray:
        arr = self._maps.get(name)
        if arr is None:
            arr = self._maps[name] = np.load(self.path / "shards" / f"{name}.npy", mmap_mode="r")
        return arr

    def _to_torch(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(arr))  # copy out of the read-only map
        return t.view(torch.bfloat16) if self.dtype == "bfloat16" else t

    def _read(self, item_id: str, field: str) -> torch.Tensor:
        index = self._index.get(field, {})
        if item_id not in index:
            self.require([item_id], field)
        name, row = index[item_id]
        data = self._map(name)[row]
        if self.verify_reads and zlib.crc32(data) != self._crc[name][row]:
            raise CorruptStoreError(
                f"{self.path / 'shards' / (name + '.npy')}: item {item_id!r} fails its CRC32 check (corrupt shard). "
                f"Delete {name}.npy and {name}.json and preload again."
            )
        return self._to_torch(data)

    def get(self, item_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys, values)``, each ``[L, heads, k, head_dim]`` in the store's dtype."""
        both = self._read(item_id, TOKENS)
        return both[0], both[1]

    def get_pooled(self, item_id: str) -> torch.Tensor:
        """The pooled features ``[2 * D]`` (final class token, mean patch token) in the store's dtype."""
        return self._read(item_id, POOLED)

    def verify(self) -> None:
        """Check every shard file against its SHA-256 (reads the whole store)."""
        for name, meta in self._shards.items():
            path = self.path / "shards" / f"{name}.npy"
            if file_sha256(path) != meta["sha256"]:
                raise CorruptStoreError(
                    f"{path}: SHA-256 mismatch (corrupt shard). Delete {name}.npy and {name}.json and preload again."
                )

    # ---- writing ------------------------------------------------------------------------------------------------
    def _next_name(self, prefix: str) -> str:
        used = [int(n.rsplit("-", 1)[1]) for n in self._shards if n.rsplit("-", 1)[0] == prefix]
        return f"{prefix}-{(max(used) + 1) if used else 0:06d}"

    def write_shard(self, ids: Sequence[str], keys: torch.Tensor, values: torch.Tensor, prefix: str = "r000") -> str:
        """Commit one shard of items (``keys``/``values`` ``[n, L, heads, k, head_dim]``); returns its name."""
        if keys.shape != values.shape:
            raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ in shape.")
        return self.write_field_shard(TOKENS, ids, torch.stack([keys, values], dim=1), prefix)

    def write_field_shard(self, field: str, ids: Sequence[str], data: torch.Tensor, prefix: str = "r000") -> str:
        """Commit one shard of ``field`` for items ``ids`` (``data`` ``[n, *field shape]``); returns its name."""
        ids = [str(i) for i in ids]
        self.require_field(field)
        index = self._index[field]
        if len(set(ids)) != len(ids) or any(i in index for i in ids):
            raise ValueError(f"{self.path}: shard repeats items or contains stored ones.")
        if tuple(data.shape) != (len(ids), *self.field_shapes[field]):
            raise ValueError(
                f"{field} of shape {tuple(data.shape)} do not fit the store's {self.field_shapes[field]} per item."
            )
        both = data.detach().cpu()
        if self.dtype == "bfloat16":
            arr = both.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        else:
            arr = both.to(getattr(torch, self.dtype)).numpy()
        arr = np.ascontiguousarray(arr)
        name = self._next_name(prefix if field == TOKENS else f"{field}-{prefix}")
        data_path = self.path / "shards" / f"{name}.npy"
        atomic_write(data_path, lambda f: np.save(f, arr, allow_pickle=False))
        meta = {
            "field": field,
            "ids": ids,
            "crc32": [zlib.crc32(row) for row in arr],
            "nbytes": data_path.stat().st_size,
            "sha256": file_sha256(data_path),
        }
        atomic_write(data_path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))
        self._register(data_path.with_suffix(".json"))
        return name

    @property
    def bytes_per_item(self) -> int:
        """Bytes of token data per item (without the small shard headers and indexes)."""
        return self.field_bytes_per_item(TOKENS)

    def field_bytes_per_item(self, field: str) -> int:
        """Bytes of ``field`` data per item."""
        return int(np.prod(self.field_shapes[field]) * np.dtype(_NUMPY_DTYPE[self.dtype]).itemsize)
