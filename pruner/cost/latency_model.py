"""Latency of any plan, composed from module times measured once per base architecture.

The design's cost model measures per module and composes: the same per-position tables that price
parameters and MACs exactly are filled with measured microseconds (each module's median time, children
included) of the teacher, and of the teacher less its innermost stage when a plan removes it. Unlike
counts, times do not add up exactly (kernel launches, caches, the Python between modules), so this is an
estimate; ``benchmarks/latency_model.py`` measures how close it comes. It is what lets a search repair
thousands of candidate plans to a ``latency=`` budget without timing each one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import torch
from torch import nn

from pruner.cost.latency import Latency, measure_latency
from pruner.cost.model import CostModel
from pruner.cost.table import CostTable, compose, table_from_modules
from pruner.unet.plan import Plan
from pruner.unet.topology import topology_of

__all__ = ["LatencyModel", "table_modules"]

Timer = Callable[[nn.Module, list[str]], Latency]


_TABLE_MODULE = re.compile(
    r"^(?:(?:down|up)_blocks\.\d+\.(?:resnets\.\d+|attentions\.\d+(?:\.transformer_blocks\.\d+(?:\.ff)?)?)"
    r"|mid_block(?:\.resnets\.\d+|\.attentions\.0(?:\.transformer_blocks\.\d+(?:\.ff)?)?)?)$"
)


def table_modules(model: nn.Module) -> list[str]:
    """The modules whose times a cost table reads (resnets, attention modules, transformer layers and
    their feed-forwards, the mid block), and no others: every timed module adds hook overhead."""
    return [name for name, _ in model.named_modules() if _TABLE_MODULE.match(name)]


def _random_weights(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A meta-device base made real with small random weights: timing needs shapes, not values, but
    uninitialised memory can hold NaNs or denormals that slow a CPU down."""
    model = model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.to(dtype).eval()


class LatencyModel:
    """Milliseconds of one UNet call for any plan on one teacher, at the cost model's resolution.

    ``batch`` 2 is one image with classifier-free guidance, as the search's latency objective times it.
    Times are taken on the teacher's device and dtype, each the least of ``rounds`` medians of ``runs``
    calls after ``warmup``.
    """

    def __init__(
        self,
        cost: CostModel,
        teacher: nn.Module,
        *,
        batch: int = 2,
        warmup: int = 5,
        runs: int = 9,
        rounds: int = 3,
        timer: Timer | None = None,
    ) -> None:
        if cost.latent is None:
            raise ValueError("this cost model has no resolution: pass latent= to time plans")
        self.cost, self.teacher = cost, teacher
        self._timer = timer or (
            lambda m, names: measure_latency(
                m, cost.latent, batch=batch, seq_len=cost.seq_len, warmup=warmup, runs=runs, modules=names
            )
        )
        self.rounds = rounds
        self._tables: dict[int, CostTable] = {}

    def _base(self, offset: int) -> nn.Module:
        if offset == 0:
            return self.teacher
        ref = next(self.teacher.parameters())
        return _random_weights(self.cost.fresh_base(offset), ref.device, ref.dtype)

    def _least(self, model: nn.Module, names: list[str]) -> Latency:
        """The least of ``rounds`` medians, whole and per module: other work on the machine inflates a
        median now and then, never makes one smaller."""
        first, *rest = [self._timer(model, names) for _ in range(self.rounds)]
        modules = {k: min([v, *(r.modules_ms[k] for r in rest)]) for k, v in first.modules_ms.items()}
        total = min([first.total_ms, *(r.total_ms for r in rest)])
        return dataclasses.replace(first, total_ms=total, modules_ms=modules)

    def table(self, offset: int = 0) -> CostTable:
        """The base's module times in microseconds, in the composable table."""
        if offset not in self._tables:
            model = self._base(offset)
            latency = self._least(model, table_modules(model))
            values = {k: round(v * 1000) for k, v in latency.modules_ms.items()}
            self._tables[offset] = table_from_modules(
                values, topology_of(model), round(latency.total_ms * 1000), self.cost.feed_forward_shapes(offset),
                exact=False,
            )  # fmt: skip
        return self._tables[offset]

    def ms(self, plan: Plan) -> float:
        """The plan's estimated milliseconds per call."""
        layout = self.cost.layout(plan)
        return compose(self.table(layout.up_offset), layout, plan.ff_ratios) / 1000
