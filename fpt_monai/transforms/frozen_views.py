# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Augmented frozen views (issue 22): the feature store keeps ``K`` views of each training image, and each training
epoch draws one of them per image.

With preloading, the frozen model sees one un-augmented view per image; on a few hundred images the side network
then learns the stored tokens by heart. The bundle option ``store_views: K`` (default 1: one plain view, today's
stores and results) stores ``K`` views of every *training* image:

- view 0 is the plain image, stored under the item's own id (so existing stores stay valid, and validation, test and
  inference read it);
- views ``1..K-1`` are deterministic geometric transforms taken in order from ``store_view_transforms`` (names from
  :data:`FROZEN_VIEW_TRANSFORMS`), each stored under the derived id :func:`view_id` ``f"{id}@{name}"``.

The preload applies a view's transform to the loaded image before the frozen model's view is made
(:class:`FrozenViewd`); training draws one view per image and epoch uniformly (:class:`RandFrozenViewd`), applies the
same transform to the loaded image, so that the side view (and, with ``mode: online``, the frozen model's view) is
made from it, and points the token lookup at the view's id (:class:`~fpt_monai.data.LoadPreloadedTokensd` reads
``store_id``).

A view's id names its transform, not its position in the list: reordering ``store_view_transforms`` or raising ``K``
reuses every view already stored (``ensure_feature_store`` adds only the missing ones). The definitions below are
therefore fixed: a changed transform gets a new name, never an old name's.

The default list suits images without a canonical orientation (dermoscopy, histology, fundus photographs up to the
left/right eye). Where flips or rotations are not plausible (a chest X-ray is never upside down), set the list, e.g.
``store_view_transforms: [crop90]`` or ``[hflip, crop90]``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = [
    "DEFAULT_STORE_VIEW_TRANSFORMS",
    "FROZEN_VIEW_KEY",
    "FROZEN_VIEW_TRANSFORMS",
    "STORE_ID_KEY",
    "VIEW_ID_SEPARATOR",
    "FrozenViewd",
    "RandFrozenViewd",
    "apply_frozen_view",
    "check_store_views",
    "expand_store_views",
    "store_view_items",
    "train_frozen_view",
    "view_id",
]

# the share of each side a "crop90" view keeps (a mild central zoom once resized)
_CROP_FRACTION = 0.9


def _central_crop(img: torch.Tensor, fraction: float = _CROP_FRACTION) -> torch.Tensor:
    h, w = img.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[..., top : top + ch, left : left + cw]


# every supported view transform of a [C, H, W] image, by name (the one place that names them). Fixed definitions:
# the stored item "<id>@<name>" holds the tokens of this transform of the image.
FROZEN_VIEW_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": lambda x: torch.flip(x, dims=(-1,)),
    "vflip": lambda x: torch.flip(x, dims=(-2,)),
    "rot90": lambda x: torch.rot90(x, 1, dims=(-2, -1)),  # counter-clockwise as displayed
    "rot180": lambda x: torch.rot90(x, 2, dims=(-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, dims=(-2, -1)),
    "crop90": _central_crop,  # the central 90% of the height and of the width
}
# the bundle's default store_view_transforms: for images without a canonical orientation (dermoscopy)
DEFAULT_STORE_VIEW_TRANSFORMS = ("hflip", "vflip", "rot90", "rot180", "rot270", "crop90")
VIEW_ID_SEPARATOR = "@"
# the item key naming the transform of a stored view (the preload's items; "" = the plain image)
FROZEN_VIEW_KEY = "frozen_view"
# the item key holding the id whose tokens the drawn view reads (LoadPreloadedTokensd)
STORE_ID_KEY = "store_id"


def view_id(item_id: str, name: str) -> str:
    """The store id of view ``name`` of item ``item_id``: ``f"{item_id}@{name}"`` (the plain view: ``item_id``)."""
    return f"{item_id}{VIEW_ID_SEPARATOR}{name}" if name else str(item_id)


