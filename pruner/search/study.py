"""``pruner search``: an Optuna multi-objective study over removal plans, and its front as recipes.

Each trial samples a genome, decodes it into a plan, repairs the plan to an expressible one at or just
under the budget, prices it with the cost model, screens it by its zero-shot KD loss against completed
trials of similar cost (``TrialPruned`` when clearly worse), and scores survivors by the held-out KD loss
after a short layer-level KD fine-tune against the cached teacher. Heuristic seeds (BK-SDM, KOALA,
SSD-1B, Vega styles and a sensitivity one-shot) are enqueued first and labelled.
"""

from __future__ import annotations

import math
import re
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm import tqdm

from pruner.budget import Budget, format_count, parse_budget
from pruner.cost.latency_model import LatencyModel
from pruner.cost.model import CostModel
from pruner.errors import PrunerError
from pruner.recipe import DistillSpec, LossSpec, PlanSpec, Provenance, Recipe, StageSpec, TeacherSpec, WidthSpec
from pruner.search.heuristics import seed_plans
from pruner.search.proxy import Calibration, build_calibration, proxy_score, unit_sensitivity
from pruner.search.repair import repair_to_budget
from pruner.search.space import SearchSpace, decode, genome_of, load_space, suggest_genome, width_levels
from pruner.student import derive_student_spec
from pruner.unet.load import load_unet, resolve_model, unet_config, unet_ff_inner
from pruner.unet.plan import Plan, compress_names, nearest_expressible, unit_kinds
from pruner.unet.topology import Topology, topology_of

__all__ = ["SearchConfig", "SearchContext", "SearchResult", "run_search"]

OBJECTIVES = {"quality", "macs", "params", "latency"}


@dataclass(frozen=True)
class SearchConfig:
    teacher: str = "tiny-sdxl"
    budget: str = "50%"
    objectives: tuple[str, ...] = ("quality", "macs")
    trials: int = 24
    proxy_steps: int = 30
    data: str | None = None
    prompts: str | None = None
    space: str = "default"
    storage: str | None = None
    study: str | None = None
    out: Path = Path("recipes")
    seed: int = 0
    calibration: int = 96
    held_out: int = 128
    screen_ratio: float = 2.0


@dataclass
class SearchResult:
    study: optuna.Study
    found: Path
    front_dir: Path
    plot: Path
    storage: str
    data: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def default_storage(study: str) -> str:
    """A SQLite file under the gitignored ``search/runs/`` folder."""
    folder = Path("search") / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / (study + '.db')}"


def _allow(space: SearchSpace, kinds: dict[str, str]):  # type: ignore[no-untyped-def]
    allowed = {"transformer_layer": space.transformer_layers, "layer": space.layers and not space.keep_skip_topology,
               "mid_attention": space.mid_attention, "mid_block": space.mid_block, "stage": False}  # fmt: skip
    return lambda name: allowed.get(kinds.get(name, ""), False)


@dataclass
class SearchContext:
    """Everything a trial reads: teacher, topology, cost model, budget, calibration and sensitivities."""

    cfg: SearchConfig
    space: SearchSpace
    teacher: Any
    topo: Topology
    cost_model: CostModel
    budget: Budget
    limit: float
    calib: Calibration
    sens: dict[str, float]
    data_path: str | None
    latency_model: LatencyModel | None = None

    def cost(self, plan: Plan) -> float:
        """The plan's cost in the budget's metric (latency: the composed estimate, in ms)."""
        return self._cost(plan)

    def __post_init__(self) -> None:
        # built once: repair asks both for every candidate
        self._allow = _allow(self.space, unit_kinds(self.topo))
        self._cost = _budget_cost(self.budget, self.cost_model, self.latency_model)

    def allow(self, name: str) -> bool:
        return self._allow(name)


def _budget_cost(budget: Budget, cost: CostModel, latency: LatencyModel | None) -> Callable[[Plan], float]:
    if budget.metric == "latency":
        assert latency is not None, "a latency budget needs a latency model"
        return latency.ms
    return (lambda p: float(cost.params(p))) if budget.metric == "params" else (lambda p: float(cost.macs(p)))


def _shown(value: float, budget: Budget) -> str:
    return f"{value:.1f} ms" if budget.metric == "latency" else format_count(value, budget.metric)


