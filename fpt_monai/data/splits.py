# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A datalist's splits and its checks: the split names (and the folder/CSV names that stand for them), the default
fractions, the patient key, :func:`check_datalist` (items, labels, class names, non-empty splits) and
:func:`make_splits`, the stratified, patient-grouped split of a source without splits.

The sources a datalist is built from are in :mod:`fpt_monai.data.datalist`, which re-exports these names. numpy is
imported inside the two functions that use it, so that a command's argument parser can read the defaults (``--help``)
without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from fpt_monai.data.class_names import MAX_CLASS_NAME, class_name_problem

__all__ = [
    "DEFAULT_SPLIT_FRACTIONS",
    "GROUP_KEY",
    "SPLITS",
    "SPLIT_ALIASES",
    "DatalistError",
    "check_class_names",
    "check_datalist",
    "datalist_num_classes",
    "empty_datalist",
    "make_splits",
    "split_name",
]

SPLITS = ("training", "validation", "test")
# what a source without splits gets when the caller asks for a split without giving fractions (the command line)
DEFAULT_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
# the item key that holds a patient (or any group) id: items that share it are kept in one split
GROUP_KEY = "patient"
SPLIT_ALIASES = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}


def split_name(name: str, where: str) -> str:
    """The split a name stands for (``train``, ``val``, ``valid``, ``testing``, ...; any case); ``where`` names the
    file or setting in the error.

    Raises:
        ValueError: an unknown split name.
    """
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {name!r}; use train/val/test (or training/validation/test).")
    return SPLIT_ALIASES[key]


def empty_datalist() -> dict:
    """A datalist without items: an empty list per split."""
    return {split: [] for split in SPLITS}


class DatalistError(ValueError):
    """A datalist that cannot be used as it is: a bad item, a label out of range, an empty split."""


_SPLIT_USE = {
    "training": "there is nothing to train on",
    "validation": "training chooses models/model.pt on it, and evaluation and inference need that file",
    "test": "evaluation has nothing to measure",
}


def check_class_names(names: Sequence, head: str) -> None:
    """Refuse a class name that a MONAI config or a report would misread; ``head`` starts the error (the file).

    Raises:
        DatalistError: naming the class and the rule.
    """
    for name in names:
        # MONAI configs read strings that start with $ @ % as code, references or macros, and a newline would add a
        # line to a report: the rule shared with the model record (fpt_monai.data.class_names)
        problem = class_name_problem(name)
        if problem:
            raise DatalistError(
                f"{head}class name {name!r} cannot be used: it {problem}. Class names are printable text of at most "
                f"{MAX_CLASS_NAME} characters that does not start with '$', '@' or '%'. Rename the class (its folder "
                "or label)."
            )


def check_datalist(
    datalist: Mapping,
    num_classes: int | None = None,
    required_splits: Sequence[str] = (),
    source: str | os.PathLike | None = None,
) -> None:
    """Validate items (``image``, integer ``label``, unique ``id``) and, if given, labels in ``[0, num_classes)``,
    a ``classes`` list of ``num_classes`` names and non-empty ``required_splits``.

    Args:
        datalist: ``training``/``validation``/``test`` lists of items (and optionally ``classes``).
        num_classes: the number of classes the model has; ``None`` skips the label range check.
        required_splits: splits that must hold at least one item (checked after every other check, so that the run
            stops before it writes anything, e.g. ``("training", "validation")`` for training).
        source: the datalist file, named in the errors.

    Raises:
        DatalistError: naming the datalist file, the offending items or split, and how to fix them.
    """
    import numpy as np  # here, not at the top: see the module's docstring

    where = f" in {source}" if source is not None else ""
    head = f"{source}: " if source is not None else ""
    classes = datalist.get("classes")
    check_class_names(classes or (), head)
    if num_classes is not None and classes is not None and len(classes) != num_classes:
        raise DatalistError(
            f"{head}the datalist has {len(classes)} classes {list(classes)} but num_classes={num_classes}. Set "
            f"num_classes to {len(classes)} (or fix the datalist's 'classes')."
        )
    seen: dict[str, str] = {}
    for split in SPLITS:
        for item in datalist.get(split, []):
            if "image" not in item or "label" not in item or "id" not in item:
                raise DatalistError(f"{head}item {item} in {split!r} needs 'image', 'label' and 'id'.")
            label = item["label"]
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                raise DatalistError(
                    f"{item['image']}: label {label!r}{where} is not an integer class index. Use 0..n-1 "
                    "(the position of the class name in 'classes')."
                )
            if num_classes is not None and not 0 <= int(label) < num_classes:
                raise DatalistError(
                    f"{item['image']}: label {label}{where} is out of range for num_classes={num_classes} "
                    f"(valid: 0..{num_classes - 1}). Fix the label or set num_classes."
                )
            if item["id"] in seen:
                raise DatalistError(f"{head}duplicate item id {item['id']!r} in {seen[item['id']]!r} and {split!r}.")
            seen[item["id"]] = split
    for split in required_splits:
        split = split_name(split, "required_splits")
        if not datalist.get(split):
            raise DatalistError(
                f"{head}the {split} split is empty (unreadable images dropped with --skip_unreadable count as "
                f"absent); {_SPLIT_USE[split]}. Add {split} items to the datalist"
                + (" (e.g. 10-20% of the labelled images, stratified by class)." if split == "validation" else ".")
            )


