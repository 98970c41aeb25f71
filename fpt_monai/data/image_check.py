# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Read every image of a datalist once before training: a few unreadable files should stop a run at the start,
with the full list, not crash it hours later in a data-loader worker (or be dropped when the user asks)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from fpt_monai.data.datalist import SPLITS
from fpt_monai.flags import as_bool

__all__ = ["UnreadableImagesError", "check_images"]


class UnreadableImagesError(ValueError):
    """Some images of the datalist cannot be read."""


def _problem(image: str, channels: int) -> str | None:
    from fpt_monai.transforms.io import read_image

    try:
        read_image(image, channels=channels)
    except Exception as err:  # any failure makes the image unusable; report its reason
        return f"{type(err).__name__}: {err}"
    return None


def check_images(
    datalist: Mapping,
    skip_unreadable: bool | str = False,
    enabled: bool | str = True,
    channels: int = 3,
    num_threads: int = 4,
    progress: bool = True,
) -> dict:
    """Read every image of every split (with the training reader); return the datalist.

    Args:
        datalist: a datalist (``training``/``validation``/``test`` lists of items with ``image``).
        skip_unreadable: drop unreadable items (and log how many, and which) instead of raising.
        enabled: ``False`` returns the datalist unchecked.
        channels: as :func:`~fpt_monai.transforms.read_image`.
        num_threads: parallel readers (image decoding releases the GIL).
        progress: show a progress bar.

    Raises:
        UnreadableImagesError: listing every unreadable file and its reason, unless ``skip_unreadable``.
    """
    if not as_bool(enabled):
        return dict(datalist)
    items = [(split, item) for split in SPLITS for item in datalist.get(split, [])]
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        jobs = pool.map(lambda pair: _problem(str(pair[1]["image"]), channels), items)
        problems = list(tqdm(jobs, total=len(items), desc="check images", unit="img", disable=not progress))
    bad = [(split, item, why) for (split, item), why in zip(items, problems, strict=True) if why is not None]
    if not bad:
        return dict(datalist)
    listing = "\n  ".join(f"[{split}] {item['image']}: {why}" for split, item, why in bad)
    if not as_bool(skip_unreadable):
        raise UnreadableImagesError(
            f"{len(bad)} of {len(items)} images cannot be read:\n  {listing}\n"
            "Fix or remove them, or train without them with --skip_unreadable true."
        )
    logging.getLogger(__name__).warning(
        "skipping %d of %d images that cannot be read (skip_unreadable):\n  %s", len(bad), len(items), listing
    )
    dropped = {id(item) for _, item, _ in bad}
    out = dict(datalist)
    for split in SPLITS:
        if split in datalist:
            out[split] = [item for item in datalist[split] if id(item) not in dropped]
    return out
