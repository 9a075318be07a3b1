"""Where the proxy and the yardstick part: each distilled plan's proxy score taken apart row by row.

The proxy scores a plan by its mean held-out KD on rows of the calibration cache (the data set's latents and
captions, noised at seeded timesteps) after a short fine-tune; the yardstick (``evaluate_student``, what
``search_oracle.py`` and ``final_noise.py`` rank by) measures the distilled student's KD on latents the teacher
samples for prompts outside its data set. Two guesses at why they rank close plans differently can be checked
without distilling anything again:

- the mean over timesteps hides where plans differ: a quarter of the timesteps may rank them as the finals do;
- the held-out rows are not the yardstick's distribution: scored on teacher samples, the same short fine-tune
  may rank them better.

Reads a ``summary-BUDGET.json`` of ``search_oracle.py`` (the plans from the ``plans/`` recipes beside it) and,
where ``final_noise.py`` wrote it beside, ``noise-BUDGET.json`` (each plan's final KD averaged over distillation
seeds; else the summary's one seed). Trains every distilled plan as the search's top rung does (``--steps`` in
one cosine segment, the search's rows in each ``--orders`` order, on ``--calibration`` rows), then scores the
student row by row on the held-out rows and on ``--samples`` teacher samples (prompts and sampling seeded by
``--prompt-seed``, none of them the yardstick's). Prints, for each way of scoring, Kendall tau against the final
means over all plans and over the better half, and each plan's lead over the sensitivity seed (positive: reads
better than the seed), plans in the order they end:

    python benchmarks/proxy_rows.py benchmarks/results/search_oracle/summary-30%.json --steps 100 --orders 1 2 3
    python benchmarks/proxy_rows.py benchmarks/results/search_oracle/summary-30%.json --steps 1000 --calibration 384

Last, which plans the found-plan rule would name on each kind of rows and on both (``paired_lead`` over the
orders, at least ``--min-lead`` of the seed's score and ``LEAD_SE`` standard errors: the long confirmation's
bar), beside how each ends against the seed.

``--json`` keeps every row's KD (after each plan, so a run stopped part-way keeps what it finished);
``--report`` prints the tables of kept runs again, runs of the same training under other orders merged
(``--orders 1`` then ``--orders 2 3`` read as ``--orders 1 2 3``), training nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_fidelity import best_half_tau
from search_oracle import SEED_ROLE
from search_vs_heuristics import kendall_tau

from pruner import defaults
from pruner.budget import parse_budget
from pruner.diffusion import conditioning, default_resolution, generate
from pruner.distillation.engine import KDInputs, teacher_pass
from pruner.evaluation import eval_prompts
from pruner.io import write_json
from pruner.recipe import load_recipe
from pruner.runtime import default_threads
from pruner.study.choice import LEAD_SE, Lead, carries, paired_lead
from pruner.study.context import AFRESH, SearchContext
from pruner.study.study import SearchConfig, build_context
from pruner.teacher import Teacher

QUARTERS = 4  # timestep bins, each holding a quarter of a set's rows


@dataclass
class RowSet:
    """Rows a student is scored on: noised inputs, the teacher's predictions on them, their timesteps."""

    name: str
    inputs: KDInputs
    teacher_pred: torch.Tensor

    @property
    def timesteps(self) -> list[int]:
        return [int(t) for t in self.inputs.timesteps]


