"""What the found-plan rule decides on a finished study, measured afresh, and what the decision costs.

Opens a study a search wrote (say one of ``search_vs_heuristics.py``'s journals; work on a copy, the study's
``noise_floor`` and ``found_choice`` are measured again and overwritten), scores the best plan with the
search's other row orders (the noise floor), then decides as ``pruner search`` now does whether found.yaml
names it or the anchor (``pruner.study.choice``). Prints the decision, each plan's scores per row
order, and the seconds of the noise floor and of the decision.

    cp "/tmp/pruner-search-vs-heuristics/svh-30%-seed0.log" /tmp/s.log
    python benchmarks/found_rule.py journal:/tmp/s.log svh-30%-seed0 --budget 30%
    python benchmarks/found_rule.py journal:/tmp/s.log svh-30%-seed0 --budget 30% --json decided.json  # kept too

``--trials N ...`` asks instead what the confirmation would read for other plans than the one the rule
picks (the runners-up at the top rung, say): each named trial and the seed trained ``--confirm-steps`` in one
segment under the confirmation's row orders (on ``--confirm-calibration`` rows), and each trial's lead over the
seed paired over those orders. The study is only read.

    python benchmarks/found_rule.py journal:/tmp/s.log svh-30%-seed0 --budget 30% --trials 12 17 \\
        --confirm-steps 1000 --confirm-calibration 384
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from pruner.budget import parse_budget
from pruner.io import write_json
from pruner.runtime import default_threads
from pruner.study.choice import (
    anchor_label,
    choose_found,
    confirm_context,
    confirm_scores,
    noise_floor,
    paired_lead,
)
from pruner.study.context import SearchContext
from pruner.study.study import SearchConfig, build_context, proxy_schedule, storage_of
from pruner.teacher import Teacher


def context_of(study: optuna.Study, budget: str, confirm_steps: int | None = None, *,
               confirm_calibration: int | None = None, confirm_lead: float | None = None,
               confirm_runners_up: int = 0) -> SearchContext:  # fmt: skip
    """The search context the study was scored in, with the confirmation's settings as given."""
    settings = study.user_attrs["search"]
    cfg = SearchConfig(budget=budget, seed=settings["seed"], calibration=settings["calibration"],
                       held_out=settings["held_out"], proxy_steps=settings["rungs"][1],
                       top_steps=settings["rungs"][-1], confirm_steps=confirm_steps, progress=False,
                       confirm_calibration=confirm_calibration, confirm_lead=confirm_lead,
                       confirm_runners_up=confirm_runners_up, out=None)  # fmt: skip
    teacher = Teacher.resolve(settings["teacher"])
    return build_context(cfg, teacher, parse_budget(cfg.budget), schedule=proxy_schedule(study))


def decide_again(
    study: optuna.Study,
    budget: str,
    confirm_steps: int | None = None,
    status: Callable[[str], None] = print,
    *,
    confirm_calibration: int | None = None,
    confirm_lead: float | None = None,
    confirm_runners_up: int = 0,
) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    """The study's noise floor and found-plan choice measured afresh with this pruner (overwriting both), the
    confirmation as ``pruner search``'s settings of the same names ask, and the seconds each took."""
    for attr in ("noise_floor", "found_choice"):  # measured again, as this pruner measures them
        study.set_user_attr(attr, {})
    ctx = context_of(study, budget, confirm_steps, confirm_calibration=confirm_calibration, confirm_lead=confirm_lead,
                     confirm_runners_up=confirm_runners_up)  # fmt: skip
    start = time.perf_counter()
    floor = noise_floor(study, ctx)
    middle = time.perf_counter()
    made = choose_found(study, ctx, floor, status)
    end = time.perf_counter()
    assert floor is not None and made is not None, "the study has no scored plan to choose"
    return floor, made, middle - start, end - middle


def confirm_trials(study: optuna.Study, budget: str, numbers: list[int], steps: int, rows: int | None
                   ) -> dict[str, Any]:  # fmt: skip
    """What the confirmation reads for each of ``numbers`` against the sensitivity seed: both trained ``steps``
    in one segment under the confirmation's row orders (on ``rows`` calibration rows), and each trial's lead
    over the seed paired over them (a share of the seed's mean score; positive: ahead)."""
    ctx = context_of(study, budget, steps, confirm_calibration=rows)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    anchor = next(t for t in trials.values() if t.user_attrs.get("label") == anchor_label(study))
    start = time.perf_counter()
    *scores, seed_kd = confirm_scores(
        ctx, [*(trials[n] for n in numbers), anchor], steps, [[] for _ in range(len(numbers) + 1)]
    )
    base = sum(seed_kd) / len(seed_kd)
    leads = {}
    for n, kd in zip(numbers, scores, strict=True):
        lead = paired_lead(kd, seed_kd)
        leads[str(n)] = {"plan_key": trials[n].user_attrs.get("plan_key"), "kd": kd, "lead": lead.mean / base,
                         "se": lead.se / base}  # fmt: skip
    return {"steps": steps, "rows": confirm_context(ctx).calib.n_train, "seed": anchor.number, "seed_kd": seed_kd,
            "trials": leads, "seconds": round(time.perf_counter() - start)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("storage", help="the study's storage URL (journal:PATH, sqlite:///PATH)")
    p.add_argument("study")
    p.add_argument("--budget", required=True, help="the budget the search was given (the study stores its description)")
    p.add_argument("--confirm-steps", type=int, help="the confirmation's steps (default: the top rung's; 0: none)")
    p.add_argument("--confirm-calibration", type=int, help="rows the confirmation trains on (default: the search's)")
    p.add_argument("--confirm-lead", type=float, help="the lead the confirmation must show (default: a fifth)")
    p.add_argument("--confirm-runners-up", type=int, default=0, help="where the seed is named, confirm this many more")
    p.add_argument("--trials", type=int, nargs="+", help="confirm these trials against the seed instead of deciding")
    p.add_argument("--json", type=Path, help="also write what is printed as JSON here (the seconds under 'seconds')")
    args = p.parse_args()
    torch.set_num_threads(default_threads())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_of(args.storage)
    names = optuna.get_all_study_names(storage)
    if args.study not in names:
        p.exit(2, f"error: no study {args.study!r} in {args.storage}; it holds {', '.join(names) or 'none'}\n")
    study = optuna.load_study(study_name=args.study, storage=storage)
    if args.trials:
        steps = args.confirm_steps or study.user_attrs["search"]["rungs"][-1]
        out = confirm_trials(study, args.budget, args.trials, steps, args.confirm_calibration)
        print(json.dumps(out, indent=1))
        for n, t in out["trials"].items():
            print(f"trial {n} ({t['plan_key']}): {100 * t['lead']:+.1f}% ± {100 * t['se']:.1f}% over the seed")
        if args.json:
            write_json(args.json, out, indent=1)
        return
    floor, made, floor_s, decision_s = decide_again(study, args.budget, args.confirm_steps,
                                                    confirm_calibration=args.confirm_calibration,
                                                    confirm_lead=args.confirm_lead,
                                                    confirm_runners_up=args.confirm_runners_up)  # fmt: skip
    seconds = f"noise floor {floor_s:.0f} s, the decision {decision_s:.0f} s"
    print(json.dumps({"noise_floor": floor, "found_choice": made}, indent=1))
    print(seconds)
    if args.json:  # the kept decisions' form (results/long_confirmation/confirm1000/decided-*.json)
        write_json(args.json, {"noise_floor": floor, "found_choice": made, "seconds": seconds}, indent=1)


if __name__ == "__main__":
    main()
