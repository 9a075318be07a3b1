"""Search against its own one-shot seed and the hand-picked styles, over budgets and seeds, after long training.

For each budget and each search seed: run `pruner search`, then distill for ``--final-steps`` steps the found
plan, the sensitivity one-shot seed, the best hand-picked style (BK-SDM, KOALA, SSD-1B, Vega: the one the
search ranked best) and the ``--extra`` next best searched plans, and evaluate each with `pruner eval` on
held-out prompts (disjoint from every caption of the bundled data set). A plan is distilled once however many
seeds find it (same distillation seed for all), so identical plans cost nothing twice; several runs of this
script on one ``--out`` (say one per seed, one per core) each search their own seeds, claim a plan before
distilling it and wait for plans another run has claimed, and a last run over all seeds pools what they found.

Prints, per budget, one row per distilled plan and seed; then mean and spread over seeds of the found plan's
lead over the sensitivity seed and over the best hand style; Kendall tau of the proxy (the top rung's KD)
against the final KD over all distilled plans and over their best half; what the search cost against one
distillation; and the goals of issue #17, each met or not.

    python benchmarks/search_vs_heuristics.py --budgets 20%,30%,50%,macs=50% --seeds 0,1,2 --final-steps 1000

``--anchor`` picks the plan found.yaml falls back to (the search's default: the sensitivity seed's refill); the
refill's own row is distilled beside the sensitivity seed's, and studies with it are named ``svh-refilled-*``
so that the journals of searches made with the plain sensitivity seed (``svh-*``) keep their meaning.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from pruner import defaults
from pruner.distillation.run import DistillOptions, distill_recipe
from pruner.evaluation import evaluate_student
from pruner.recipe import load_recipe, save_recipe
from pruner.runtime import default_threads
from pruner.study.export import recipe_for_trial
from pruner.study.front import found_trial
from pruner.study.heuristics import SENSITIVITY
from pruner.study.sampler import ranked_plans
from pruner.study.study import SearchConfig, run_search
from pruner.study.workers import plan_key
from pruner.teacher import Teacher
from pruner.unet import Plan, meta_unet, topology_of

HAND = ("bk", "koala", "ssd", "vega")


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a between two score lists (same items, same order)."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    score = sum((a[i] - a[j]) * (b[i] - b[j]) > 0 for i, j in pairs) - sum(
        (a[i] - a[j]) * (b[i] - b[j]) < 0 for i, j in pairs
    )
    return score / len(pairs) if pairs else float("nan")


@dataclass
class Final:
    """A plan after ``steps`` distillation steps, evaluated against the teacher."""

    key: str
    steps: int
    kd: float
    psnr: float
    accuracy: float | None
    accuracy_se: float | None
    seconds: float
    seed: int = 0  # the distillation's (finals written before seeds varied have none: 0)
    curve: list[tuple[int, float]] | None = None  # held-out KD of the distillation's own rows, by step
    evals: dict[str, float] | None = None  # KD on other held-out sets, by evaluation seed (``kd`` is seed 0's)


@dataclass
class Row:
    budget: str
    seed: int
    role: str  # found, sensitivity, hand:<style>, searched
    trial: int
    params: int
    macs: int
    proxy_kd: float
    proxy_steps: int
    final: Final


def chosen(study: optuna.Study, extra: int) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """(role, trial): the found plan (what found.yaml names), the sensitivity seed (and its refill, with
    ``--anchor sensitivity-refilled``), the best hand style and ``extra`` next best."""
    best = found_trial(study)
    ranked = [t for _, t in ranked_plans(study.get_trials(deepcopy=False))]
    picks: list[tuple[str, optuna.trial.FrozenTrial]] = []
    if best is not None:
        picks.append(("found", best))
    seeds = {t.user_attrs.get("label"): t for t in ranked if t.user_attrs.get("label")}
    picks += [(label, seeds[label]) for label in (*defaults.ANCHOR_CHOICES, "sensitivity-modules") if label in seeds]
    hand = next((t for t in ranked if t.user_attrs.get("label") in HAND), None)
    if hand is not None:
        picks.append((f"hand:{hand.user_attrs['label']}", hand))
    searched = [t for t in ranked if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs.get("label")]
    taken = {t.number for _, t in picks}
    picks += [("searched", t) for t in searched if t.number not in taken][:extra]
    return picks


class Claimed(Exception):
    """Another run of this script is distilling the plan."""


def claim(path: Path) -> bool:
    """Take the right to distill a plan; a claim whose process is gone is stale and taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)
            return claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def final_of(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, root: Path, args: argparse.Namespace,
    scratch: Path | None = None,
) -> Final:  # fmt: skip
    """Distill and evaluate a trial's plan, or read the result of an earlier run of the same plan.

    The student is written under ``root/students``, or under ``scratch`` and deleted once evaluated (so ``root``
    keeps only small files). Raises ``Claimed`` when another run is distilling it.
    """
    ff = {int(k): float(v) for k, v in (trial.user_attrs.get("ff_keep") or {}).items()}
    key = plan_key(Plan.removing(trial.user_attrs["removed"], ff))
    if (done := final_path(root, key, args.final_steps)).is_file():
        return Final(**json.loads(done.read_text()))
    settings = study.user_attrs["search"]
    teacher = Teacher.resolve(settings["teacher"])
    recipe = recipe_for_trial(settings, teacher, topology_of(meta_unet(teacher.config)), study.study_name, trial)
    path = save_recipe(recipe, root / "plans" / f"{key}.yaml")
    return distilled(path, key, root, args, settings["data"], scratch=scratch)