def _check_fractions(fractions: Sequence[float], where: str) -> tuple[float, ...]:
    """The split fractions as floats that sum to exactly 1 (they may be off by 0.001, e.g. ``0.333`` three times)."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError) as err:
        raise DatalistError(f"{where}split fractions {fractions!r} are not numbers; e.g. (0.6, 0.2, 0.2).") from err
    if len(values) not in (2, 3):
        raise DatalistError(
            f"{where}{len(values)} split fractions {list(values)}; give 3 (training, validation, test), e.g. "
            "(0.6, 0.2, 0.2), or 2 (training, validation), e.g. (0.8, 0.2)."
        )
    if not all(0.0 < f < 1.0 for f in values):
        raise DatalistError(f"{where}split fractions {list(values)} must each lie between 0 and 1 (exclusive).")
    if abs(sum(values) - 1.0) > 1e-3:
        raise DatalistError(
            f"{where}split fractions {list(values)} sum to {sum(values):g}, not 1; e.g. (0.6, 0.2, 0.2) or (0.8, 0.2)."
        )
    return tuple(f / sum(values) for f in values)


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    return repr(class_names[label]) if class_names is not None else f"label {label}"


def make_splits(
    items: Sequence[Mapping],
    fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
    group_key: str | None = GROUP_KEY,
    class_names: Sequence[str] | None = None,
    source: str | os.PathLike | None = None,
) -> dict:
    """Split items into training/validation(/test): stratified by class, grouped by patient, seeded.

    Every class is split on its own, so each split holds its fraction of every class: within one item of
    ``fraction * count`` when the items are not grouped. Items that share a ``group_key`` value (a patient) go to
    the same split; groups are placed largest first, each into the split that most lacks its classes. Every class
    gets at least one item (one patient) in every split: where rounding would leave a split without a class, one item
    (the smallest group) of that class moves there from a split that has several.

    The result depends only on the items and the seed, not on their order (items are sorted by ``id`` first), and
    each split is sorted by ``id``.

    Args:
        items: ``{"image", "label", "id"}`` dicts (integer labels, unique ids), optionally with ``group_key``.
        fractions: 3 fractions (training, validation, test) or 2 (training, validation; ``test`` is then empty),
            each in (0, 1), summing to 1. Defaults to ``(0.6, 0.2, 0.2)``.
        seed: the random seed of the assignment. Defaults to 0.
        group_key: the item key with the patient (group) id; when items carry it, every item must, and no group is
            split. ``None`` splits items one by one. Defaults to ``"patient"``.
        class_names: names of the classes in label order: every class must have items, and ``classes`` is added to
            the result. ``None``: the labels present are the classes (at least two).
        source: the file or folder the items come from, named in the errors.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` (and ``"classes"`` when ``class_names`` is
        given); the items are copies.

    Raises:
        DatalistError: bad fractions, bad or duplicate items, fewer than two classes, items with and without a
            group, or a class with fewer items (patients) than splits.

    Examples::

        >>> items = [{"image": f"{i}.png", "label": i % 2, "id": f"{i}.png"} for i in range(20)]
        >>> dl = make_splits(items, (0.6, 0.2, 0.2), seed=0, class_names=["benign", "malignant"])
        >>> [len(dl[s]) for s in ("training", "validation", "test")]
        [12, 4, 4]
    """
    import numpy as np  # here, not at the top: see the module's docstring

    head = f"{source}: " if source is not None else ""
    fractions = _check_fractions(fractions, head)
    splits = SPLITS[: len(fractions)]
    items = sorted((dict(item) for item in items), key=lambda item: str(item.get("id", "")))
    if not items:
        raise DatalistError(f"{head}no items to split.")
    seen: set[str] = set()
    for item in items:
        if "image" not in item or "label" not in item or "id" not in item:
            raise DatalistError(f"{head}item {item} needs 'image', 'label' and 'id'.")
        if str(item["id"]) in seen:
            raise DatalistError(f"{head}duplicate item id {item['id']!r}; ids must be unique (the relative path).")
        seen.add(str(item["id"]))
    check_datalist({"training": items}, len(class_names) if class_names is not None else None, source=source)
    labels = sorted({int(item["label"]) for item in items})
    num_classes = len(class_names) if class_names is not None else max(labels) + 1
    present = list(range(num_classes)) if class_names is not None else labels
    if len(present) < 2:
        raise DatalistError(
            f"{head}all {len(items)} items have {_class_name(labels[0], class_names)}; a classifier needs at least "
            "two classes. Add the images of the other classes."
        )

    grouped = group_key is not None and any(group_key in item for item in items)
    groups: dict[str, list[dict]] = {}
    for item in items:
        if grouped:
            value = str(item.get(group_key, "")).strip()
            if not value:
                raise DatalistError(
                    f"{head}item {item['id']!r} has no {group_key!r} while others have one; give every item its "
                    f"{group_key} id (or none, to split image by image)."
                )
        else:
            value = str(item["id"])
        groups.setdefault(value, []).append(item)
    names = sorted(groups)
    counts = {g: np.bincount([int(i["label"]) for i in groups[g]], minlength=num_classes) for g in names}
    unit = "patients" if grouped else "items"
    fewer = (
        "split into training and validation only (fractions (0.8, 0.2), --split 0.8,0.2), " if len(splits) > 2 else ""
    )
    for label in present:
        n_items = sum(int(counts[g][label]) for g in names)
        n_groups = sum(1 for g in names if counts[g][label])
        if n_groups < len(splits):
            of = f" of {n_groups} {group_key}s" if grouped else ""
            raise DatalistError(
                f"{head}class {_class_name(label, class_names)} has {n_items} images{of}: too few for at least one "
                f"in each of the {len(splits)} splits ({', '.join(splits)}). Add images of this class, {fewer}or "
                "leave the class out."
            )

    # scikit-learn's group splitters make k equal folds (StratifiedGroupKFold) or ignore the labels
    # (GroupShuffleSplit), hence this greedy assignment to unequal fractions. Largest groups first (they are the
    # hardest to place), in a seeded random order within one size.
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: -len(groups[g]))
    total = sum(counts.values())
    target = np.outer(fractions, total)  # [split, class]: the wanted number of items
    assigned = np.zeros_like(target)
    where: dict[str, int] = {}
    for g in order:
        # the split whose missing items best match this group's classes; equal need: the earlier split
        s = int(np.argmax((target - assigned) @ counts[g]))
        where[g] = s
        assigned[s] += counts[g]

    # a class that rounding left out of a split gets one item (the smallest group) from a split that has several
    for s in range(len(splits)):
        for label in present:
            if assigned[s, label]:
                continue
            holders = {t: [g for g in names if where[g] == t and counts[g][label]] for t in range(len(splits))}
            candidates = [
                g
                for t in range(len(splits))
                if len(holders[t]) > 1
                for g in holders[t]
                if all(sum(1 for h in names if where[h] == t and counts[h][c]) > 1 for c in np.flatnonzero(counts[g]))
            ]
            if not candidates:
                raise DatalistError(
                    f"{head}cannot give the {splits[s]} split an image of class {_class_name(label, class_names)} "
                    f"without leaving another split without one of its classes ({unit} with several classes). Add "
                    f"images of this class, {fewer}or leave the class out."
                )
            moved = min(
                candidates, key=lambda g: (len(groups[g]), -(assigned[where[g], label] - target[where[g], label]), g)
            )
            assigned[where[moved]] -= counts[moved]
            assigned[s] += counts[moved]
            where[moved] = s

    out = empty_datalist()
    for g in names:
        out[splits[where[g]]].extend(groups[g])
    for split in splits:
        out[split].sort(key=lambda item: str(item["id"]))
    if class_names is not None:
        out["classes"] = list(class_names)
    return out


def datalist_num_classes(datalist: Mapping) -> int:
    """The number of classes of a datalist: its ``classes``, else the largest label + 1 (at least 2)."""
    if datalist.get("classes"):
        return len(datalist["classes"])
    labels = [int(item["label"]) for split in SPLITS for item in datalist.get(split, []) if "label" in item]
    return max(2, 1 + max(labels, default=1))
