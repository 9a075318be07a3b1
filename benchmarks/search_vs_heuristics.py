"""Search against hand-picked removals on the bundled teacher, at one budget.

Runs `pruner search`, then distills the found plan, every heuristic seed (BK-SDM, KOALA, SSD-1B, Vega
styles, sensitivity one-shot) and the next best searched plans for the same number of steps (cosine
schedule), evaluates each with `pruner eval`, and prints one table, the Kendall tau between the proxy's
ranking and the ranking after distillation, and what the zero-shot screen saved.

    python benchmarks/search_vs_heuristics.py --budget 50% --steps 300      # CPU: about 5 minutes a plan
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import optuna
import torch

from pruner.distill.run import DistillOptions, distill_recipe
from pruner.evaluate import EvalReport, evaluate_student
from pruner.recipe import save_recipe
from pruner.runtime import default_threads
from pruner.search.study import SearchConfig, recipe_for_trial, run_search
from pruner.unet import meta_unet, topology_of, unet_config


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a between two score lists (same items, same order)."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    score = sum((a[i] - a[j]) * (b[i] - b[j]) > 0 for i, j in pairs) - sum(
        (a[i] - a[j]) * (b[i] - b[j]) < 0 for i, j in pairs
    )
    return score / len(pairs) if pairs else float("nan")


def chosen_trials(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    """The labelled seeds, then the best other complete trials by proxy KD, up to ``n``."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "proxy_kd" in t.user_attrs]
    seeds = [t for t in done if t.user_attrs.get("label")]
    others = sorted((t for t in done if not t.user_attrs.get("label")), key=lambda t: t.user_attrs["proxy_kd"])
    return (seeds + others)[: max(n, len(seeds))]


def distill_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, name: str, root: Path, steps: int,
                  eval_n: int, seed: int = 0) -> EvalReport:  # fmt: skip
    """Write a trial's recipe to root/plans, distill it ``steps`` steps into root/students, evaluate it."""
    settings = study.user_attrs["search"]
    teacher_cfg = unet_config(settings["teacher"])
    topo = topology_of(meta_unet(teacher_cfg))
    recipe = recipe_for_trial(settings, teacher_cfg, topo, study.study_name, trial)
    path = save_recipe(recipe, root / "plans" / f"{name}.yaml")
    distill_recipe(path, root / "students" / name, DistillOptions(steps=steps, data=settings["data"], seed=seed))
    return evaluate_student(root / "students" / name, settings["teacher"], n_prompts=eval_n, grid_path=None)


def screen_savings(study: optuna.Study) -> tuple[float, float, float]:
    """(share of trials the zero-shot screen stopped, their mean seconds, a full trial's mean seconds)."""

    def seconds(t: optuna.trial.FrozenTrial) -> float:
        return (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else 0.0
        )

    finished = [t for t in study.trials if t.state.is_finished()]
    screened = [t for t in finished if t.user_attrs.get("screened")]
    full = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    mean = lambda ts: sum(map(seconds, ts)) / len(ts) if ts else float("nan")  # noqa: E731
    return len(screened) / max(1, len(finished)), mean(screened), mean(full)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="50%")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--proxy-steps", type=int, default=30)
    p.add_argument("--steps", type=int, default=300, help="distillation steps per plan")
    p.add_argument("--plans", type=int, default=8, help="plans distilled (seeds first, then the best searched)")
    p.add_argument("--eval-n", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("/tmp/pruner-search-vs-heuristics"))
    args = p.parse_args()
    torch.set_num_threads(default_threads())  # one thread on a 2-core machine: two are far slower there
    args.out.mkdir(parents=True, exist_ok=True)
    storage = f"journal:{args.out / 'study.log'}"
    cfg = SearchConfig(teacher="tiny-sdxl", budget=args.budget, trials=args.trials, proxy_steps=args.proxy_steps,
                       storage=storage, study=f"svh-{args.budget}", out=args.out / "recipes")  # fmt: skip
    start = time.perf_counter()
    result = run_search(cfg)
    search_minutes = (time.perf_counter() - start) / 60
    rows = []
    for trial in chosen_trials(result.study, args.plans):
        name = trial.user_attrs.get("label") or f"trial-{trial.number}"
        report = distill_trial(result.study, trial, name, args.out, args.steps, args.eval_n)
        rows.append((name, trial, report))
        print(f"{name}: kd {report.kd_loss:.5f}, psnr {report.psnr:.2f}, accuracy {report.prompt_accuracy}", flush=True)
    print(f"\nbudget {args.budget}; {args.steps} distillation steps per plan; search: {search_minutes:.1f} CPU-minutes")
    head = f"{'plan':<14}{'params':>10}{'MACs':>12}{'zero-shot':>11}{'proxy KD':>10}"
    print(head + f"{'KD after':>10}{'PSNR':>7}{'accuracy':>10}")
    for name, trial, r in sorted(rows, key=lambda row: row[2].kd_loss):
        u = trial.user_attrs
        zero_shot = u.get("zero_shot_kd", float("nan"))
        print(f"{name:<14}{u['params']:>10,}{u['macs']:>12,}{zero_shot:>11.5f}{u['proxy_kd']:>10.5f}"
              f"{r.kd_loss:>10.5f}{r.psnr:>7.2f}{100 * (r.prompt_accuracy or 0):>9.1f}%")  # fmt: skip
    final = [r.kd_loss for _, _, r in rows]
    proxy = [t.user_attrs["proxy_kd"] for _, t, _ in rows]
    print(f"Kendall tau, proxy KD vs KD after distillation: {kendall_tau(proxy, final):.2f}")
    zero = [t.user_attrs.get("zero_shot_kd", float("nan")) for _, t, _ in rows]
    print(f"Kendall tau, zero-shot KD vs KD after distillation: {kendall_tau(zero, final):.2f}")
    results = [{"plan": name, "removed": t.user_attrs["removed"], "ff_keep": t.user_attrs.get("ff_keep") or {},
                "params": t.user_attrs["params"], "macs": t.user_attrs["macs"],
                "zero_shot_kd": t.user_attrs.get("zero_shot_kd"), "proxy_kd": t.user_attrs["proxy_kd"],
                "kd_after": r.kd_loss, "psnr": r.psnr, "prompt_accuracy": r.prompt_accuracy}
               for name, t, r in rows]  # fmt: skip
    summary = {"budget": args.budget, "steps": args.steps, "search_minutes": search_minutes, "plans": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    share, screened_s, full_s = screen_savings(result.study)
    print(
        f"zero-shot screen: stopped {100 * share:.0f}% of trials; {screened_s:.1f} s each, {full_s:.1f} s a full trial"
    )


if __name__ == "__main__":
    main()
