"""Heuristic seed plans, scaled to the budget, so the searched front can be compared with them.

Each published recipe follows a removal order; taking that order until the budget is met gives its style
at any budget: BK-SDM drops the second layer of each block, then the mid block; KOALA drops a layer per
block, then the innermost transformer layers; SSD-1B drops the mid block's attention, then the innermost
stage's deepest layers; Segmind-Vega drops the mid block's attention, then transformer layers everywhere
from the last. ``sensitivity`` removes the least sensitive units first (LAPTOP-Diff's one-shot criterion).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pruner.budget import PlanCost
from pruner.study.repair import repair_to_budget
from pruner.unet.plan import MID_ATTN, Plan, nearest_expressible, unit_kinds
from pruner.unet.topology import Topology

__all__ = ["SEEDS", "seed_plans"]

SEEDS = ("sensitivity", "bk", "koala", "ssd", "vega")  # the one-shot criterion first: the bar to beat


def _depth_key(name: str) -> tuple[int, int]:
    """(stage depth from the outside, layer index) so the innermost, last layers sort first when reversed."""
    nums = [int(x) for x in re.findall(r"\d+", name)]
    stage = 99 if name.startswith("mid_block") else nums[0] if name.startswith("down") else 98 - nums[0]
    return stage, nums[-1]


def _layers(kinds: dict[str, str]) -> list[str]:
    return [n for n, k in kinds.items() if k == "layer"]


def _tlayers(kinds: dict[str, str]) -> list[str]:
    return sorted((n for n, k in kinds.items() if k == "transformer_layer"), key=_depth_key, reverse=True)


def _order(style: str, kinds: dict[str, str], sens: dict[str, float]) -> list[str]:
    mid = [m for m in (MID_ATTN, "mid_block") if m in kinds]
    second_layers = [n for n in _layers(kinds) if n.endswith(".resnets.1")]
    if style == "bk":
        return second_layers + mid[-1:] + _tlayers(kinds)
    if style == "koala":
        return second_layers + _tlayers(kinds) + mid[-1:]
    if style == "ssd":
        return mid[:1] + _tlayers(kinds) + second_layers
    if style == "vega":
        by_layer_index = sorted(_tlayers(kinds), key=lambda n: -int(n.rsplit(".", 1)[1]))
        return mid[:1] + by_layer_index + second_layers
    return sorted((n for n, k in kinds.items() if k != "stage"), key=lambda n: sens.get(n, 0.0))


def _follow(order: list[str], topo: Topology, cost: PlanCost, limit: float) -> Plan:
    plan = Plan()
    for name in order:
        if cost(plan) <= limit:
            break
        plan = nearest_expressible(plan.plus({name}), topo, prefer="remove")
    return plan


def seed_plans(
    topo: Topology, cost: PlanCost, limit: float, sens: dict[str, float], allow: Callable[[str], bool]
) -> dict[str, Plan]:
    """Each heuristic's plan at this budget (repaired to it); styles that cannot reach it are left out."""
    kinds = {n: k for n, k in unit_kinds(topo).items() if allow(n)}
    plans: dict[str, Plan] = {}
    for style in SEEDS:
        start = _follow(_order(style, kinds, sens), topo, cost, limit)
        plan = repair_to_budget(start, topo, cost, limit, sens, allow)
        if plan is not None and plan not in plans.values():
            plans[style] = plan
    return plans
