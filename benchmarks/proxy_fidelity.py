"""How well proxy variants rank plans, against the ranking after full distillation.

Reads the ``results.json`` that ``benchmarks/search_vs_heuristics.py`` wrote (plans, each with its KD loss
after S distillation steps) and re-scores every plan under each proxy variant: zero-shot only, or N
layer-level KD steps with a constant or cosine-decaying learning rate, scored on a held-out set of 32 or
128 rows (fixed noise and timesteps). Prints Kendall tau against the distilled ranking and seconds a plan.
No distillation is repeated, so a variant costs one trial's time per plan.

    python benchmarks/proxy_fidelity.py /tmp/pruner-search-vs-heuristics/results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from search_vs_heuristics import kendall_tau

from pruner.runtime import default_threads
from pruner.search.proxy import proxy_score
from pruner.search.study import SearchConfig, build_context
from pruner.unet import Plan

VARIANTS = [(0, "constant"), (30, "constant"), (30, "cosine"), (100, "cosine")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--held-out", type=int, nargs="+", default=[32, 128])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(default_threads())  # one thread on a 2-core machine: two are far slower there
    found = json.loads(args.results.read_text())
    plans = [Plan.removing(r["removed"], {int(k): v for k, v in r["ff_keep"].items()}) for r in found["plans"]]
    final = [r["kd_after"] for r in found["plans"]]
    print(f"{len(plans)} plans at {found['budget']}, ranked after {found['steps']} distillation steps")
    print(f"{'held-out rows':>13}{'proxy steps':>12}{'schedule':>10}{'Kendall tau':>13}{'s / plan':>10}")
    for held in args.held_out:
        ctx = build_context(SearchConfig(budget=found["budget"], held_out=held, seed=args.seed))
        for steps, schedule in VARIANTS:
            start = time.perf_counter()
            scores = [proxy_score(ctx.teacher, plan, ctx.topo, ctx.calib, steps=steps, seed=args.seed + k,
                                  schedule=schedule).proxy_kd for k, plan in enumerate(plans)]  # fmt: skip
            seconds = (time.perf_counter() - start) / len(plans)
            print(f"{held:>13}{steps:>12}{schedule if steps else '-':>10}{kendall_tau(scores, final):>13.2f}"
                  f"{seconds:>10.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
