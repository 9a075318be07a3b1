"""``pruner distill RECIPE``: build the recipe's student, train it stage by stage, save it.

The output folder is laid out as diffusers lays out a pipeline: ``unet/`` always; ``model_index.json``
and the teacher's other components when the teacher is a full pipeline. Checkpoints go under
``checkpoints/``; TensorBoard logs under ``logs/``; a model card (``README.md``), ``recipe.yaml``,
``metrics.json`` and a teacher | student ``validation.png`` beside them. With ``validate_every``, a grid of
the validation prompts is also logged to the trackers (``report_to``) every so many steps and kept under
``validation/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from pruner.data.resolve import resolve_data
from pruner.device import check_precision, teacher_dtype
from pruner.distillation.engine import KDInputs, output_kd_gradients, teacher_pass
from pruner.distillation.losses import LossTerms, LossWeights
from pruner.distillation.progressive import composed_pairs, shrink, stage_chains
from pruner.distillation.tracking import ValidationGrids, log_picture
from pruner.distillation.trainer import (
    Distiller,
    TrainSettings,
    batch_inputs,
    collate,
    latest_checkpoint,
    remove_partial_checkpoints,
)
from pruner.errors import PrunerError
from pruner.io import check_output_dir, output_lock
from pruner.recipe import Recipe, StageSpec, load_recipe
from pruner.student import ResolvedRecipe, resolve_recipe
from pruner.teacher import Teacher
from pruner.unet.surgery import build_student

__all__ = [
    "DistillOptions",
    "DistillResult",
    "distill_recipe",
    "run_fingerprint",
    "stage_steps",
    "stage_teachers",
]


@dataclass(frozen=True)
class DistillOptions:
    """Command-line overrides of what the recipe says."""

    data: str | None = None
    steps: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    resume: bool = False
    batch_size: int | None = None
    seed: int = 0
    held_out: int = 64
    validate_every: int | None = None
    mixed_precision: str = "no"
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    caption_dropout: float = 0.1
    ema_decay: float | None = None
    eight_bit_adam: bool = False
    progress: bool = True  # a bar per stage (the Python API's default is none)
    report_to: tuple[str, ...] = ("tensorboard",)  # accelerate's trackers (pruner.distillation.tracking)
    validation_prompts: tuple[str, ...] = ()  # the grids' prompts; none: captions of the held-out rows

    def __post_init__(self) -> None:
        check_precision(self.mixed_precision)


@dataclass
class DistillResult:
    output: Path
    steps: int
    final_losses: dict[str, float] = field(default_factory=dict)
    held_out_kd: list[tuple[int, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # what was trained (run_fingerprint)
    processes: int = 1  # that trained it together (each took batch_size rows a step)


def stage_steps(stages: list[StageSpec], total: int | None) -> list[int]:
    """Each stage's steps; ``total`` (``--steps``) rescales them, keeping at least one per stage."""
    steps = [s.steps for s in stages]
    if total is None:
        return steps
    scale = total / sum(steps)
    scaled = [max(1, math.floor(s * scale)) for s in steps]
    scaled[-1] = max(1, total - sum(scaled[:-1]))
    return scaled


def _settings(stage: StageSpec, steps: int, opts: DistillOptions, recipe: Recipe) -> TrainSettings:
    loss = stage.loss
    weights = LossWeights(loss.task, loss.output_kd, loss.feature_kd, loss.normalize_features, loss.min_snr_gamma)
    return TrainSettings(
        steps=steps, learning_rate=stage.learning_rate, batch_size=opts.batch_size or recipe.distill.batch_size,
        weights=weights, seed=opts.seed, grad_accum=opts.grad_accum, caption_dropout=opts.caption_dropout,
        checkpoint_every=opts.checkpoint_every, keep_checkpoints=opts.keep_checkpoints,
        validate_every=opts.validate_every, gradient_checkpointing=opts.gradient_checkpointing,
        ema_decay=opts.ema_decay, eight_bit_adam=opts.eight_bit_adam, progress=opts.progress,
    )  # fmt: skip


def _accelerator(out: Path, opts: DistillOptions) -> Accelerator:
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs"))
    return Accelerator(
        mixed_precision=opts.mixed_precision, gradient_accumulation_steps=opts.grad_accum,
        log_with=list(opts.report_to) or None,
        project_config=project, cpu=not torch.cuda.is_available(),
    )  # fmt: skip


