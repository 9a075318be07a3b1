"""Latency of any plan, composed from module times measured once per base architecture.

The design's cost model measures per module and composes: the same per-position tables that price
parameters and MACs exactly are filled with measured microseconds (each module's median time, children
included) of the teacher, and of the teacher less its innermost stage when a plan removes it. Unlike
counts, times do not add up exactly (kernel launches, caches, the Python between modules), so this is an
estimate; ``benchmarks/latency_model.py`` measures how close it comes. It is what lets a search repair
thousands of candidate plans to a ``latency=`` budget without timing each one.

Summed module times miss what does not shrink with a plan and, on an asynchronous device (a GPU), are
inflated by the synchronisation each per-module timing needs: there the sum mis-predicted a pruned
SDXL's latency by up to 14x. So the composed sum is then calibrated against whole students, per base: a
few anchor plans (the base, and students removing about 20-80% of the units) are built and timed whole, and a
line ``measured = fixed + scale * (summed module times)`` fitted through them (the fixed part: what no
plan removes). On a CPU module times add up (no calibration by default; ``anchors=`` asks for one).
The search still times each trial's built student directly (its recorded ``latency_ms``); the
calibrated estimate is what its budget repair prices candidates with.
"""

from __future__ import annotations

import dataclasses
import random
import re
import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pruner.cost.latency import Latency, measure_latency
from pruner.cost.model import CostModel
from pruner.cost.table import CostTable, compose, table_from_modules
from pruner.unet.plan import Plan, nearest_expressible, unit_kinds
from pruner.unet.surgery import build_student
from pruner.unet.topology import Topology, topology_of

__all__ = ["LatencyModel", "anchor_plans", "fit_line", "table_modules"]

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


def anchor_plans(topo: Topology, n: int, offset: int = 0, seed: int = 1234) -> list[Plan]:
    """The base a table of ``offset`` describes (the teacher, or the teacher less its innermost stage), then
    ``n`` expressible plans on that base removing evenly spread shares (about 20% to 80%) of the units."""
    rng = random.Random(seed)
    stage = {f"down_blocks.{topo.n_blocks - 1}"} if offset else set()
    names = [u for u, kind in unit_kinds(topo).items() if kind != "stage"]
    shares = [0.2 + 0.6 * k / max(1, n - 1) for k in range(n)]
    plans = [Plan(frozenset(stage))] + [Plan(frozenset(stage | {u for u in names if rng.random() < p})) for p in shares]
    return [nearest_expressible(p, topo) for p in plans]


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """A robust (Theil-Sen) ``(fixed, scale)`` of ``y = fixed + scale * x``: the median of the pairwise
    slopes, then the median intercept, so one timing inflated by other work cannot tilt the line.
    ``(0, 1)`` when the points cannot define a line with a positive slope."""
    pairs = [(xs[j] - xs[i], ys[j] - ys[i]) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    slopes = [dy / dx for dx, dy in pairs if dx != 0]
    if not slopes or statistics.median(slopes) <= 0:
        return 0.0, 1.0
    scale = statistics.median(slopes)
    return statistics.median(y - scale * x for x, y in zip(xs, ys, strict=True)), scale


class LatencyModel:
    """Milliseconds of one UNet call for any plan on one teacher, at the cost model's resolution.

    ``batch`` 2 is one image with classifier-free guidance, as the search's latency objective times it.
    Times are taken on the teacher's device and dtype, each the least of ``rounds`` medians of ``runs``
    calls after ``warmup``. ``anchors`` whole students calibrate the composed sum (default: 4 on a GPU, none
    on a CPU, where module times add up without it, or with a stand-in ``timer``).
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
        anchors: int | None = None,
    ) -> None:
        if cost.latent is None:
            raise ValueError("this cost model has no resolution: pass latent= to time plans")
        self.cost, self.teacher = cost, teacher
        latent = cost.latent
        self._timer = timer or (
            lambda m, names: measure_latency(
                m, latent, batch=batch, seq_len=cost.seq_len, warmup=warmup, runs=runs, modules=names
            )
        )
        self.rounds = rounds
        self._tables: dict[int, CostTable] = {}
        on_gpu = next(teacher.parameters()).device.type == "cuda"
        self.n_anchors = (4 if timer is None and on_gpu else 0) if anchors is None else anchors
        self.lines: dict[int, tuple[float, float]] = {}

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

    def composed_ms(self, plan: Plan) -> float:
        """The plan's module times summed over its layout (uncalibrated), in milliseconds."""
        layout = self.cost.layout(plan)
        return compose(self.table(layout.up_offset), layout, plan.ff_ratios) / 1000

    def _variable_ms(self, plan: Plan) -> float:
        """The summed times of the plan's modules alone (no base's fixed rest: the fit supplies one)."""
        layout = self.cost.layout(plan)
        table = self.table(layout.up_offset)
        return (compose(table, layout, plan.ff_ratios) - table.fixed) / 1000

    def calibrate(self, offset: int = 0, plans: Sequence[Plan] | None = None) -> tuple[float, float]:
        """Fit ``measured = fixed + scale * (summed module times)`` for plans on one base through that base
        and ``plans`` (default: its anchor plans), each built and timed whole; returns ``(fixed ms, scale)``."""
        chosen = plans if plans is not None else anchor_plans(self.cost.topology, self.n_anchors, offset)
        chosen = [p for p in chosen if self.cost.layout(p).up_offset == offset]
        measured = [self._least(build_student(self.teacher, plan)[0], []).total_ms for plan in chosen]
        self.lines[offset] = fit_line([self._variable_ms(p) for p in chosen], measured)
        return self.lines[offset]

    def ms(self, plan: Plan) -> float:
        """The plan's estimated milliseconds per call."""
        offset = self.cost.layout(plan).up_offset
        if offset not in self.lines and self.n_anchors:
            self.calibrate(offset)
        if offset not in self.lines:
            return self.composed_ms(plan)
        fixed, scale = self.lines[offset]
        return fixed + scale * self._variable_ms(plan)
