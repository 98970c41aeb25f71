# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Read every image once before a run: a few unreadable files should stop it at the start, with the full list, not
crash it hours later in a data-loader worker (or be dropped, listed and counted when the user asks).

:func:`check_images` does it for a training datalist; :func:`check_inference_images` for the items bundle inference
classifies, where it also applies the multi-frame policy (``frames``) and writes the list of skipped files."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fpt_monai.data.splits import SPLITS
from fpt_monai.utils.atomic import atomic_write_text
from fpt_monai.utils.flags import as_bool

__all__ = [
    "InferenceImages",
    "SkippedImagesError",
    "UnreadableImagesError",
    "broken_link_reason",
    "check_images",
    "check_inference_images",
]


class UnreadableImagesError(ValueError):
    """Some images of the datalist cannot be read."""


class SkippedImagesError(UnreadableImagesError):
    """Unreadable images were left out of a run (``skip_unreadable``) and the run was not told to accept that."""


def broken_link_reason(path: str | os.PathLike) -> str | None:
    """``"broken symbolic link to <target>"`` for a symbolic link whose target does not exist, else ``None``."""
    p = Path(path)
    try:
        if p.is_symlink() and not p.exists():
            return f"broken symbolic link to {os.readlink(p)}"
    except OSError:  # an unreadable folder on the way: the reader's own error says it
        return None
    return None


def _problem(image: str, channels: int) -> str | None:
    from fpt_monai.transforms.io import read_image

    link = broken_link_reason(image)
    if link is not None:
        return link
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


@dataclass
class InferenceImages:
    """What :func:`check_inference_images` found.

    Attributes:
        items: the items to classify: the readable ones, a multi-frame file expanded into one item per frame
            (``{"image": path, "id": id, "frame": k}``) under ``frames="every"``, or with its chosen ``frame``.
        unreadable: ``{"id", "image", "reason"}`` of every file left out.
        total: files asked for.
        report_file: where the list of unreadable files goes (``None``: nowhere).
    """

    items: list[dict]
    unreadable: list[dict] = field(default_factory=list)
    total: int = 0
    report_file: Path | None = None

    def raise_if_skipped(self, allow_skipped: bool | str = False) -> None:
        """Raise :class:`SkippedImagesError` naming the list of skipped files, unless nothing was skipped or
        ``allow_skipped``. Call it after the predictions are written: the readable images keep theirs.

        Args:
            allow_skipped: accept a result without the unreadable images (the CLI's ``"true"`` counts).
        """
        if not self.unreadable or as_bool(allow_skipped):
            return
        where = str(self.report_file) if self.report_file is not None else "the log above"
        raise SkippedImagesError(
            f"{where}: {len(self.unreadable)} of {self.total} images were skipped as unreadable (the predictions of "
            f"the other {self.total - len(self.unreadable)} are written); the list gives each one's reason. Fix or "
            "remove them, or pass --allow_skipped true to accept the partial result."
        )


def _frames_of(item: Mapping, frames: str | int, channels: int, read: bool) -> list[int | None]:
    """The frames of one file to classify (``[None]`` for a single-frame image), after reading the first of them."""
    from fpt_monai.transforms.dicom_objects import frame_indices
    from fpt_monai.transforms.io import image_frame_count, read_image

    path = str(item["image"])
    count = image_frame_count(path)
    # a policy chooses among the frames of multi-frame files only: single-frame images are read as they are
    chosen: list[int | None] = list(frame_indices(count, frames, path)) if count > 1 else [None]
    if read:
        read_image(path, channels=channels, frame=chosen[0])
    return chosen


def _write_report(path: Path, unreadable: Sequence[Mapping]) -> None:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["id", "image", "reason"])
    for row in unreadable:
        writer.writerow([row["id"], row["image"], row["reason"]])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, table.getvalue())


