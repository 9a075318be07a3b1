"""Keep a student working with what SDXL users have: LoRAs ported through the plan's weight map,
ControlNet compatibility of plans, and single-file export in the original (SGM) key layout."""

from __future__ import annotations

from pruner.compat.lora import PortedLora, PortReport, naive_lora, port_lora, read_lora

__all__ = ["PortReport", "PortedLora", "naive_lora", "port_lora", "read_lora"]
