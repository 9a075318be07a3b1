"""Which one-shot plan should ``found.yaml`` fall back to: the sensitivity seed, or a variant of it?

The fallback is what ``found.yaml`` names whenever no sampled plan clearly beats it, so its own quality bounds
the default search's regret from above: at 50% the sensitivity seed is 1.42x of the oracle's best plan on the
means of three distillation seeds. The plans that distil best at 30% and 50% (``search_oracle.py``) empty fewer
attention modules than it does (all of its zero-shot-cheapest layers are in three modules it empties), and none
of the oracle's eight best at 50% empties one. Two variants (``pruner.study.heuristics``): ``unemptied_plan``
follows the same one-shot order but never empties a module while another unit is left; ``refilled_plan`` returns one
layer to the dearest module the seed empties (the anchor of ``pruner search --anchor sensitivity-refilled``).

This builds the search's context at ``--seed`` (its calibration rows and unit sensitivities, as `pruner search
--seed S` measures them), takes at each budget the sensitivity seed and both variants, writes their recipes
under ``--out/plans`` and a ``summary-BUDGET.json`` per budget that ``final_noise.py`` distils at several
seeds. The sensitivity seed's finals already kept by other benchmarks (``benchmarks/results/*/finals``) are
copied beside, so only the new plans are distilled:

    python benchmarks/seed_variants.py --budgets 20%,30%,40%,50%,macs=50%
    cd benchmarks; nice python final_noise.py results/seed_variants/summary-{20,30,40,50}%.json \
        results/seed_variants/summary-macs-50%.json --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from pruner import defaults
from pruner.budget import parse_budget
from pruner.recipe import Provenance, save_recipe
from pruner.runtime import default_threads
from pruner.study.context import SearchContext, build_context
from pruner.study.export import recipe_for_plan, slug
from pruner.study.heuristics import REFILLED, SENSITIVITY, seed_plans, unemptied_plan
from pruner.study.study import SearchConfig
from pruner.study.workers import plan_key
from pruner.teacher import Teacher
from pruner.unet import Plan, compress_names

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_oracle import SEED_ROLE

RESULTS = Path(__file__).resolve().parent / "results"
UNEMPTIED = "unemptied seed"  # a role: the sensitivity order, no attention module emptied
REFILLED_ROLE = "refilled seed"  # a role: the sensitivity seed with a layer returned to its dearest emptied module


def variants(ctx: SearchContext, budget: str) -> dict[str, Plan]:
    """The sensitivity seed, the unemptied plan and the refilled seed (``--anchor sensitivity-refilled``) at
    ``budget``, on ``ctx``'s unit sensitivities, as a search builds them."""
    parsed = parse_budget(budget)
    cost = parsed.kind.cost(ctx.cost_model, ctx.teacher)
    limit = parsed.limit(cost(Plan()))
    seeds = seed_plans(ctx.topo, cost, limit, ctx.sens, ctx.allow, refilled=True)
    plans = {SEED_ROLE: seeds.get(SENSITIVITY), UNEMPTIED: unemptied_plan(ctx.topo, cost, limit, ctx.sens, ctx.allow),
             REFILLED_ROLE: seeds.get(REFILLED)}  # fmt: skip
    return {role: plan for role, plan in plans.items() if plan is not None}


def write_plan(plan: Plan, role: str, budget: str, args: argparse.Namespace, teacher: Teacher,
               ctx: SearchContext) -> str:  # fmt: skip
    """The plan's recipe under ``--out/plans`` (one another role or budget wrote is kept: a plan's recipe is the
    same at every budget it meets, but for its name); its key."""
    key = plan_key(plan)
    if (args.out / "plans" / f"{key}.yaml").is_file():
        return key
    recipe = recipe_for_plan(
        plan, teacher, ctx.topo, name=f"{slug(teacher.reference)}-{slug(role)}-{slug(budget)}",
        description=f"The {role} at a {budget} budget: a one-shot plan from the unit sensitivities "
        f"`pruner search --seed {args.seed}` measures (benchmarks/seed_variants.py).",
        provenance=Provenance(source="search", study=f"seed-variants-seed{args.seed}"), data=ctx.data_path,
    )  # fmt: skip
    save_recipe(recipe, args.out / "plans" / f"{key}.yaml")
    return key


def copy_known_finals(key: str, out: Path) -> list[str]:
    """Finals of ``key`` other benchmarks kept (any steps, any distillation seed), copied into ``out/finals``."""
    copied = []
    for found in sorted(RESULTS.glob(f"*/finals/{key}-*.json")):
        if found.parent == out / "finals":
            continue
        (out / "finals").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, out / "finals" / found.name)
        copied.append(found.name)
    return copied


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="20%,30%,40%,50%,macs=50%", help="comma-separated budgets")
    p.add_argument("--seed", type=int, default=0, help="the search seed whose calibration rows rank the units")
    p.add_argument("--out", type=Path, default=RESULTS / "seed_variants")
    p.add_argument("--calibration", type=int, default=defaults.CALIBRATION, help="rows the sensitivities are read on")
    p.add_argument("--held-out", type=int, default=defaults.HELD_OUT)
    args = p.parse_args()
    torch.set_num_threads(default_threads())
    teacher = Teacher.resolve("tiny-sdxl")
    cfg = SearchConfig(teacher="tiny-sdxl", budget=args.budgets.split(",")[0], seed=args.seed, out=None,
                       calibration=args.calibration, held_out=args.held_out, progress=False)  # fmt: skip
    ctx = build_context(cfg, teacher, parse_budget(cfg.budget))  # the sensitivities do not depend on the budget
    for budget in args.budgets.split(","):
        plans: list[dict[str, Any]] = []
        for role, plan in variants(ctx, budget).items():
            key = write_plan(plan, role, budget, args, teacher, ctx)
            copied = copy_known_finals(key, args.out)
            print(f"{budget:>5} {role:<17} {key[:8]}  {ctx.cost_model.params(plan) / 1e6:.3f}M params; removes "
                  f"{', '.join(compress_names(plan.removed))}; finals kept: {', '.join(copied) or 'none'}")  # fmt: skip
            plans.append({"role": role, "key": key, "steps": 1000})
        summary = {"budget": budget, "search_seed": args.seed, "plans": plans}
        (args.out / f"summary-{budget.replace('=', '-')}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
