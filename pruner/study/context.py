"""Everything a search's trials read, built once per worker: the teacher loaded on the search's device,
its topology and cost model, the budget's limit in its kind's unit (checked against what the search space
can express), the calibration set with the teacher's outputs, and each unit's sensitivity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pruner.budget import Budget, PlanCost
from pruner.cost.model import CostModel
from pruner.data.resolve import resolve_data
from pruner.device import resolve_device, slow_half_note, teacher_dtype
from pruner.distillation.engine import PlainRuntime, Runtime
from pruner.errors import PrunerError
from pruner.runtime import idle_cpu_workers
from pruner.study.config import SearchConfig
from pruner.study.heuristics import attention_modules
from pruner.study.proxy import (
    Calibration,
    ProxyRun,
    build_calibration,
    group_sensitivity,
    proxy_batch,
    unit_sensitivity,
)
from pruner.study.space import SearchSpace, load_space, width_levels
from pruner.teacher import Teacher
from pruner.unet.plan import Plan, nearest_expressible, unit_kinds
from pruner.unet.topology import Topology, topology_of

__all__ = ["AFRESH", "CONTINUED", "SearchContext", "build_context", "check_budget", "search_device"]

AFRESH = "each rung afresh"
"""Each rung trains the freshly built student, its steps in one cosine segment: the top rung's score is one
segment's. At 50% of the bundled teacher's parameters, 100 steps in one segment put nine plans that ended
1.33-1.45x better than the seed ahead of it at every row order, where rungs that continue from the rung below
(a warm restart) moved one plan's score by up to 1.8x between orders (``benchmarks/proxy_fidelity.py``)."""
CONTINUED = "each rung continued"
"""Each rung continues the student of the rung below with a warm restart of the cosine: how studies that
recorded no schedule were scored, kept for them so that their old and new trials compare."""


def _allow(space: SearchSpace, kinds: dict[str, str]) -> Callable[[str], bool]:
    allowed = {"transformer_layer": space.transformer_layers, "layer": space.layers and not space.keep_skip_topology,
               "mid_attention": space.mid_attention, "mid_block": space.mid_block, "stage": False}  # fmt: skip
    return lambda name: allowed.get(kinds.get(name, ""), False)


@dataclass
class SearchContext:
    """Everything a trial reads: teacher, topology, cost model, budget, calibration and sensitivities."""

    cfg: SearchConfig
    space: SearchSpace
    teacher: Any  # the loaded teacher UNet, frozen on the search's device
    topo: Topology
    cost_model: CostModel
    budget: Budget
    budget_cost: PlanCost  # a plan's cost in the budget's kind (a latency budget: the composed estimate, in ms)
    limit: float
    calib: Calibration
    sens: dict[str, float]
    data_path: str | None
    runtime: Runtime | None = None
    proxy_batch: int = 16
    module_sens: dict[str, float] = field(default_factory=dict)  # attention module -> its layers removed together
    schedule: str = AFRESH  # how rungs train: each from the fresh student (AFRESH), or continued (CONTINUED)
    calibrate: Callable[[int], Calibration] | None = None  # a calibration of n training rows from the same data

    def cost(self, plan: Plan) -> float:
        """The plan's cost in the budget's kind and unit."""
        return self.budget_cost(plan)

    def __post_init__(self) -> None:
        self._allow = _allow(self.space, unit_kinds(self.topo))  # built once: repair asks for every candidate

    def allow(self, name: str) -> bool:
        return self._allow(name)

    def proxy_run(self, plan: Plan, seed: int, calib: Calibration | None = None) -> ProxyRun:
        """The proxy fine-tune of ``plan`` with rows in the order ``seed`` gives, on ``calib`` (default: the
        search's calibration), as every trial runs it."""
        width = self.space.width_importance
        return ProxyRun(self.teacher, plan, self.topo, calib or self.calib, seed=seed, importance=width,
                        batch=self.proxy_batch, runtime=self.runtime)  # fmt: skip

    def with_calibration(self, rows: int) -> SearchContext:
        """This context training on ``rows`` calibration rows from the same data and seed (the held-out rows
        follow them, as in a search given ``calibration=rows``): what the found-plan rule's confirmation
        trains on when ``confirm_calibration`` asks for more rows than the search's."""
        if rows == self.calib.n_train:
            return self
        if self.calibrate is None:
            raise PrunerError("this search context cannot build another calibration (no data to draw rows from)")
        return replace(self, calib=self.calibrate(rows))

    def quietly(self) -> SearchContext:
        """This context with no progress bar or status line, its calibrations too: what a scorer forked in the
        background runs (it must not write over the search's bar, nor take the locks its writers hold)."""
        calibrate = self.calibrate.quietly() if isinstance(self.calibrate, _Calibrator) else self.calibrate
        return replace(self, cfg=replace(self.cfg, progress=False), calibrate=calibrate)

    @property
    def afresh(self) -> bool:
        """Whether each rung trains the freshly built student (else it continues the rung below)."""
        return self.schedule == AFRESH