def _check_budget(ctx_cost, topo: Topology, budget: Budget, allow, narrowest=()) -> float:  # type: ignore[no-untyped-def]
    """The budget's absolute limit, or a one-line error when no student of this space can meet it."""
    total = ctx_cost(Plan())
    limit = budget.limit(total)
    if limit >= total:
        raise PrunerError(
            f"budget {budget.describe()} is not below the teacher's {_shown(total, budget)}: nothing to remove"
        )
    everything = Plan(frozenset(n for n in unit_kinds(topo) if allow(n)), narrowest)
    floor = ctx_cost(nearest_expressible(everything, topo, prefer="remove"))
    if floor > limit:
        raise PrunerError(
            f"budget {budget.describe()} is below the smallest student this search space can express "
            f"({_shown(floor, budget)}, {100 * floor / total:.1f}% of the teacher); raise the budget or widen --space"
        )
    return limit


def _calibration_data(cfg: SearchConfig) -> tuple[Any, str | None]:
    """The latent cache to calibrate on: --data, teacher-generated latents from --prompts, or the bundled set."""
    from pruner.distill.cache import LatentCache

    if cfg.data:
        return LatentCache(cfg.data), cfg.data
    if cfg.prompts:
        from pruner.search.prompts import prompt_latents

        return prompt_latents(cfg.teacher, Path(cfg.prompts), cfg.calibration + cfg.held_out, cfg.seed), None
    if cfg.teacher == "tiny-sdxl":
        from pruner.distill.data import tiny_sdxl_cache

        path = tiny_sdxl_cache()
        return LatentCache(path), str(path)
    raise PrunerError(
        "no calibration data: pass --data CACHE (from `pruner cache`) or --prompts FILE (one prompt a line)"
    )


def build_context(cfg: SearchConfig, status=lambda _m: None) -> SearchContext:  # type: ignore[no-untyped-def]
    """Load the teacher, check the budget, build the calibration set and the unit sensitivities."""
    from pruner.distill.run import noise_scheduler_for

    space = load_space(cfg.space)
    budget = parse_budget(cfg.budget)
    teacher = load_unet(cfg.teacher)
    latent = int(unet_config(resolve_model(cfg.teacher)).get("sample_size", 64))
    cost = CostModel(teacher.config, latent=latent, teacher=teacher)
    latency = None
    if budget.metric == "latency":
        status(f"timing the teacher's modules on {next(teacher.parameters()).device} for the latency budget")
        latency = LatencyModel(cost, teacher)
    topo = topology_of(teacher)
    kinds = unit_kinds(topo)
    allow = _allow(space, kinds)
    narrowest = tuple((lv, min(space.width_ratios)) for lv in width_levels(topo)) if space.width else ()
    limit = _check_budget(_budget_cost(budget, cost, latency), topo, budget, allow, narrowest)
    status("building the calibration set (teacher outputs and features, once)")
    data, data_path = _calibration_data(cfg)
    calib = build_calibration(teacher, data, topo, n_train=cfg.calibration, n_held_out=cfg.held_out, level="sub_block",
                              scheduler=noise_scheduler_for(cfg.teacher), seed=cfg.seed)  # fmt: skip
    status("measuring each unit's sensitivity (zero-shot KD with the unit removed)")
    sens = unit_sensitivity(teacher, topo, calib, [n for n in kinds if kinds[n] != "stage"])
    return SearchContext(cfg, space, teacher, topo, cost, budget, limit, calib, sens, data_path, latency)


def _similar_zero_shots(study: optuna.Study, macs: int) -> list[float]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t.user_attrs["zero_shot_kd"] for t in done
            if "zero_shot_kd" in t.user_attrs and abs(t.user_attrs.get("macs", 0) - macs) <= 0.15 * macs]  # fmt: skip


def _screen(trial: optuna.Trial, ctx: SearchContext, macs: int, seeded: bool):  # type: ignore[no-untyped-def]
    """Stop a trial whose zero-shot KD is clearly worse than completed trials of similar cost."""

    def screen(zero: float) -> None:
        trial.set_user_attr("zero_shot_kd", zero)
        peers = _similar_zero_shots(trial.study, macs)
        if not seeded and len(peers) >= 3 and zero > ctx.cfg.screen_ratio * statistics.median(peers):
            trial.set_user_attr("screened", True)
            raise optuna.TrialPruned(
                f"zero-shot KD {zero:.4g} > {ctx.cfg.screen_ratio}x the median of {len(peers)} peers"
            )

    return screen


def _skip_duplicate_seed(trial: optuna.Trial) -> None:
    """Workers that start together may each enqueue the seed plans before seeing the other's; the
    lowest-numbered trial of a label runs it and the others stop at once, unlabelled."""
    label = trial.user_attrs.get("label")
    if label is None:
        return
    earlier = [t.number for t in trial.study.get_trials(deepcopy=False)
               if t.user_attrs.get("label") == label and t.number < trial.number]  # fmt: skip
    if earlier:
        trial.set_user_attr("label", None)
        trial.set_user_attr("duplicate_of", min(earlier))
        raise optuna.TrialPruned(f"seed plan {label!r} is already trial {min(earlier)} (enqueued by two workers)")


