"""Runtime policy a caller opts into: CPU threads for torch on small machines.

Library calls never change global state by themselves; the CLI and the benchmarks call
:func:`configure_threads` once at start-up.
"""

from __future__ import annotations

import os

import torch

__all__ = ["configure_threads", "default_threads"]


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
