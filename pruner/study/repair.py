"""Repair a sampled plan into an expressible one at or just under the budget.

Over budget: remove more, one move at a time, choosing the move that costs the least sensitivity per unit
of cost saved (a move is one unit, with whatever the mid-depth coupling then takes along). Under budget:
add back the most sensitive removed units while the plan stays within budget. Sensitivities are each
unit's zero-shot KD loss when removed alone, so the repair follows the same signal the seeds use. The cost
is the budget kind's (``pruner.budget.KINDS``): the repair works in whatever unit the budget names.
"""

from __future__ import annotations

from collections.abc import Callable

from pruner.budget import PlanCost
from pruner.unet.plan import Plan, implied_by, nearest_expressible, unit_kinds
from pruner.unet.topology import Topology

__all__ = ["repair_to_budget"]


def _candidates(plan: Plan, topo: Topology, kinds: dict[str, str], allow: Callable[[str], bool]) -> list[str]:
    return [
        n for n in kinds
        if n not in plan.removed and kinds[n] != "stage" and allow(n) and not implied_by(n, plan.removed, topo)
    ]  # fmt: skip


def _best_removal(
    plan: Plan, topo: Topology, cost: PlanCost, sens: dict[str, float], allow: Callable[[str], bool]
) -> Plan | None:
    here = cost(plan)
    best, best_ratio = None, float("inf")
    for name in _candidates(plan, topo, unit_kinds(topo), allow):
        nxt = nearest_expressible(plan.plus({name}), topo, prefer="remove")
        saved = here - cost(nxt)
        if saved <= 0 or not nxt.removed > plan.removed:
            continue
        ratio = sum(max(sens.get(n, 0.0), 0.0) for n in sorted(nxt.removed - plan.removed)) / saved  # one order
        if ratio < best_ratio:
            best, best_ratio = nxt, ratio
    return best


def _add_back(
    plan: Plan, topo: Topology, cost: PlanCost, limit: float, sens: dict[str, float], stay_removed: frozenset[str]
) -> Plan:
    for name in sorted(plan.removed, key=lambda n: (-sens.get(n, 0.0), n)):  # ties by name, not by set order
        if name not in plan.removed or name in stay_removed:
            continue
        nxt = nearest_expressible(plan.without([name]), topo)
        if nxt.removed < plan.removed and cost(nxt) <= limit:
            plan = nxt
    return plan


def repair_to_budget(
    plan: Plan,
    topo: Topology,
    cost: PlanCost,
    limit: float,
    sens: dict[str, float],
    allow: Callable[[str], bool] = lambda _n: True,
    keep: frozenset[str] = frozenset(),
    stay_removed: frozenset[str] = frozenset(),
) -> Plan | None:
    """An expressible plan with ``cost <= limit`` near ``plan`` removing only units ``allow`` admits, or None
    when no such removal reaches the limit. ``keep``: units the repair must not remove and ``stay_removed``:
    units it must not add back (a sampler's move, which a greedy repair would otherwise undo)."""
    plan = nearest_expressible(plan, topo)
    while cost(plan) > limit:
        nxt = _best_removal(plan, topo, cost, sens, lambda n: allow(n) and n not in keep)
        if nxt is None:
            return None
        plan = nxt
    return _add_back(plan, topo, cost, limit, sens, stay_removed)