def _trial_plan(trial: optuna.Trial, ctx: SearchContext) -> Plan:
    _skip_duplicate_seed(trial)
    genome = suggest_genome(trial, ctx.space, ctx.topo)
    seed_removed = trial.user_attrs.get("seed_removed")
    plan = Plan(frozenset(seed_removed)) if seed_removed is not None else decode(genome, ctx.space, ctx.topo, ctx.sens)
    repaired = repair_to_budget(plan, ctx.topo, ctx.cost, ctx.limit, ctx.sens, ctx.allow)
    if repaired is None:
        trial.set_constraint("budget", 1.0)
        raise optuna.TrialPruned("no expressible plan within budget near this genome")
    return repaired


def _objective(trial: optuna.Trial, ctx: SearchContext) -> tuple[float, ...]:
    plan = _trial_plan(trial, ctx)
    params, macs = ctx.cost_model.params(plan), ctx.cost_model.macs(plan)
    trial.set_constraint("budget", ctx.cost(plan) - ctx.limit)
    trial.set_user_attr("removed", compress_names(plan.removed))
    trial.set_user_attr("ff_keep", {str(k): v for k, v in plan.ff_keep})
    trial.set_user_attr("params", params)
    trial.set_user_attr("macs", macs)
    latency = _latency(ctx, plan) if "latency" in ctx.cfg.objectives or ctx.latency_model else None
    trial.set_user_attr("latency_ms", latency)
    if ctx.latency_model is not None:
        trial.set_user_attr("latency_estimate_ms", ctx.latency_model.ms(plan))
    screen = _screen(trial, ctx, macs, trial.user_attrs.get("label") is not None)
    seed = ctx.cfg.seed + trial.number
    score = proxy_score(ctx.teacher, plan, ctx.topo, ctx.calib, steps=ctx.cfg.proxy_steps, seed=seed, screen=screen,
                        importance=ctx.space.width_importance)  # fmt: skip
    trial.set_user_attr("proxy_kd", score.proxy_kd)
    values = {"quality": score.proxy_kd, "macs": float(macs), "params": float(params), "latency": latency or 0.0}
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
    seeds = list(seed_plans(ctx.topo, ctx.cost, ctx.limit, ctx.sens, ctx.allow).items())
    for label, plan in seeds[: ctx.cfg.trials]:
        params = genome_of(plan, ctx.space, ctx.topo)
        # skip_if_exists: a second worker on the same storage does not enqueue the seeds again
        study.enqueue_trial(
            params, user_attrs={"label": label, "seed_removed": sorted(plan.removed)}, skip_if_exists=True
        )
    study.set_user_attr("seeded", True)
    study.set_user_attr("sensitivity", {k: (v if math.isfinite(v) else None) for k, v in ctx.sens.items()})


def storage_of(url: str):  # type: ignore[no-untyped-def]
    """An Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or ``journal:PATH`` (a journal file)."""
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return url


