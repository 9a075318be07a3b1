"""How good can a plan be at a budget? An oracle search bounds the optimum, and the default search's regret.

For each budget, in phases that a rerun skips once done (all state in ``--out``, small files only):

1. **default**: the default search (``pruner.defaults``: its trials, rungs and sampler) at each of ``--seeds``;
2. **oracle**: one search with ``--trials`` (ten times the default) and every plan past the zero-shot rung
   trained to the top fidelity (``--proxy-steps`` = ``--top-steps``), seed 0, so its proxy scores share the
   default seed 0's rows;
3. **picks**: ``--picks`` of the oracle's plans at the top rung: the best by proxy KD, then, among the best
   ``2 x --picks``, each time the plan farthest (fewest units in common) from those already picked; written
   once to ``picks-BUDGET.json`` so later runs distill the same plans;
4. **distill**: each pick, the sensitivity one-shot seed and each default search's found plan, distilled for
   ``--final-steps`` and evaluated on held-out prompts (``search_vs_heuristics.final_of``: one JSON per plan
   under ``finals/``, claims so several runs on one ``--out`` share the work; students under ``--scratch``,
   deleted once evaluated);
5. **table**: ``summary-BUDGET.json`` (the run's default searches at that budget, under the command that made
   it), ``table.md`` (every budget's summary in ``--out``, each under its command: a run at one budget keeps
   the others') and the best plan at each budget as a recipe, ``--recipes/oracle-BUDGET.yaml``, with its final
   KD in the description and this benchmark in its provenance.

Reported: the best final KD any plan reached, each default search's regret (its found plan's final KD over
the best) and the seed's ratio to the best.

    nice -n 19 python benchmarks/search_oracle.py --budgets 30%,50%
    python benchmarks/search_oracle.py --budgets 30%,50% --rechoose   # the default searches' choice made again
    python benchmarks/search_oracle.py --status      # how far the run got, from the state alone
    python benchmarks/search_oracle.py --default-prefix default,default-afresh   # default searches run again
    python benchmarks/search_oracle.py --default-prefix default,default-afresh --turned-down default-afresh
    python benchmarks/search_oracle.py --default-prefix default,default-afresh,default-moves --moves default-moves
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from found_rule import decide_again
from search_vs_heuristics import Claimed, Final, final_of, kendall_tau, search

from pruner import defaults
from pruner.io import write_json, write_text
from pruner.recipe import save_recipe
from pruner.runtime import default_threads
from pruner.study.export import recipe_for_trial
from pruner.study.front import found_trial
from pruner.study.sampler import ranked_plans, scored_plan
from pruner.teacher import Teacher
from pruner.unet import meta_unet, topology_of

RESULTS = Path(__file__).resolve().parent / "results" / "search_oracle"
TURNED_DOWN = "the candidate the rule turned down"  # a role: distilled to see whether the rule lost a better plan
SEED_ROLE = "sensitivity seed"  # a role: the one-shot plan every search starts from
Trial = optuna.trial.FrozenTrial


def tag(budget: str) -> str:
    """A budget as part of a file name (``macs=50%`` -> ``macs-50%``)."""
    return budget.replace("=", "-")


def journal(name: str, args: argparse.Namespace) -> Path:
    """The folder holding study ``name``'s journal: ``--out`` while it runs; once done it is packed there as
    ``NAME.log.gz`` (a journal is about 9 kB a trial, a fourteenth of that packed) and read from a copy
    unpacked under ``--scratch``."""
    packed = args.out / f"{name}.log.gz"
    if not packed.is_file():
        return args.out
    unpacked = args.scratch / "studies"
    if not (unpacked / f"{name}.log").is_file():
        unpacked.mkdir(parents=True, exist_ok=True)
        part = unpacked / f"{name}.log.part.{os.getpid()}"  # workers of one search unpack it side by side
        part.write_bytes(gzip.decompress(packed.read_bytes()))
        part.rename(unpacked / f"{name}.log")
    return unpacked


def searched(budget: str, seed: int, args: argparse.Namespace, prefix: str, **settings: Any) -> optuna.Study:
    """Run, resume or read the search ``PREFIX-BUDGET-seedN``; the last of its workers to finish packs it."""
    name = f"{prefix}-{tag(budget)}-seed{seed}"
    root = journal(name, args)
    if root != args.out:
        return search(budget, seed, root, args, prefix, **settings)[0]
    marker = args.out / f"{name}.worker.{os.getpid()}"
    marker.touch()
    try:
        search(budget, seed, root, args, prefix, **settings)
    finally:
        marker.unlink(missing_ok=True)
    wait_for_workers(name, args.out)  # packing under a live worker would pull its journal away
    pack(name, args.out)
    return searched(budget, seed, args, prefix, **settings)  # read back from the packed journal


def wait_for_workers(name: str, out: Path, poll_s: float = 5.0) -> None:
    """Return once no other process runs search ``name`` (each finishes its last trial and its decision)."""
    others = live_workers(name, out)
    if others:
        print(f"{name}: waiting for workers {', '.join(map(str, others))} to finish before packing the journal",
              flush=True)  # fmt: skip
    while live_workers(name, out):
        time.sleep(poll_s)


def live_workers(name: str, out: Path) -> list[int]:
    """Processes still running search ``name`` (their markers in ``out``); a dead one's marker is removed."""
    live = []
    for marker in out.glob(f"{name}.worker.*"):
        pid = int(marker.name.rsplit(".", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            marker.unlink(missing_ok=True)
            continue
        except PermissionError:  # alive, another user's
            pass
        live.append(pid)
    return live


def pack(name: str, out: Path) -> None:
    """``NAME.log`` packed as ``NAME.log.gz`` (written under a temporary name, then renamed) and removed,
    unless another worker packed it first."""
    log = out / f"{name}.log"
    part = out / f"{name}.log.gz.part.{os.getpid()}"
    try:
        part.write_bytes(gzip.compress(log.read_bytes()))
    except FileNotFoundError:
        return
    part.rename(out / f"{name}.log.gz")
    log.unlink(missing_ok=True)
    (out / f"{name}.log.lock").unlink(missing_ok=True)


def distance(a: Trial, b: Trial) -> int:
    """Units one plan removes and the other keeps, plus feed-forward levels narrowed differently."""
    pa, pb = scored_plan(a), scored_plan(b)
    assert pa is not None and pb is not None
    return len(pa.removed ^ pb.removed) + len(set(pa.ff_keep) ^ set(pb.ff_keep))


def top_rung(study: optuna.Study) -> list[Trial]:
    """Completed trials scored at the study's highest fidelity, best proxy KD first, one per plan."""
    ranked = [t for _, t in ranked_plans(study.get_trials(deepcopy=False)) if t.state.name == "COMPLETE"]
    if not ranked:
        return []
    top = max(int(t.user_attrs.get("rung_steps", 0)) for t in ranked)
    seen: set[str] = set()
    plans = []
    for t in ranked:
        key = t.user_attrs.get("plan_key") or str(t.number)
        if int(t.user_attrs.get("rung_steps", 0)) == top and key not in seen:
            seen.add(key)
            plans.append(t)
    return plans


def promising_and_diverse(trials: list[Trial], n: int) -> list[Trial]:
    """The best plan, then (among the best ``2n``) each time the one farthest from those picked (max-min
    distance, ties to the better proxy KD): the most promising plans that are not neighbours of each other."""
    pool = trials[: 2 * n]
    picks = pool[:1]
    while len(picks) < min(n, len(pool)):
        rest = [(i, t) for i, t in enumerate(pool) if t not in picks]
        _, far = max(rest, key=lambda it: (min(distance(it[1], p) for p in picks), -it[0]))
        picks.append(far)
    return picks


def picks_of(study: optuna.Study, budget: str, args: argparse.Namespace) -> list[int]:
    """The oracle's picked trial numbers, chosen once and kept in ``picks-BUDGET.json``."""
    path = args.out / f"picks-{tag(budget)}.json"
    if path.is_file():
        return [int(n) for n in json.loads(path.read_text())["trials"]]
    picks = promising_and_diverse(top_rung(study), args.picks)
    rows = [{"trial": t.number, "proxy_kd": t.user_attrs["proxy_kd"], "removed": t.user_attrs["removed"],
             "distance_to_best": distance(t, picks[0])} for t in picks]  # fmt: skip
    path.write_text(json.dumps({"trials": [t.number for t in picks], "plans": rows}, indent=1))
    return [t.number for t in picks]


def rechosen(budget: str, seed: int, study: optuna.Study, args: argparse.Namespace) -> Trial:
    """The plan the default search at ``seed`` names under the found-plan rule as this pruner has it, decided
    again on a copy of its journal (the packed one stays as it ran) and kept in ``rechosen-BUDGET-seedN.json``."""
    path = args.out / f"rechosen-{tag(budget)}-seed{seed}.json"
    if not path.is_file():
        name = study.study_name
        copy = args.scratch / "rechosen" / f"{name}.log"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(journal(name, args) / f"{name}.log", copy)
        again = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(copy))))  # fmt: skip
        floor, made, floor_s, decision_s = decide_again(again, budget, args.confirm_steps)
        part = path.with_name(f"{path.name}.part")
        part.write_text(json.dumps({"noise_floor": floor, "found_choice": made, "seconds": floor_s + decision_s},
                                   indent=1))  # fmt: skip
        part.rename(path)
    chosen = int(json.loads(path.read_text())["found_choice"]["chosen"])
    return next(t for t in study.get_trials(deepcopy=False) if t.number == chosen)


