"""Budgets that name their unit: ``0.74B``, ``740M``, ``45%`` (of the teacher's), ``macs=2.8T``, ``latency=40ms``.

A bare number is a parameter count, because that is how published students are named (SSD-1B, Vega's 0.74B).
Any other cost is spelled ``kind=value``. A percentage is relative to the teacher and is resolved by
``Budget.limit`` once the teacher's total is known; an absolute budget above the teacher's total is the
caller's to reject, since only it knows the teacher.

Each kind of budget is one :class:`BudgetKind` in :data:`KINDS`: its unit and suffixes (the parser),
how a plan's cost in it is computed (the search, its repair and its seeds), how a value is shown (the
search's messages, the front's table and plot). A new kind of budget is one entry there plus its cost
function; nothing else names the kinds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pruner.errors import PrunerError

if TYPE_CHECKING:
    from torch import nn

    from pruner.cost.model import CostModel
    from pruner.unet.plan import Plan

__all__ = [
    "KINDS",
    "Budget",
    "BudgetKind",
    "PlanCost",
    "budget_kind",
    "count_scale",
    "format_count",
    "kind_of_attr",
    "parse_budget",
]

PlanCost = Callable[["Plan"], float]
"""A plan's cost in one budget kind's unit (what the search's repair, seeds and budget check compare)."""
CostFunction = Callable[["CostModel", "nn.Module"], PlanCost]
"""Builds a kind's ``PlanCost`` from the search's cost model and its teacher (once per search)."""

_COUNT_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_TIME_SUFFIXES = {"ms": 1.0, "s": 1e3}  # to milliseconds
_NUMBER = re.compile(r"^(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<suffix>[a-z%]*)$", re.IGNORECASE)
# Display units of counts: the largest whose value is at least half a unit.
_DISPLAY_UNITS: dict[str, tuple[tuple[str, float], ...]] = {
    "params": (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)),
    "macs": (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)),
}


def count_scale(value: float, metric: str) -> tuple[float, str]:
    """(divisor, suffix) that shows ``value`` readably: params in K/M/B/T, MACs (and other counts) in K/M/G/T."""
    for suffix, scale in _DISPLAY_UNITS.get(metric, _DISPLAY_UNITS["macs"]):
        if abs(value) >= 0.5 * scale:
            return scale, suffix
    return 1.0, ""


def format_count(value: float, metric: str) -> str:
    """A parameter or MAC count with three significant digits and its suffix: ``0.745B``, ``2.8T``."""
    scale, suffix = count_scale(value, metric)
    return f"{value / scale:.3g}{suffix}"


def _ms(value: float) -> str:
    """Milliseconds to a tenth, without a trailing ``.0``: ``40 ms``, ``62.8 ms``."""
    return f"{value:.1f}".removesuffix(".0") + " ms"


@dataclass(frozen=True)
class BudgetKind:
    """One kind of budget: its unit, how it is parsed, how a plan's cost in it is computed and shown."""

    name: str  # what a budget names it by: ``name=value``
    noun: str  # how text names the quantity: "params", "MACs", "latency"
    axis_label: str  # how a plot's axis names it: "parameters", "MACs per UNet call"
    suffixes: Mapping[str, float]  # value suffixes (lower case) and what each multiplies by, to the unit
    units: str  # the suffixes in words, for errors: "K, M, B, G or T"
    cost: CostFunction
    format: Callable[[float], str]  # a value in the unit as shown: "0.745B", "2.8T", "40 ms"
    attr: str  # the trial user attribute the front reads this cost from
    recorded_as: str  # the trial user attribute the search records a plan's budget cost in
    smallest: str | None = None  # a count's unit in words ("parameter"): less than one is an error
    aliases: tuple[str, ...] = ()  # other names a budget may use
    timed: bool = False  # the cost is timed on the device: the search measures each plan's latency too

    def describe(self, value: float) -> str:
        """An absolute budget in words: a count with what it counts (``0.74B params``, ``2.8T MACs``), any
        other quantity with its unit (``40 ms``)."""
        return f"{self.format(value)} {self.noun}" if self.smallest is not None else self.format(value)

    def axis(self, largest: float) -> tuple[float, str]:
        """(divisor, label with unit) of a plot axis whose values reach ``largest``: counts scaled to K/M/G/T,
        other quantities in their unit (the suffix worth 1)."""
        if self.smallest is None:
            unit = next(s for s, m in self.suffixes.items() if m == 1.0)
            return 1.0, f"{self.axis_label} ({unit})"
        scale, suffix = count_scale(largest, self.name)
        return scale, f"{self.axis_label} ({suffix})" if suffix else self.axis_label


def _params_cost(cost: CostModel, _teacher: nn.Module) -> PlanCost:
    return lambda plan: float(cost.params(plan))


def _macs_cost(cost: CostModel, _teacher: nn.Module) -> PlanCost:
    return lambda plan: float(cost.macs(plan))


def _latency_cost(cost: CostModel, teacher: nn.Module) -> PlanCost:
    """The composed estimate of the plan's latency from the teacher's modules, timed once on its device."""
    from pruner.cost.latency_model import LatencyModel

    return LatencyModel(cost, teacher).ms


