"""The plan sampler against NSGA-II and multivariate TPE, at equal trial budget, on the bundled teacher.

For each sampler and seed: one search (same budget, trials, rungs and calibration), then how far its best
sampled plan beats the sensitivity one-shot seed by the proxy at the top rung (common random numbers: every
plan trains on the same rows in the same order), how far the repair moved the plans the sampler proposed
(the part of a trial the sampler does not see), how many proposals were plans already scored, and the noise
floor of the found plan. Proxy scores only: `search_vs_heuristics.py` distills the plans.

    python benchmarks/samplers.py --budget 30% --seeds 0,1 --trials 16
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import optuna
import torch

from pruner.runtime import default_threads
from pruner.study.study import SAMPLERS, SearchConfig, run_search
from pruner.teacher import Teacher


def summary(study: optuna.Study, seconds: float) -> dict[str, float]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "proxy_kd" in t.user_attrs]
    sampled = sorted((t for t in complete if not t.user_attrs.get("label")), key=lambda t: t.user_attrs["proxy_kd"])
    sens = next((t for t in trials if t.user_attrs.get("label") == "sensitivity"), None)
    sens_kd = sens.user_attrs.get("proxy_kd", float("nan")) if sens is not None else float("nan")
    best = sampled[0].user_attrs["proxy_kd"] if sampled else float("nan")
    distances = [t.user_attrs.get("repair_distance", 0) for t in sampled[:5]]
    floor = study.user_attrs.get("noise_floor") or {}
    return {
        "best_sampled_kd": best,
        "sensitivity_kd": sens_kd,
        "lead": sens_kd / best if sampled else float("nan"),
        "top_rung_sampled": len(sampled),
        "repair_distance_top5": statistics.fmean(distances) if distances else float("nan"),
        "duplicates": sum(t.user_attrs.get("skipped") == "duplicate" for t in trials),
        "noise_spread": floor.get("spread", float("nan")),
        "minutes": seconds / 60,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="30%")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--proxy-steps", type=int, default=30)
    p.add_argument("--top-steps", type=int, default=None)
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--out", type=Path, default=Path("/tmp/pruner-samplers"))
    args = p.parse_args()
    torch.set_num_threads(default_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for sampler in args.samplers.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            name = f"samplers-{sampler}-{args.budget}-seed{seed}"
            cfg = SearchConfig(teacher="tiny-sdxl", budget=args.budget, trials=args.trials, seed=seed, sampler=sampler,
                               proxy_steps=args.proxy_steps, top_steps=args.top_steps, out=None, study=name,
                               storage=f"journal:{args.out / f'{name}.log'}", progress=False)  # fmt: skip
            start = time.perf_counter()
            study = run_search(cfg, Teacher.resolve(cfg.teacher)).study
            rows.append((sampler, seed, summary(study, time.perf_counter() - start)))
            print(sampler, seed, rows[-1][2], flush=True)
    rungs = "/".join(map(str, SearchConfig(proxy_steps=args.proxy_steps, top_steps=args.top_steps).rungs))
    print(f"\nbudget {args.budget}, {args.trials} trials, rungs {rungs} steps")
    print(f"{'sampler':<10}{'seed':>5}{'best sampled KD':>17}{'sensitivity KD':>16}{'lead':>7}{'at top':>8}"
          f"{'repair moved':>14}{'duplicates':>12}{'noise floor':>13}{'minutes':>9}")  # fmt: skip
    for sampler, seed, r in rows:
        print(f"{sampler:<10}{seed:>5}{r['best_sampled_kd']:>17.5f}{r['sensitivity_kd']:>16.5f}{r['lead']:>6.2f}x"
              f"{r['top_rung_sampled']:>8}{r['repair_distance_top5']:>14.1f}{r['duplicates']:>12}"
              f"{100 * r['noise_spread']:>12.1f}%{r['minutes']:>9.1f}")  # fmt: skip
    for sampler in args.samplers.split(","):
        leads = [r["lead"] for s, _, r in rows if s == sampler]
        print(f"{sampler}: mean lead over the sensitivity seed {statistics.fmean(leads):.2f}x over {len(leads)} seeds")


if __name__ == "__main__":
    main()
