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

Ownership and concurrent writers:

- the store deletes only files it wrote itself: the temporary files of :func:`fpt_monai.utils.atomic.atomic_write`
  (``.<name>.tmp-<pid>``) of its manifest and shards, and shard data files named by its own scheme
  (``<prefix>-<writer token>-<number>.npy``) that have no index, i.e. the leftovers of an interrupted shard write;
- a writer (:meth:`FeatureStore.create`, :meth:`FeatureStore.open_or_create`) refuses a folder holding files the store
  does not know (:class:`UnknownFilesError`, naming the files and the fix) and a folder with shards but no
  ``manifest.json`` (:class:`CorruptStoreError`: such shards are never adopted silently); an empty or missing folder
  becomes a new store;
- every change (creating the manifest, declaring a field, committing a shard, removing leftovers) happens under an
  exclusive ``fcntl.flock`` on the store's own ``.lock`` file, so leftovers found under the lock belong to a writer
  that died. Extraction runs outside the lock; only the shard writes of concurrent writers are serialised;
- shard names carry a random token per writer (``r000-3f9a0c1b2d4e-000000``; under ``torchrun`` the prefix is the
  rank, ``r001-...``), and a writer re-reads the index under the lock before it commits: items another writer has
  committed meanwhile are dropped from the shard (both computed them from the same settings, the first one stored
  is kept), so several preloads of one datalist (e.g. the folds of a study started together) can share one store and
  every item is stored exactly once;
- readers take no lock: committed shard files are never rewritten, so a store opened before another writer
  committed keeps reading what it indexed (open it again to see the new items).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fpt_monai.data.store_options import POOLED, STORE_DTYPES, STORE_FIELDS, TOKENS
from fpt_monai.utils.atomic import atomic_write

# the store's dtypes and field names (fpt_monai.data.store_options) keep their names here, where they were defined
__all__ = [
    "POOLED",
    "STORE_DTYPES",
    "STORE_FIELDS",
    "TOKENS",
    "CorruptStoreError",
    "FeatureStore",
    "MissingItemsError",
    "StoreMismatchError",
    "UnknownFilesError",
    "file_sha256",
]

_NUMPY_DTYPE = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}  # bf16 stored as raw uint16
_FORMAT = "fpt_monai.feature_store"
_VERSION = 1
_LOCK = ".lock"  # the store's own lock file (never deleted: removing a lock file races with its users)
_PREFIX = re.compile(r"[a-z0-9]{1,16}")  # a writer's shard-name prefix (``r000``: rank 0)
# a shard's name: [<field>-]<prefix>[-<writer token>]-<number>; shards written before the token have none
_SHARD = re.compile(r"(?:pooled-)?(?P<prefix>[a-z0-9]{1,16})(?:-(?P<token>[0-9a-f]{12}))?-\d{6}")
_LEGACY_PREFIX = re.compile(r"r\d{3}")  # the only prefix of the shards written before the token
_TMP = re.compile(r"\.(?P<name>.+)\.tmp-\d+")  # fpt_monai.utils.atomic.atomic_write's temporary file of <name>


class StoreMismatchError(ValueError):
    """The store was built with other settings than the ones asked for."""


