"""How well proxy variants rank plans, against the ranking after full distillation.

Reads a ``results-BUDGET.json`` that ``benchmarks/search_vs_heuristics.py`` wrote, or a ``summary-BUDGET.json``
of ``benchmarks/search_oracle.py`` (each distilled plan's KD loss after S steps; the plans themselves from the
``plans/`` recipes beside it) and re-scores every plan under
each proxy variant, all on the same rows in the same order (common random numbers, as the search scores):
zero-shot only, or N layer-level KD steps with a constant or cosine-decaying learning rate, scored on a
held-out set of 32 or 128 rows (fixed noise and timesteps), trained on 96 or more calibration rows.
Prints Kendall tau against the distilled ranking, each plan's score, and seconds a plan. No distillation
is repeated, so a variant costs one trial's time per plan.

``--orders K ...`` compares instead two ways to tell close plans apart at the search's top rung, each plan
trained as a trial is (``--schedule afresh``: each rung from the freshly built student in one cosine segment,
as the search trains; ``--schedule continued``, the default: each rung continues the one below with a warm
restart, as studies that recorded no schedule trained): (a) the top-rung score
averaged over K row orders (order k trains every plan on the same rows in the same order: common random
numbers), and (b) the plan trained on through a further rung to each of ``--top`` steps (what the search
would give its last few candidates). One run per plan and order reaches every ``--top`` in turn, so each
variant's score and CPU seconds come from the same runs. Kendall tau over all plans and over the best half
(by final KD, as ``search_vs_heuristics.py`` reports it) per variant, and seconds a plan.

    python benchmarks/proxy_fidelity.py /tmp/pruner-search-vs-heuristics/results-30%.json
    python benchmarks/proxy_fidelity.py RESULTS --held-out 128 --calibration 96 384 --variants 100:cosine
    python benchmarks/proxy_fidelity.py RESULTS --orders 1 2 3 --top 100 200 300
    python benchmarks/proxy_fidelity.py RESULTS --orders 1 2 3 --proxy-steps 100 --top 100   # one segment
    python benchmarks/proxy_fidelity.py RESULTS --orders 1 2 3 --top 100 --schedule afresh   # the search's rungs
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from search_vs_heuristics import kendall_tau

from pruner import defaults
from pruner.budget import parse_budget
from pruner.distillation.losses import LossWeights
from pruner.recipe import load_recipe
from pruner.runtime import default_threads
from pruner.study.context import AFRESH, CONTINUED, SearchContext
from pruner.study.proxy import PROXY_WEIGHTS, proxy_score
from pruner.study.study import SearchConfig, build_context
from pruner.teacher import Teacher
from pruner.unet import Plan

VARIANTS = [(0, "constant"), (30, "constant"), (30, "cosine"), (100, "cosine")]
SCHEDULES = {"afresh": AFRESH, "continued": CONTINUED}  # how the top-rung variants' rungs train
WEIGHTS = {  # the proxy fine-tune's loss: the search's, a recipe's distiller's, or output KD alone
    "proxy": PROXY_WEIGHTS,
    "distill": LossWeights(),
    "output": LossWeights(task=0.0, output_kd=1.0, feature_kd=0.0),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--held-out", type=int, nargs="+", help="held-out rows (32 128; --orders: the search's)")
    p.add_argument("--calibration", type=int, nargs="+", default=[96], help="training rows of the proxy")
    p.add_argument("--lr", type=float, nargs="+", default=[3e-4], help="the proxy fine-tune's peak learning rates")
    p.add_argument(
        "--weights",
        nargs="+",
        choices=list(WEIGHTS),
        default=["proxy"],
        help="the proxy fine-tune's loss weights: the search's, the distiller's defaults, output KD alone",
    )
    p.add_argument("--variants", nargs="+", default=[f"{n}:{s}" for n, s in VARIANTS], help="STEPS:SCHEDULE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--orders", type=int, nargs="+", default=[], help="top-rung variants: row orders averaged")
    p.add_argument("--top", type=int, nargs="+", default=[100], help="top-rung variants: steps in all (a rung more)")
    p.add_argument("--proxy-steps", type=int, default=30, help="top-rung variants: the first rung's steps")
    p.add_argument(
        "--schedule",
        choices=list(SCHEDULES),
        default="continued",
        help="top-rung variants: each rung from the fresh student, or continuing the one below",
    )
    args = p.parse_args()
    torch.set_num_threads(default_threads())  # one thread on a 2-core machine: two are far slower there
    budget, finals = distilled(json.loads(args.results.read_text()))
    plans: list[Plan] = [load_recipe(args.results.parent / "plans" / f"{k}.yaml").plan_obj() for k in finals]
    final = [f["kd"] for f in finals.values()]
    steps = next(iter(finals.values()))["steps"]
    print(f"{len(plans)} plans at {budget}, ranked after {steps} distillation steps")
    print("final KD: " + ", ".join(f"{k[:8]} {v:.5f}" for k, v in zip(finals, final, strict=True)))
    if args.orders:
        args.held_out = args.held_out or [defaults.HELD_OUT]
        cfg = SearchConfig(budget=budget, held_out=args.held_out[0], calibration=args.calibration[0], seed=args.seed,
                           proxy_steps=args.proxy_steps, top_steps=max(args.top))  # fmt: skip
        schedule = SCHEDULES[args.schedule]
        ctx = build_context(cfg, Teacher.resolve(cfg.teacher), parse_budget(cfg.budget), schedule=schedule)
        top_rung_variants(ctx, plans, final, args)
        return
    args.held_out = args.held_out or [32, 128]
    head = f"{'calibration':>11}{'held-out':>9}{'lr':>8}{'steps':>6}{'schedule':>9}{'weights':>8}{'Kendall tau':>12}"
    print(f"{head}{'best half':>10}{'s / plan':>9}  scores")
    variants = [(int(n), sched) for n, sched in (v.split(":") for v in args.variants)]
    for calibration in args.calibration:
        for held in args.held_out:
            cfg = SearchConfig(budget=budget, held_out=held, calibration=calibration, seed=args.seed)
            ctx = build_context(cfg, Teacher.resolve(cfg.teacher), parse_budget(cfg.budget))
            for (steps, schedule), lr, weights in itertools.product(variants, args.lr, args.weights):
                start = time.perf_counter()
                scores = [proxy_score(ctx.teacher, plan, ctx.topo, ctx.calib, steps=steps, seed=args.seed,
                                      schedule=schedule, lr=lr, weights=WEIGHTS[weights]).proxy_kd
                          for plan in plans]  # fmt: skip
                seconds = (time.perf_counter() - start) / len(plans)
                shown = ", ".join(f"{v:.6f}" for v in scores)
                print(f"{calibration:>11}{held:>9}{lr:>8.0e}{steps:>6}{schedule if steps else '-':>9}{weights:>8}"
                      f"{kendall_tau(scores, final):>12.2f}{best_half_tau(scores, final):>10.2f}{seconds:>9.1f}"
                      f"  {shown}", flush=True)  # fmt: skip


def distilled(found: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The budget and each distilled plan once (key -> its ``kd`` and ``steps``), from a ``results-BUDGET.json``
    of ``search_vs_heuristics.py`` or a ``summary-BUDGET.json`` of ``search_oracle.py``."""
    if "plans" in found:  # search_oracle.py
        return found["budget"], {p["key"]: p for p in found["plans"]}
    return found["rows"][0]["budget"], {r["final"]["key"]: r["final"] for r in found["rows"]}


