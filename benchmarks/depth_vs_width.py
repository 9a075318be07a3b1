"""Depth-only search against depth+width search on the bundled teacher, at one budget.

Runs `pruner search` twice with the same budget, trials, proxy steps and seed: once over the default
space (transformer depths, layers, the mid block) and once over `search/depth-width.yaml` (the same plus a
feed-forward keep ratio per resolution level, pruned with torch-pruning). The best plans of each study
by proxy KD are distilled for the same number of steps (cosine schedule) and evaluated with `pruner
eval`; one table, the search cost of each, and `results.json` in --out.

    python benchmarks/depth_vs_width.py --budget 30% --steps 200 --trials 16 --plans 3 --eval-n 128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import optuna
import torch
from search_vs_heuristics import distill_trial

from pruner.runtime import default_threads
from pruner.study.study import SearchConfig, run_search
from pruner.teacher import Teacher

SPACES = ("default", "depth-width")


def best_trials(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    """The ``n`` complete trials with the lowest proxy KD (found.yaml's plan first)."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "proxy_kd" in t.user_attrs]
    return sorted(done, key=lambda t: t.user_attrs["proxy_kd"])[:n]


def widths_text(trial: optuna.trial.FrozenTrial) -> str:
    ff = trial.user_attrs.get("ff_keep") or {}
    return ",".join(f"{k}:{v:g}" for k, v in sorted(ff.items())) or "full"


def run_space(space: str, args: argparse.Namespace) -> tuple[float, list[dict]]:
    """Search one space, then distill and evaluate its best plans; (search minutes, result rows)."""
    root = args.out / space
    cfg = SearchConfig(teacher="tiny-sdxl", budget=args.budget, trials=args.trials, proxy_steps=args.proxy_steps,
                       space=space, storage=f"journal:{root / 'study.log'}", study=f"dvw-{space}-{args.budget}",
                       out=root / "recipes", seed=args.seed)  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = run_search(cfg, Teacher.resolve(cfg.teacher))
    minutes = (time.perf_counter() - start) / 60
    rows = []
    for trial in best_trials(result.study, args.plans):
        name = f"trial-{trial.number}" + (f"-{trial.user_attrs['label']}" if trial.user_attrs.get("label") else "")
        report = distill_trial(result.study, trial, name, root, args.steps, args.eval_n, args.seed)
        u = trial.user_attrs
        rows.append({"space": space, "plan": name, "params": u["params"], "macs": u["macs"],
                     "widths": widths_text(trial), "removed": u["removed"], "proxy_kd": u["proxy_kd"],
                     "kd_after": report.kd_loss, "psnr": report.psnr,
                     "prompt_accuracy": report.prompt_accuracy})  # fmt: skip
        print(f"{space} {name}: kd {report.kd_loss:.5f}, psnr {report.psnr:.2f}", flush=True)
    return minutes, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="30%")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--proxy-steps", type=int, default=30)
    p.add_argument("--steps", type=int, default=200, help="distillation steps per plan")
    p.add_argument("--plans", type=int, default=3, help="best plans by proxy KD distilled from each study")
    p.add_argument("--eval-n", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/pruner-depth-vs-width"))
    args = p.parse_args()
    torch.set_num_threads(default_threads())  # one thread on a 2-core machine: two are far slower there
    minutes, rows = {}, []
    for space in SPACES:
        minutes[space], space_rows = run_space(space, args)
        rows += space_rows
    print(f"\nbudget {args.budget}; {args.trials} trials and {args.proxy_steps} proxy steps per study; "
          f"{args.steps} distillation steps per plan; evaluated on {args.eval_n} prompts")  # fmt: skip
    print("search CPU-minutes: " + ", ".join(f"{s} {m:.1f}" for s, m in minutes.items()))
    print(f"{'space':<13}{'plan':<22}{'params':>10}{'MACs':>12}{'FF widths':>16}{'proxy KD':>10}"
          f"{'KD after':>10}{'PSNR':>7}{'accuracy':>10}")  # fmt: skip
    for r in sorted(rows, key=lambda r: r["kd_after"]):
        acc = 100 * (r["prompt_accuracy"] or 0)
        print(f"{r['space']:<13}{r['plan']:<22}{r['params']:>10,}{r['macs']:>12,}{r['widths']:>16}"
              f"{r['proxy_kd']:>10.5f}{r['kd_after']:>10.5f}{r['psnr']:>7.2f}{acc:>9.1f}%")  # fmt: skip
    best = {s: min((r["kd_after"] for r in rows if r["space"] == s), default=float("nan")) for s in SPACES}
    print(f"best KD after distillation: depth-only {best['default']:.5f}, depth+width {best['depth-width']:.5f} "
          f"(ratio {best['default'] / best['depth-width']:.2f}x)")  # fmt: skip
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "search_minutes": minutes, "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
