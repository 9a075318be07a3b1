"""What a finished distillation leaves behind: a stock diffusers UNet (and pipeline), a model card,
the recipe, metrics and a teacher | student picture grid."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from pruner.io import space_for
from pruner.recipe import Recipe, dump_recipe
from pruner.teacher import Teacher
from pruner.unet.width import ff_inner_sizes, mark_width_config, save_unet

__all__ = ["DONE_MARKER", "model_card", "write_outputs"]


DONE_MARKER = "metrics.json"  # moved into place last: an output without it is not a finished one


def _move_into(src: Path, out: Path) -> None:
    """Rename each finished file or folder into ``out``, the metrics last, so that a run stopped halfway
    through the moves never leaves an output that reads as finished."""
    for item in sorted(src.iterdir(), key=lambda p: p.name == DONE_MARKER):
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(item, target)
    src.rmdir()


def _validation_grid(
    pipe: DiffusionPipeline, student: UNet2DConditionModel, path: Path, prompts: list[str], resolution: int | None
) -> None:
    """Teacher row above student row from the same seeds, each held-out caption under its column, at the
    resolution the student trained at (None: the pipeline's own)."""
    from pruner.diffusion import generate, image_grid

    teacher_images = generate(pipe, prompts, resolution=resolution).images
    teacher_unet, pipe.unet = pipe.unet, student
    student_images = generate(pipe, prompts, resolution=resolution).images
    pipe.unet = teacher_unet
    image_grid([teacher_images, student_images], path, captions=prompts, row_labels=["teacher", "student"])


_LOAD_STOCK = (
    'from diffusers import UNet2DConditionModel\nunet = UNet2DConditionModel.from_pretrained(".", subfolder="unet")\n'
)
_LOAD_WIDTH = (
    "# width-pruned feed-forwards: stock from_pretrained cannot size them, pruner.load_unet can\n"
    'import pruner\nfrom diffusers import StableDiffusionXLPipeline\nunet = pruner.load_unet("unet")\n'
    'pipe = StableDiffusionXLPipeline.from_pretrained(".", unet=unet)\n'
)


def model_card(recipe: Recipe, metrics: dict[str, Any]) -> str:
    teachers = [recipe.teacher.model] + [s.teacher for s in recipe.distill.stages if s.teacher]
    losses = ", ".join(f"{k} {v:.4g}" for k, v in metrics.get("final_losses", {}).items())
    return (
        f"---\nlibrary_name: diffusers\ntags: [pruner, distillation, block-removal]\n---\n\n"
        f"# {recipe.name}\n\n{recipe.description}\n\n"
        f"- Recipe: `recipe.yaml` (made with pruner; rebuild with `pruner apply recipe.yaml --out DIR`)\n"
        f"- Teacher(s): {', '.join(f'`{t}`' for t in dict.fromkeys(teachers))}\n"
        f"- Removed units: {len(recipe.plan.remove)} entries; student parameters: {metrics.get('params')}\n"
        f"- Steps: {metrics.get('steps')}; final losses: {losses or '-'}; "
        f"held-out KD loss: {metrics.get('held_out_kd')}\n\n"
        f"```python\n{_LOAD_WIDTH if recipe.plan.width else _LOAD_STOCK}```\n"
    )


def write_outputs(
    student: UNet2DConditionModel, recipe: Recipe, teacher: Teacher, out: Path, result: Any, prompts: list[str],
    resolution: int | None = None,
) -> None:  # fmt: skip
    """Save the student (and pipeline), model card, recipe and metrics; each file renamed into place. The
    validation grid is drawn at ``resolution`` (the training data's; None: the pipeline's). A full disk is one
    line; the training is checkpointed by then, so ``--resume`` only writes the outputs again."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".final.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    then = "free space there, then rerun the same command with --resume: the training is done, only the outputs remain"
    try:
        with space_for(out, _output_bytes(student, teacher), then):
            _write_into(tmp, student, recipe, teacher, result, prompts, resolution)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into(tmp, out)


def _output_bytes(student: UNet2DConditionModel, teacher: Teacher) -> int:
    """About what the outputs take: the student's fp32 weights, and the teacher pipeline's other components."""
    ref = teacher.located
    weights = sum(p.numel() * 4 for p in student.parameters())
    if ref is not None and ref.kind == "pipeline":
        weights += sum(f.stat().st_size for f in ref.path.rglob("*.safetensors") if "unet" not in f.parts)
    return weights


def _write_into(
    tmp: Path, student: UNet2DConditionModel, recipe: Recipe, teacher: Teacher, result: Any, prompts: list[str],
    resolution: int | None,
) -> None:  # fmt: skip
    if teacher.located is not None and teacher.located.kind in ("pipeline", "hub"):
        pipe = teacher.pipeline(device=student.device)  # the validation grid runs where the student trained
        pipe.unet = student if student.dtype == torch.float32 else student.to(torch.float32)
        pipe.save_pretrained(tmp, safe_serialization=True)
        inner = ff_inner_sizes(student)
        if inner:
            mark_width_config(tmp / "unet" / "config.json", inner)
        if prompts:
            _validation_grid(pipe, student, tmp / "validation.png", prompts, resolution)
    else:
        save_unet(student, tmp / "unet")
    held = result.held_out_kd[-1][1] if result.held_out_kd else None
    metrics = {
        "steps": result.steps,
        "final_losses": result.final_losses,
        "held_out_kd": held,
        "held_out_kd_history": result.held_out_kd,
        "params": sum(p.numel() for p in student.parameters()),
        "trained": getattr(result, "settings", None),
        "processes": getattr(result, "processes", 1),
    }
    (tmp / DONE_MARKER).write_text(json.dumps(metrics, indent=2))
    (tmp / "recipe.yaml").write_text(dump_recipe(recipe))
    (tmp / "README.md").write_text(model_card(recipe, metrics))
