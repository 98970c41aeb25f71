# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What a class name may be: one rule for datalists, model records and everything that reports them."""

from __future__ import annotations

__all__ = ["MAX_CLASS_NAME", "class_name_problem"]

MAX_CLASS_NAME = 100


def class_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a class name, or ``None``: class names are non-empty printable text of at most
    :data:`MAX_CLASS_NAME` characters, without control characters (a newline would add a line to a report), not
    starting with ``$``, ``@`` or ``%`` (MONAI configs evaluate such strings) and without surrounding spaces."""
    if not isinstance(name, str) or not name:
        return "is not non-empty text"
    if len(name) > MAX_CLASS_NAME:
        return f"is longer than {MAX_CLASS_NAME} characters"
    if not name.isprintable():
        return "holds control or non-printable characters (a newline would add a line to reports)"
    if name[0] in "$@%":
        return "starts with '$', '@' or '%' (MONAI configs evaluate such strings)"
    if name != name.strip():
        return "starts or ends with spaces"
    return None