def jobs_of(budget: str, oracle: optuna.Study, defaults_: dict[tuple[str, int], optuna.Study],
            args: argparse.Namespace) -> list[tuple[str, optuna.Study, Trial]]:  # fmt: skip
    """(role, study, trial) of every plan to distill at ``budget``: the oracle's picks, the sensitivity seed
    and each default search's found plan (``defaults_``: by study prefix and seed)."""
    by_number = {t.number: t for t in oracle.get_trials(deepcopy=False)}
    jobs = [(f"oracle #{i + 1}", oracle, by_number[n]) for i, n in enumerate(picks_of(oracle, budget, args))]
    seed = next((t for t in oracle.get_trials(deepcopy=False) if t.user_attrs.get("label") == "sensitivity"), None)
    if seed is not None:
        jobs.append((SEED_ROLE, oracle, seed))
    for (prefix, s), study in defaults_.items():
        found = found_trial(study)  # what found.yaml names (the found-plan rule)
        if found is not None:
            jobs.append((f"{prefix} seed {s}", study, found))
        candidate = (study.user_attrs.get("found_choice") or {}).get("candidate")
        if prefix in args.turned_down and found is not None and candidate not in (None, found.number):
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == candidate)
            jobs.append((f"{prefix} seed {s}, {TURNED_DOWN}", study, trial))
        if args.rechoose and prefix == "default":  # the searches as first recorded
            print(f"{budget}: default seed {s}'s found plan chosen again by the rule as it is now", flush=True)
            jobs.append((f"default seed {s}, rule now", study, rechosen(budget, s, study, args)))
    return jobs


