"""A sampler that proposes plans, not genomes: mutations and crossovers of the best plans scored so far.

NSGA-II and TPE see only the genome a trial sampled (layer counts per module, a mid-block choice), while
the plan actually scored is that genome decoded and then repaired to the budget, often far from it. This
sampler reads the *scored* plans back from the study (the ``removed`` and ``ff_keep`` user attributes of
every trial, at the highest multi-fidelity rung each reached), and proposes a child of the best of them:

- *remove* a kept unit, low-sensitivity units likelier;
- *return* a removed unit, high-sensitivity units likelier;
- *swap* which layers of one module are kept (return one, remove a sibling);
- *refill* an emptied attention module with one layer (``PlanSpace.refill``, off by default): the move the
  one-shot seed cannot make, since it scores each layer alone; modules of higher module sensitivity
  (``PlanSpace.module_sens``, their layers removed together) likelier;
- *widen or narrow* one level's feed-forwards by one ratio step (width spaces);
- *cross* two parents, unit by unit where they differ.

The child is repaired to the budget before it is proposed, so the plan a trial scores is the plan the
sampler proposed (the objective reads it with :meth:`PlanSampler.plan_for`), and a child whose canonical
plan was already scored is drawn again. The genome recorded as the trial's parameters is the child's
(``genome_of``), so the dashboard's parameter plots stay meaningful. Until the study holds a scored plan,
trials are sampled at random.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from pruner.budget import PlanCost
from pruner.study.heuristics import emptied_modules, module_weight
from pruner.study.repair import repair_to_budget
from pruner.study.space import SearchSpace, genome_distributions, genome_of, width_levels
from pruner.unet.plan import Plan, implied_by, nearest_expressible, unit_kinds
from pruner.unet.topology import Topology

__all__ = ["PlanSampler", "PlanSpace", "ranked_plans", "scored_plan"]

MAX_DRAWS = 32  # children drawn before accepting one already scored (a nearly exhausted neighbourhood)


@dataclass(frozen=True)
class PlanSpace:
    """What a child plan must satisfy: the teacher's topology, the search space, the budget and the unit
    sensitivities that bias the moves and drive the repair; ``refill`` adds the move that returns a layer to
    an emptied attention module, ``module_sens`` (attention module -> sensitivity) weights which one."""

    topo: Topology
    space: SearchSpace
    cost: PlanCost
    limit: float
    sens: dict[str, float]
    allow: Callable[[str], bool]
    refill: bool = False
    module_sens: dict[str, float] = field(default_factory=dict)

    def units(self) -> list[str]:
        """Units a plan may remove (stages excluded: whole-stage removal is a search space of its own)."""
        return [n for n, k in unit_kinds(self.topo).items() if k != "stage" and self.allow(n)]

    def repair(self, plan: Plan, parent: Plan | None = None) -> Plan | None:
        """``plan`` at or just under the budget; against a ``parent``, the repair keeps what the moves
        returned and leaves out what they removed (a greedy repair would otherwise undo them, and every
        child would fall back to the sensitivity order's plan)."""
        keep = parent.removed - plan.removed if parent is not None else frozenset()
        stay = plan.removed - parent.removed if parent is not None else frozenset()
        return repair_to_budget(plan, self.topo, self.cost, self.limit, self.sens, self.allow, keep, stay)


def scored_plan(trial: FrozenTrial) -> Plan | None:
    """The plan a finished trial scored (its repaired plan), or None when it scored none."""
    removed = trial.user_attrs.get("removed")
    if removed is None:
        return None
    ff_keep = {int(k): float(v) for k, v in (trial.user_attrs.get("ff_keep") or {}).items()}
    return Plan.removing(removed, ff_keep)


def ranked_plans(trials: Sequence[FrozenTrial]) -> list[tuple[Plan, FrozenTrial]]:
    """Scored plans, best first: deeper multi-fidelity rung first, then lower held-out KD at that rung."""
    scored = []
    for t in trials:
        plan, kd = scored_plan(t), t.user_attrs.get("proxy_kd")
        if plan is None or kd is None or t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        if not math.isfinite(kd) or t.user_attrs.get("skipped"):
            continue
        scored.append((-int(t.user_attrs.get("rung_steps", 0)), float(kd), t.number, plan, t))
    return [(plan, t) for *_, plan, t in sorted(scored, key=lambda s: s[:3])]


def _rank_weights(names: list[str], key: Callable[[str], float]) -> np.ndarray:
    """Weights 1/(1 + rank) along ``key`` ascending: sensitivities span orders of magnitude, ranks do not."""
    order = sorted(range(len(names)), key=lambda i: key(names[i]))
    w = np.empty(len(names))
    for rank, i in enumerate(order):
        w[i] = 1.0 / (1.0 + rank)
    return w / w.sum()


class PlanSampler(optuna.samplers.BaseSampler):
    """Mutations and crossovers of the best scored plans (see the module docstring).

    ``parents``: how many of the best plans are eligible as parents (at least 2); ``crossover``: the share
    of children made by crossing two parents rather than mutating one."""

    def __init__(self, plans: PlanSpace, seed: int | None = None, parents: int = 4, crossover: float = 0.25) -> None:
        self.plans = plans
        self.parents = max(2, parents)
        self.crossover = crossover
        self._rng = np.random.default_rng(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._proposed: dict[int, tuple[Plan, str]] = {}
        self._units = plans.units()
        self._kinds = unit_kinds(plans.topo)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return genome_distributions(self.plans.space, self.plans.topo)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        trials = study.get_trials(deepcopy=False)
        ranked = ranked_plans(trials)
        if not ranked:
            return {}
        seen = {plan_key for t in trials if (plan_key := t.user_attrs.get("plan_key"))}
        child, origin = self._child(ranked, seen)
        if child is None:
            return {}
        self._proposed[trial.number] = (child, origin)
        genome = genome_of(child, self.plans.space, self.plans.topo)
        return {k: v for k, v in genome.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def plan_for(self, number: int) -> tuple[Plan, str] | None:
        """The plan proposed for trial ``number`` and how it was made, or None (sampled at random)."""
        return self._proposed.pop(number, None)

    def _child(self, ranked: list[tuple[Plan, FrozenTrial]], seen: set[str]) -> tuple[Plan | None, str]:
        from pruner.study.workers import plan_key

        pool = ranked[: min(len(ranked), max(self.parents, math.ceil(len(ranked) / 4)))]
        fallback: tuple[Plan | None, str] = (None, "")
        for _ in range(MAX_DRAWS):
            child, origin = self._propose(pool)
            if child is None:
                continue
            if plan_key(child) not in seen:
                return child, origin
            fallback = fallback if fallback[0] is not None else (child, origin)
        return fallback

    def _tournament(self, pool: list[tuple[Plan, FrozenTrial]]) -> tuple[Plan, FrozenTrial]:
        a, b = self._rng.integers(len(pool), size=2)
        return pool[min(a, b)]  # the pool is sorted best first

    def _propose(self, pool: list[tuple[Plan, FrozenTrial]]) -> tuple[Plan | None, str]:
        first, t1 = self._tournament(pool)
        if len(pool) > 1 and self._rng.random() < self.crossover:
            second, t2 = self._tournament(pool)
            if t2.number != t1.number:
                child = self._cross(first, second)
                return self.plans.repair(child), f"crossover of trials {t1.number} and {t2.number}"
        moves = []
        plan = first
        for _ in range(1 + int(self._rng.integers(2))):
            plan, move = self._mutate(plan)
            moves.append(move)
        if self.plans.space.width and self._rng.random() < 0.5:  # widths are a dimension of their own
            plan, move = self._width(plan)
            moves.append(move)
        return self.plans.repair(plan, first), f"mutation of trial {t1.number}: {'; '.join(m for m in moves if m)}"

    def _cross(self, a: Plan, b: Plan) -> Plan:
        differ = sorted(a.removed ^ b.removed)
        removed = set(a.removed & b.removed)
        removed |= {n for n in differ if self._rng.random() < 0.5}
        widths = dict(a.ff_keep)
        for level, ratio in b.ff_keep:
            if self._rng.random() < 0.5:
                widths[level] = ratio
        return nearest_expressible(Plan(frozenset(removed), tuple(sorted(widths.items()))), self.plans.topo)

    def _mutate(self, plan: Plan) -> tuple[Plan, str]:
        moves = ["remove", "return", "swap", *(["refill"] if self.plans.refill else [])]
        move = moves[int(self._rng.integers(len(moves)))]
        if move == "refill":
            child, made = self.refill(plan)
            if made:
                return child, made
            move = "return"  # no module is empty: return a unit instead
        sens = self.plans.sens
        removed = [n for n in self._units if n in plan.removed]
        kept = [n for n in self._units if n not in plan.removed and not implied_by(n, plan.removed, self.plans.topo)]
        if move == "remove" and kept:
            name = self._pick(kept, lambda n: sens.get(n, 0.0))
            return nearest_expressible(plan.plus({name}), self.plans.topo, prefer="remove"), f"-{name}"
        if move == "return" and removed:
            name = self._pick(removed, lambda n: -sens.get(n, 0.0))
            return nearest_expressible(plan.without([name]), self.plans.topo), f"+{name}"
        if move == "swap":
            return self._swap(plan, removed, kept)
        return plan, ""

    def _pick(self, names: list[str], key: Callable[[str], float]) -> str:
        return names[int(self._rng.choice(len(names), p=_rank_weights(names, key)))]

    def _swap(self, plan: Plan, removed: list[str], kept: list[str]) -> tuple[Plan, str]:
        """Return one removed unit and remove a kept sibling (a layer of the same attention module or block):
        which of a module's layers are kept, at the same count."""
        kinds = self._kinds
        module = lambda n: n.rsplit(".", 1)[0] if kinds[n] in ("transformer_layer", "layer") else n  # noqa: E731
        pairs = [(r, k) for r in removed for k in kept if module(r) == module(k)]
        if not pairs:
            return plan, ""
        back, out = pairs[int(self._rng.integers(len(pairs)))]
        return nearest_expressible(plan.without([back]).plus({out}), self.plans.topo), f"+{back} -{out}"

    def refill(self, plan: Plan) -> tuple[Plan, str]:
        """Return one layer (a more sensitive one likelier) to one attention module ``plan`` empties (a more
        sensitive module likelier: its ``module_sens``, else the sum of its layers'); the plan unchanged and
        no move when it empties none. The child may exceed the budget: ``_propose`` repairs it, keeping the
        returned layer."""
        emptied = emptied_modules(plan, self.plans.topo, self.plans.allow)
        if not emptied:
            return plan, ""
        sens, module_sens = self.plans.sens, self.plans.module_sens
        module = self._pick(sorted(emptied), lambda m: -module_weight(m, emptied[m], sens, module_sens))
        layer = self._pick(emptied[module], lambda n: -sens.get(n, 0.0))
        return nearest_expressible(plan.without([layer]), self.plans.topo), f"+{layer} (refills {module})"

    def _width(self, plan: Plan) -> tuple[Plan, str]:
        levels = width_levels(self.plans.topo)
        ratios = list(self.plans.space.width_ratios)  # descending
        level = levels[int(self._rng.integers(len(levels)))]
        now = plan.ff_ratios.get(level, 1.0)
        i = min(range(len(ratios)), key=lambda j: abs(ratios[j] - now))
        steps = [d for d in (-1, 1) if 0 <= i + d < len(ratios)]  # one ratio wider or narrower, inside the list
        if not steps:
            return plan, ""
        j = i + steps[int(self._rng.integers(len(steps)))]
        widths = {**plan.ff_ratios, level: ratios[j]}
        return plan.with_widths(widths), f"width {level}: {now:g} -> {ratios[j]:g}"
