"""Keep a student working with what SDXL users have: LoRAs ported through the plan's weight map,
ControlNet compatibility of plans, and single-file export in the original (SGM) key layout.

Names are imported on first use, so that ``pruner.student`` can use the compatibility checks without an
import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ControlNetCompatibility",
    "PortReport",
    "PortedLora",
    "controlnet_compatibility",
    "naive_lora",
    "port_lora",
    "read_lora",
]

_HOME = {
    "ControlNetCompatibility": "controlnet",
    "controlnet_compatibility": "controlnet",
    "PortReport": "lora",
    "PortedLora": "lora",
    "naive_lora": "lora",
    "port_lora": "lora",
    "read_lora": "lora",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"pruner.compat.{_HOME[name]}"), name)
    raise AttributeError(f"module 'pruner.compat' has no attribute {name!r}")
