"""The plan sampler: children of the best scored plans, within budget, never a plan already scored."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from pruner.cost import CostModel
from pruner.study.heuristics import (
    REFILLED,
    SENSITIVITY,
    attention_modules,
    emptied_modules,
    refilled_plan,
    seed_plans,
    unemptied_plan,
)
from pruner.study.sampler import PlanSampler, PlanSpace, ranked_plans
from pruner.study.space import SearchSpace, genome_distributions, genome_of, suggest_genome
from pruner.study.workers import plan_key
from pruner.unet import (
    Plan,
    architecture_config,
    check_expressible,
    meta_unet,
    nearest_expressible,
    topology_of,
    unit_kinds,
)
from pruner.unet.plan import implied_by


@pytest.fixture(scope="module")
def plan_space() -> PlanSpace:
    config = architecture_config("tiny-sdxl")
    topo = topology_of(meta_unet(config))
    cost = CostModel(config)
    limit = 0.5 * cost.params(Plan())
    kinds = unit_kinds(topo)
    sens = {n: 10.0 ** -(k % 6) for k, n in enumerate(kinds)}  # spread over orders of magnitude, like real ones
    return PlanSpace(topo, SearchSpace(), lambda p: float(cost.params(p)), limit, sens, lambda _n: True)


def _scored(study: optuna.Study, plan: Plan, kd: float, steps: int, space: PlanSpace) -> None:
    """A finished trial that scored ``plan`` at ``steps`` KD steps, as the search records it."""
    state = optuna.trial.TrialState.COMPLETE if steps else optuna.trial.TrialState.PRUNED
    genome = genome_of(plan, space.space, space.topo)
    dists = genome_distributions(space.space, space.topo)
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            values=[kd, 1.0] if state == optuna.trial.TrialState.COMPLETE else None,
            params=genome,
            distributions=dists,
            user_attrs={
                "removed": sorted(plan.removed),
                "proxy_kd": kd,
                "rung_steps": steps,
                "plan_key": plan_key(plan),
            },
        )
    )


def _parents(space: PlanSpace, n: int) -> list[Plan]:
    """``n`` distinct within-budget plans: the repair of a few different starting removals."""
    units = space.units()
    plans: list[Plan] = []
    for k in range(len(units)):
        plan = space.repair(Plan(frozenset(units[k : k + 3])))
        if plan is not None and plan not in plans:
            plans.append(plan)
        if len(plans) == n:
            break
    return plans


def test_children_are_repaired_plans_near_a_good_parent_and_never_rescored(plan_space: PlanSpace) -> None:
    sampler = PlanSampler(plan_space, seed=0, parents=2, crossover=0.25)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    parents = _parents(plan_space, 6)
    for k, plan in enumerate(parents):  # the first two are the best (deepest rung, lowest KD)
        _scored(study, plan, kd=0.01 * (k + 1), steps=100 if k < 2 else 30, space=plan_space)
    scored = {plan_key(p) for p in parents}
    for _ in range(12):
        trial = study.ask()
        genome = suggest_genome(trial, plan_space.space, plan_space.topo)
        proposal = sampler.plan_for(trial.number)
        assert proposal is not None
        child, origin = proposal
        check_expressible(child, plan_space.topo)
        assert plan_space.cost(child) <= plan_space.limit
        assert nearest_expressible(child, plan_space.topo) == child  # the objective scores exactly this plan
        assert genome == genome_of(child, plan_space.space, plan_space.topo)  # the recorded parameters describe it
        assert plan_key(child) not in scored
        assert "trial 0" in origin or "trial 1" in origin or "trials 0 and 1" in origin  # a child of the two best
        near = min(len(child.removed ^ parents[i].removed) for i in (0, 1))
        assert near <= 12, f"{origin}: {near} units from its parents"
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def test_without_a_scored_plan_the_sampler_falls_back_to_random(plan_space: PlanSpace) -> None:
    sampler = PlanSampler(plan_space, seed=1)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    trial = study.ask()
    suggest_genome(trial, plan_space.space, plan_space.topo)
    assert sampler.plan_for(trial.number) is None


def test_plans_rank_by_fidelity_then_loss(plan_space: PlanSpace) -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    a, b, c = _parents(plan_space, 3)
    _scored(study, a, kd=0.001, steps=0, space=plan_space)  # zero-shot only: lowest number, shallowest rung
    _scored(study, b, kd=0.05, steps=100, space=plan_space)
    _scored(study, c, kd=0.02, steps=100, space=plan_space)
    assert [p for p, _ in ranked_plans(study.get_trials())] == [c, b, a]


def test_in_a_width_space_children_also_narrow_or_widen_levels(plan_space: PlanSpace) -> None:
    from dataclasses import replace

    widths = replace(plan_space, space=SearchSpace(width=True))
    sampler = PlanSampler(widths, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for k, plan in enumerate(_parents(widths, 3)):
        _scored(study, plan, kd=0.01 * (k + 1), steps=100, space=widths)
    children = []
    for _ in range(12):
        trial = study.ask()
        genome = suggest_genome(trial, widths.space, widths.topo)
        proposal = sampler.plan_for(trial.number)
        assert proposal is not None
        children.append(proposal[0])
        assert {k: v for k, v in genome.items() if k.startswith("width:")} == {
            f"width:{level}": proposal[0].ff_ratios.get(level, 1.0) for level in (1, 2)
        }
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert any(child.ff_keep for child in children)
    assert all(widths.cost(child) <= widths.limit for child in children)


MODULE = "up_blocks.0.attentions.1"  # six layers on tiny-sdxl, coupled to no other module


def test_refill_returns_exactly_one_layer_to_an_emptied_module_and_the_repair_keeps_it(plan_space: PlanSpace) -> None:
    layers = attention_modules(plan_space.topo, plan_space.allow)[MODULE]
    emptied = Plan(frozenset(layers))
    space = dataclasses.replace(plan_space, limit=plan_space.cost(emptied), refill=True)  # the plan is at budget
    assert emptied_modules(emptied, space.topo, space.allow) == {MODULE: layers}
    for seed in range(5):
        child, move = PlanSampler(space, seed=seed).refill(emptied)
        back = emptied.removed - child.removed
        assert len(back) == 1 and back <= set(layers) and child.removed <= emptied.removed
        assert MODULE in move and not emptied_modules(child, space.topo, space.allow)
        assert space.cost(child) > space.limit  # one layer more than the budget allows: the repair's to fix
        repaired = space.repair(child, emptied)
        assert repaired is not None and space.cost(repaired) <= space.limit
        check_expressible(repaired, space.topo)
        assert back.isdisjoint(repaired.removed)  # the repair kept the returned layer (it may return more)


def test_refill_is_a_move_only_when_asked_and_only_where_a_module_is_empty(plan_space: PlanSpace) -> None:
    layers = attention_modules(plan_space.topo, plan_space.allow)[MODULE]
    emptied = Plan(frozenset(layers))
    moves = lambda space: {PlanSampler(space, seed=s)._mutate(emptied)[1] for s in range(40)}  # noqa: E731
    assert any("refills" in m for m in moves(dataclasses.replace(plan_space, refill=True)))
    assert not any("refills" in m for m in moves(plan_space))
    assert PlanSampler(dataclasses.replace(plan_space, refill=True)).refill(Plan()) == (Plan(), "")


def test_the_module_sensitivity_seed_does_not_empty_a_module_that_costs_much_together(plan_space: PlanSpace) -> None:
    kinds = unit_kinds(plan_space.topo)  # transformer layers cheapest one by one: the per-unit seed empties modules
    sens = {n: 1e-6 * k if kinds[n] == "transformer_layer" else 1.0 for k, n in enumerate(kinds)}
    space = dataclasses.replace(plan_space, sens=sens)
    plain = seed_plans(space.topo, space.cost, space.limit, space.sens, space.allow)["sensitivity"]
    costly = sorted(emptied_modules(plain, space.topo, space.allow))
    assert costly, "the per-unit seed empties some module at half the parameters"
    modules = attention_modules(space.topo, space.allow)
    module_sens = {m: sum(space.sens[n] for n in layers) for m, layers in modules.items()}
    module_sens |= {m: 1e3 for m in costly}  # emptying these costs far more than their layers alone
    seeds = seed_plans(space.topo, space.cost, space.limit, space.sens, space.allow, module_sens)
    aware = seeds["sensitivity-modules"]
    assert list(seeds)[:2] == ["sensitivity", "sensitivity-modules"]  # the anchor first
    assert space.cost(aware) <= space.limit
    check_expressible(aware, space.topo)
    assert not set(costly) & set(emptied_modules(aware, space.topo, space.allow))


def test_the_refilled_seed_returns_the_dearest_layer_of_the_dearest_emptied_module_and_empties_no_other(
    plan_space: PlanSpace,
) -> None:
    kinds = unit_kinds(plan_space.topo)  # transformer layers cheapest one by one: the per-unit seed empties modules
    sens = {n: 1e-6 * k if kinds[n] == "transformer_layer" else 1.0 for k, n in enumerate(kinds)}
    space = dataclasses.replace(plan_space, sens=sens)
    assert REFILLED not in seed_plans(space.topo, space.cost, space.limit, space.sens, space.allow)  # an option
    seeds = seed_plans(space.topo, space.cost, space.limit, space.sens, space.allow, refilled=True)
    plain, refilled = seeds[SENSITIVITY], seeds[REFILLED]
    assert list(seeds)[:2] == [REFILLED, SENSITIVITY]  # the anchor first, the one-shot seed beside it
    emptied = emptied_modules(plain, space.topo, space.allow)
    assert len(emptied) >= 2, "the per-unit seed empties several modules at half the parameters"
    dearest = max(emptied, key=lambda m: sum(sens[n] for n in emptied[m]))  # no module sensitivities: their sums
    assert refilled == refilled_plan(plain, space.topo, space.cost, space.limit, sens, {}, space.allow)
    assert plain.removed - refilled.removed == {max(emptied[dearest], key=sens.__getitem__)}  # one layer back
    assert space.cost(refilled) <= space.limit
    check_expressible(refilled, space.topo)
    assert set(emptied_modules(refilled, space.topo, space.allow)) == set(emptied) - {dearest}  # none emptied anew
    # the return is paid for with attention layers only, however cheap a kept ResNet layer reads zero-shot
    resnets = [n for n in kinds if kinds[n] == "layer" and n not in plain.removed and not implied_by(n, plain.removed,
               space.topo)]  # fmt: skip
    resnet = min(resnets, key=lambda n: space.cost(plain.plus({n})))  # the dearest kept ResNet layer, made free
    tight = space.cost(plain)  # no slack under the budget: the returned layer must be paid for
    free = refilled_plan(plain, space.topo, space.cost, tight, {**sens, resnet: 0.0}, {}, space.allow)
    assert free is not None and space.cost(free) <= tight
    assert {kinds[n] for n in free.removed ^ plain.removed} == {"transformer_layer"}
    # measured module sensitivities choose the module: the cheapest one by its layers, made dear
    cheap = min(emptied, key=lambda m: sum(sens[n] for n in emptied[m]))
    by_module = refilled_plan(plain, space.topo, space.cost, space.limit, sens, {cheap: 1.0}, space.allow)
    assert by_module is not None and plain.removed - by_module.removed == {max(emptied[cheap], key=sens.__getitem__)}
    # a seed that empties no module has no refilled plan: the sensitivity seed is the anchor then
    kept = unemptied_plan(space.topo, space.cost, space.limit, space.sens, space.allow)
    assert kept is not None and refilled_plan(kept, space.topo, space.cost, space.limit, sens, {}, space.allow) is None


def test_the_unemptied_seed_keeps_a_layer_in_every_module_the_sensitivity_seed_empties(plan_space: PlanSpace) -> None:
    kinds = unit_kinds(plan_space.topo)  # transformer layers cheapest one by one: the per-unit seed empties modules
    sens = {n: 1e-6 * k if kinds[n] == "transformer_layer" else 1.0 for k, n in enumerate(kinds)}
    space = dataclasses.replace(plan_space, sens=sens)
    plain = seed_plans(space.topo, space.cost, space.limit, space.sens, space.allow)["sensitivity"]
    assert emptied_modules(plain, space.topo, space.allow), "the per-unit seed empties some module at half"
    kept = unemptied_plan(space.topo, space.cost, space.limit, space.sens, space.allow)
    assert kept is not None and space.cost(kept) <= space.limit
    check_expressible(kept, space.topo)
    assert not emptied_modules(kept, space.topo, space.allow)  # each keeps a layer, or goes whole with its block
    # the same one-shot order otherwise: the layers it removes that the per-unit seed keeps are few and cheap
    extra = kept.removed - plain.removed
    assert extra and max(sens[n] for n in extra) < 1.0  # transformer layers, not the ResNets the seed kept