def check_budget(
    cost: PlanCost, topo: Topology, budget: Budget, allow: Callable[[str], bool],
    narrowest: tuple[tuple[int, float], ...] = (),
) -> float:  # fmt: skip
    """The budget's absolute limit, or a one-line error when no student of this space can meet it."""
    total, shown = cost(Plan()), budget.kind.format
    limit = budget.limit(total)
    if limit >= total:
        raise PrunerError(f"budget {budget.describe()} is not below the teacher's {shown(total)}: nothing to remove")
    everything = Plan(frozenset(n for n in unit_kinds(topo) if allow(n)), narrowest)
    floor = cost(nearest_expressible(everything, topo, prefer="remove"))
    if floor > limit:
        raise PrunerError(
            f"budget {budget.describe()} is below the smallest student this search space can express "
            f"({shown(floor)}, {100 * floor / total:.1f}% of the teacher); raise the budget or widen --space"
        )
    return limit


def search_device(cfg: SearchConfig, teacher: Teacher) -> torch.device:
    """Where the search runs: ``cfg.device``, else where a given teacher model lives, else cuda when available."""
    if teacher.model is not None and not cfg.device:
        return resolve_device(str(next(teacher.model.parameters()).device))
    return resolve_device(cfg.device)


def _say_precision(status: Callable[[str], None], device: torch.device, model: Any, runtime: PlainRuntime,
                   mixed_precision: str | None) -> None:  # fmt: skip
    autocast = str(runtime.dtype).removeprefix("torch.") if runtime.dtype else "off"
    note = slow_half_note(device, mixed_precision)
    if note:
        status(f"note: {note}")
    status(
        f"teacher frozen on {device} in {str(model.dtype).removeprefix('torch.')}; students train "
        f"in fp32, autocast {autocast}; building the calibration set (teacher outputs and features, once)"
    )


def _sensitivities(
    model: Any, topo: Topology, calib: Calibration, batch: int, cfg: SearchConfig,
    recorded: dict[str, float] | None, status: Callable[[str], None],
) -> dict[str, float]:  # fmt: skip
    """Each unit's zero-shot KD when removed alone: the study's, when it recorded every unit's, else measured."""
    kinds = unit_kinds(topo)
    units = [n for n in kinds if kinds[n] != "stage"]
    if recorded is not None and set(units) <= set(recorded):
        status("unit sensitivities: the study's (measured once, by its first worker)")
        return {n: recorded[n] for n in units}
    status("measuring each unit's sensitivity (zero-shot KD with the unit removed)")
    workers = idle_cpu_workers(calib.device, len(units))
    return unit_sensitivity(model, topo, calib, units, 2 * batch, progress=cfg.progress, workers=workers)


