"""``pruner search``: an Optuna multi-objective study over removal plans, and its front as recipes.

Each trial gets a plan (from the plan sampler's mutations and crossovers of the best scored plans, or a
genome NSGA-II or TPE sampled, decoded), repairs it to an expressible one at or just under the budget,
prices it with the cost model and scores it by held-out KD against the cached teacher at rising fidelity
(successive halving inside the trial, ASHA's asynchronous rule): zero-shot for every plan, ``proxy_steps``
of layer-level KD for the better half of plans of similar cost, ``top_steps`` for the best third of
those. A trial stopped at a lower rung is PRUNED with the scores it reached (user attributes
``rung_kd``), so the completed trials, the front and the found plan are all at the highest fidelity.
Every plan is trained on the same rows in the same order (common random numbers) and no plan is scored
twice; after the trials, the best plan is scored again with other row orders and the spread (the noise
floor) is stored beside the front, and found.yaml names it over the sensitivity seed only when its lead
is clear (``pruner.study.choice``). Heuristic seeds (the sensitivity one-shot first, then BK-SDM, KOALA,
SSD-1B and Vega styles) are enqueued first, labelled, and always get past the zero-shot rung.

Here: the study (open or join it, its trials, the result). Its settings are
``pruner.study.config``; what the trials read, built once, ``pruner.study.context``; the rung policy,
``pruner.study.rungs``; the front as recipes, ``pruner.study.export``; the budget's kind (parser, cost
function, display), ``pruner.budget``. The teacher comes resolved (``pruner.teacher.Teacher``) from the
caller, and the budget is parsed once, here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from tqdm import tqdm

from pruner.budget import Budget, parse_budget
from pruner.device import current_device
from pruner.errors import PrunerError, SearchInterrupted
from pruner.study.choice import (
    SeedAhead,
    choose_found,
    noise_floor,
    prescore_repeats,
    recorded_choice,
    recorded_noise_floor,
)
from pruner.study.config import OBJECTIVES, SAMPLERS, SearchConfig
from pruner.study.context import AFRESH, CONTINUED, SearchContext, build_context, search_device
from pruner.study.export import export_study, slug
from pruner.study.heuristics import ANCHORS, REFILLED, seed_plans
from pruner.study.repair import repair_to_budget
from pruner.study.rungs import score_in_rungs
from pruner.study.sampler import PlanSampler, PlanSpace
from pruner.study.space import decode, genome_of, suggest_genome
from pruner.study.storage import default_storage, storage_of, with_retries
from pruner.study.storage import open_study as storage_open_study
from pruner.study.workers import check_settings, claim_plan, claim_slot, counted, plan_key, run_worker, worker_seed
from pruner.teacher import Teacher
from pruner.unet.plan import Plan, compress_names, nearest_expressible

__all__ = [
    "SAMPLERS",
    "SearchConfig",
    "SearchContext",
    "SearchResult",
    "build_context",
    "default_storage",
    "default_study_name",
    "finished",
    "proxy_schedule",
    "run_search",
    "search_device",
    "storage_of",
]


@dataclass
class SearchResult:
    study: optuna.Study
    found: Path | None  # the written files; None when the search wrote none
    front_dir: Path | None
    plot: Path | None
    storage: str
    data: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _skip_duplicate_seed(trial: optuna.Trial) -> None:
    """Workers that start together may each enqueue the seed plans before seeing the other's; the
    lowest-numbered trial of a label runs it and the others stop at once, unlabelled."""
    label = trial.user_attrs.get("label")
    if label is None:
        return
    trials = trial.study.get_trials(deepcopy=False)  # a failed one is retried under its label: not a duplicate
    earlier = [t.number for t in trials if t.user_attrs.get("label") == label and t.number < trial.number
               and t.state.name != "FAIL"]  # fmt: skip
    if earlier:
        trial.set_user_attr("skipped", "duplicate")
        trial.set_user_attr("label", None)
        trial.set_user_attr("duplicate_of", min(earlier))
        raise optuna.TrialPruned(f"seed plan {label!r} is already trial {min(earlier)} (enqueued by two workers)")


def _trial_plan(trial: optuna.Trial, ctx: SearchContext) -> Plan:
    claim_slot(trial, ctx.cfg.trials)
    _skip_duplicate_seed(trial)
    genome = suggest_genome(trial, ctx.space, ctx.topo)
    plan = _sampled_plan(trial, ctx, genome)
    proposed = trial.user_attrs.get("proposed") is not None  # repaired by the sampler, its move kept: as is
    within = proposed and ctx.cost(plan) <= ctx.limit and nearest_expressible(plan, ctx.topo) == plan
    repaired = plan if within else repair_to_budget(plan, ctx.topo, ctx.cost, ctx.limit, ctx.sens, ctx.allow)
    if repaired is None:
        trial.set_constraint("budget", 1.0)
        raise optuna.TrialPruned("no expressible plan within budget near this genome")
    # how far the repair moved the plan the sampler proposed: what the sampler does not see of its trial
    moved = len(plan.removed ^ repaired.removed) + len(set(plan.ff_keep) ^ set(repaired.ff_keep))
    trial.set_user_attr("repair_distance", moved)
    claim_plan(trial, plan_key(repaired))
    return repaired


def _sampled_plan(trial: optuna.Trial, ctx: SearchContext, genome: dict[str, Any]) -> Plan:
    """The plan this trial was given: a seed's, the plan sampler's proposal (recorded as ``proposed``, so a
    retry of this trial scores the same plan), or the genome decoded."""
    seed_removed = trial.user_attrs.get("seed_removed")
    if seed_removed is not None:
        return Plan(frozenset(seed_removed))
    proposed = trial.user_attrs.get("proposed")
    if proposed is not None:
        return Plan.removing(proposed["removed"], {int(k): v for k, v in proposed["ff_keep"].items()})
    sampler = trial.study.sampler
    proposal = sampler.plan_for(trial.number) if isinstance(sampler, PlanSampler) else None
    if proposal is not None:
        plan, origin = proposal
        trial.set_user_attr("origin", origin)
        widths = {str(k): v for k, v in plan.ff_keep}
        trial.set_user_attr("proposed", {"removed": sorted(plan.removed), "ff_keep": widths})
        return plan
    return decode(genome, ctx.space, ctx.topo, ctx.sens)


def _objective(trial: optuna.Trial, ctx: SearchContext) -> tuple[float, ...]:
    plan = _trial_plan(trial, ctx)
    params, macs = ctx.cost_model.params(plan), ctx.cost_model.macs(plan)
    budget_cost = ctx.cost(plan)
    trial.set_constraint("budget", budget_cost - ctx.limit)
    trial.set_user_attr(ctx.budget.kind.recorded_as, budget_cost)  # a latency budget's: the estimate
    trial.set_user_attr("removed", compress_names(plan.removed))
    trial.set_user_attr("ff_keep", {str(k): v for k, v in plan.ff_keep})
    trial.set_user_attr("params", params)
    trial.set_user_attr("macs", macs)
    latency = _latency(ctx, plan) if "latency" in ctx.cfg.objectives or ctx.budget.kind.timed else None
    trial.set_user_attr("latency_ms", latency)
    kd = score_in_rungs(trial, ctx.proxy_run(plan, ctx.cfg.seed), ctx.cfg.rungs, macs, afresh=ctx.afresh)
    values = {"quality": kd, "macs": float(macs), "params": float(params), "latency": latency or 0.0}
    return tuple(values[o] for o in ctx.cfg.objectives)


def _latency(ctx: SearchContext, plan: Plan) -> float:
    from pruner.cost.latency import measure_latency
    from pruner.unet.surgery import build_student

    student, _ = build_student(ctx.teacher, plan)
    return measure_latency(student, int(ctx.teacher.config.sample_size), batch=2, warmup=1, runs=3).total_ms


def _enqueue_seeds(study: optuna.Study, ctx: SearchContext) -> None:
    """Heuristic plans first, labelled, once per study."""
    if study.user_attrs.get("seeded"):
        return
    refilled = ctx.cfg.anchor == REFILLED
    seeds = list(seed_plans(ctx.topo, ctx.cost, ctx.limit, ctx.sens, ctx.allow, ctx.module_sens, refilled).items())
    if seeds and seeds[0][0] in ANCHORS:  # what found.yaml falls back to (pruner.study.choice); never a hand style
        study.set_user_attr("anchor", seeds[0][0])
    for label, plan in seeds[: ctx.cfg.trials]:
        params = genome_of(plan, ctx.space, ctx.topo)
        # skip_if_exists: a second worker on the same storage does not enqueue the seeds again
        study.enqueue_trial(
            params, user_attrs={"label": label, "seed_removed": sorted(plan.removed)}, skip_if_exists=True
        )
    study.set_user_attr("seeded", True)
    study.set_user_attr("sensitivity", {k: (v if math.isfinite(v) else None) for k, v in ctx.sens.items()})


def open_study(cfg: SearchConfig, name: str, settings: dict[str, Any]) -> tuple[optuna.Study, str, Any, int]:
    """Create or join the study (storage URL and driver checked first), its settings checked against this
    run's, and a sampler seeded for this worker; returns the study, its URL, its storage and the seed."""
    url = cfg.storage or default_storage(name)
    study, storage = storage_open_study(name, url, ["minimize"] * len(cfg.objectives), _sampler(cfg, cfg.seed))
    check_settings(study, settings)
    seed = with_retries(lambda: worker_seed(study, cfg.seed), "joining the study")
    if seed != cfg.seed:
        study.sampler = _sampler(cfg, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o if o != "quality" else "proxy_kd" for o in cfg.objectives])
    return study, url, storage, seed


