"""A new kind of budget is one table entry plus its cost function: a dummy kind (attention layers kept)
registered in ``pruner.budget.KINDS`` is parsed, checked, repaired to, seeded for and shown in the front
with no other change to the search, its repair, its seeds or the front."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import TINY_SDXL
from optuna.trial import create_trial
from rich.console import Console
from torch import nn

from pruner.budget import KINDS, BudgetKind, PlanCost, parse_budget
from pruner.cost.model import CostModel
from pruner.errors import PrunerError
from pruner.study.context import check_budget
from pruner.study.front import front_rows, front_table, plot_front
from pruner.study.heuristics import seed_plans
from pruner.study.repair import repair_to_budget
from pruner.unet.plan import Plan, implied_by, unit_kinds

optuna.logging.set_verbosity(optuna.logging.WARNING)


def attention_layers(cost: CostModel, _teacher: nn.Module) -> PlanCost:
    """The dummy kind's cost function: how many transformer layers a plan's student keeps."""
    topo = cost.topology
    layers = [n for n, k in unit_kinds(topo).items() if k == "transformer_layer"]
    return lambda plan: float(sum(n not in plan.removed and not implied_by(n, plan.removed, topo) for n in layers))


ATTENTION = BudgetKind(
    name="attention", noun="attention layers", axis_label="transformer layers kept", suffixes={"": 1.0},
    units="none (a count)", cost=attention_layers, format=lambda v: f"{v:g}", attr="attention_layers",
    recorded_as="attention_layers", smallest="attention layer",
)  # fmt: skip


@pytest.fixture
def attention_kind(monkeypatch: pytest.MonkeyPatch) -> BudgetKind:
    monkeypatch.setitem(KINDS, ATTENTION.name, ATTENTION)
    return ATTENTION


def test_the_new_kind_is_parsed_and_described(attention_kind: BudgetKind) -> None:
    assert parse_budget("attention=12").describe() == "12 attention layers"
    assert parse_budget("ATTENTION=50%").describe() == "50% of the teacher's attention layers"
    with pytest.raises(PrunerError, match="unknown suffix 'k'"):
        parse_budget("attention=3k")
    with pytest.raises(PrunerError, match="less than one attention layer"):
        parse_budget("attention=0.5")


def test_without_its_entry_the_kind_is_unknown() -> None:
    with pytest.raises(PrunerError, match="unknown metric 'attention'"):
        parse_budget("attention=12")


def test_the_search_checks_repairs_and_seeds_by_the_new_kind(attention_kind: BudgetKind) -> None:
    cost_model = CostModel(TINY_SDXL)
    topo = cost_model.topology
    budget = parse_budget("attention=50%")
    cost = budget.kind.cost(cost_model, nn.Identity())
    total = cost(Plan())
    assert total == sum(k == "transformer_layer" for k in unit_kinds(topo).values()) > 2
    allow = lambda name: True  # noqa: E731
    limit = check_budget(cost, topo, budget, allow)
    assert limit == pytest.approx(total / 2)
    sens = {name: float(i) for i, name in enumerate(unit_kinds(topo))}
    repaired = repair_to_budget(Plan(), topo, cost, limit, sens, allow)
    assert repaired is not None and cost(repaired) <= limit < total
    seeds = seed_plans(topo, cost, limit, sens, allow)
    assert seeds and all(cost(plan) <= limit for plan in seeds.values())
    with pytest.raises(PrunerError, match=r"not below the teacher's \d+: nothing to remove"):
        check_budget(cost, topo, parse_budget("attention=100%"), allow)


def test_the_front_shows_and_plots_the_new_kind(attention_kind: BudgetKind, tmp_path: Path) -> None:
    study = optuna.create_study(directions=["minimize", "minimize"], study_name="kinds")
    for kd, kept in ((0.5, 3.0), (0.3, 5.0), (0.2, 8.0)):
        attrs = {"params": 1000, "macs": 10**9, "attention_layers": kept, "proxy_kd": kd, "removed": []}
        study.add_trial(create_trial(values=[kd, kept], user_attrs=attrs))
    assert [row["attention_layers"] for row in front_rows(study)] == [3.0, 5.0, 8.0]
    console = Console(width=200, record=True)
    console.print(front_table(study))
    text = console.export_text()
    assert "attention layers" in text and " 8 " in text
    assert plot_front(study, tmp_path / "front.png", x="attention_layers").stat().st_size > 0
