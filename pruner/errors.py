"""Errors pruner raises for bad input: each carries a one-line message that names the problem and the fix."""

from __future__ import annotations

__all__ = [
    "DiskFull",
    "InexpressiblePlanError",
    "OutOfDeviceMemory",
    "OutputInUse",
    "PrunerError",
    "RecipeError",
    "SearchInterrupted",
    "UnknownUnitError",
    "first_line",
]


def first_line(exc: BaseException) -> str:
    """An error's first line (its name when it says nothing): what a one-line message quotes of a library's."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PrunerError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class UnknownUnitError(PrunerError):
    """A plan or recipe names a unit the teacher does not have."""


class InexpressiblePlanError(PrunerError):
    """A plan no stock diffusers config can describe; ``nearest`` is the closest plan that can be."""

    def __init__(self, message: str, nearest: object | None = None) -> None:
        super().__init__(message)
        self.nearest = nearest


class RecipeError(PrunerError):
    """A recipe file that cannot be read or does not validate."""


class DiskFull(PrunerError):
    """A write failed because its file system is full (or over quota): the message names the folder, the
    bytes the write needed when known, what is free, and how to continue once space is freed."""


class OutputInUse(PrunerError):
    """Another live run holds the lock of the output this run would write."""


class OutOfDeviceMemory(PrunerError):
    """The GPU ran out of memory: the message says what was running, how much was asked for, and which
    settings need less (the torch error is chained as ``__cause__``)."""


class SearchInterrupted(PrunerError):
    """Ctrl-C in a search: the CLI prints the message (what is complete, how to continue) and exits 130."""

    exit_code = 130
