"""Exact parameter counts, per module and in total."""

from __future__ import annotations

from torch import nn

__all__ = ["count_params", "params_by_module"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def params_by_module(model: nn.Module) -> dict[str, int]:
    """Module path -> parameters of that module, children included ('' is the whole model)."""
    return {name: count_params(m) for name, m in model.named_modules()}