def open_study(cfg: SearchConfig, name: str) -> tuple[optuna.Study, str]:
    storage = cfg.storage or default_storage(name)
    sampler = optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=max(4, min(20, cfg.trials // 2)))
    directions = ["minimize"] * len(cfg.objectives)
    try:
        study = optuna.create_study(
            study_name=name, storage=storage_of(storage), directions=directions, sampler=sampler, load_if_exists=True
        )
    except ValueError as exc:
        raise PrunerError(
            f"study {name!r} in {storage} does not match these objectives ({exc}); use another --study"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o if o != "quality" else "proxy_kd" for o in cfg.objectives])
    return study, storage


def _progress(total: int, done: int):  # type: ignore[no-untyped-def]
    bar = tqdm(total=total, initial=done, desc="search", unit="trial", dynamic_ncols=True)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        feasible = [t.user_attrs["proxy_kd"] for t in done if "proxy_kd" in t.user_attrs]
        bar.set_postfix(
            best_kd=f"{min(feasible):.4g}" if feasible else "-", last=trial.state.name.lower(), refresh=False
        )
        bar.update(1)

    return bar, callback


def _distill_spec(teacher: str, data_path: str | None, latent: int) -> DistillSpec:
    """Distillation defaults for a found recipe: the bundled teacher's scale, or SSD-1B's published one."""
    loss = LossSpec(task=1.0, output_kd=0.5, feature_kd=0.5, feature_level="sub_block")
    if teacher == "tiny-sdxl":
        return DistillSpec(resolution=32, batch_size=64, data=data_path,
                           stages=[StageSpec(steps=2000, learning_rate=2e-4, loss=loss)])  # fmt: skip
    return DistillSpec(resolution=latent * 8, batch_size=1, data=data_path,
                       stages=[StageSpec(steps=100_000, learning_rate=1e-5, loss=loss)])  # fmt: skip


def recipe_for_trial(settings: dict[str, Any], teacher_cfg: dict[str, Any], topo: Topology, study_name: str,
                     trial: optuna.trial.FrozenTrial, inner: dict[str, int] | None = None) -> Recipe:  # fmt: skip
    """The recipe of one trial: plan, derived student, distillation stages and provenance.

    ``settings`` is what the search stored in the study's ``search`` user attribute (teacher, budget,
    objectives, data), so a finished study alone suffices (``pruner front --export``). ``inner``: a
    width-pruned teacher's narrowed feed-forward sizes."""
    ff_keep = {int(k): float(v) for k, v in (trial.user_attrs.get("ff_keep") or {}).items()}
    plan = Plan.removing(trial.user_attrs["removed"], ff_keep)
    width = WidthSpec(ff_keep=ff_keep, importance=settings.get("width_importance", "magnitude")) if ff_keep else None
    teacher, label = settings["teacher"], trial.user_attrs.get("label")
    objectives = dict(zip(settings["objectives"], trial.values or [], strict=False))
    costs = {
        k: float(trial.user_attrs[k]) for k in ("params", "macs", "latency_ms") if trial.user_attrs.get(k) is not None
    }
    style = f", seeded in {label} style" if label else ""
    return Recipe(
        schema_version=1,
        name=f"{_slug(teacher)}-trial-{trial.number}" + (f"-{label}" if label else ""),
        description=f"Found by `pruner search` ({settings['budget']} budget, trial {trial.number}{style}).",
        teacher=TeacherSpec(model=teacher, architecture="tiny-sdxl" if teacher == "tiny-sdxl" else None),
        plan=PlanSpec(remove=compress_names(plan.removed), width=width),
        compat=list(settings.get("compat") or []),
        student=derive_student_spec(teacher_cfg, plan, topo, inner),
        distill=_distill_spec(teacher, settings.get("data"), int(teacher_cfg["sample_size"])),
        provenance=Provenance(
            source="search", study=study_name, trial=trial.number, objectives=objectives, costs=costs
        ),
    )


def export_study(study: optuna.Study, out: Path) -> dict[str, Path]:
    """Write a finished study's front as recipes, found.yaml and the plot, from the study alone."""
    from pruner.search.front import export_front
    from pruner.unet.surgery import meta_unet

    settings = study.user_attrs.get("search")
    if not settings:
        raise PrunerError(f"study {study.study_name} was not made by `pruner search`: it records no search settings")
    teacher_cfg, inner = unet_config(settings["teacher"]), unet_ff_inner(settings["teacher"])
    topo = topology_of(meta_unet(teacher_cfg))
    return export_front(study, out, lambda t: recipe_for_trial(settings, teacher_cfg, topo, study.study_name, t, inner))


def study_name(cfg: SearchConfig) -> str:
    return cfg.study or f"{_slug(cfg.teacher)}-{_slug(cfg.budget)}-{_slug(cfg.space)}"


def run_search(cfg: SearchConfig, status=lambda _m: None) -> SearchResult:  # type: ignore[no-untyped-def]
    """Run (or resume) the study, then write the front's recipes, found.yaml and the plot."""
    from pruner.search.front import front_rows

    unknown = set(cfg.objectives) - OBJECTIVES
    if unknown or "quality" not in cfg.objectives:
        raise PrunerError(
            f"--objectives takes quality plus any of macs, params, latency (got {','.join(cfg.objectives)})"
        )
    torch.manual_seed(cfg.seed)
    ctx = build_context(cfg, status)
    name = study_name(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, storage = open_study(cfg, name)
    _enqueue_seeds(study, ctx)
    study.set_user_attr("search", {"teacher": cfg.teacher, "budget": ctx.budget.describe(), "space": cfg.space,
                                   "objectives": list(cfg.objectives), "data": ctx.data_path,
                                   "width_importance": ctx.space.width_importance,
                                   "compat": list(ctx.space.compat)})  # fmt: skip
    done = len([t for t in study.trials if t.state.is_finished()])
    bar, callback = _progress(cfg.trials, min(done, cfg.trials))
    if done < cfg.trials:
        # workers sharing a storage stop together once the study holds --trials finished trials
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        stop = optuna.study.MaxTrialsCallback(cfg.trials, states=finished)
        study.optimize(lambda t: _objective(t, ctx), n_trials=cfg.trials - done, callbacks=[callback, stop], catch=())
    bar.close()
    paths = export_study(study, Path(cfg.out))
    return SearchResult(
        study, paths["found"], paths["front_dir"], paths["plot"], storage, ctx.data_path, front_rows(study)
    )
