"""How much a plan's final KD moves when only the distillation's seed changes: the yardstick's own noise.

Every regret, tau and "found over the seed" in ``search_oracle.py`` reads one 1000-step distillation per plan,
all at distillation seed 0. This distils the same plans again at other seeds (their rows' order, noise and
timesteps; same recipe, steps, batch and held-out prompts) and reports, per budget:

- each plan's final KD at every seed, their mean and spread (coefficient of variation);
- Kendall tau between the seeds' rankings, over all plans and over the better half (by mean): the most any
  proxy can reach against one seed's finals;
- the oracle's proxy KD (one study, one row order) ranked against seed 0's finals and against the mean;
- each default search's regret (found / best) on seed 0's finals and on the means.

Reads ``summary-BUDGET.json`` files of ``search_oracle.py`` (the plans from the ``plans/`` recipes beside them);
the finals go to ``finals/KEY-STEPS-seedS.json`` beside them. Several runs of the same command share the work
(one per core: each claims a plan before distilling it), and a run with ``--report`` prints what is there.

    nice python benchmarks/final_noise.py results/search_oracle/summary-30%.json results/search_oracle/summary-50%.json
    python benchmarks/final_noise.py results/search_oracle/summary-30%.json --seeds 1,2 --report
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_fidelity import best_half_tau
from search_oracle import SEED_ROLE, TURNED_DOWN
from search_vs_heuristics import Claimed, Final, distilled, final_path, kendall_tau

from pruner.data.bundled import default_data
from pruner.teacher import Teacher


@dataclass
class Plan:
    """A distilled plan of a summary: its key, the roles it played there and the oracle study's proxy KD."""

    key: str
    roles: list[str]
    proxy_kd: float | None  # the oracle's (None for plans that only a default search scored)


def tables_path(folder: Path, summary: dict[str, Any], steps: int | None = None) -> Path:
    """Where a budget's tables are kept: ``noise-BUDGET.json`` at the summary's own distillation steps (or
    ``steps`` None), ``noise-BUDGET-Nsteps.json`` at other steps, so a shorter run never overwrites the
    full-length tables."""
    own = {p["steps"] for p in summary["plans"] if "steps" in p}
    budget = summary["budget"].replace("=", "-")
    full = steps is None or own <= {steps}
    return folder / (f"noise-{budget}.json" if full else f"noise-{budget}-{steps}steps.json")


def plans_of(summary: dict[str, Any]) -> list[Plan]:
    """The summary's distinct plans, best seed-0 final first."""
    plans: dict[str, Plan] = {}
    for p in sorted(summary["plans"], key=lambda p: p.get("kd", math.inf)):  # no kd: seed 0 not distilled yet
        plan = plans.setdefault(p["key"], Plan(p["key"], [], None))
        plan.roles.append(p["role"])
        if not p["role"].startswith("default"):
            plan.proxy_kd = p.get("proxy_kd")  # None in a summary of plans no oracle study scored
    return list(plans.values())


def distil_all(work: list[tuple[Path, Plan, int]], args: argparse.Namespace) -> None:
    """Each (results folder, plan, seed) in turn, then those another run had claimed once it is done with them."""
    data = str(default_data(Teacher.resolve("tiny-sdxl")))
    todo = list(work)  # seed 0's finals are the summary's own, where it has them
    while todo:
        waiting = []
        for root, plan, seed in todo:
            if final_path(root, plan.key, args.final_steps, seed).is_file():
                continue
            try:
                recipe = root / "plans" / f"{plan.key}.yaml"
                f = distilled(recipe, plan.key, root, args, data, seed, args.scratch, args.curve_every,
                              args.eval_seeds)  # fmt: skip
            except Claimed:
                waiting.append((root, plan, seed))
                continue
            print(f"{root.name} {plan.key[:8]} seed {seed}: KD {f.kd:.6f} ({f.seconds:.0f} s)", flush=True)
        todo = waiting
        if todo:
            time.sleep(10)


def finals_of(root: Path, plans: list[Plan], seeds: list[int], steps: int) -> dict[str, dict[int, Final]]:
    """Each plan's finals by seed, where they are there."""
    finals: dict[str, dict[int, Final]] = {}
    for p in plans:
        for s in seeds:
            if (path := final_path(root, p.key, steps, s)).is_file():
                finals.setdefault(p.key, {})[s] = Final(**json.loads(path.read_text()))
    return finals