class MissingItemsError(KeyError):
    """Items asked for are not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as text
        return str(self.args[0])


class CorruptStoreError(ValueError):
    """A shard or the manifest is damaged (truncated, modified, unreadable) or missing."""


class UnknownFilesError(ValueError):
    """A folder asked to hold a feature store holds files that no feature store writes."""


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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the store's exclusive lock (``<path>/.lock``, waiting for other writers); the kernel releases it when
    the file is closed or the process dies, so a killed writer never leaves a stale lock."""
    fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _survey(path: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Sort what the folder ``path`` holds into ``(unknown, leftovers, shards)``: files no feature store writes,
    leftovers of an interrupted write of one (its temporary files and shard data without an index) and shard
    files (data with its index, or an index)."""
    unknown: list[Path] = []
    leftovers: list[Path] = []
    shards: list[Path] = []
    if not path.exists():
        return unknown, leftovers, shards
    if not path.is_dir():
        return [path], leftovers, shards
    for entry in sorted(path.iterdir()):
        if entry.is_symlink():  # never followed: a link could lead the clean-up out of the store
            unknown.append(entry)
        elif entry.name == "shards" and entry.is_dir():
            for item in sorted(entry.iterdir()):
                kind = _shard_file_kind(item)
                {"unknown": unknown, "leftover": leftovers, "shard": shards}[kind].append(item)
        elif entry.name in ("manifest.json", _LOCK) and entry.is_file():
            pass
        elif entry.is_file() and (m := _TMP.fullmatch(entry.name)) and m["name"] == "manifest.json":
            leftovers.append(entry)
        else:
            unknown.append(entry)
    return unknown, leftovers, shards


def _shard_file_kind(item: Path) -> str:
    """``"shard"``, ``"leftover"`` or ``"unknown"`` for an entry of ``shards/``."""
    if item.is_symlink() or not item.is_file():
        return "unknown"
    name = item.name
    tmp = _TMP.fullmatch(name)
    if tmp:  # an atomic write of one of our shard files that did not finish
        stem, dot, suffix = tmp["name"].rpartition(".")
        return "leftover" if dot and suffix in ("npy", "json") and _SHARD.fullmatch(stem) else "unknown"
    stem, dot, suffix = name.rpartition(".")
    shard = _SHARD.fullmatch(stem) if dot else None
    if shard is None or suffix not in ("npy", "json"):
        return "unknown"
    if suffix == "json" or item.with_suffix(".json").is_file():
        return "shard"
    # data renamed into place, its index never written: ours only if named by our scheme (a writer token, or the
    # rank prefix the shards had before the token)
    return "leftover" if shard["token"] or _LEGACY_PREFIX.fullmatch(shard["prefix"]) else "unknown"


def _refuse_unknown(path: Path, unknown: Sequence[Path]) -> None:
    if not unknown:
        return
    if unknown == [path]:
        raise UnknownFilesError(f"{path}: not a folder. Choose a folder for the feature store (a new --store_dir).")
    shown = ", ".join(str(p.relative_to(path)) for p in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
    raise UnknownFilesError(
        f"{path}: holds {len(unknown)} file(s) that no feature store writes ({shown}); a feature store is written "
        "only into an empty folder or a store of its own, so nothing was changed there. Choose an empty or new "
        "folder for the store (a new --store_dir for a bundle run, --store for `python -m fpt_monai.data.preload`), "
        "or move these files away."
    )


def _create_locked(path: Path, settings: Mapping, token_shape: Sequence[int], dtype: str) -> None:
    """Write a new store's manifest into ``path`` (the caller holds the lock and checked there is none)."""
    unknown, leftovers, shards = _survey(path)
    _refuse_unknown(path, unknown)
    if shards:
        raise CorruptStoreError(
            f"{path}: holds feature-store shards ({shards[0].name}{' ...' if len(shards) > 1 else ''}) but no "
            "manifest.json, so nothing records how their tokens were made and they are not adopted. Delete the "
            f"folder {path} and run the preload step again, which rebuilds it."
        )
    for leftover in leftovers:  # temporary files of an interrupted write of this store
        leftover.unlink(missing_ok=True)
    (path / "shards").mkdir(exist_ok=True)
    manifest = {
        "format": _FORMAT,
        "version": _VERSION,
        "dtype": dtype,
        "token_shape": [int(s) for s in token_shape],
        "settings": _json_normal(dict(settings)),
    }
    atomic_write(path / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))


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
        self._token = secrets.token_hex(6)  # in the names of the shards this object writes: unique per writer
        (self.path / "shards").mkdir(exist_ok=True)
        self._register_new()

    def _register_new(self) -> None:
        """Index the committed shards not indexed yet (files of other names are not the store's)."""
        for meta_path in sorted((self.path / "shards").glob("*.json")):
            if meta_path.stem not in self._shards and _SHARD.fullmatch(meta_path.stem):
                self._register(meta_path)

    def _refresh(self) -> None:
        """Re-read the manifest and the index (under the lock): another writer may have declared a field or
        committed shards since this store was opened."""
        manifest = _read_manifest(self.path / "manifest.json")
        if (manifest["settings"], manifest["dtype"], tuple(manifest["token_shape"])) != (
            self.settings,
            self.dtype,
            self.token_shape,
        ):
            raise StoreMismatchError(
                f"feature store {self.path} was rebuilt with other settings while this run was writing to it. "
                "Run the preload step again."
            )
        for field, spec in manifest.get("fields", {}).items():
            if field not in self.field_shapes:
                self.field_shapes[field] = tuple(spec["shape"])
                self._index[field] = {}
        self.manifest = manifest
        self._register_new()

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | os.PathLike, settings: Mapping, token_shape: Sequence[int], dtype: str = "float16"
    ) -> FeatureStore:
        """Create an empty store in ``path``, an empty or missing folder.

        Raises:
            FileExistsError: ``path`` holds a store already.
            UnknownFilesError: ``path`` holds files that are not a store's (nothing is written there).
            CorruptStoreError: ``path`` holds shards without a manifest.
        """
        if dtype not in STORE_DTYPES:
            raise ValueError(f"dtype must be one of {STORE_DTYPES}, got {dtype!r}.")
        path = Path(path)
        exists = FileExistsError(f"{path} already holds a feature store; open it or choose another directory.")
        if (path / "manifest.json").exists():
            raise exists
        _refuse_unknown(path, _survey(path)[0])  # before the lock file is written there
        path.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            if (path / "manifest.json").exists():  # another writer created it meanwhile
                raise exists
            _create_locked(path, settings, token_shape, dtype)
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
        """Open the store at ``path`` for writing if it exists (settings must match), else create it in the empty or
        missing folder. Leftovers of an interrupted write of the store are removed (see the module docstring for
        what is and is not removed; a folder holding anything else is refused with :class:`UnknownFilesError`,
        shards without a manifest with :class:`CorruptStoreError`)."""
        path = Path(path)
        _refuse_unknown(path, _survey(path)[0])  # before the lock file is written there
        path.mkdir(parents=True, exist_ok=True)
        with _locked(path):  # no writer is between two steps of a write: what is left over was interrupted
            if not (path / "manifest.json").is_file():
                _create_locked(path, settings, token_shape, dtype)
                return cls(path)
            store = cls.open(path, settings, dtype, token_shape)
            unknown, leftovers, _ = _survey(path)
            _refuse_unknown(path, unknown)
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)
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
        with _locked(self.path):
            self._refresh()  # another writer may have declared it (or another field) meanwhile
            if field in self.field_shapes:
                self.add_field(field, shape)  # checks the shape; declared: no lock taken again
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
        base = f"{prefix}-{self._token}"  # this writer's own names: no other writer picks the same
        used = [int(n.rsplit("-", 1)[1]) for n in self._shards if n.rsplit("-", 1)[0] == base]
        return f"{base}-{(max(used) + 1) if used else 0:06d}"

    def write_shard(
        self, ids: Sequence[str], keys: torch.Tensor, values: torch.Tensor, prefix: str = "r000"
    ) -> str | None:
        """Commit one shard of items (``keys``/``values`` ``[n, L, heads, k, head_dim]``); returns its name (see
        :meth:`write_field_shard`)."""
        if keys.shape != values.shape:
            raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ in shape.")
        return self.write_field_shard(TOKENS, ids, torch.stack([keys, values], dim=1), prefix)

    def write_field_shard(self, field: str, ids: Sequence[str], data: torch.Tensor, prefix: str = "r000") -> str | None:
        """Commit one shard of ``field`` for items ``ids`` (``data`` ``[n, *field shape]``) under the store's lock;
        returns its name, or ``None`` when other writers committed all of these items meanwhile (items another
        writer committed are left out of the shard: each item is stored once).

        Args:
            prefix: the writer's shard-name prefix (1-16 lowercase letters and digits; ``r<rank>`` by default).

        Raises:
            ValueError: ``ids`` repeat an item or name one this store object already holds, or ``data`` has
                another shape.
        """
        ids = [str(i) for i in ids]
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"shard prefix must be 1-16 lowercase letters and digits, got {prefix!r}.")
        if field in STORE_FIELDS and field not in self.field_shapes:
            with _locked(self.path):
                self._refresh()  # another writer may have declared the field
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
        with _locked(self.path):
            self._refresh()  # what other writers committed since: their items are not stored twice
            index = self._index[field]
            keep = [row for row, item_id in enumerate(ids) if item_id not in index]
            if not keep:
                return None
            if len(keep) < len(ids):
                ids, arr = [ids[row] for row in keep], np.ascontiguousarray(arr[keep])
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
