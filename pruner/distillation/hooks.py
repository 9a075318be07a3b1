"""Forward hooks that record module outputs for feature KD.

Hooks are attached to the unwrapped model's modules (never to a DDP/FSDP wrapper), so module paths are
the plain ``down_blocks.1.attentions.0`` the feature map speaks, with no ``module.`` prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureRecorder"]


def _first_tensor(output: Any) -> torch.Tensor:
    """A block returns (hidden, skips) or an output dataclass; the feature is the hidden state."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return _first_tensor(output[0])
    if hasattr(output, "sample"):
        return output.sample
    raise TypeError(f"cannot take a feature from a {type(output).__name__}")


class FeatureRecorder:
    """Records the outputs of named modules on every forward; use as a context manager."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise KeyError(f"no module named {missing[0]!r} in {type(model).__name__}")
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in dict.fromkeys(names)]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.features[name] = _first_tensor(output)

        return record

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()