def held_out_prompts(data: Any, held_out: int, n: int = 8) -> list[str]:
    """Captions of the first held-out rows (the validation grid shows pictures the student never trained on)."""
    start = len(data) - held_out if held_out else 0
    return [text for i in range(start, min(len(data), start + n)) if (text := data.caption(i))]


def validation_prompts(data: Any, opts: DistillOptions) -> list[str]:
    """The validation grids' prompts: ``--validation-prompts``, else captions of the held-out rows."""
    return list(opts.validation_prompts) or held_out_prompts(data, held_out_rows(data, opts))


class _StageRun:
    """Runs one stage: checkpoints, validation (held-out KD, and a picture grid when ``grids``) and logging
    around ``Distiller.run``."""

    def __init__(
        self, distiller: Distiller, index: int, first_global: int, ckpt_dir: Path, result: DistillResult,
        grids: ValidationGrids | None = None,
    ) -> None:  # fmt: skip
        self.d, self.index, self.first_global, self.ckpt_dir, self.result = (
            distiller,
            index,
            first_global,
            ckpt_dir,
            result,
        )
        self.grids = grids

    def progress(self, stage_step: int) -> dict[str, Any]:
        return {"stage": self.index, "stage_step": stage_step, "global_step": self.first_global + stage_step,
                "fingerprint": self.result.settings}  # fmt: skip

    def on_step(self, step: int, terms: LossTerms) -> None:
        s = self.d.settings
        logs = {f"loss/{k}": v for k, v in terms.as_floats().items()}
        logs["lr"] = self.d.lr_scheduler.get_last_lr()[0]
        if s.validate_every and step % s.validate_every == 0:
            kd = self.d.held_out_kd()
            logs["val/held_out_kd"] = kd
            self.result.held_out_kd.append((self.first_global + step, kd))
            if self.grids is not None:
                grid = self.grids.draw(self.d.acc.unwrap_model(self.d.model), self.first_global + step)
                log_picture(self.d.acc, grid, self.first_global + step)
        self.d.acc.log(logs, step=self.first_global + step)
        if s.checkpoint_every and step % s.checkpoint_every == 0 and step < s.steps:
            self.d.save_checkpoint(self.ckpt_dir, self.progress(step))