def apply_frozen_view(img: torch.Tensor, name: str) -> torch.Tensor:
    """Transform ``name`` of :data:`FROZEN_VIEW_TRANSFORMS` applied to a ``[C, H, W]`` image (``""``: unchanged).

    A ``MetaTensor`` keeps its metadata (file name, original size). A numpy array is converted to a tensor.

    Raises:
        ValueError: an unknown name.
    """
    if not name:
        return img
    if name not in FROZEN_VIEW_TRANSFORMS:
        raise ValueError(f"unknown frozen view {name!r}; supported: {', '.join(FROZEN_VIEW_TRANSFORMS)}.")
    meta = img.meta if isinstance(img, MetaTensor) else None
    data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    # contiguous: a flipped/cropped view is a new image, not a strided look at the old one
    out = FROZEN_VIEW_TRANSFORMS[name](data).contiguous()
    return MetaTensor(out, meta=dict(meta)) if meta is not None else out


def check_store_views(store_views: int = 1, transforms: Sequence[str] | str = DEFAULT_STORE_VIEW_TRANSFORMS) -> tuple:
    """The names of views ``1..K-1`` for the bundle's ``store_views: K`` and ``store_view_transforms``.

    Args:
        store_views: views stored per training image (1: the plain image only).
        transforms: the declared transform names, in order (a comma-separated string is split).

    Returns:
        The first ``K - 1`` names (empty for ``K = 1``).

    Raises:
        ValueError: ``store_views`` not a positive integer, an unknown or repeated name, or fewer names than
            ``K - 1``; each message names the setting and the fix.
    """
    if isinstance(store_views, bool) or not isinstance(store_views, (int, np.integer, str)):
        raise ValueError(f"store_views must be a positive integer (1: the plain view only), got {store_views!r}.")
    try:
        k = int(store_views)
    except ValueError:
        k = 0
    if k < 1 or str(k) != str(store_views).strip():
        raise ValueError(f"store_views must be a positive integer (1: the plain view only), got {store_views!r}.")
    names = [t.strip() for t in transforms.split(",")] if isinstance(transforms, str) else [str(t) for t in transforms]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FROZEN_VIEW_TRANSFORMS]
    if unknown:
        raise ValueError(
            f"store_view_transforms names unknown transforms {unknown}; choose from "
            f"{list(FROZEN_VIEW_TRANSFORMS)} (fpt_monai.transforms.frozen_views.FROZEN_VIEW_TRANSFORMS)."
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"store_view_transforms repeats {repeated}: each view must differ; list each name once.")
    if k - 1 > len(names):
        raise ValueError(
            f"store_views {k} needs {k - 1} transforms in store_view_transforms (view 0 is the plain image), but it "
            f"lists {len(names)} ({names}). Add names from {list(FROZEN_VIEW_TRANSFORMS)} or lower store_views to "
            f"at most {len(names) + 1}."
        )
    return tuple(names[: k - 1])


def expand_store_views(
    items: Sequence[Mapping],
    store_views: int = 1,
    transforms: Sequence[str] | str = DEFAULT_STORE_VIEW_TRANSFORMS,
    other_ids: Iterable[str] = (),
) -> list[dict]:
    """Each item followed by its views ``1..K-1``: a copy with ``id`` = :func:`view_id` and ``frozen_view`` = the
    transform's name (what the preload stores). ``K = 1`` returns the items unchanged.

    Args:
        items: the training items.
        store_views, transforms: see :func:`check_store_views`.
        other_ids: the ids of the images of the other splits (validation, test), which read the same store: no view
            may take one of them.

    Raises:
        ValueError: bad settings (:func:`check_store_views`), or a derived id that is also a plain item's id (an image
            file named like a view would share its stored tokens).
    """
    names = check_store_views(store_views, transforms)
    items = [dict(item) for item in items]
    if not names:
        return items
    plain = {str(item["id"]) for item in items} | {str(i) for i in other_ids}
    out: list[dict] = []
    for item in items:
        out.append(item)
        for name in names:
            derived = view_id(str(item["id"]), name)
            if derived in plain:
                raise ValueError(
                    f"the datalist holds an item with id {derived!r}, which is also the id of view {name!r} of "
                    f"{item['id']!r} in the feature store; rename that image or set store_views 1."
                )
            out.append({**item, "id": derived, FROZEN_VIEW_KEY: name})
    return out


