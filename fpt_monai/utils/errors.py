# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The last line of every failed run is ours: ``fpt_monai: error: <file>: <reason>. <fix>``.

MONAI's bundle runner wraps any error raised inside a config expression in ``RuntimeError: Failed to evaluate
ConfigExpression ...`` (and transforms in ``applying transform ...``), so a run used to end with the wrapper while the
message that names the file and the fix stood 60-360 lines above. :func:`install_excepthook` keeps the full
traceback and then prints one line with the most specific message of the exception chain (:func:`error_line`).

The bundle configs install it with ``excepthook: $import fpt_monai.utils.excepthook``: MONAI evaluates every ``$import``
expression before any other item, so the hook is in place before the datalist is read or a network is built.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from types import TracebackType

__all__ = ["PREFIX", "error_line", "find_error", "install_excepthook", "is_ours"]

PREFIX = "fpt_monai: error: "
_PACKAGE = "fpt_monai"
# modules whose errors only wrap the one that caused them (config evaluation, transforms, instantiation)
_WRAPPER_MODULES = ("monai.", "ignite.", "fire.")
# builtin errors that our code raises only by mistake: report them as unexpected even when raised in fpt_monai
_PROGRAMMING_ERRORS = (AssertionError, AttributeError, IndexError, KeyError, NameError, TypeError, ZeroDivisionError)
_UNEXPECTED = "Unexpected error; the traceback above shows where it happened."
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"
_MAX_LINES = 8  # a long listing (e.g. of unreadable files) is shortened; the traceback above has all of it


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (``__cause__``, else an unsuppressed ``__context__``)."""
    out: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in out):
        out.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out


def _raised_in(exc: BaseException) -> str:
    """Module name of the frame that raised ``exc`` ('' when unknown)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_ours(exc: BaseException) -> bool:
    """Whether ``exc`` carries a message written for users by fpt_monai: its type is defined in fpt_monai, or
    fpt_monai code raised it (a ``ValueError``/``FileNotFoundError`` naming a file and a fix), unless it is a
    builtin error that only a bug raises (``KeyError``, ``TypeError``, ...)."""
    if _in_package(type(exc).__module__, _PACKAGE):
        return True
    if isinstance(exc, OSError) and exc.errno is not None:  # from the system (open() in our code), not our words
        return False
    return _in_package(_raised_in(exc), _PACKAGE) and not isinstance(exc, _PROGRAMMING_ERRORS)


def _is_wrapper(exc: BaseException) -> bool:
    # a MONAI/ignite error raised because of another one adds only "Failed to evaluate ..." to it
    caused = exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__)
    return caused and any(_raised_in(exc).startswith(m) for m in _WRAPPER_MODULES)


def find_error(exc: BaseException) -> BaseException:
    """The most specific exception of ``exc``'s chain: the outermost one of fpt_monai (:func:`is_ours`), else the
    outermost one that is not a MONAI/ignite wrapper, else ``exc``."""
    chain = _chain(exc)
    for candidate in chain:
        if is_ours(candidate):
            return candidate
    for candidate in chain:
        if not _is_wrapper(candidate):
            return candidate
    return exc


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"  # the file first, as in our own messages
    elif isinstance(exc, KeyError) and len(exc.args) == 1 and type(exc).__str__ is KeyError.__str__:
        text = repr(exc.args[0])  # KeyError's str() is already the repr of its key
    else:
        text = str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > _MAX_LINES:
        lines = [*lines[: _MAX_LINES - 2], f"... ({len(lines) - _MAX_LINES + 1} more lines above) ...", lines[-1]]
    return " ".join(lines)


def _worker_error(text: str) -> tuple[str, str] | None:
    """``(type name, message)`` of the most specific error in the traceback text that torch's DataLoader puts in the
    error it re-raises from a worker: the first of fpt_monai, else the first of the chain (its root cause)."""
    found = []
    for line in text.split(_WORKER_TRACEBACK, 1)[1].splitlines():
        name, sep, message = line.partition(": ")
        if sep and not line[:1].isspace() and name.replace(".", "").replace("_", "").isalnum():
            found.append((name, message.strip()))
    ours = [pair for pair in found if _in_package(pair[0], _PACKAGE)]
    return (ours or found or [None])[0]


def error_line(exc: BaseException) -> str:
    """One line for the end of a failed run: ``fpt_monai: error: <message>``.

    The message is the one of :func:`find_error` (for an error re-raised from a DataLoader worker, the one of ours in
    the worker's traceback). Ours name the file, the reason and the fix; any other gets its exception type and a hint
    that the traceback shows where it happened (an ``OSError`` names its file first). Multi-line messages are joined
    (and shortened past a few lines).

    Args:
        exc: the exception that ended the run.
    """
    error = find_error(exc)
    message, name = _message(error), type(error).__name__
    worker = _worker_error(str(error)) if _WORKER_TRACEBACK in str(error) else None
    if worker is not None:  # re-raised from a DataLoader worker: the chain is only text
        name, message = worker[0].rsplit(".", 1)[-1], worker[1]
        if _in_package(worker[0], _PACKAGE) and message:
            return PREFIX + message
    elif is_ours(error) and message:
        return PREFIX + message
    text = f"{message.rstrip('.')} ({name})" if message else name
    return f"{PREFIX}{text}. {_UNEXPECTED}"


def _excepthook(
    previous: Callable[[type[BaseException], BaseException, TracebackType | None], object],
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        previous(exc_type, exc, tb)  # the full traceback first, as without the hook
        if isinstance(exc, KeyboardInterrupt) or not isinstance(exc, Exception):
            return
        try:
            line = error_line(exc)
        except Exception:  # never hide the original error behind one of ours
            line = PREFIX + "".join(traceback.format_exception_only(exc_type, exc)).strip()
        sys.stderr.flush()
        print(line, file=sys.stderr, flush=True)

    hook._fpt_monai = True  # type: ignore[attr-defined]
    return hook


def install_excepthook() -> None:
    """Set ``sys.excepthook`` so that an uncaught exception prints its traceback (through the hook that was in
    place) and then :func:`error_line` as the last line on stderr. ``KeyboardInterrupt`` and ``SystemExit`` keep the
    previous behaviour. Idempotent: installing twice prints one line."""
    if getattr(sys.excepthook, "_fpt_monai", False):
        return
    sys.excepthook = _excepthook(sys.excepthook)