def distill_all(jobs: list[tuple[str, optuna.Study, Trial]], args: argparse.Namespace) -> dict[str, Final]:
    """Each job's plan after ``--final-steps`` (by role), waiting for plans another run has claimed."""
    finals: dict[str, Final] = {}
    while len(finals) < len(jobs):
        waiting = 0
        for role, study, trial in jobs:
            if role in finals:
                continue
            try:
                finals[role] = final_of(study, trial, args.out, args, scratch=args.scratch)
            except Claimed:
                waiting += 1
                continue
            print(f"{role}: trial {trial.number}, final KD {finals[role].kd:.5f}", flush=True)
        if waiting:
            time.sleep(10)
    return finals


Job = tuple[str, optuna.Study, Trial]  # role, the study it comes from, its trial


def table(budget: str, jobs: list[Job], finals: dict[str, Final]) -> tuple[str, dict[str, Any]]:
    """The budget's markdown table and summary: best final KD, each default search's regret, the seed's ratio."""
    best_role = min(finals, key=lambda r: finals[r].kd)
    best = finals[best_role].kd
    lines = [f"### {budget}", "", "| plan | trial | params | MACs | proxy KD | final KD | PSNR | prompt accuracy "
             "| KD / best |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for role, _, t in sorted(jobs, key=lambda j: finals[j[0]].kd):
        f, u = finals[role], t.user_attrs
        acc = f"{100 * f.accuracy:.1f}% ± {100 * (f.accuracy_se or 0):.1f}" if f.accuracy is not None else "-"
        lines.append(f"| {role} | {t.number} | {u['params'] / 1e6:.2f}M | {u['macs'] / 1e6:.1f}M | "
                     f"{u['proxy_kd']:.5f} | {f.kd:.5f} | {f.psnr:.1f} dB | {acc} | {f.kd / best:.2f}x |")  # fmt: skip
    regret = {r: finals[r].kd / best for r in finals if r.startswith("default") and not r.endswith(TURNED_DOWN)}
    seed = finals[SEED_ROLE].kd / best if SEED_ROLE in finals else None
    tau_all, tau_half, n = oracle_taus(jobs, finals)
    steps = max((int(t.user_attrs.get("rung_steps", 0)) for r, _, t in jobs if r.startswith("oracle")), default=0)
    lines += ["", f"Best final KD {best:.5f} ({best_role}). Default search's regret (found / best): "
              + ", ".join(f"{r.removeprefix('default ')} {v:.2f}x" for r, v in regret.items())
              + (f". Sensitivity seed / best: {seed:.2f}x." if seed is not None else ".")
              + f" The oracle's proxy KD (one row order, {steps} steps) ranks its {n} distilled plans with Kendall tau "
              f"{tau_all:.2f} against their final KD ({tau_half:.2f} over the better half).", ""]  # fmt: skip
    plans = [{"role": r, "trial": t.number, "key": finals[r].key, "steps": finals[r].steps, "kd": finals[r].kd,
              "proxy_kd": t.user_attrs["proxy_kd"]} for r, _, t in jobs]  # fmt: skip
    summary = {"budget": budget, "best_kd": best, "best": best_role, "regret": regret, "seed_over_best": seed,
               "proxy_tau": tau_all, "proxy_tau_best_half": tau_half, "plans": plans}  # fmt: skip
    return "\n".join(lines), summary


def oracle_taus(jobs: list[Job], finals: dict[str, Final]) -> tuple[float, float, int]:
    """Kendall tau of the oracle study's proxy KD against final KD over its distilled plans (the picks and the
    seed: one study, one row order, so their proxy scores compare), over all and over the better half by
    final KD (at least two), and how many plans."""
    mine = {finals[r].key: (t.user_attrs["proxy_kd"], finals[r].kd) for r, study, t in jobs
            if not r.startswith("default")}  # fmt: skip
    pairs = list(mine.values())
    half = sorted(pairs, key=lambda p: p[1])[: max(2, len(pairs) // 2)]
    return (kendall_tau([p[0] for p in pairs], [p[1] for p in pairs]),
            kendall_tau([p[0] for p in half], [p[1] for p in half]), len(pairs))  # fmt: skip


def keep_best(budget: str, jobs: list[tuple[str, optuna.Study, Trial]], finals: dict[str, Final],
              args: argparse.Namespace) -> Path:  # fmt: skip
    """The plan with the best final KD as ``--recipes/oracle-BUDGET.yaml``, with where it comes from."""
    role, study, trial = min(jobs, key=lambda j: finals[j[0]].kd)
    settings = study.user_attrs["search"]
    teacher = Teacher.resolve(settings["teacher"])
    recipe = recipe_for_trial(settings, teacher, topology_of(meta_unet(teacher.config)), study.study_name, trial)
    f = finals[role]
    assert recipe.provenance is not None
    recipe = recipe.model_copy(update={
        "name": f"tiny-sdxl-oracle-{tag(budget).replace('%', '')}",
        "description": f"The best plan at {budget} of the bundled teacher's parameters found by "
        f"benchmarks/search_oracle.py ({role}, trial {trial.number} of study {study.study_name}): KD {f.kd:.5f} to "
        f"the teacher after {f.steps} distillation steps, the lowest of the {len({finals[r].key for r, _, _ in jobs})} "
        "plans distilled there.",
        "provenance": recipe.provenance.model_copy(update={"reference": "benchmarks/search_oracle.py"}),
    })  # fmt: skip
    return save_recipe(recipe, args.recipes / f"oracle-{tag(budget).replace('%', '')}.yaml")


def run_budget(budget: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase at one budget (each skipped when its state says it is done); returns the summary."""
    print(f"== {budget}: phase 1, default searches at seeds {args.seeds}", flush=True)
    default = {(prefix, s): searched(budget, s, args, prefix, **default_settings(args, prefix))
               for prefix in args.default_prefix for s in args.seeds}  # fmt: skip
    print(f"== {budget}: phase 2, the oracle search ({args.trials} trials)", flush=True)
    oracle = searched(budget, 0, args, "oracle", calibration=args.calibration, held_out=args.held_out)
    print(f"== {budget}: phase 3-4, picks and distillation ({args.final_steps} steps each)", flush=True)
    jobs = jobs_of(budget, oracle, default, args)
    finals = distill_all(jobs, args)
    text, summary = table(budget, jobs, finals)
    print(text, flush=True)
    summary["recipe"] = str(keep_best(budget, jobs, finals, args))
    summary["table"] = text
    summary["command"] = args.command
    write_json(args.out / f"summary-{tag(budget)}.json", summary, indent=1)
    return summary


def write_table(out: Path) -> Path:
    """``table.md`` from every budget's summary in ``out``, each under the command that made it: a run at one
    budget rewrites that budget's summary only, so the table keeps what earlier runs measured at the others."""
    sections = []
    for path in sorted(out.glob("summary-*.json")):
        summary = json.loads(path.read_text())
        made_by = f"{summary['command']}\n\n" if summary.get("command") else ""
        sections.append(made_by + str(summary["table"]))
    return write_text(out / "table.md", "\n".join(sections))


def default_settings(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The default search's settings (``--default-trials`` and the rung steps of ``pruner.defaults``), with the
    moves the seed cannot make (the refill move and module sensitivities) where ``--moves`` names ``prefix``."""
    moves = prefix in args.moves
    return {"trials": args.default_trials, "proxy_steps": args.default_proxy_steps, "top_steps": None,
            "sampler": defaults.SAMPLER, "calibration": args.calibration, "held_out": args.held_out,
            "refill": moves or defaults.REFILL, "module_sensitivity": moves or defaults.MODULE_SENSITIVITY}  # fmt: skip


def status(args: argparse.Namespace) -> None:
    """How far a run got, from its state folder alone: trials per study, picks and distilled plans."""
    out = args.out
    names = sorted({p.name.split(".log")[0] for p in out.glob("*.log*") if not p.name.endswith((".lock", ".part"))})
    for name in names:
        log = journal(name, args) / f"{name}.log"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
        study = optuna.load_study(study_name=name, storage=storage)
        done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))
        state = "done" if (out / f"{name}.log.gz").is_file() else "running or stopped"
        print(f"{name}: {done} trials finished, {len(top_rung(study))} plans at the top rung ({state})")
    print(f"picks: {sorted(p.name for p in out.glob('picks-*.json'))}")
    finals, claims = len(list(out.glob("finals/*.json"))), len(list(out.glob("finals/*.claim")))
    summaries = sorted(p.name for p in out.glob("summary-*"))
    print(f"distilled plans: {finals}, being distilled: {claims}; summaries: {summaries}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="30%,50%", help="comma-separated budgets")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the default search")
    p.add_argument("--trials", type=int, default=10 * defaults.TRIALS, help="the oracle search's trials")
    p.add_argument("--proxy-steps", type=int, default=100, help="the oracle's KD steps past the zero-shot rung")
    p.add_argument("--top-steps", type=int, default=100, help="the oracle's top rung (= --proxy-steps: one rung)")
    p.add_argument("--default-trials", type=int, default=defaults.TRIALS)
    p.add_argument("--default-proxy-steps", type=int, default=defaults.PROXY_STEPS)
    p.add_argument("--calibration", type=int, default=defaults.CALIBRATION)
    p.add_argument("--held-out", type=int, default=defaults.HELD_OUT)
    p.add_argument("--picks", type=int, default=8, help="oracle plans distilled per budget")
    p.add_argument("--final-steps", type=int, default=1000, help="distillation steps per plan")
    p.add_argument("--final-batch", type=int, default=16, help="distillation batch (the recipe's is 64)")
    p.add_argument("--eval-n", type=int, default=256, help="held-out prompts per evaluation")
    p.add_argument("--out", type=Path, default=RESULTS, help="the state folder (small files only)")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/pruner-search-oracle"), help="students, deleted")
    p.add_argument("--recipes", type=Path, default=Path(__file__).resolve().parents[1] / "recipes")
    p.add_argument(
        "--rechoose",
        action="store_true",
        help="also distill what each default search names under the found-plan rule as it is now",
    )
    p.add_argument("--confirm-steps", type=int, help="--rechoose: the rule's confirmation (default: the top rung's)")
    p.add_argument("--status", action="store_true", help="print how far the run in --out got, and stop")
    p.add_argument("--default-prefix", default="default",
                   help="comma-separated names of default searches (each 'default...'): a new name runs the "
                   "default search again under this pruner beside those recorded")  # fmt: skip
    p.add_argument("--turned-down", default="",
                   help="comma-separated default searches (prefixes) whose best sampled plan is distilled too where "
                   "the found-plan rule named the seed over it: did the rule lose a better plan?")  # fmt: skip
    p.add_argument("--moves", default="",
                   help="comma-separated default searches (prefixes) run with --refill --module-sensitivity: "
                   "do the moves the seed cannot make earn a place as defaults? (issue #31, item 4)")  # fmt: skip
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.default_prefix = args.default_prefix.split(",")
    args.turned_down = [t for t in args.turned_down.split(",") if t]
    args.moves = [m for m in args.moves.split(",") if m]
    if not all(prefix.startswith("default") for prefix in args.default_prefix):
        p.error("--default-prefix: each name starts with 'default' (the table's regret is over those)")
    args.sampler = defaults.SAMPLER
    return args


def main() -> None:
    args = parse()
    if args.status:
        status(args)
        return
    torch.set_num_threads(default_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    args.recipes.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/search_oracle.py {' '.join(sys.argv[1:])}".strip()
    args.command = (
        f"`{command}`: {args.final_steps} distillation steps at batch {args.final_batch}, {args.eval_n} prompts."
    )
    for budget in args.budgets.split(","):
        run_budget(budget, args)
    write_table(args.out)


if __name__ == "__main__":
    main()
