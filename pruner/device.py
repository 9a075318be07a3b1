"""Where work runs and in what precision: device choice, the current CUDA device, half-precision modes.

The search, the distiller, evaluation and caching all pick a device and a dtype the same way, so these
helpers live here once rather than in any one of those rooms.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from pruner.errors import PrunerError

__all__ = [
    "PRECISIONS",
    "autocast_dtype",
    "check_precision",
    "current_device",
    "resolve_device",
    "slow_half_note",
    "teacher_dtype",
]

PRECISIONS: dict[str, torch.dtype | None] = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Mixed-precision modes (accelerate's names) and the autocast dtype each means (None: full precision)."""


def check_precision(value: str, name: str = "mixed_precision") -> str:
    """``value`` if it is a mixed-precision mode accelerate supports here, else a one-line PrunerError."""
    if value not in PRECISIONS:
        raise PrunerError(f"{name} {value!r} is not one of {', '.join(PRECISIONS)}")
    return value


def resolve_device(device: str | None) -> torch.device:
    """``cuda`` when one is available and no device is named; a named GPU that is missing is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise PrunerError(f"device {device} is not available here; use cpu or one of the visible GPUs")
    return dev


def slow_half_note(device: torch.device, mixed_precision: str | None) -> str | None:
    """A warning for bf16/fp16 on a CPU without native bf16 instructions (AVX512-BF16 or AMX), where torch
    emulates half-precision matmuls: 93x slower than fp32 on an AVX2 EPYC (1024x1280 by 1280x5120)."""
    if device.type != "cpu" or PRECISIONS.get(mixed_precision or "no") is None:
        return None
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    if native:
        return None
    return (
        f"this CPU has no native bf16 instructions: --mixed-precision {mixed_precision} runs many times slower "
        "than fp32 here (use --mixed-precision no)"
    )


def current_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``device`` as torch's current CUDA device for the block (restored after), so that CUDA events, streams
    and bare "cuda" tensors of a worker on cuda:1 are on cuda:1; nothing off a GPU."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def autocast_dtype(device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """What ``mixed_precision`` autocasts to on ``device`` (fp16 becomes bf16 on a CPU: CPU autocast has no
    fp16 matmuls worth having); None for full precision."""
    dtype = PRECISIONS[check_precision(mixed_precision, "mixed precision")]
    return torch.bfloat16 if dtype == torch.float16 and device.type == "cpu" else dtype


def teacher_dtype(device: torch.device, mixed_precision: str | None = None) -> torch.dtype:
    """A frozen teacher's dtype: the students' autocast dtype when they train in half precision, on any
    device (half the memory; on a CPU, the same path a GPU run takes); otherwise bf16 (fp16 where bf16 is
    missing) on a GPU and fp32 on a CPU."""
    half = autocast_dtype(device, mixed_precision or "no")
    if half is not None:
        return half
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def free_memory(device: torch.device) -> int:
    """Bytes free to allocate on ``device``: the GPU's free memory, or the host's available memory for a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)
