"""pruner: find which blocks of an SDXL-class UNet to remove, then distill the student."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_unet"]


def __getattr__(name: str) -> Any:
    """``pruner.load_unet``: loads any pruner student, width-pruned ones included (imported on first use)."""
    if name == "load_unet":
        from pruner.unet.load import load_unet

        return load_unet
    raise AttributeError(f"module 'pruner' has no attribute {name!r}")