def held_out_rows(data: Any, opts: DistillOptions) -> int:
    return min(opts.held_out, len(data) // 10)


def run_fingerprint(resolved: ResolvedRecipe, steps: list[int], opts: DistillOptions) -> dict[str, Any]:
    """What a run trains (student architecture, plan, stages, schedule, batch, seed), as plain JSON values:
    stored in every checkpoint, compared on ``--resume``, recorded in ``metrics.json``."""
    recipe = resolved.recipe
    stages = recipe.distill.stages
    fingerprint = {
        "recipe": recipe.name,
        "architecture": resolved.config,
        "plan": recipe.plan.model_dump(mode="json"),
        "teachers": [s.teacher or recipe.teacher.model for s in stages],
        "removals": [s.remove for s in stages],
        "learning_rates": [s.learning_rate for s in stages],
        "losses": [s.loss.model_dump(mode="json") for s in stages],
        "steps": steps,
        "batch_size": opts.batch_size or recipe.distill.batch_size,
        "grad_accum": opts.grad_accum,
        "seed": opts.seed,
        "caption_dropout": opts.caption_dropout,
        "ema_decay": opts.ema_decay,
    }
    return json.loads(json.dumps(fingerprint, default=list))


def _difference(key: str, old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        return "; ".join(f"{key}.{k}: checkpoint {old.get(k)!r}, this run {new.get(k)!r}" for k in keys[:3])
    return f"{key}: checkpoint {old!r}, this run {new!r}"


def _resume_point(ckpt_dir: Path, resume: bool, fingerprint: dict[str, Any]) -> tuple[Path | None, dict[str, Any]]:
    """The checkpoint to resume and its progress; refuses one that trains something else than this run."""
    if not resume:
        return None, {"stage": 0, "stage_step": 0, "global_step": 0}
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is None:
        raise PrunerError(f"--resume: no complete checkpoint under {ckpt_dir}; run without --resume to start")
    progress = json.loads((ckpt / "progress.json").read_text())
    old = progress.get("fingerprint")
    if not isinstance(old, dict):
        raise PrunerError(f"--resume: {ckpt} records no run settings (an older pruner); start a new --output")
    keys = [k for k, v in fingerprint.items() if old.get(k) != v]
    if keys:
        shown = next((k for k in keys if k != "recipe"), keys[0])  # the name alone says least
        raise PrunerError(f"--resume: {ckpt} trained another run ({', '.join(keys)} differ; "
                          f"{_difference(shown, old.get(shown), fingerprint[shown])}); rerun with the "
                          "checkpoint's recipe and settings, or choose another --output")  # fmt: skip
    return ckpt, progress


def _check_output(out: Path, resume: bool) -> None:
    """Refuse to train over a finished student or (without ``resume``) over an earlier run's checkpoints.
    Checkpoints cut short (a full disk, a kill) are removed first: they are never resumed, so they must not
    make the folder look like an earlier run."""
    remove_partial_checkpoints(out / "checkpoints")
    if (out / "unet" / "config.json").is_file() and not resume:
        raise PrunerError(f"{out} already holds a trained student; choose another --output or delete it")
    if not resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise PrunerError(f"{out}/checkpoints holds an earlier run; pass --resume to continue it, or delete it")


def _load_finished_stage(student: UNet2DConditionModel, ckpt: Path) -> None:
    try:
        student.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    except (OSError, RuntimeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunerError(f"checkpoint {ckpt} cannot be resumed ({first}); delete it or start a new --output") from exc


def stage_teachers(resolved: ResolvedRecipe) -> list[Teacher]:
    """Each stage's teacher, resolved once: the recipe's own, or the stage's (a fine-tune taught in turn)."""
    named = {s.teacher: Teacher.resolve(s.teacher) for s in resolved.recipe.distill.stages if s.teacher}
    return [named[s.teacher] if s.teacher else resolved.teacher for s in resolved.recipe.distill.stages]


def _train_stages(
    resolved: ResolvedRecipe,
    student: UNet2DConditionModel,
    data: Any,
    out: Path,
    opts: DistillOptions,
    result: DistillResult,
) -> UNet2DConditionModel:
    recipe = resolved.recipe
    stages = recipe.distill.stages
    steps = result.settings["steps"]
    ckpt_dir = out / "checkpoints"
    chains = stage_chains(resolved)
    teachers = stage_teachers(resolved)
    ckpt, progress = _resume_point(ckpt_dir, opts.resume, result.settings)
    applied = progress["stage"] if ckpt is not None else 0  # stages whose removal the student has
    for j in range(1, applied + 1):
        student = shrink(student, stages[j].remove)  # the architecture the checkpoint holds
    if ckpt is not None and progress["stage_step"] >= steps[progress["stage"]]:
        _load_finished_stage(student, ckpt)  # a finished stage: start the next
        progress = {"stage": progress["stage"] + 1, "stage_step": 0, "global_step": progress["global_step"]}
        ckpt = None
    first_global = sum(steps[: progress["stage"]])
    for k in range(progress["stage"], len(stages)):
        stage = stages[k]
        if k > applied:
            student, applied = shrink(student, stage.remove), k
        acc = _accelerator(out, opts)
        teacher = frozen_teacher(teachers[k], acc)
        pairs = composed_pairs(chains[k], stage.loss.feature_level)
        acc.init_trackers("distill", config={"recipe": recipe.name, "stage": k, "steps": steps[k]})
        d = Distiller(student, teacher, pairs, data, _settings(stage, steps[k], opts, recipe),
                      noise_scheduler=teachers[k].scheduler(),
                      accelerator=acc, held_out=held_out_rows(data, opts))  # fmt: skip
        if ckpt is not None and k == progress["stage"]:
            d.load_checkpoint(ckpt)
        run = _StageRun(d, k, first_global, ckpt_dir, result, _grids(teachers[k], d, data, out, opts))
        terms = d.run(steps[k], run.on_step, desc=f"stage {k + 1}/{len(stages)}")
        if terms is not None:
            result.final_losses = terms.as_floats()
        result.held_out_kd.append((first_global + steps[k], d.held_out_kd()))
        d.save_checkpoint(ckpt_dir, run.progress(steps[k]))
        acc.end_training()
        student = d.final_student()
        d.close()
        first_global += steps[k]
    result.steps = first_global
    return student


def _grids(teacher: Teacher, d: Distiller, data: Any, out: Path, opts: DistillOptions) -> ValidationGrids | None:
    """A stage's validation grids, drawn on the main process when ``validate_every`` asks for validation."""
    if not opts.validate_every or not d.acc.is_main_process:
        return None
    resolution = getattr(data, "meta", {}).get("resolution")
    return ValidationGrids(teacher, d.teacher, validation_prompts(data, opts), out / "validation", resolution)


def frozen_teacher(teacher: Teacher, acc: Accelerator) -> UNet2DConditionModel:
    """A stage's teacher, read from disk straight into the dtype the Distiller freezes it in (bf16 for a
    half-precision run: SDXL's 5 GB, not a 10 GB fp32 copy on the host first)."""
    return teacher.load(dtype=teacher_dtype(acc.device, acc.mixed_precision))


def kd_gradients(
    teacher: Any, data: Any, scheduler: DDPMScheduler, n_rows: int, batches: int = 4, batch_size: int = 8, seed: int = 0
) -> Callable[[Any], None]:
    """A ``grad_fn`` for Taylor width importance: output-KD gradients of a student on a few batches of the
    first ``n_rows`` cached rows (the training rows, never the held-out ones)."""

    def pairs() -> Iterator[tuple[KDInputs, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        for _ in range(batches):
            inputs = batch_inputs(collate(data, torch.randint(n_rows, (batch_size,), generator=g)), scheduler, g)
            yield inputs, teacher_pass(teacher, inputs).pred

    return output_kd_gradients(pairs)


def _initial_student(resolved: ResolvedRecipe, data: Any, opts: DistillOptions) -> Any:
    """The recipe's student built from its teacher, feed-forwards narrowed as its plan says."""
    teacher = resolved.teacher.load(dtype=torch.float32)  # fp32 master weights to train
    width = resolved.recipe.plan.width
    if width is None or width.importance != "taylor":
        return build_student(teacher, resolved.plan, importance=width.importance if width else "magnitude")[0]
    n_rows = len(data) - held_out_rows(data, opts)
    grad_fn = kd_gradients(teacher, data, resolved.teacher.scheduler(), n_rows, seed=opts.seed)
    return build_student(teacher, resolved.plan, importance="taylor", grad_fn=grad_fn)[0]


def distill_recipe(
    recipe: Recipe | str | Path, output: str | Path, opts: DistillOptions = DistillOptions()
) -> DistillResult:
    """Distill a recipe's student (a ``Recipe`` or a YAML path) to its output folder (see the module docstring).

    The output is this run's alone while it runs (:func:`pruner.io.output_lock`): a second run onto it is refused."""
    source = f"recipe {recipe.name}" if isinstance(recipe, Recipe) else str(recipe)
    resolved = resolve_recipe(recipe if isinstance(recipe, Recipe) else load_recipe(recipe), source)
    stage_chains(resolved, source)  # progressive removals checked before anything trains
    out = check_output_dir(Path(output), "--output")
    with _owned(out):
        _check_output(out, opts.resume)
        return _distill(resolved, out, opts)


def _launch() -> PartialState:
    """This process's place in the launch, settled as the run's Accelerator settles it (on CPUs the processes
    join over gloo: a state first made without ``cpu`` would count each CPU process as the only one)."""
    return PartialState(cpu=not torch.cuda.is_available())


@contextmanager
def _owned(out: Path) -> Iterator[None]:
    """Hold the output's lock on the main process (under accelerate the other processes write nothing there)."""
    if not _launch().is_main_process:
        yield
        return
    with output_lock(out, "--output"):
        yield


def _distill(resolved: ResolvedRecipe, out: Path, opts: DistillOptions) -> DistillResult:
    result = DistillResult(out, 0, settings=run_fingerprint(resolved, stage_steps(resolved.recipe.distill.stages,
                                                                                 opts.steps), opts))  # fmt: skip
    result.processes = _launch().num_processes
    _resume_point(out / "checkpoints", opts.resume, result.settings)  # a mismatch is refused before any compute
    data, _ = resolve_data(resolved.teacher, opts.data, recorded=resolved.recipe.distill.data)
    torch.manual_seed(opts.seed)
    student = _initial_student(resolved, data, opts)
    student = _train_stages(resolved, student, data, out, opts, result)
    if _launch().is_main_process:
        from pruner.distillation.output import write_outputs

        prompts = validation_prompts(data, opts)
        resolution = getattr(data, "meta", {}).get("resolution")  # the grid at the size the student trained at
        write_outputs(student.eval(), trained_recipe(resolved.recipe, result.settings), resolved.teacher, out, result,
                      prompts, resolution)  # fmt: skip
    return result


def trained_recipe(recipe: Recipe, settings: dict[str, Any]) -> Recipe:
    """The recipe as trained: each stage's steps after ``--steps``, the batch size after ``--batch-size``."""
    stages = [s.model_copy(update={"steps": n}) for s, n in zip(recipe.distill.stages, settings["steps"], strict=True)]
    distill = recipe.distill.model_copy(update={"stages": stages, "batch_size": settings["batch_size"]})
    return recipe.model_copy(update={"distill": distill})
