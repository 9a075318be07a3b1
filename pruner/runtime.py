"""Runtime policy: CPU threads for torch on small machines, and what a GPU's out-of-memory error says.

Library calls never change global state by themselves; the CLI and the benchmarks call
:func:`configure_threads` once at start-up.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from pruner.errors import OutOfDeviceMemory

__all__ = ["configure_threads", "default_threads", "out_of_memory_advice"]


def default_threads() -> int:
    """One thread on machines with two cores or fewer: measured there, thread wake-ups made a tiny UNet's
    call 50-85x slower than one thread did. Elsewhere torch's own default."""
    return 1 if (os.cpu_count() or 1) <= 2 else torch.get_num_threads()


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: ``threads``, else ``$PRUNER_THREADS``, else :func:`default_threads`."""
    env = os.environ.get("PRUNER_THREADS")
    n = threads or (int(env) if env and env.isdigit() and int(env) > 0 else default_threads())
    torch.set_num_threads(n)
    return n


def _asked(exc: BaseException) -> str:
    """The part of torch's out-of-memory message that says how much was asked of how much (its first
    line holds a dozen sentences of allocator advice that does not help here)."""
    sentences = str(exc).splitlines()[0].split(". ") if str(exc) else []
    kept = [x.rstrip(".") for x in sentences if x.startswith(("Tried to allocate", "GPU "))]
    return "; ".join(kept) or (sentences[0].rstrip(".") if sentences else "no detail")


@contextlib.contextmanager
def out_of_memory_advice(doing: str, fix: str) -> Iterator[None]:
    """Turn torch's out-of-memory error into one line: what was running, what was asked, and ``fix``."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfDeviceMemory(f"out of GPU memory while {doing} ({_asked(exc)}): {fix}") from exc