def final_means(summary_path: Path, summary: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Each distilled plan's final KD: the means over distillation seeds where ``final_noise.py`` kept them, else
    the summary's one seed; and which it is."""
    noise = summary_path.with_name(f"noise-{summary['budget'].replace('=', '-')}.json")
    if noise.is_file():
        tables = json.loads(noise.read_text())
        return {k: float(v) for k, v in tables["mean"].items()}, f"means over distillation seeds {tables['seeds']}"
    return {p["key"]: float(p["kd"]) for p in summary["plans"] if "kd" in p}, "distillation seed 0"


def seed_key(summary: dict[str, Any]) -> str:
    """The sensitivity seed's plan."""
    return next(p["key"] for p in summary["plans"] if p["role"] == SEED_ROLE)


def held_out_rows(ctx: SearchContext) -> RowSet:
    """The proxy's own held-out rows (what a trial's score averages)."""
    rows = ctx.calib.held_out
    return RowSet("held-out rows", ctx.calib.inputs.rows(rows), ctx.calib.teacher_pred[rows])


@torch.no_grad()
def teacher_samples(teacher: Teacher, n: int, seed: int) -> RowSet:
    """``n`` latents the teacher samples for prompts outside its data set, noised at seeded timesteps, with its
    predictions on them: the yardstick's kind of rows (``evaluate_student``), on other prompts and seeds."""
    pipe = teacher.pipeline(device=torch.device("cpu"), dtype=torch.float32)
    side = default_resolution(dict(pipe.unet.config), int(pipe.vae_scale_factor))
    prompts = eval_prompts(n, seed, teacher.ref, None)
    latents = generate(pipe, prompts, output_type="latent", seed=1000 * seed, steps=defaults.EVAL_STEPS,
                       guidance=defaults.GUIDANCE, resolution=side).images  # fmt: skip
    embeds, added = conditioning(pipe, prompts, latents.device)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    noised = KDInputs.noised(scheduler, latents.float(), embeds, added, torch.Generator().manual_seed(1000 * seed + 1))
    return RowSet("teacher samples", noised, teacher_pass(pipe.unet, noised).pred)


@torch.no_grad()
def row_kd(student: torch.nn.Module, rows: RowSet, batch: int = 32) -> list[float]:
    """The student's KD (MSE against the teacher's prediction) on each row."""
    student.eval()
    out: list[float] = []
    for chunk in torch.arange(len(rows.inputs)).split(batch):
        inputs = rows.inputs.rows(chunk)
        pred = student(*inputs.unet_args(), added_cond_kwargs=inputs.added).sample
        out += ((pred.float() - rows.teacher_pred[chunk].float()) ** 2).mean(dim=(1, 2, 3)).tolist()
    return out


def quarter_bins(timesteps: Sequence[int]) -> list[tuple[int, int]]:
    """Timestep bins ``(low, high]`` that each hold a quarter of the rows (fewer where timesteps repeat across a
    cut; a bin left empty is dropped)."""
    ranked = sorted(timesteps)
    cuts = [-1, *(ranked[len(ranked) * q // QUARTERS - 1] for q in range(1, QUARTERS)), ranked[-1]]
    return [(lo, hi) for lo, hi in itertools.pairwise(cuts) if lo < hi]


def scorings(timesteps: Sequence[int]) -> list[tuple[str, list[int]]]:
    """The ways a set's per-row KDs are averaged: all rows, then each quarter of the timesteps."""
    every = list(range(len(timesteps)))
    bins = quarter_bins(timesteps)
    return [
        ("all rows", every),
        *((f"t in ({lo}, {hi}]", [i for i, t in enumerate(timesteps) if lo < t <= hi]) for lo, hi in bins),
    ]


def rank_table(per_row: dict[str, list[float]], timesteps: Sequence[int], final: dict[str, float], seed: str,
               label: str) -> list[str]:  # fmt: skip
    """One line per scoring: tau against ``final`` over all plans and over the better half, and each plan's lead
    over ``seed`` (1 - its score over the seed's), plans in the order they end."""
    keys = sorted((k for k in per_row if k in final), key=final.__getitem__)
    ends = [final[k] for k in keys]
    lines = [f"{label}: {len(keys)} plans, in the order they end: " + " ".join(k[:8] for k in keys)]
    lines.append(f"{'scoring':<22}{'tau all':>8}{'better half':>12}  lead over the seed ({seed[:8]}), each plan")
    for name, idx in scorings(timesteps):
        score = {k: statistics.fmean(per_row[k][i] for i in idx) for k in keys}
        tau, half = kendall_tau([score[k] for k in keys], ends), best_half_tau([score[k] for k in keys], ends)
        base = score.get(seed)  # None where the seed has no final to rank it by
        leads = " ".join("seed" if k == seed else f"{1 - score[k] / base:+.0%}" if base else "-" for k in keys)
        lines.append(f"{name:<22}{tau:>8.2f}{half:>12.2f}  {leads}")
    return lines


def mean_over_orders(runs: Sequence[list[float]]) -> list[float]:
    return [statistics.fmean(row) for row in zip(*runs, strict=True)]


def measure(args: argparse.Namespace, summary: dict[str, Any], keys: list[str],
            keep: Callable[[dict[str, Any]], None] = lambda _run: None) -> dict[str, Any]:  # fmt: skip
    """Train every plan under each order and score its student row by row on each set: the kept run, also
    handed to ``keep`` after each plan (a run stopped part-way keeps the plans it finished)."""
    cfg = SearchConfig(budget=summary["budget"], seed=0, calibration=args.calibration, progress=False)
    teacher = Teacher.resolve(cfg.teacher)
    ctx = build_context(cfg, teacher, parse_budget(cfg.budget), schedule=AFRESH)
    sets = [held_out_rows(ctx)] + ([teacher_samples(teacher, args.samples, args.prompt_seed)] if args.samples else [])
    print(f"each trained {args.steps} steps in one segment on {ctx.calib.n_train} rows, orders {args.orders}")
    per_row: dict[str, dict[str, list[list[float]]]] = {s.name: {} for s in sets}
    kept = {"steps": args.steps, "calibration": ctx.calib.n_train, "orders": args.orders,
            "timesteps": {s.name: s.timesteps for s in sets}, "per_row": per_row}  # fmt: skip
    start = time.perf_counter()
    for key in keys:
        plan = load_recipe(args.summary.parent / "plans" / f"{key}.yaml").plan_obj()
        for order in args.orders:
            with ctx.proxy_run(plan, order) as run:
                run.train_to(args.steps)
                for s in sets:
                    per_row[s.name].setdefault(key, []).append(row_kd(run.student, s))
        means = (f"{s.name} {statistics.fmean(mean_over_orders(per_row[s.name][key])):.6f}" for s in sets)
        print(f"  {key[:8]}: {', '.join(means)}", flush=True)
        keep(kept)
    print(f"{(time.perf_counter() - start) / max(1, len(keys) * len(args.orders)):.0f} s a plan and order")
    return kept


def merged(paths: Sequence[Path]) -> dict[str, Any]:
    """Kept runs (``--json``) as one: each plan's orders together. They must have trained and scored alike."""
    runs = [json.loads(path.read_text()) for path in paths]
    for path, run in zip(paths[1:], runs[1:], strict=True):
        if any(run[k] != runs[0][k] for k in ("steps", "calibration", "timesteps")):
            raise SystemExit(f"{path}: trained or scored otherwise than {paths[0]} (steps, rows or scored rows): "
                             "give runs of one setting")  # fmt: skip
    per_row = {name: {key: [o for run in runs for o in run["per_row"][name].get(key, [])] for key in plans}
               for name, plans in runs[0]["per_row"].items()}  # fmt: skip
    orders = [o for run in runs for o in run["orders"]]
    return {**runs[0], "orders": orders, "per_row": per_row}


def rule_leads(per_order: dict[str, list[list[float]]], seed: str, min_lead: float
               ) -> tuple[float, dict[str, tuple[Lead, bool]]]:  # fmt: skip
    """The seed's mean score, and each plan's lead over ``seed`` as the found-plan rule reads it (its mean KD
    under each order against the seed's under the same order, :func:`paired_lead`) with whether it names the
    plan (:func:`carries`: more than ``LEAD_SE`` standard errors and ``min_lead`` of the seed's score). A plan
    scored under other orders than the seed (a run stopped part-way) is left out."""
    means = {k: [statistics.fmean(rows) for rows in runs] for k, runs in per_order.items()}
    base = statistics.fmean(means[seed])
    leads = {k: paired_lead(v, means[seed]) for k, v in means.items() if k != seed and len(v) == len(means[seed])}
    return base, {k: (lead, carries(lead, base, min_lead)) for k, lead in leads.items()}


def rule_table(kept: dict[str, Any], final: dict[str, float], seed: str, min_lead: float) -> list[str]:
    """Which plans the rule would name on each kind of rows, and on all of them at once, beside how each plan
    ends against the seed (positive: a lower final KD), plans in the order they end."""
    read = {name: rule_leads(plans, seed, min_lead) for name, plans in kept["per_row"].items() if seed in plans}
    if not read or seed not in final:
        return []
    base = {name: seed_mean for name, (seed_mean, _) in read.items()}
    sets = {name: leads for name, (_, leads) in read.items()}
    keys = sorted((k for k in final if all(k in leads for leads in sets.values())), key=final.__getitem__)
    lines = [f"the rule's lead over the seed ({seed[:8]}), paired over orders {kept['orders']}: named at "
             f"{min_lead:.0%} or more of the seed's score and over {LEAD_SE:g} standard errors"]  # fmt: skip
    lines.append(f"{'plan':<10}{'ends':>8}" + "".join(f"{name:>22}" for name in sets) + "  named on")
    for k in keys:
        cells, named = [], []
        for name, leads in sets.items():
            lead, carried = leads[k]
            se = f" ± {lead.se / base[name]:.1%}" if math.isfinite(lead.se) else ""
            cells.append(f"{lead.mean / base[name]:+.1%}{se}{'*' if carried else ' '}")
            named += [name] if carried else []
        every = "both" if len(sets) == 2 else "all"
        where = every if len(named) == len(sets) > 1 else ", ".join(named) or "-"
        lines.append(
            f"{k[:8]:<10}{1 - final[k] / final[seed]:>+8.1%}" + "".join(f"{c:>22}" for c in cells) + f"  {where}"
        )
    return lines


def report(kept: dict[str, Any], final: dict[str, float], seed: str, min_lead: float) -> None:
    """Each set's table: the plans' scores averaged over the kept orders; then the rule's leads on each set."""
    print(f"{kept['steps']} steps on {kept['calibration']} rows, the scores averaged over orders {kept['orders']}")
    for name, plans in kept["per_row"].items():
        scores = {k: mean_over_orders(v) for k, v in plans.items()}
        print("\n".join(["", *rank_table(scores, kept["timesteps"][name], final, seed, name)]))
    print("\n".join(["", *rule_table(kept, final, seed, min_lead)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("summary", type=Path, help="a summary-BUDGET.json of search_oracle.py")
    p.add_argument("--steps", type=int, default=100, help="KD steps in one cosine segment (the top rung's: 100)")
    p.add_argument("--calibration", type=int, default=defaults.CALIBRATION, help="training rows")
    p.add_argument("--orders", type=int, nargs="+", default=[1], help="row orders, each plan's scores averaged")
    p.add_argument("--samples", type=int, default=128, help="teacher samples to score on (0: none)")
    p.add_argument("--prompt-seed", type=int, default=7, help="seeds the samples' prompts, noise (0: the yardstick's)")
    p.add_argument(
        "--min-lead",
        type=float,
        default=defaults.CONFIRM_LEAD,
        help="the lead, a share of the seed's score, the rule needs to name a plan (the confirmation's)",
    )
    p.add_argument("--json", type=Path, help="keep every plan's per-row KDs here")
    p.add_argument("--report", type=Path, nargs="+", help="train nothing: the tables of these kept runs, merged")
    args = p.parse_args()
    torch.set_num_threads(default_threads())
    summary = json.loads(args.summary.read_text())
    final, which = final_means(args.summary, summary)
    keys = [k for k in dict.fromkeys(p["key"] for p in summary["plans"]) if k in final]
    print(f"{len(keys)} plans at {summary['budget']}, final KD: {which}", flush=True)
    if args.report:
        kept = merged(args.report)
    else:
        kept = measure(
            args, summary, keys, (lambda run: write_json(args.json, run, indent=None)) if args.json else lambda _r: None
        )
    report(kept, final, seed_key(summary), args.min_lead)


if __name__ == "__main__":
    main()
