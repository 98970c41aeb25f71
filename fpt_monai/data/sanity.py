# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Warnings where the numbers cannot hold: a datalist too small for the figures a clinician will read.

On a test split of tens of images a class of 3 gives an AUC whose interval spans half the range, and a misspelt
class folder (``maligant/`` beside ``malignant/``) silently makes another class. Neither is an error (a pilot may
want it), so they are warnings, said where the datalist is made (the datalist CLI), when training starts and in the
run summary.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_MIN_IMAGES_PER_CLASS",
    "datalist_warnings",
    "similar_class_names",
    "warn_about_datalist",
]

logger = logging.getLogger(__name__)

DEFAULT_MIN_IMAGES_PER_CLASS = 10
_SPLITS = ("training", "validation", "test")


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two short strings."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _folded(name: str) -> str:
    return "".join(c for c in name.casefold() if c.isalnum())


def similar_class_names(names: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of class names that are likely one class spelt twice: equal but for case, spaces and punctuation
    (``Benign`` / ``benign_``), or within a small edit distance (1 for names of up to 8 letters, 2 for longer ones:
    ``maligant`` / ``malignant``); names that differ only in their digits (``grade_1`` / ``grade_2``) are not."""
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            fa, fb = _folded(str(a)), _folded(str(b))
            if fa != fb and [c for c in fa if not c.isdigit()] == [c for c in fb if not c.isdigit()]:
                continue  # numbered classes (grade_1, grade_2) differ by design
            allowed = 1 if min(len(fa), len(fb)) <= 8 else 2
            if fa == fb or (min(len(fa), len(fb)) >= 4 and _edit_distance(fa, fb) <= allowed):
                pairs.append((str(a), str(b)))
    return pairs


def datalist_warnings(
    datalist: Mapping, min_images_per_class: int = DEFAULT_MIN_IMAGES_PER_CLASS, source: str | None = None
) -> list[str]:
    """What in ``datalist`` makes its figures unreliable, one sentence each (empty when nothing does).

    Args:
        datalist: ``training``/``validation``/``test`` items with integer ``label`` (and ``classes``, if named).
        min_images_per_class: the fewest images of a class per split that the warning accepts (0 disables it).
        source: the datalist file, named in the sentences.
    """
    head = f"{source}: " if source else ""
    classes = list(datalist.get("classes") or [])
    labels = sorted({int(i["label"]) for s in _SPLITS for i in datalist.get(s) or [] if "label" in i})
    names = classes or [str(label) for label in range(max(labels) + 1 if labels else 0)]
    out = []
    if min_images_per_class > 0:
        small = []
        for split in _SPLITS:
            items = datalist.get(split) or []
            if not items:
                continue
            for label, name in enumerate(names):
                n = sum(1 for i in items if int(i.get("label", -1)) == label)
                if n < min_images_per_class:
                    small.append(f"{name!r} has {n} in {split}")
        if small:
            out.append(
                f"{head}{'; '.join(small)} (fewer than {min_images_per_class} images of a class in a split): "
                "figures on so few images have wide intervals (an AUC on 3 test images says almost nothing). Add "
                "images, or use cross-validation (scripts/study.py) rather than one split."
            )
    for a, b in similar_class_names(names):
        out.append(
            f"{head}class names {a!r} and {b!r} are nearly the same: is one a typo (a misspelt folder makes a class of "
            "its own)? Merge them (rename the folder or the label) and write the datalist again, if so."
        )
    return out


def warn_about_datalist(
    datalist: Mapping, min_images_per_class: int = DEFAULT_MIN_IMAGES_PER_CLASS, source: str | None = None
) -> list[str]:
    """Log each of :func:`datalist_warnings` as a warning (the bundle's training start calls it); returns them."""
    messages = datalist_warnings(datalist, int(min_images_per_class), None if source is None else str(source))
    for message in messages:
        logger.warning(message)
    return messages