def best_half_tau(scores: list[float], final: list[float]) -> float:
    """Kendall tau over the plans in the better half by final KD (at least two), as search_vs_heuristics.py."""
    half = sorted(range(len(final)), key=lambda i: final[i])[: max(2, len(final) // 2)]
    return kendall_tau([scores[i] for i in half], [final[i] for i in half])


def scores_by_top(ctx: SearchContext, plan: Plan, seed: int, rungs: list[int]) -> list[tuple[float, float]]:
    """(held-out KD, seconds since the run began) after each rung in turn, rows in the order ``seed`` gives
    (each rung from the fresh student when the context's rungs train afresh)."""
    start, out = time.perf_counter(), []
    with ctx.proxy_run(plan, seed) as run:
        for steps in rungs:
            if ctx.afresh and run.steps:
                run.restart()
            kd = run.train_to(steps)
            out.append((kd, time.perf_counter() - start))
    return out


def top_rung_variants(ctx: SearchContext, plans: list[Plan], final: list[float], args: argparse.Namespace) -> None:
    """(a) K row orders averaged at the top rung against (b) one order trained on through a further rung."""
    rungs = sorted({args.proxy_steps, *args.top})
    tops = rungs  # the first rung's fidelity too: how well it promotes
    runs = [[scores_by_top(ctx, plan, args.seed + k, rungs) for k in range(max(args.orders))] for plan in plans]
    print(f"{'top steps':>9}{'orders':>7}{'tau all':>8}{'tau best half':>14}{'s / plan':>9}{'order SD':>9}  scores",
          flush=True)  # fmt: skip
    for top, orders in itertools.product(tops, sorted(set(args.orders))):
        at = rungs.index(top)
        scores = [sum(r[k][at][0] for k in range(orders)) / orders for r in runs]
        seconds = sum(r[k][at][1] for r in runs for k in range(orders)) / len(plans)
        shown = ", ".join(f"{v:.6f}" for v in scores)
        print(f"{top:>9}{orders:>7}{kendall_tau(scores, final):>8.2f}{best_half_tau(scores, final):>14.2f}"
              f"{seconds:>9.1f}{order_sd([[r[k][at][0] for k in range(orders)] for r in runs]):>8.0%}  {shown}",
              flush=True)  # fmt: skip
    for top in tops:
        at = rungs.index(top)
        print(f"each order's score at {top} steps: " + "; ".join(
            " ".join(f"{r[k][at][0]:.6f}" for k in range(max(args.orders))) for r in runs), flush=True)  # fmt: skip


def order_sd(scores: list[list[float]]) -> float:
    """How far one plan's score moves with the row order: the mean over plans of the standard deviation
    across orders over their mean (nan with one order)."""
    if len(scores[0]) < 2:
        return float("nan")
    return sum(statistics.stdev(s) / statistics.fmean(s) for s in scores) / len(scores)


if __name__ == "__main__":
    main()
