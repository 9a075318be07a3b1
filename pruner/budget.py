"""Budgets that name their unit: ``0.74B``, ``740M``, ``45%`` (of the teacher's), ``macs=2.8T``, ``latency=40ms``.

A bare number is a parameter count, because that is how published students are named (SSD-1B, Vega's 0.74B).
Any other cost is spelled ``metric=value``. A percentage is relative to the teacher and is resolved by
``Budget.limit`` once the teacher's total is known; an absolute budget above the teacher's total is the
caller's to reject, since only it knows the teacher.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, get_args

from pruner.errors import PrunerError

__all__ = ["METRICS", "Budget", "Metric", "count_scale", "format_count", "parse_budget"]

Metric = Literal["params", "macs", "latency"]
METRICS: tuple[Metric, ...] = get_args(Metric)

EXAMPLES = "0.74B, 740M, 45%, params=45%, macs=2.8T, macs=60%, latency=40ms, latency=0.04s"
# fvcore counts one multiply-add as one flop, so "flops=" and "macs=" name the same count.
_METRIC_NAMES: dict[str, Metric] = {"params": "params", "macs": "macs", "flops": "macs", "latency": "latency"}
_COUNT_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_TIME_SUFFIXES = {"ms": 1.0, "s": 1e3}  # to milliseconds
_NUMBER = re.compile(r"^(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<suffix>[a-z%]*)$", re.IGNORECASE)
# Display units by metric: the largest whose value is at least half a unit.
_DISPLAY_UNITS: dict[str, tuple[tuple[str, float], ...]] = {
    "params": (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)),
    "macs": (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)),
}
_NOUN: dict[Metric, str] = {"params": "params", "macs": "MACs", "latency": "latency"}


@dataclass(frozen=True)
class Budget:
    """A cost limit on the student: ``value`` is in the metric's unit, or a fraction of the teacher's when relative.

    Units: a parameter count, MACs per UNet call, milliseconds per call. ``relative`` budgets hold the fraction
    (0.45 for ``45%``), so the same budget applies to any teacher.
    """

    metric: Metric
    value: float
    relative: bool

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if not self.value > 0 or (self.relative and self.value > 1):
            raise ValueError(f"budget value {self.value!r} must be positive (and at most 1 when relative)")

    def limit(self, teacher_total: float) -> float:
        """The absolute limit in the metric's unit, given the teacher's total in that unit."""
        if not self.relative:
            return float(self.value)
        if not teacher_total > 0:
            raise ValueError(f"the teacher's {self.metric} total must be positive, got {teacher_total!r}")
        return self.value * teacher_total

    def describe(self) -> str:
        """The budget in words, e.g. ``0.74B params``, ``45% of the teacher's MACs``, ``40 ms``."""
        if self.relative:
            return f"{self.value * 100:g}% of the teacher's {_NOUN[self.metric]}"
        if self.metric == "latency":
            return f"{self.value:g} ms"
        return f"{format_count(self.value, self.metric)} {_NOUN[self.metric]}"


def count_scale(value: float, metric: Literal["params", "macs"]) -> tuple[float, str]:
    """(divisor, suffix) that shows ``value`` readably: params in K/M/B/T, MACs in K/M/G/T."""
    for suffix, scale in _DISPLAY_UNITS[metric]:
        if abs(value) >= 0.5 * scale:
            return scale, suffix
    return 1.0, ""


def format_count(value: float, metric: Literal["params", "macs"]) -> str:
    """A parameter or MAC count with three significant digits and its suffix: ``0.745B``, ``2.8T``."""
    scale, suffix = count_scale(value, metric)
    return f"{value / scale:.3g}{suffix}"


def _error(text: str, why: str) -> PrunerError:
    return PrunerError(f"budget {text!r}: {why}; write one like {EXAMPLES}")


def _split_metric(text: str) -> tuple[Metric, str]:
    """The metric named before ``=`` (parameters when none is) and the value text after it."""
    if "=" not in text:
        return "params", text.strip()
    name, value = (part.strip() for part in text.split("=", 1))
    metric = _METRIC_NAMES.get(name.lower())
    if metric is None:
        raise _error(text, f"unknown metric {name!r} (known: params, macs, flops, latency)")
    return metric, value


def _parse_relative(text: str, metric: Metric, number: float) -> Budget:
    if not 0 < number <= 100:
        raise _error(text, f"a percentage of the teacher must be in (0, 100], got {number:g}%")
    return Budget(metric, number / 100, relative=True)


def _parse_absolute(text: str, metric: Metric, number: float, suffix: str) -> Budget:
    suffixes = _TIME_SUFFIXES if metric == "latency" else _COUNT_SUFFIXES
    if suffix.lower() not in suffixes:
        if metric != "latency":
            raise _error(text, f"unknown suffix {suffix!r} (use K, M, B, G or T)")
        why = f"unknown latency unit {suffix!r} (use ms or s)" if suffix else "latency needs a unit: ms or s"
        raise _error(text, why)
    value = number * suffixes[suffix.lower()]
    if not 0 < value < math.inf:
        raise _error(text, "a budget must be positive and finite")
    if metric != "latency" and value < 1:
        raise _error(text, f"{value:g} is less than one {'parameter' if metric == 'params' else 'MAC'}")
    return Budget(metric, value, relative=False)


def parse_budget(text: str) -> Budget:
    """Parse a budget as the user writes it; raise ``PrunerError`` naming the text and valid forms otherwise."""
    if not text or not text.strip():
        raise _error(text, "empty budget")
    metric, value_text = _split_metric(text)
    if not value_text:
        raise _error(text, "no value after the metric")
    match = _NUMBER.match(value_text)
    if match is None:
        raise _error(text, f"{value_text!r} is not a number with an optional unit")
    number, suffix = float(match["num"]), match["suffix"]
    if suffix == "%":
        return _parse_relative(text, metric, number)
    return _parse_absolute(text, metric, number, suffix)
