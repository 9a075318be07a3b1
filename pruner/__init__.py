"""pruner: find which blocks of an SDXL-class UNet to remove, then distill the student."""

from __future__ import annotations

__version__ = "0.1.0"
