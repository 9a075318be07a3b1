"""The teacher/student pair a compatibility tool works on: a student folder or a recipe, resolved to the
plan's layout and the shapes of both models (on the meta device: no weights are read)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import UNet2DConditionModel

from pruner.errors import PrunerError
from pruner.recipe import Recipe, load_recipe, revalidate
from pruner.student import ResolvedRecipe, resolve_recipe
from pruner.unet.load import resolve_model, unet_config, unet_ff_inner
from pruner.unet.plan import Layout
from pruner.unet.surgery import meta_unet
from pruner.unet.width import reshape_feed_forwards

__all__ = ["PlanTarget", "plan_target", "student_recipe"]


@dataclass(frozen=True)
class PlanTarget:
    """A resolved plan with meta-device teacher and student at the widths they have."""

    resolved: ResolvedRecipe
    teacher: UNet2DConditionModel
    student: UNet2DConditionModel

    @property
    def layout(self) -> Layout:
        return self.resolved.layout

    @property
    def teacher_name(self) -> str:
        return self.resolved.recipe.teacher.model


def student_recipe(folder: str | Path) -> tuple[Path, Recipe]:
    """The ``recipe.yaml`` pruner writes beside a student (in its folder, or above a pipeline's ``unet``)."""
    folder = Path(folder)
    for candidate in (folder / "recipe.yaml", folder.parent / "recipe.yaml"):
        if candidate.is_file():
            return candidate, load_recipe(candidate)
    raise PrunerError(
        f"{folder} has no recipe.yaml beside it, so its plan is unknown; pass the recipe it was made from instead"
    )


def _folder_student(folder: Path, resolved: ResolvedRecipe) -> UNet2DConditionModel:
    ref = resolve_model(str(folder))
    student = meta_unet(unet_config(ref))
    reshape_feed_forwards(student, unet_ff_inner(ref))
    planned = {name for name, _ in resolved.meta_student().named_parameters()}
    if {name for name, _ in student.named_parameters()} != planned:
        raise PrunerError(f"{folder}: its UNet does not have the modules its recipe.yaml plans; re-apply the recipe")
    return student


def plan_target(*, student: str | Path | None = None, recipe: Recipe | str | Path | None = None) -> PlanTarget:
    """Resolve a student folder or a recipe (a file or a ``Recipe``) to its plan and model shapes."""
    if (student is None) == (recipe is None):
        raise PrunerError("give either a student folder or a recipe (not both)")
    if student is not None:
        source, rec = student_recipe(student)
    elif isinstance(recipe, Recipe):
        source, rec = Path("<recipe>"), revalidate(recipe, "recipe=")
    else:
        source, rec = Path(str(recipe)), load_recipe(str(recipe))
    resolved = resolve_recipe(rec, str(source))
    teacher = meta_unet(resolved.teacher_config)
    reshape_feed_forwards(teacher, resolved.teacher_inner)
    model = _folder_student(Path(student), resolved) if student is not None else resolved.meta_student()
    return PlanTarget(resolved, teacher, model)
