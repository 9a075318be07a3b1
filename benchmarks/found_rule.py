"""What the found-plan rule decides on a finished study, measured afresh, and what the decision costs.

Opens a study a search wrote (say one of ``search_vs_heuristics.py``'s journals; work on a copy, the study's
``noise_floor`` and ``found_choice`` are measured again and overwritten), scores the best plan with the
search's other row orders (the noise floor), then decides as ``pruner search`` now does whether found.yaml
names it or the sensitivity seed (``pruner.study.choice``). Prints the decision, each plan's scores per row
order, and the seconds of the noise floor and of the decision.

    cp "/tmp/pruner-search-vs-heuristics/svh-30%-seed0.log" /tmp/s.log
    python benchmarks/found_rule.py journal:/tmp/s.log svh-30%-seed0 --budget 30%
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch

from pruner.budget import parse_budget
from pruner.runtime import default_threads
from pruner.study.choice import choose_found, noise_floor
from pruner.study.study import SearchConfig, build_context, proxy_schedule, storage_of
from pruner.teacher import Teacher


def decide_again(
    study: optuna.Study,
    budget: str,
    confirm_steps: int | None = None,
    status: Callable[[str], None] = print,
    *,
    confirm_calibration: int | None = None,
    confirm_lead: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    """The study's noise floor and found-plan choice measured afresh with this pruner (overwriting both), the
    confirmation as ``pruner search``'s settings of the same names ask, and the seconds each took."""
    settings = study.user_attrs["search"]
    for attr in ("noise_floor", "found_choice"):  # measured again, as this pruner measures them
        study.set_user_attr(attr, {})
    cfg = SearchConfig(budget=budget, seed=settings["seed"], calibration=settings["calibration"],
                       held_out=settings["held_out"], proxy_steps=settings["rungs"][1],
                       top_steps=settings["rungs"][-1], confirm_steps=confirm_steps, progress=False,
                       confirm_calibration=confirm_calibration, confirm_lead=confirm_lead, out=None)  # fmt: skip
    teacher, schedule = Teacher.resolve(settings["teacher"]), proxy_schedule(study)
    ctx = build_context(cfg, teacher, parse_budget(cfg.budget), schedule=schedule)
    start = time.perf_counter()
    floor = noise_floor(study, ctx)
    middle = time.perf_counter()
    made = choose_found(study, ctx, floor, status)
    end = time.perf_counter()
    assert floor is not None and made is not None, "the study has no scored plan to choose"
    return floor, made, middle - start, end - middle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("storage", help="the study's storage URL (journal:PATH, sqlite:///PATH)")
    p.add_argument("study")
    p.add_argument("--budget", required=True, help="the budget the search was given (the study stores its description)")
    p.add_argument("--confirm-steps", type=int, help="the confirmation's steps (default: the top rung's; 0: none)")
    p.add_argument("--confirm-calibration", type=int, help="rows the confirmation trains on (default: the search's)")
    p.add_argument("--confirm-lead", type=float, help="the lead the confirmation must show (default: a fifth)")
    args = p.parse_args()
    torch.set_num_threads(default_threads())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=storage_of(args.storage))
    floor, made, floor_s, decision_s = decide_again(study, args.budget, args.confirm_steps,
                                                    confirm_calibration=args.confirm_calibration,
                                                    confirm_lead=args.confirm_lead)  # fmt: skip
    print(json.dumps({"noise_floor": floor, "found_choice": made}, indent=1))
    print(f"noise floor {floor_s:.0f} s, the decision {decision_s:.0f} s")


if __name__ == "__main__":
    main()