def _sampler(cfg: SearchConfig, seed: int, ctx: SearchContext | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler: ``mutation`` (pruner's plan sampler; random until the context is known), NSGA-II,
    or multivariate TPE."""
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(4, cfg.trials // 4))
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, cfg.trials // 2)))
    if ctx is None:
        return optuna.samplers.RandomSampler(seed=seed)
    plans = PlanSpace(ctx.topo, ctx.space, ctx.cost, ctx.limit, ctx.sens, ctx.allow, cfg.refill, ctx.module_sens)
    return PlanSampler(plans, seed=seed, parents=max(2, cfg.trials // 6))


def _settings(cfg: SearchConfig, teacher: Teacher, budget: Budget, ctx: SearchContext | None = None) -> dict[str, Any]:
    """What the study records about the search that made it (checked by later runs, read by the export)."""
    settings: dict[str, Any] = {"teacher": teacher.reference, "budget": budget.describe(),
                                "space": cfg.space, "objectives": list(cfg.objectives), "rungs": list(cfg.rungs),
                                "sampler": cfg.sampler, "calibration": cfg.calibration, "held_out": cfg.held_out,
                                "seed": cfg.seed, "schedule": AFRESH}  # fmt: skip
    if ctx is not None:
        settings.update(data=ctx.data_path, width_importance=ctx.space.width_importance, compat=list(ctx.space.compat))
    return settings


def _progress(total: int, done: int, enabled: bool) -> tuple[tqdm, Callable[[optuna.Study, FrozenTrial], None]]:
    bar = tqdm(total=total, initial=done, desc="search", unit="trial", dynamic_ncols=True, disable=not enabled)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        feasible = [
            t.user_attrs["proxy_kd"] for t in trials if t.state.name == "COMPLETE" and "proxy_kd" in t.user_attrs
        ]
        stopped = trial.user_attrs.get("stopped_at")
        state = f"stopped@{stopped}" if stopped is not None else trial.state.name.lower()
        last = trial.user_attrs.get("skipped") or state
        bar.set_postfix(best_kd=f"{min(feasible):.4g}" if feasible else "-", last=last, refresh=False)
        bar.update(min(total, sum(counted(t) for t in trials)) - bar.n)

    return bar, callback


def default_study_name(teacher: str, budget: str, space: str) -> str:
    """The study name a search gets when none is given: teacher, budget and space, slugged."""
    return f"{slug(teacher)}-{slug(budget)}-{slug(space)}"


def run_search(cfg: SearchConfig, teacher: Teacher, status: Callable[[str], None] = lambda _m: None) -> SearchResult:
    """Run (or resume) the study on ``teacher`` (resolved from ``cfg.teacher`` by the caller), then write the
    front's recipes, found.yaml and the plot (none when ``cfg.out`` is None)."""
    from pruner.study.front import describe_noise_floor

    if cfg.sampler not in SAMPLERS:
        raise PrunerError(f"sampler={cfg.sampler!r} is not one of {', '.join(SAMPLERS)}")
    unknown = set(cfg.objectives) - OBJECTIVES
    if unknown or "quality" not in cfg.objectives:
        raise PrunerError(
            f"--objectives takes quality plus any of macs, params, latency (got {','.join(cfg.objectives)})"
        )
    budget = parse_budget(cfg.budget)  # parsed once: the settings, the context and the trials read this one
    name = cfg.study or default_study_name(teacher.reference, cfg.budget, cfg.space)
    # the storage and the study's settings first: before any compute
    study, url, storage, seed = open_study(cfg, name, _settings(cfg, teacher, budget))
    if finished(study, cfg):  # a rerun of a finished search: its results, without loading the teacher
        status(f"study {name}: all {cfg.trials} trials and the noise floor are done; nothing to compute")
        return _result(study, cfg, teacher, url, study.user_attrs["search"].get("data"))
    torch.manual_seed(cfg.seed)
    with current_device(search_device(cfg, teacher)):  # a worker on cuda:1: anything asking for "cuda" gets cuda:1
        ctx = build_context(cfg, teacher, budget, status, recorded_sensitivity(study), proxy_schedule(study))
        study.sampler = _sampler(cfg, seed, ctx)
        _enqueue_seeds(study, ctx)
        if "search" not in study.user_attrs:  # recorded once, by the run that creates the study
            study.set_user_attr("search", _settings(cfg, teacher, budget, ctx))
        ahead = SeedAhead(ctx)  # the seed's after-trials scores, on an idle core during the trials
        try:
            _run_trials(study, storage, ctx, ahead)
            seed_scores = ahead.scores(status)
        finally:
            ahead.close()
        scored = prescore_repeats(study, ctx, seed_scores)  # side by side where cores allow
        floor = noise_floor(study, ctx, scored)
        if floor is not None:
            status(describe_noise_floor(study) or "")
        choose_found(study, ctx, floor, status, scored, seed_scores)
    return _result(study, cfg, teacher, url, ctx.data_path)


def proxy_schedule(study: optuna.Study) -> str:
    """How the study's rungs train: the schedule it recorded, each rung continued when it recorded none (a study
    made before rungs trained afresh), each rung afresh for a new study."""
    recorded = study.user_attrs.get("search")
    return AFRESH if recorded is None else recorded.get("schedule", CONTINUED)


def recorded_sensitivity(study: optuna.Study) -> dict[str, float] | None:
    """The unit sensitivities the study recorded when it was seeded (None before): a worker that joins or
    resumes takes them rather than measuring its own, so every worker samples and repairs plans by the same
    numbers (a GPU's rounding would otherwise give each worker slightly different ones), and skips the pass."""
    recorded = study.user_attrs.get("sensitivity")
    if not recorded:
        return None
    return {k: math.inf if v is None else float(v) for k, v in recorded.items()}


def finished(study: optuna.Study, cfg: SearchConfig) -> bool:
    """Nothing left for a run of ``cfg`` to compute: its trials are done, none is running, and the best plan's
    noise floor and the found plan's choice are recorded (or not asked for)."""
    from pruner.study.front import best_quality_trial

    trials = study.get_trials(deepcopy=False)
    if "search" not in study.user_attrs or sum(counted(t) for t in trials) < cfg.trials:
        return False
    if any(t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING) for t in trials):
        return False
    best = best_quality_trial(study)
    if best is None or cfg.noise_seeds <= 0 or "proxy_kd" not in best.user_attrs:
        return True
    return recorded_noise_floor(study, best, cfg.noise_seeds) is not None and recorded_choice(study, best) is not None


def _result(study: optuna.Study, cfg: SearchConfig, teacher: Teacher, url: str, data: str | None) -> SearchResult:
    """The search's result, its files written to ``cfg.out`` (none when it is None)."""
    from pruner.study.front import front_rows

    if cfg.out is None:
        return SearchResult(study, None, None, None, url, data, front_rows(study))
    paths = export_study(study, Path(cfg.out), teacher)
    return SearchResult(study, paths["found"], paths["front_dir"], paths["plot"], url, data, front_rows(study))


def _run_trials(study: optuna.Study, storage: Any, ctx: SearchContext,
                after_trial: Callable[[optuna.Study, FrozenTrial], None] = lambda _s, _t: None) -> None:  # fmt: skip
    """This worker's share of the study, with a progress bar, ``after_trial`` called after each trial; Ctrl-C
    is one line (the trial it stopped is enqueued again by the next run)."""
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    bar, callback = _progress(ctx.cfg.trials, min(done, ctx.cfg.trials), ctx.cfg.progress)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a stopped trial's traceback is not the user's business
    try:
        run_worker(study, storage, lambda t: _objective(t, ctx), ctx.cfg.trials, callbacks=[callback, after_trial])
    except KeyboardInterrupt:
        done = sum(counted(t) for t in study.get_trials(deepcopy=False))
        raise SearchInterrupted(
            f"interrupted: {done} of {ctx.cfg.trials} trials complete; rerun the same command to continue"
        ) from None
    finally:
        bar.close()
        optuna.logging.set_verbosity(verbosity)