def final_path(root: Path, key: str, steps: int, seed: int = 0) -> Path:
    """Where a plan's final is kept: one file per plan, steps and distillation seed (seed 0 unnamed, as the
    first results were written)."""
    return root / "finals" / (f"{key}-{steps}.json" if seed == 0 else f"{key}-{steps}-seed{seed}.json")


def distilled(
    recipe: Path, key: str, root: Path, args: argparse.Namespace, data: str | None, seed: int = 0,
    scratch: Path | None = None, validate_every: int | None = None, eval_seeds: tuple[int, ...] = (),
) -> Final:  # fmt: skip
    """A recipe's student after ``args.final_steps`` steps at distillation seed ``seed`` (its rows' order, noise
    and timesteps), evaluated on ``args.eval_n`` held-out prompts; read back where an earlier run kept it.
    ``validate_every`` keeps the held-out KD along the way (the curve; validation draws from its own generators,
    so the run trains as it would without); ``eval_seeds`` evaluates the same student again on other held-out
    sets (their prompts, noise and sampling), to measure the yardstick's evaluation noise.

    Raises ``Claimed`` when another run is distilling the same plan at the same seed."""
    done = final_path(root, key, args.final_steps, seed)
    if done.is_file():
        return Final(**json.loads(done.read_text()))
    lock = done.with_suffix(".claim")
    if not claim(lock):
        raise Claimed(key)
    student = (scratch or root / "students") / (key if seed == 0 else f"{key}-seed{seed}")
    try:
        start = time.perf_counter()
        opts = DistillOptions(steps=args.final_steps, data=data, seed=seed, batch_size=args.final_batch,
                              validate_every=validate_every)  # fmt: skip
        trained = distill_recipe(recipe, student, opts)
        seconds = time.perf_counter() - start
        teacher = Teacher.resolve(load_recipe(recipe).teacher.model)
        r = evaluate_student(student, teacher, n_prompts=args.eval_n, grid_path=None)
        curve = trained.held_out_kd if validate_every else None
        evals = {str(e): evaluate_student(student, teacher, n_prompts=args.eval_n, seed=e).kd_loss
                 for e in eval_seeds} or None  # fmt: skip
        final = Final(key, args.final_steps, r.kd_loss, r.psnr, r.prompt_accuracy, r.prompt_accuracy_se, seconds,
                      seed, curve, evals)  # fmt: skip
        done.write_text(json.dumps(asdict(final)))
        return final
    finally:
        lock.unlink(missing_ok=True)
        if scratch is not None:
            shutil.rmtree(student, ignore_errors=True)


