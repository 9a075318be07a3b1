"""pruner's public Python API: search, distill, evaluate, and the objects they pass around.

The CLI is one client of these functions. Each accepts objects as well as references (a
``UNet2DConditionModel`` or a hub id / folder / file as the teacher; a :class:`~pruner.recipe.Recipe` or a
YAML path as the recipe), writes files only where asked, and leaves the caller's global state alone:
torch's random generators are forked for the call, Optuna's verbosity is restored afterwards, and
progress bars are off unless ``progress=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pruner import defaults
from pruner.io import check_output_dir, check_output_file
from pruner.recipe import Recipe, load_recipe
from pruner.runtime import out_of_memory_advice

if TYPE_CHECKING:
    import optuna
    from diffusers import UNet2DConditionModel

    from pruner.distillation.cache import CacheSummary
    from pruner.evaluation import EvalReport
    from pruner.unet.plan import Plan

__all__ = ["SearchResult", "build_student", "cache", "distill", "evaluate", "search"]

Status = Callable[[str], None]

# What needs less GPU memory, said in the API's parameter names (the CLI prints them as its flags).
SEARCH_MEMORY_FIX = (
    "calibrate on a cache made at 512px (pruner cache DATA --resolution 512) with fewer calibration= and held_out= "
    "rows (the README's 24 GB setting: 32 each), under a new study= name (a study's rows are fixed)"
)
DISTILL_MEMORY_FIX = (
    "turn on gradient_checkpointing= and eight_bit_adam= with mixed_precision= bf16, or lower batch_size= and "
    "raise grad_accum= to keep the batch"
)
EVAL_MEMORY_FIX = "evaluate with dtype= bf16, or at a smaller resolution= (512 for SDXL)"
CACHE_MEMORY_FIX = "encode fewer pictures at once: batch_size= 1"


@dataclass
class SearchResult:
    """What :func:`search` found: the study, its Pareto front as recipes, and the found recipe.

    ``found`` is the best proxy quality within budget; ``front`` every Pareto-optimal plan (cheapest
    first). ``files`` lists what was written (empty unless ``output`` was given); :meth:`save` writes later.
    """

    study: optuna.Study
    found: Recipe
    front: list[Recipe]
    storage: str
    data: str | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def save(self, output: str | Path) -> dict[str, Path]:
        """Write ``found.yaml``, ``front/*.yaml`` and ``front.png`` under ``output``."""
        from pruner.study.export import export_study

        self.files = export_study(self.study, Path(output))
        return self.files

    def rows(self) -> list[dict[str, Any]]:
        """The front as table rows (trial, label, params, MACs, latency, proxy KD, removed units)."""
        from pruner.study.front import front_rows

        return front_rows(self.study)


@contextlib.contextmanager
def _caller_state_kept() -> Iterator[None]:
    """Fork torch's generators (CPU and every visible GPU) and restore Optuna's verbosity."""
    import optuna

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    verbosity = optuna.logging.get_verbosity()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)


def cache(
    data: str | Path,
    output: str | Path,
    *,
    teacher: str = defaults.TEACHER,
    resolution: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = False,
) -> CacheSummary:
    """Encode an image folder (``metadata.jsonl`` with ``file_name`` and ``text`` a line) with ``teacher``'s
    VAE and text encoders into a latent cache at ``output``, which :func:`search` and :func:`distill` take as
    ``data``. ``resolution``: pixels a side (default the teacher's native size; 512 for SDXL on a 24 GB card).
    Unreadable pictures are skipped and counted; calling again on the same ``output`` resumes."""
    from pruner.device import resolve_device
    from pruner.distillation.cache import build_cache
    from pruner.teacher import Teacher

    resolved = Teacher.resolve(teacher)  # once, here: the cache reads the resolved teacher
    with _caller_state_kept(), out_of_memory_advice("encoding the data", CACHE_MEMORY_FIX):
        return build_cache(data, resolved, output, resolution=resolution, batch_size=batch_size, progress=progress,
                           device=resolve_device(device))  # fmt: skip


def search(
    teacher: str | UNet2DConditionModel,
    budget: str = defaults.BUDGET,
    *,
    data: str | Path | None = None,
    prompts: str | Path | None = None,
    trials: int = defaults.TRIALS,
    objectives: Sequence[str] = defaults.OBJECTIVES,
    space: str = defaults.SPACE,
    proxy_steps: int = defaults.PROXY_STEPS,
    top_steps: int | None = None,
    sampler: str = defaults.SAMPLER,
    noise_seeds: int = defaults.NOISE_SEEDS,
    calibration: int = defaults.CALIBRATION,
    held_out: int = defaults.HELD_OUT,
    storage: str | None = None,
    study: str | None = None,
    seed: int = 0,
    device: str | None = None,
    mixed_precision: str | None = None,
    output: str | Path | None = None,
    progress: bool = False,
    status: Status | None = None,
) -> SearchResult:
    """Search which units of ``teacher`` to remove to meet ``budget``.

    An Optuna multi-objective study (``storage``: an RDB URL or ``journal:PATH`` that workers share and a
    rerun resumes; default in memory) scores each plan by a short layer-level KD fine-tune on ``data`` (a latent
    cache), or on latents the teacher generates from ``prompts``, and by cost. Budgets name their unit:
    ``"0.74B"``, ``"45%"``, ``"macs=60%"``, ``"latency=40ms"``.
    Plans are scored at rising fidelity: zero-shot KD for every plan, ``proxy_steps`` of KD for the better
    half, ``top_steps`` in all for the best third of those (default 10/3 of ``proxy_steps``: 100 for 30; the found
    plan is chosen among these). ``sampler``:
    ``"mutation"`` (mutations and crossovers of the best scored plans, biased by unit sensitivity),
    ``"nsga2"`` or ``"tpe"`` (multivariate). The found plan is re-scored with ``noise_seeds`` other row
    orders; the spread is stored as the study's ``noise_floor``.
    Everything runs on ``device`` (default: where a given teacher model lives, else cuda when available),
    the teacher frozen in half precision on a GPU (or wherever ``mixed_precision`` is bf16 or fp16) and the
    proxy's students under ``mixed_precision`` autocast (default bf16 on a GPU). Files (found.yaml,
    front/*.yaml, front.png) are written only when ``output`` is given.
    """
    from pruner.study.export import study_recipes
    from pruner.study.study import SearchConfig, run_search
    from pruner.teacher import Teacher

    resolved = Teacher.resolve(teacher)  # once, here: the search, its recipes and its export read this one
    if output is not None:
        check_output_dir(output, "output folder")  # before any compute
    cfg = SearchConfig(
        teacher=resolved.reference, budget=budget, objectives=tuple(objectives), trials=trials,
        proxy_steps=proxy_steps, top_steps=top_steps, sampler=sampler, noise_seeds=noise_seeds,
        data=None if data is None else str(data),
        prompts=None if prompts is None else str(prompts), space=space, storage=storage or "memory", study=study,
        out=None if output is None else Path(output), seed=seed, calibration=calibration, held_out=held_out,
        device=device, mixed_precision=mixed_precision, progress=progress,
    )  # fmt: skip
    with _caller_state_kept(), out_of_memory_advice("searching", SEARCH_MEMORY_FIX):
        raw = run_search(cfg, resolved, status=status or (lambda _m: None))
    found, front = study_recipes(raw.study, resolved)
    written = {"found": raw.found, "front_dir": raw.front_dir, "plot": raw.plot}
    files = {k: v for k, v in written.items() if v is not None}
    return SearchResult(raw.study, found, front, raw.storage, raw.data, files)


def distill(
    recipe: Recipe | str | Path,
    output: str | Path,
    *,
    data: str | Path | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    mixed_precision: str = "no",
    gradient_checkpointing: bool = False,
    eight_bit_adam: bool = False,
    grad_accum: int = 1,
    ema_decay: float | None = None,
    checkpoint_every: int | None = None,
    validate_every: int | None = None,
    resume: bool = False,
    seed: int = 0,
) -> Path:
    """Train ``recipe``'s student to convergence (its stages, or ``steps`` in all) and save it in ``output``.

    The output is a diffusers folder (``unet/`` with safetensors, plus the teacher's other components when
    the teacher is a pipeline), with the recipe, metrics, a validation grid and TensorBoard logs. Run it
    under ``accelerate launch`` for many GPUs. Returns ``output``.
    """
    from pruner.distillation.run import DistillOptions, distill_recipe

    opts = DistillOptions(
        data=None if data is None else str(data), steps=steps, batch_size=batch_size, seed=seed,
        mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, grad_accum=grad_accum,
        eight_bit_adam=eight_bit_adam,
        ema_decay=ema_decay, checkpoint_every=checkpoint_every, validate_every=validate_every, resume=resume,
    )  # fmt: skip
    with _caller_state_kept(), out_of_memory_advice("distilling", DISTILL_MEMORY_FIX):
        return distill_recipe(recipe, Path(output), opts).output


def evaluate(
    student: str | Path | UNet2DConditionModel,
    teacher: str,
    *,
    n_prompts: int = defaults.EVAL_PROMPTS,
    steps: int = defaults.EVAL_STEPS,
    guidance_scale: float = defaults.GUIDANCE,
    seed: int = 0,
    prompts_file: str | Path | None = None,
    grid: str | Path | None = None,
    device: str | None = None,
    resolution: int | None = None,
    dtype: str = "auto",
) -> EvalReport:
    """Compare a student with its teacher pipeline on held-out prompts: KD loss, PSNR of pictures from the
    same seeds, prompt accuracy (bundled teacher), latency of both; a teacher | student grid if ``grid``.
    ``resolution``: pixels a side of the pictures and latency inputs (default the teacher's native size;
    512 makes a quick check of an SDXL student). ``dtype``: what both UNets and the pipeline run in
    (``auto``: bf16 on a GPU, fp32 on a CPU; or ``fp32``, ``bf16``, ``fp16``); a student given as a model
    comes back on its own device and dtype."""
    from pruner.evaluation import evaluate_student
    from pruner.teacher import Teacher

    resolved = Teacher.resolve(teacher)  # once, here
    if grid is not None:
        check_output_file(grid, "grid file")  # before any compute
    with _caller_state_kept(), out_of_memory_advice("evaluating", EVAL_MEMORY_FIX):
        return evaluate_student(
            student, resolved, n_prompts=n_prompts, steps=steps, guidance_scale=guidance_scale, seed=seed,
            prompts_file=None if prompts_file is None else Path(prompts_file),
            grid_path=None if grid is None else Path(grid), device=device, resolution=resolution, dtype=dtype,
        )  # fmt: skip


def _as_plan(plan: Plan | Recipe | Iterable[str] | str | Path) -> Plan:
    from pruner.unet.plan import Plan

    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, Recipe):
        return plan.plan_obj()
    if isinstance(plan, Path) or (isinstance(plan, str) and plan.endswith((".yaml", ".yml"))):
        return load_recipe(plan).plan_obj()
    if isinstance(plan, str):
        return Plan.removing([plan])
    return Plan.removing(list(plan))


def build_student(
    teacher: str | UNet2DConditionModel,
    plan: Plan | Recipe | Iterable[str] | str | Path,
    *,
    device: str | torch.device | None = None,
) -> UNet2DConditionModel:
    """The student ``plan`` makes of ``teacher``, initialised from the teacher's weights (untrained).

    ``plan``: a :class:`~pruner.unet.plan.Plan`, a recipe (object or YAML path), or unit names to remove
    (``down_blocks.2.attentions.0.transformer_blocks.3-9`` names a run). Magnitude-ranked feed-forward
    channels where the plan narrows widths.
    """
    from pruner.teacher import Teacher
    from pruner.unet.surgery import build_student as build

    model = Teacher.resolve(teacher).load() if isinstance(teacher, str) else teacher
    student, _ = build(model, _as_plan(plan), device=device)
    return student