def check_inference_images(
    items: Sequence[Mapping],
    skip_unreadable: bool | str = False,
    enabled: bool | str = True,
    frames: str | int = "refuse",
    report_file: str | os.PathLike | None = None,
    channels: int = 3,
    num_threads: int = 4,
    progress: bool = True,
) -> InferenceImages:
    """Read every file to classify once (the first chosen frame of a multi-frame one) and apply the multi-frame
    policy; unreadable files stop the run with their full list, or are left out and listed.

    Args:
        items: ``{"image", "id"}`` items (:func:`~fpt_monai.data.inference_items`).
        skip_unreadable: leave unreadable files out (and list them) instead of raising; the run should then end
            with :meth:`InferenceImages.raise_if_skipped`.
        enabled: ``False`` reads only the DICOM headers (for the frame counts), not the pixels.
        frames: multi-frame policy (:func:`~fpt_monai.transforms.dicom_objects.frame_indices`): ``"refuse"`` (a
            multi-frame file is unreadable; its reason says how to choose), ``"first"``, ``"middle"``, ``"every"``
            (one item per frame) or a frame index. Single-frame images are read as they are under any policy.
        report_file: where to write the list of unreadable files (CSV ``id, image, reason``); a list left by an
            earlier run is removed when every file is readable. ``None`` writes nothing.
        channels: as :func:`~fpt_monai.transforms.read_image`.
        num_threads: parallel readers (image decoding releases the GIL).
        progress: show a progress bar.

    Raises:
        UnreadableImagesError: listing every unreadable file and its reason (unless ``skip_unreadable``), or when no
            file at all can be read.
        ValueError: an unknown ``frames`` policy.
    """
    from fpt_monai.transforms.dicom_objects import FRAME_POLICIES

    frames = int(frames) if isinstance(frames, str) and frames.lstrip("-").isdigit() else frames
    if not isinstance(frames, int) and frames not in FRAME_POLICIES:  # the caller's error, not the files'
        raise ValueError(f"frames must be one of {', '.join(FRAME_POLICIES)} or a frame index, got {frames!r}.")
    read = as_bool(enabled)

    def check(item: Mapping) -> tuple[list[int | None] | None, str | None]:
        link = broken_link_reason(item["image"])
        if link is not None:  # not the reader's "no such file": the link is there, its target is not
            return None, link
        try:
            return _frames_of(item, frames, channels, read), None
        except Exception as err:  # any failure makes the file unusable; report its reason
            reason = str(err).removeprefix(f"{item['image']}: ")  # the list names the file already
            return None, f"{type(err).__name__}: {reason}"

    items = list(items)
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        jobs = pool.map(check, items)
        results = list(tqdm(jobs, total=len(items), desc="check images", unit="img", disable=not progress))
    out: list[dict] = []
    unreadable: list[dict] = []
    for item, (chosen, why) in zip(items, results, strict=True):
        if why is not None or chosen is None:
            unreadable.append({"id": str(item.get("id", item["image"])), "image": str(item["image"]), "reason": why})
            continue
        out.extend(dict(item) if frame is None else {**item, "frame": frame} for frame in chosen)
    if any("frame" in item for item in out):  # one batch must not mix items with and without a frame
        out = [{**item, "frame": item.get("frame", 0)} for item in out]
    report = Path(report_file) if report_file is not None else None
    if report is not None:
        if unreadable:
            _write_report(report, unreadable)
        elif report.is_file():
            report.unlink()  # a list from an earlier run would name files that are readable now
    if not unreadable:
        return InferenceImages(out, [], len(items), report)
    listing = "\n  ".join(f"{row['image']}: {row['reason']}" for row in unreadable)
    if not out or not as_bool(skip_unreadable):
        head = f"{report}: " if report is not None else ""
        there = " (listed there with their reasons)" if report is not None else ""
        if out:
            fix = "Fix or remove them, or classify the others with --skip_unreadable true."
        else:
            fix = "Fix them, or check that dataset_dir points at the images."
        raise UnreadableImagesError(
            f"{head}{len(unreadable)} of {len(items)} images cannot be read{there}:\n  {listing}\n{fix}"
        )
    logging.getLogger(__name__).warning(
        "skipping %d of %d images that cannot be read (skip_unreadable; listed in %s):\n  %s",
        len(unreadable),
        len(items),
        report if report is not None else "this log",
        listing,
    )
    return InferenceImages(out, unreadable, len(items), report)