def search(
    budget: str, seed: int, root: Path, args: argparse.Namespace, prefix: str = "svh", **settings: Any
) -> tuple[optuna.Study, float]:
    """Run or resume the search ``PREFIX-BUDGET-seedN`` (a journal file in ``root``); ``settings`` override the
    SearchConfig fields taken from ``args`` (trials, proxy_steps, top_steps, sampler). Returns the study and the
    seconds its first run took."""
    name = f"{prefix}-{budget.replace('=', '-')}-seed{seed}"
    fields = {"trials": args.trials, "proxy_steps": args.proxy_steps, "top_steps": args.top_steps,
              "sampler": args.sampler, **settings}  # fmt: skip
    cfg = SearchConfig(teacher="tiny-sdxl", budget=budget, seed=seed, storage=f"journal:{root / f'{name}.log'}",
                       study=name, out=None, **fields)  # fmt: skip
    start = time.perf_counter()
    result = run_search(cfg, Teacher.resolve(cfg.teacher))
    seconds = time.perf_counter() - start
    # a rerun over a finished study (to pool seeds searched in parallel runs) reports the first run's time
    seconds = float(result.study.user_attrs.get("benchmark_search_s", seconds))
    result.study.set_user_attr("benchmark_search_s", seconds)
    return result.study, seconds


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def report_budget(budget: str, rows: list[Row], search_s: list[float]) -> dict[str, object]:
    """Print one budget's table and summary; return the summary."""
    print(f"\n== budget {budget}: {rows[0].final.steps} distillation steps per plan ==")
    print(f"{'seed':>4} {'plan':<16}{'trial':>6}{'params':>11}{'MACs':>13}{'proxy KD':>10}{'KD after':>10}"
          f"{'PSNR':>7}{'accuracy':>15}")  # fmt: skip
    for r in sorted(rows, key=lambda r: (r.seed, r.final.kd)):
        f = r.final
        acc = f"{100 * f.accuracy:.1f}% ± {100 * (f.accuracy_se or 0):.1f}" if f.accuracy is not None else "-"
        print(f"{r.seed:>4} {r.role:<16}{r.trial:>6}{r.params:>11,}{r.macs:>13,}{r.proxy_kd:>10.5f}{f.kd:>10.5f}"
              f"{f.psnr:>7.2f}{acc:>15}")  # fmt: skip
    seeds = sorted({r.seed for r in rows})
    by = {(r.seed, r.role.split(":")[0]): r for r in rows}
    vs_sens = [by[s, "sensitivity"].final.kd / by[s, "found"].final.kd for s in seeds if (s, "sensitivity") in by]
    vs_hand = [by[s, "found"].final.kd / by[s, "hand"].final.kd for s in seeds if (s, "hand") in by]
    unique = {r.final.key: r for r in rows}  # a plan distilled once, scored by its first search
    taus_all, taus_half = [], []
    for s in seeds:
        mine = list({r.final.key: r for r in rows if r.seed == s}.values())  # a plan once (found may be a seed)
        proxy, final = [r.proxy_kd for r in mine], [r.final.kd for r in mine]
        taus_all.append(kendall_tau(proxy, final))
        half = sorted(mine, key=lambda r: r.final.kd)[: max(2, len(mine) // 2)]
        taus_half.append(kendall_tau([r.proxy_kd for r in half], [r.final.kd for r in half]))
    distill_s = statistics.fmean(r.final.seconds for r in rows if r.role == "found")
    summary = {
        "budget": budget, "seeds": seeds, "sensitivity_over_found": vs_sens, "found_over_hand": vs_hand,
        "tau_all": taus_all, "tau_best_half": taus_half, "search_seconds": search_s,
        "found_distill_seconds": distill_s, "unique_plans": len(unique),
    }  # fmt: skip
    print(f"found beats the sensitivity seed by (KD ratio, per seed): {[f'{v:.2f}x' for v in vs_sens]}, "
          f"mean {_mean_sd(vs_sens)}x  [goal: every seed > 1, mean >= 1.3]")  # fmt: skip
    print(f"found KD / best hand style KD (per seed): {[f'{v:.2f}' for v in vs_hand]}  [goal: <= 0.5]")
    print(f"Kendall tau proxy vs final, per seed: all {[f'{t:.2f}' for t in taus_all]} (mean {_mean_sd(taus_all)}), "
          f"best half {[f'{t:.2f}' for t in taus_half]} (mean {_mean_sd(taus_half)})  [goal: 0.8 / 0.6]")  # fmt: skip
    print(f"search {statistics.fmean(search_s) / 60:.1f} min per seed against {distill_s / 60:.1f} min to distill "
          f"the found plan  [goal: search < distill]")  # fmt: skip
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="20%,30%,50%,macs=50%", help="comma-separated budgets")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated search seeds")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--proxy-steps", type=int, default=30)
    p.add_argument("--top-steps", type=int, default=None)
    p.add_argument("--sampler", default="mutation", choices=("mutation", "nsga2", "tpe"))
    p.add_argument("--final-steps", type=int, default=1000, help="distillation steps per plan")
    p.add_argument("--final-batch", type=int, default=None, help="distillation batch (default: the recipe's)")
    p.add_argument("--extra", type=int, default=2, help="next best searched plans distilled per search")
    p.add_argument("--eval-n", type=int, default=256, help="held-out prompts per evaluation")
    p.add_argument("--out", type=Path, default=Path("/tmp/pruner-search-vs-heuristics"))
    p.add_argument("--refill", action="store_true", help="the search's refill move (issue #31)")
    p.add_argument("--module-sensitivity", action="store_true", help="the search's module sensitivities")
    p.add_argument("--anchor", default=defaults.ANCHOR, choices=defaults.ANCHOR_CHOICES,
                   help="the one-shot plan found.yaml falls back to (issue #31)")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(default_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for budget in args.budgets.split(","):
        seeds = [int(s) for s in args.seeds.split(",")]
        moves = {"refill": args.refill, "module_sensitivity": args.module_sensitivity}
        prefix = "svh" + "".join(f"-{k.replace('_', '-')}" for k, on in moves.items() if on)  # its own studies
        if args.anchor != SENSITIVITY:  # studies named before the refill was an anchor keep their names
            prefix += f"-{args.anchor.removeprefix('sensitivity-')}"
        # every search before any distillation
        searched = {seed: search(budget, seed, args.out, args, prefix, anchor=args.anchor, **moves) for seed in seeds}
        jobs = [(seed, role, trial) for seed in seeds for role, trial in chosen(searched[seed][0], args.extra)]
        finals: dict[tuple[int, str], Final] = {}
        while len(finals) < len(jobs):
            waiting = 0
            for seed, role, trial in jobs:
                if (seed, role) in finals:
                    continue
                try:
                    finals[seed, role] = final = final_of(searched[seed][0], trial, args.out, args)
                except Claimed:
                    waiting += 1
                    continue
                print(f"{budget} seed {seed} {role}: trial {trial.number}, KD {final.kd:.5f}", flush=True)
            if waiting:
                time.sleep(10)  # plans another run is distilling
        rows = []
        for seed, role, trial in jobs:
            u = trial.user_attrs
            rows.append(Row(budget, seed, role, trial.number, u["params"], u["macs"], u["proxy_kd"],
                            int(u.get("rung_steps", 0)), finals[seed, role]))  # fmt: skip
        summaries.append(report_budget(budget, rows, [searched[s][1] for s in seeds]))
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "summaries": summaries,
                   "rows": [asdict(r) for r in rows]}  # fmt: skip
        moved = prefix.removeprefix("svh")  # a run with the moves on keeps its own results beside the plain one's
        (args.out / f"results{moved}-{budget.replace('=', '-')}.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