def by_seed(finals: dict[str, dict[int, Final]], pick: Callable[[Final], dict[int, float] | None]
            ) -> dict[int, dict[str, dict[int, float]]]:  # fmt: skip
    """What ``pick`` reads from each final, by distillation seed and plan, where it was kept."""
    out: dict[int, dict[str, dict[int, float]]] = {}
    for key, by in finals.items():
        for s, f in by.items():
            if picked := pick(f):
                out.setdefault(s, {})[key] = picked
    return out


def curves_of(finals: dict[str, dict[int, Final]]) -> dict[int, dict[str, dict[int, float]]]:
    """Each seed's held-out KD along the distillation (``--curve-every``), by plan and step, where it was kept."""
    return by_seed(finals, lambda f: {int(step): kd for step, kd in f.curve} if f.curve else None)


def evals_of(finals: dict[str, dict[int, Final]]) -> dict[int, dict[str, dict[int, float]]]:
    """Each distillation seed's students evaluated on several held-out sets (``--eval-seeds``): KD by plan and
    evaluation seed (0: the final's own ``kd``), where they were."""
    return by_seed(finals, lambda f: {0: f.kd} | {int(e): kd for e, kd in f.evals.items()} if f.evals else None)


def better_half(keys: list[str], score: dict[str, float]) -> list[str]:
    """The better half of ``keys`` by ``score`` (at least two), as proxy_fidelity.py and search_vs_heuristics.py
    take it."""
    return sorted(keys, key=lambda k: score[k])[: max(2, len(keys) // 2)]


def sensitivity_seed(keys: list[str], roles: dict[str, list[str]]) -> str | None:
    """Which of ``keys`` is the sensitivity one-shot seed, by the roles it played (None: none of them)."""
    return next((k for k in keys if any(r.startswith(SEED_ROLE) for r in roles.get(k, []))), None)


RACE_MARGIN = 1.05  # two plans whose mean finals lie this far apart: a race between them has a right answer


def race_calls(at: dict[str, float], mean: dict[str, float], keys: list[str], against: str | None = None
               ) -> tuple[int, int]:  # fmt: skip
    """A race stopped where ``at`` was read: of the pairs of ``keys`` whose mean finals are at least
    ``RACE_MARGIN`` apart (only those with ``against`` in them, if given), how many ``at`` orders as the means
    do, and how many there are."""
    right = pairs = 0
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if against is not None and against not in (a, b):
                continue
            if max(mean[a], mean[b]) >= RACE_MARGIN * min(mean[a], mean[b]):
                pairs += 1
                right += (at[a] < at[b]) == (mean[a] < mean[b])
    return right, pairs


def early_ranks(curves: dict[int, dict[str, dict[int, float]]], finals: dict[str, dict[int, float]],
                mean: dict[str, float], half: list[str], seed_plan: str | None = None
                ) -> dict[int, dict[int, tuple[float, ...]]]:  # fmt: skip
    """Whether a distillation's own early held-out KD already ranks plans as its end does: per seed with curves
    and per step, Kendall tau against that run's final KD and against the means over seeds (all / better half),
    and how often a race stopped there (two plans trained side by side, the lower KD kept) keeps the better of
    two plans that end at least 5% apart: of every such pair, and of those against the sensitivity seed."""
    out: dict[int, dict[int, tuple[float, ...]]] = {}
    if curves:
        print(
            "\nthe distillation's own held-out KD at step k ranks the plans (tau all / better half), and a race "
            f"stopped there keeps the better of two plans {100 * (RACE_MARGIN - 1):.0f}% apart on the means:"
        )
    for s, by_plan in curves.items():
        keys = [k for k in mean if k in by_plan]
        if len(keys) < 4 or not set(half) <= set(keys):
            continue  # too few plans have this seed's curve to rank
        out[s] = {}
        for step in sorted(set.intersection(*(set(by_plan[k]) for k in keys))):
            at = {k: by_plan[k][step] for k in keys}
            final = {k: finals[k][s] for k in keys}
            right, pairs = race_calls(at, mean, keys)
            seed_right, seed_pairs = race_calls(at, mean, keys, seed_plan) if seed_plan in keys else (0, 0)
            row = (taus(at, final, keys), taus(at, final, half), taus(at, mean, keys), taus(at, mean, half), right,
                   pairs, seed_right, seed_pairs)  # fmt: skip
            out[s][step] = row
            print(
                f"  seed {s}, step {step:>5}: against this run's final {row[0]:.2f} / {row[1]:.2f}, "
                f"against the means {row[2]:.2f} / {row[3]:.2f}; the race {right} of {pairs}"
                + (f" (against the seed {seed_right} of {seed_pairs})" if seed_pairs else "")
            )
    return out


def evaluation_noise(
    evals: dict[int, dict[str, dict[int, float]]], roles: dict[str, list[str]]
) -> dict[int, dict[str, Any]]:
    """How much the held-out set alone reorders the same students: per distillation seed whose students were
    evaluated on several sets, the plan-by-set noise (as ``interaction_sd``), Kendall tau between the sets'
    rankings, and each plan's KD over the sensitivity seed's on each set (below 1: ahead of the seed)."""
    out: dict[int, dict[str, Any]] = {}
    for s, by_plan in sorted(evals.items()):
        keys = list(by_plan)
        sets = sorted(set.intersection(*(set(v) for v in by_plan.values())))
        if len(keys) < 4 or len(sets) < 2:
            continue
        mean = {k: statistics.fmean(by_plan[k][e] for e in sets) for k in keys}
        keys.sort(key=lambda k: mean[k])
        half = better_half(keys, mean)
        sd, shift = interaction_sd(by_plan, keys, sets)
        per_set = {e: {k: by_plan[k][e] for k in keys} for e in sets}
        pairs = pairwise_taus(per_set, keys, half)
        seed_plan = sensitivity_seed(keys, roles)
        print(f"\nthe same students (distillation seed {s}) on {len(sets)} held-out sets (evaluation seeds {sets}):")
        print(f"{'plan':<10}" + "".join(f"{'set ' + str(e):>10}" for e in sets) + f"{'mean':>10}"
              + ("   over the seed's, by set" if seed_plan else ""))  # fmt: skip
        over: dict[str, list[float]] = {}
        for k in keys:
            over[k] = [by_plan[k][e] / by_plan[seed_plan][e] for e in sets] if seed_plan else []
            print(f"{k[:8]:<10}" + "".join(f"{by_plan[k][e]:>10.6f}" for e in sets) + f"{mean[k]:>10.6f}   "
                  + " ".join(f"{r:.3f}" for r in over[k]))  # fmt: skip
        print(f"plan by set (the noise the held-out set adds that reorders plans): {100 * sd:.1f}% (SD of log KD)")
        for pair, (t_all, t_half) in pairs.items():
            print(f"tau between sets {pair}: {t_all:.2f} over all, {t_half:.2f} over the better half")
        out[s] = {"sets": sets, "kd": {k: by_plan[k] for k in keys}, "paired_sd": sd, "set_shift": shift,
                  "tau_between_sets": pairs, "over_seed": over, "seed_plan": seed_plan}  # fmt: skip
    return out


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else float("nan")


def interaction_sd(
    kd: dict[str, dict[int, float]], keys: list[str], seeds: list[int]
) -> tuple[float, dict[int, float]]:
    """The noise that reorders plans: the SD of log final KD once each plan's and each seed's mean are taken out
    (a seed that suits every plan alike moves none of them against another), and each seed's shift over all
    plans (exp of its mean log KD less the grand mean)."""
    logs = {k: {s: math.log(kd[k][s]) for s in seeds} for k in keys}
    plan = {k: statistics.fmean(logs[k].values()) for k in keys}
    grand = statistics.fmean(plan.values())
    seed = {s: statistics.fmean(logs[k][s] for k in keys) - grand for s in seeds}
    residual = [logs[k][s] - plan[k] - seed[s] for k in keys for s in seeds]
    df = (len(keys) - 1) * (len(seeds) - 1)
    sd = (sum(r * r for r in residual) / df) ** 0.5 if df > 0 else float("nan")
    return sd, {s: math.exp(v) for s, v in seed.items()}


def held_out_regret(kd: dict[str, dict[int, float]], keys: list[str], seeds: list[int], found: str) -> float:
    """The found plan's regret free of the winner's curse: the best plan picked by the mean of all seeds but
    one, both read at the seed left out (geometric mean over the seeds left out; nan with one seed). The best of
    many noisy means reads lower than that plan's truth, so the plain regret on the means leans high."""
    if len(seeds) < 2:
        return float("nan")
    logs = []
    for held in seeds:
        best = min(keys, key=lambda k: statistics.fmean(kd[k][s] for s in seeds if s != held))
        logs.append(math.log(kd[found][held] / kd[best][held]))
    return math.exp(statistics.fmean(logs))


def pairwise_taus(
    ranked: dict[int, dict[str, float]], keys: list[str], half: list[str]
) -> dict[str, tuple[float, float]]:
    """Kendall tau between every two of ``ranked``'s rankings (seeds or held-out sets), over ``keys`` and over
    ``half``, keyed "A-B"."""
    order = list(ranked)
    return {f"{a}-{b}": (taus(ranked[a], ranked[b], keys), taus(ranked[a], ranked[b], half))
            for i, a in enumerate(order) for b in order[i + 1 :]}  # fmt: skip


def taus(a: dict[str, float], b: dict[str, float], keys: list[str]) -> float:
    keys = [k for k in keys if k in a and k in b]
    return kendall_tau([a[k] for k in keys], [b[k] for k in keys]) if len(keys) > 1 else float("nan")


def report(
    summary: dict[str, Any], plans: list[Plan], kd: dict[str, dict[int, float]], seeds: list[int],
    curves: dict[int, dict[str, dict[int, float]]], evals: dict[int, dict[str, dict[int, float]]],
) -> dict:  # fmt: skip
    """Print one budget's tables; return them as a dict (kept as ``noise-BUDGET.json``)."""
    full = [p for p in plans if all(s in kd.get(p.key, {}) for s in seeds)]
    mean = {p.key: statistics.fmean(kd[p.key][s] for s in seeds) for p in full}
    by_mean = sorted(full, key=lambda p: mean[p.key])
    every = [p.key for p in by_mean]
    half = better_half(every, mean)
    print(f"\n== {summary['budget']}: {len(full)} of {len(plans)} plans distilled at seeds {seeds}")
    print(f"{'plan':<10}{'roles':<44}" + "".join(f"{'seed ' + str(s):>10}" for s in seeds) + f"{'mean':>10}{'CV':>7}")
    for p in by_mean:
        row = "".join(f"{kd[p.key][s]:>10.6f}" for s in seeds)
        roles = ", ".join(p.roles)
        print(f"{p.key[:8]:<10}{roles[:43]:<44}{row}{mean[p.key]:>10.6f}{100 * cv(list(kd[p.key].values())):>6.1f}%")
    pooled = statistics.fmean(cv([kd[k][s] for s in seeds]) ** 2 for k in every) ** 0.5
    per_seed = {s: {k: kd[k][s] for k in every} for s in seeds}
    pairs = pairwise_taus(per_seed, every, half)
    print(f"pooled CV of a plan's final KD over seeds: {100 * pooled:.1f}%")
    paired, shift = interaction_sd(kd, every, seeds)
    print(
        "each seed's shift of every plan: "
        + ", ".join(f"seed {s} {v:.3f}x" for s, v in shift.items())
        + f"; what is left, plan by seed (the noise that reorders plans): {100 * paired:.1f}% (SD of log KD)"
    )
    for pair, (t_all, t_half) in pairs.items():
        print(f"tau between seeds {pair}: {t_all:.2f} over all, {t_half:.2f} over the better half")
    proxy = {p.key: p.proxy_kd for p in full if p.proxy_kd is not None}
    oracle = [k for k in every if k in proxy]
    seed0 = per_seed[seeds[0]]
    proxy_taus = {f"seed {seeds[0]}": (taus(proxy, seed0, oracle), taus(proxy, seed0, better_half(oracle, seed0))),
                  "mean": (taus(proxy, mean, oracle), taus(proxy, mean, better_half(oracle, mean)))}  # fmt: skip
    for against, (t_all, t_half) in proxy_taus.items() if oracle else ():  # no oracle study scored these plans
        print(
            f"oracle's proxy KD against the {against} finals ({len(oracle)} plans): tau {t_all:.2f} over all, "
            f"{t_half:.2f} over the better half"
        )
    regret = {}
    best0, best_mean = min(seed0.values()), min(mean.values())
    for p in full:
        for role in p.roles:
            if role.startswith("default") and not role.endswith(TURNED_DOWN):
                regret[role] = (seed0[p.key] / best0, mean[p.key] / best_mean, held_out_regret(kd, every, seeds, p.key))
    for role, (r0, rm, rh) in sorted(regret.items()):
        print(f"regret of {role}: {r0:.2f}x on seed {seeds[0]}'s finals, {rm:.3f}x on the means, "
              f"{rh:.3f}x on a held-out seed")  # fmt: skip
    seed_plan = sensitivity_seed([p.key for p in full], {p.key: p.roles for p in full})
    early = early_ranks(curves, kd, mean, half, seed_plan)
    sets = evaluation_noise(evals, {p.key: p.roles for p in plans})
    return {"budget": summary["budget"], "seeds": seeds, "early": early, "evaluation": sets,
            "kd": {p.key: kd[p.key] for p in full},
            "mean": mean, "roles": {p.key: p.roles for p in full}, "pooled_cv": pooled,
            "paired_sd": paired, "seed_shift": shift,
            "tau_between_seeds": pairs, "proxy_tau": proxy_taus, "regret": regret}  # fmt: skip


def against_full_length(result: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """A run at other steps against the full-length tables (the summary's own steps, ``noise-BUDGET.json``): its
    means ranked against the full-length means (tau over all, and over the better half by those), and the
    sensitivity seed's lead over each plan at both lengths (its mean KD over the plan's, less one: positive
    where the plan is ahead of the seed). Printed; returned for the tables."""
    mean, full_mean = result["mean"], full["mean"]
    keys = sorted((k for k in full_mean if k in mean), key=lambda k: full_mean[k])
    tau = (taus(mean, full_mean, keys), taus(mean, full_mean, better_half(keys, full_mean)))
    seed = sensitivity_seed(keys, full["roles"])
    print(f"\nagainst the full-length means ({len(keys)} plans, seeds {full['seeds']}): tau {tau[0]:.2f} over all, "
          f"{tau[1]:.2f} over the better half")  # fmt: skip
    leads = {}
    if seed is not None:
        print(f"the sensitivity seed's lead over each plan ({seed[:8]}: positive where the plan is ahead of it)")
        print(f"{'plan':<10}{'these steps':>12}{'full length':>12}")
        for k in keys:
            leads[k] = (mean[seed] / mean[k] - 1, full_mean[seed] / full_mean[k] - 1)
            print(f"{k[:8]:<10}{100 * leads[k][0]:>+11.1f}%{100 * leads[k][1]:>+11.1f}%")
    return {"full_seeds": full["seeds"], "tau": tau, "seed": seed, "seed_lead": leads}


def printout(path: Path) -> tuple[str, list[str], list[tuple[str, list[float]]]]:
    """A ``proxy_fidelity.py`` printout: its budget, its plans (key prefixes, in its order) and each variant's
    label with its scores. ``--orders`` printouts label a variant by its top steps and orders averaged, the
    others by steps, schedule, learning rate, loss weights (where the printout has them) and calibration rows."""
    lines = path.read_text().splitlines()
    head = re.match(r"(\d+) plans at (\S+), ranked", lines[0])
    if head is None or not lines[1].startswith("final KD: "):
        raise SystemExit(f"{path}: not a proxy_fidelity.py printout (its first line names the plans and budget)")
    keys = [item.split()[0] for item in lines[1].removeprefix("final KD: ").split(", ")]
    columns = lines[2].split() if len(lines) > 2 else []
    variants = columns[:1] == ["calibration"]
    rows = []
    for line in lines[3:]:
        tokens = line.replace(",", " ").split()
        if len(tokens) < len(keys) + 6 or not tokens[0].isdigit():
            continue
        if variants:
            weights = f", {tokens[5]} loss" if "weights" in columns else ""
            label = f"{tokens[3]}:{tokens[4]}, lr {tokens[2]}{weights}, {tokens[0]} rows"
        else:
            label = f"{tokens[0]} steps, {tokens[1]} order(s)"
        rows.append((label, [float(t) for t in tokens[-len(keys) :]]))
    return head.group(2), keys, rows


def proxies_against_means(paths: list[Path], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each printout's variants ranked against seed 0's finals (as printed) and against the means over seeds."""
    table, read = [], [(path, *printout(path)) for path in paths]
    width = max([24] + [len(label) + 2 for *_, rows in read for label, _ in rows])
    print(f"\n{'printout':<36}{'variant':<{width}}{'tau all / best half, seed 0':>29}{'against the means':>20}")
    for path, budget, prefixes, rows in read:
        result = results.get(budget)
        if result is None:
            continue
        full = {k[:8]: k for k in result["mean"]}
        keep = [i for i, k in enumerate(prefixes) if k in full]
        seed0 = [result["kd"][full[prefixes[i]]][result["seeds"][0]] for i in keep]
        mean = [result["mean"][full[prefixes[i]]] for i in keep]
        for label, scores in rows:
            mine = [scores[i] for i in keep]
            taus_ = (kendall_tau(mine, seed0), best_half_tau(mine, seed0), kendall_tau(mine, mean),
                     best_half_tau(mine, mean))  # fmt: skip
            print(f"{path.name:<36}{label:<{width}}{taus_[0]:>14.2f} / {taus_[1]:<12.2f}{taus_[2]:>8.2f} / "
                  f"{taus_[3]:.2f}   ({len(keep)} plans)")  # fmt: skip
            table.append({"printout": path.name, "variant": label, "plans": len(keep), "tau_seed0": taus_[:2],
                          "tau_mean": taus_[2:]})  # fmt: skip
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="+", type=Path, help="summary-BUDGET.json files of search_oracle.py")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated distillation seeds (0: the summary's own)")
    p.add_argument("--final-steps", type=int, default=1000, help="distillation steps per plan (as the summary's)")
    p.add_argument("--final-batch", type=int, default=16, help="distillation batch (as search_oracle.py's)")
    p.add_argument("--eval-n", type=int, default=256, help="held-out prompts per evaluation")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one run per core)")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/pruner-final-noise"), help="students, deleted")
    p.add_argument("--curve-every", type=int, help="keep each run's held-out KD every N steps (trains the same)")
    p.add_argument("--eval-seeds", default="",
                   help="comma-separated: evaluate each new student again on these held-out sets (evaluation seeds; "
                   "its own KD is set 0's), to measure the evaluation's noise")  # fmt: skip
    p.add_argument("--report", action="store_true", help="print what is there; distil nothing")
    p.add_argument("--printouts", nargs="*", type=Path, default=[],
                   help="proxy_fidelity.py printouts: their variants against the means too")  # fmt: skip
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.eval_seeds = tuple(int(e) for e in args.eval_seeds.split(",") if e)
    torch.set_num_threads(args.threads)
    loaded = [(path, json.loads(path.read_text())) for path in args.summaries]
    if not args.report:  # budget by budget, seed by seed: a budget's replicates complete before the next starts
        distil_all([(path.parent, plan, s) for path, summary in loaded for s in seeds for plan in plans_of(summary)],
                   args)  # fmt: skip
    results = {}
    for path, summary in loaded:
        plans = plans_of(summary)
        finals = finals_of(path.parent, plans, seeds, args.final_steps)
        kd = {key: {s: f.kd for s, f in by_seed.items()} for key, by_seed in finals.items()}
        result = report(summary, plans, kd, seeds, curves_of(finals), evals_of(finals))
        results[summary["budget"]] = result
        tables, full = tables_path(path.parent, summary, args.final_steps), tables_path(path.parent, summary)
        if tables != full and full.is_file():  # a run at other steps, beside the full-length tables
            result["against_full_length"] = against_full_length(result, json.loads(full.read_text()))
        tables.write_text(json.dumps(result, indent=1))
    if args.printouts:
        table = [{**row, "final_steps": args.final_steps} for row in proxies_against_means(args.printouts, results)]
        kept = args.summaries[0].parent / "noise-proxies.json"  # other printouts' rows, from other runs, stay
        redone = {(path.name, args.final_steps) for path in args.printouts}  # against finals of these steps
        earlier = json.loads(kept.read_text()) if kept.is_file() else []
        earlier = [row for row in earlier if (row["printout"], row.get("final_steps")) not in redone]
        kept.write_text(json.dumps(earlier + table, indent=1))


if __name__ == "__main__":
    main()