def store_view_items(
    training: Sequence[Mapping],
    validation: Sequence[Mapping] = (),
    store_views: int = 1,
    transforms: Sequence[str] | str = DEFAULT_STORE_VIEW_TRANSFORMS,
    test: Sequence[Mapping] = (),
) -> list[dict]:
    """What a run's feature store must hold: the training items with their views (:func:`expand_store_views`) and
    the validation items plain (validation reads the plain view only). The ``test`` items are not stored here, but
    their evaluation reads the same store: a view's id that is one of theirs (or a validation id) is refused, as it
    would hand that image another image's tokens."""
    other_ids = [str(item["id"]) for item in (*validation, *test)]
    return expand_store_views(training, store_views, transforms, other_ids) + [dict(item) for item in validation]


class FrozenViewd(MapTransform):
    """Apply the transform an item names under ``view_key`` (e.g. ``"hflip"``; ``""`` or absent: none) to ``keys``:
    the preload's step between loading the image and making the frozen model's view.

    Args:
        keys: the images. Defaults to ``"image"``.
        view_key: the item key naming the transform. Defaults to ``"frozen_view"``.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self, keys: KeysCollection = "image", view_key: str = FROZEN_VIEW_KEY, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.view_key = view_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        name = str(d.get(self.view_key) or "")
        for key in self.key_iterator(d):
            d[key] = apply_frozen_view(d[key], name)
        return d


class RandFrozenViewd(Randomizable, MapTransform):
    """Draw one of an item's ``store_views`` stored views uniformly, apply its geometric transform to ``keys`` and
    point the token lookup at it: ``store_id_key`` gets the view's store id (:func:`view_id`), ``view_key`` its
    transform's name (``""`` for the plain view 0).

    Place it right after loading, before :class:`~fpt_monai.transforms.SideViewd`: the side view (augmented as
    usual) and, online, the frozen model's view are then made from the same transformed image as the stored tokens.
    An image key still holding a file name (the store-based linear probe never reads its images) is left as is.
    Seeded like every MONAI ``Randomizable`` (``set_determinism``, the DataLoader's per-worker seeds).

    Args:
        keys: the loaded images. Defaults to ``"image"``.
        store_views: ``K``, the views stored per training image. Defaults to 1.
        transforms: the bundle's ``store_view_transforms`` (views ``1..K-1`` are its first ``K - 1`` names).
        id_key: the item's id. Defaults to ``"id"``.
        store_id_key: where the view's store id goes. Defaults to ``"store_id"``.
        view_key: where the view's transform name goes. Defaults to ``"frozen_view"``.
        allow_missing_keys: don't raise when a key is absent.

    Raises:
        ValueError: bad settings (:func:`check_store_views`).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        store_views: int = 1,
        transforms: Sequence[str] | str = DEFAULT_STORE_VIEW_TRANSFORMS,
        id_key: str = "id",
        store_id_key: str = STORE_ID_KEY,
        view_key: str = FROZEN_VIEW_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.views = ("", *check_store_views(store_views, transforms))
        self.id_key = id_key
        self.store_id_key = store_id_key
        self.view_key = view_key
        self._view = ""

    def randomize(self, data: object = None) -> None:
        self._view = self.views[int(self.R.randint(len(self.views)))]

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if self.id_key not in d:
            raise KeyError(f"data item has no {self.id_key!r} key to name its stored views with: {sorted(map(str, d))}")
        self.randomize()
        for key in self.key_iterator(d):
            if isinstance(d[key], (torch.Tensor, np.ndarray)):
                d[key] = apply_frozen_view(d[key], self._view)
        d[self.store_id_key] = view_id(str(d[self.id_key]), self._view)
        d[self.view_key] = self._view
        return d


def train_frozen_view(
    store_views: int = 1, transforms: Sequence[str] | str = DEFAULT_STORE_VIEW_TRANSFORMS
) -> RandFrozenViewd | None:
    """The training pipeline's view draw for the bundle (``fpt_transforms(frozen_view=...)``): ``None`` for
    ``store_views: 1`` (the pipeline, and its random draws, stay as without the option), else a
    :class:`RandFrozenViewd`."""
    return RandFrozenViewd("image", store_views, transforms) if check_store_views(store_views, transforms) else None