def build_context(
    cfg: SearchConfig, teacher: Teacher, budget: Budget, status: Callable[[str], None] = lambda _m: None,
    sensitivity: dict[str, float] | None = None, schedule: str = AFRESH,
) -> SearchContext:  # fmt: skip
    """Load the teacher, check the budget, build the calibration set and the unit sensitivities (measured,
    unless ``sensitivity`` already holds every unit's: a study's, recorded by its first worker). ``schedule``:
    how the rungs train, :data:`AFRESH` or :data:`CONTINUED` (the schedule of studies that recorded none)."""
    if schedule not in (AFRESH, CONTINUED):
        raise PrunerError(f"rung schedule {schedule!r} is not {AFRESH!r} or {CONTINUED!r}")
    space = load_space(cfg.space)
    device = search_device(cfg, teacher)
    runtime = _runtime(device, cfg.mixed_precision)
    model = teacher.load(dtype=teacher_dtype(device, cfg.mixed_precision), device=device)
    cost = CostModel(model.config, latent=teacher.latent, teacher=model)
    if budget.kind.timed:
        status(f"timing the teacher's modules on {device} for the {budget.kind.noun} budget")
    budget_cost = budget.kind.cost(cost, model)
    topo = topology_of(model)
    allow = _allow(space, unit_kinds(topo))
    narrowest = tuple((lv, min(space.width_ratios)) for lv in width_levels(topo)) if space.width else ()
    limit = check_budget(budget_cost, topo, budget, allow, narrowest)
    _say_precision(status, device, model, runtime, cfg.mixed_precision)
    batch = cfg.proxy_batch or proxy_batch(teacher.latent)
    calibrate = _Calibrator(cfg, teacher, model, topo, batch, status)
    calib = calibrate(cfg.calibration)
    sens = _sensitivities(model, topo, calib, batch, cfg, sensitivity, status)
    module_sens = _module_sensitivities(model, topo, calib, batch, cfg, allow, status)
    return SearchContext(cfg, space, model, topo, cost, budget, budget_cost, limit, calib, sens, calibrate.data_path,
                         runtime, batch, module_sens, schedule, calibrate)  # fmt: skip


@dataclass
class _Calibrator:
    """Builds (once per row count) the calibration of ``n`` training rows followed by the search's held-out
    rows, from the search's data (its cache, prompts, or the teacher's bundled set) and seed."""

    cfg: SearchConfig
    teacher: Teacher
    model: Any
    topo: Topology
    batch: int
    status: Callable[[str], None]
    data_path: str | None = None
    built: dict[int, Calibration] = field(default_factory=dict)

    def __call__(self, n_train: int) -> Calibration:
        if n_train not in self.built:
            self.built[n_train] = self._build(n_train)
        return self.built[n_train]

    def quietly(self) -> _Calibrator:
        """This calibrator with no progress bar or status line (the calibrations it built are shared)."""
        return replace(self, cfg=replace(self.cfg, progress=False), status=lambda _m: None)

    def _build(self, n_train: int) -> Calibration:
        cfg, teacher = self.cfg, self.teacher
        data, self.data_path = resolve_data(teacher, cfg.data, prompts=cfg.prompts, rows=n_train + cfg.held_out,
                                            seed=cfg.seed, progress=cfg.progress, offer_prompts=True)  # fmt: skip
        return build_calibration(self.model, data, self.topo, n_train=n_train, n_held_out=cfg.held_out,
                                 level="sub_block", scheduler=teacher.scheduler(), seed=cfg.seed, batch=self.batch,
                                 status=self.status, vae_scale=teacher.vae_scale, progress=cfg.progress)  # fmt: skip


def _module_sensitivities(
    model: Any, topo: Topology, calib: Calibration, batch: int, cfg: SearchConfig, allow: Callable[[str], bool],
    status: Callable[[str], None],
) -> dict[str, float]:  # fmt: skip
    """Each attention module's zero-shot KD with its layers removed together, when ``cfg.module_sensitivity``."""
    if not cfg.module_sensitivity:
        return {}
    status("measuring each attention module's sensitivity (zero-shot KD with its layers removed together)")
    return group_sensitivity(model, calib, attention_modules(topo, allow), 2 * batch, progress=cfg.progress)


def _runtime(device: torch.device, mixed_precision: str | None) -> PlainRuntime:
    """Autocast for the proxy's students: bf16 (fp16 where bf16 is missing) on a GPU unless told otherwise."""
    if mixed_precision is None:
        half = "bf16" if teacher_dtype(device) == torch.bfloat16 else "fp16"
        mixed_precision = half if device.type == "cuda" else "no"
    return PlainRuntime(device, mixed_precision)