KINDS: dict[str, BudgetKind] = {
    kind.name: kind
    for kind in (
        BudgetKind("params", "params", "parameters", _COUNT_SUFFIXES, "K, M, B, G or T", _params_cost,
                   lambda v: format_count(v, "params"), "params", "params", smallest="parameter"),
        # fvcore counts one multiply-add as one flop, so "flops=" and "macs=" name the same count
        BudgetKind("macs", "MACs", "MACs per UNet call", _COUNT_SUFFIXES, "K, M, B, G or T", _macs_cost,
                   lambda v: format_count(v, "macs"), "macs", "macs", smallest="MAC", aliases=("flops",)),
        BudgetKind("latency", "latency", "latency per UNet call", _TIME_SUFFIXES, "ms or s", _latency_cost, _ms,
                   "latency_ms", "latency_estimate_ms", timed=True),
    )
}  # fmt: skip
"""Every kind of budget by name (``params`` is what a bare number means)."""

DEFAULT_KIND = "params"
EXAMPLES = "0.74B, 740M, 45%, params=45%, macs=2.8T, macs=60%, latency=40ms, latency=0.04s"


def budget_kind(name: str) -> BudgetKind | None:
    """The kind a budget names (by name or alias, any case), or None."""
    name = name.lower()
    return KINDS.get(name) or next((k for k in KINDS.values() if name in k.aliases), None)


def kind_of_attr(attr: str) -> BudgetKind | None:
    """The kind whose cost the front reads from trial attribute ``attr``, or None."""
    return next((k for k in KINDS.values() if k.attr == attr), None)


@dataclass(frozen=True)
class Budget:
    """A cost limit on the student: ``value`` is in the kind's unit, or a fraction of the teacher's when relative.

    Units: a parameter count, MACs per UNet call, milliseconds per call. ``relative`` budgets hold the fraction
    (0.45 for ``45%``), so the same budget applies to any teacher. ``metric`` names the kind (``KINDS``).
    """

    metric: str
    value: float
    relative: bool

    def __post_init__(self) -> None:
        if self.metric not in KINDS:
            raise ValueError(f"metric {self.metric!r} is not one of {', '.join(KINDS)}")
        if not self.value > 0 or (self.relative and self.value > 1):
            raise ValueError(f"budget value {self.value!r} must be positive (and at most 1 when relative)")

    @property
    def kind(self) -> BudgetKind:
        return KINDS[self.metric]

    def limit(self, teacher_total: float) -> float:
        """The absolute limit in the kind's unit, given the teacher's total in that unit."""
        if not self.relative:
            return float(self.value)
        if not teacher_total > 0:
            raise ValueError(f"the teacher's {self.metric} total must be positive, got {teacher_total!r}")
        return self.value * teacher_total

    def describe(self) -> str:
        """The budget in words, e.g. ``0.74B params``, ``45% of the teacher's MACs``, ``40 ms``."""
        if self.relative:
            return f"{self.value * 100:g}% of the teacher's {self.kind.noun}"
        return self.kind.describe(self.value)


def _error(text: str, why: str) -> PrunerError:
    return PrunerError(f"budget {text!r}: {why}; write one like {EXAMPLES}")


def _split_kind(text: str) -> tuple[BudgetKind, str]:
    """The kind named before ``=`` (parameters when none is) and the value text after it."""
    if "=" not in text:
        return KINDS[DEFAULT_KIND], text.strip()
    name, value = (part.strip() for part in text.split("=", 1))
    kind = budget_kind(name)
    if kind is None:
        known = ", ".join(n for k in KINDS.values() for n in (k.name, *k.aliases))
        raise _error(text, f"unknown metric {name!r} (known: {known})")
    return kind, value


def _parse_relative(text: str, kind: BudgetKind, number: float) -> Budget:
    if not 0 < number <= 100:
        raise _error(text, f"a percentage of the teacher must be in (0, 100], got {number:g}%")
    return Budget(kind.name, number / 100, relative=True)


def _parse_absolute(text: str, kind: BudgetKind, number: float, suffix: str) -> Budget:
    if suffix.lower() not in kind.suffixes:
        if not suffix:
            raise _error(text, f"{kind.name} needs a unit: {kind.units}")
        unit = "suffix" if kind.smallest is not None else f"{kind.name} unit"
        raise _error(text, f"unknown {unit} {suffix!r} (use {kind.units})")
    value = number * kind.suffixes[suffix.lower()]
    if not 0 < value < math.inf:
        raise _error(text, "a budget must be positive and finite")
    if kind.smallest is not None and value < 1:
        raise _error(text, f"{value:g} is less than one {kind.smallest}")
    return Budget(kind.name, value, relative=False)


def parse_budget(text: str) -> Budget:
    """Parse a budget as the user writes it; raise ``PrunerError`` naming the text and valid forms otherwise."""
    if not text or not text.strip():
        raise _error(text, "empty budget")
    kind, value_text = _split_kind(text)
    if not value_text:
        raise _error(text, "no value after the metric")
    match = _NUMBER.match(value_text)
    if match is None:
        raise _error(text, f"{value_text!r} is not a number with an optional unit")
    number, suffix = float(match["num"]), match["suffix"]
    if suffix == "%":
        return _parse_relative(text, kind, number)
    return _parse_absolute(text, kind, number, suffix)
