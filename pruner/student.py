"""From a recipe to a student: check the recipe against its teacher, build the student, save it.

A saved student is a stock diffusers UNet folder (``config.json`` + safetensors) with its ``recipe.yaml``
beside it; ``UNet2DConditionModel.from_pretrained`` loads a depth-only one as it is, ``pruner.load_unet``
any (width-pruned ones too).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import UNet2DConditionModel

from pruner.compat.controlnet import check_compat
from pruner.cost.model import CostModel
from pruner.errors import PrunerError, RecipeError, UnknownUnitError
from pruner.io import publish_dir, temp_dir_beside, write_text
from pruner.recipe import Recipe, StudentSpec, dump_recipe
from pruner.teacher import Teacher
from pruner.unet.config import ARCH_FIELDS, student_config
from pruner.unet.plan import Layout, Plan, check_expressible
from pruner.unet.surgery import InitReport, build_student, meta_unet, sized_student
from pruner.unet.topology import Topology, topology_of
from pruner.unet.width import check_width_levels, save_unet

__all__ = [
    "ResolvedRecipe",
    "apply_recipe",
    "derive_student_spec",
    "resolve_recipe",
    "save_student",
]


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe checked against its teacher: the teacher (resolved once), the plan, its layout and the
    student config."""

    recipe: Recipe
    teacher: Teacher
    topology: Topology
    plan: Plan
    layout: Layout
    config: dict[str, Any]

    @property
    def teacher_config(self) -> dict[str, Any]:
        return self.teacher.config

    @property
    def teacher_inner(self) -> dict[str, int]:
        """A width-pruned teacher's narrowed feed-forward sizes (empty for a full-width or weightless one)."""
        return self.teacher.ff_inner

    def meta_student(self) -> UNet2DConditionModel:
        """The student on the meta device at the widths it will have: inherited, then narrowed by the plan."""
        return sized_student(self.config, self.layout, self.teacher_inner, self.plan.ff_ratios)


def _arch_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in ARCH_FIELDS}


def derive_student_spec(
    teacher_config: dict[str, Any], plan: Plan, topo: Topology | None = None, inner: Mapping[str, int] | None = None
) -> StudentSpec:
    """The recipe's derived ``student`` section for a plan on a teacher (``inner``: a width-pruned
    teacher's narrowed feed-forward sizes, so the student is priced at the widths it inherits)."""
    topo = topo or topology_of(meta_unet(teacher_config))
    layout = check_expressible(plan, topo)
    config = student_config(teacher_config, layout, topo)
    check_width_levels(plan.ff_ratios, topo)
    return StudentSpec(config=_arch_fields(config), params=_params_model(teacher_config, inner).params(plan))


def _params_model(teacher_config: dict[str, Any], inner: Mapping[str, int] | None) -> CostModel:
    """One parameter-counting cost model per teacher architecture and widths, shared: a search derives the
    student section of every recipe it exports, and each new model builds two UNets on the meta device."""
    key = json.dumps([teacher_config, dict(inner or {})], sort_keys=True, default=repr)
    if key not in _PARAMS_MODELS:
        if len(_PARAMS_MODELS) >= 8:  # a few architectures a process at most; keep it bounded anyway
            del _PARAMS_MODELS[next(iter(_PARAMS_MODELS))]
        _PARAMS_MODELS[key] = CostModel(teacher_config, inner=inner)
    return _PARAMS_MODELS[key]


_PARAMS_MODELS: dict[str, CostModel] = {}


def _check_student(recipe: Recipe, source: str, config: dict[str, Any], params: int) -> None:
    if recipe.student is None:
        return
    derived = _arch_fields(config)
    for key, value in recipe.student.config.items():
        if derived.get(key) != value:
            raise RecipeError(
                f"{source}: student.config.{key} is {value!r} but the plan gives {derived.get(key)!r} on teacher "
                f"{recipe.teacher.model}; the recipe was made for another teacher, or delete `student` to re-derive it"
            )
    if recipe.student.params is not None and recipe.student.params != params:
        raise RecipeError(f"{source}: student.params is {recipe.student.params} but the plan gives {params}")


def resolve_recipe(recipe: Recipe, source: str = "<recipe>") -> ResolvedRecipe:
    """Resolve a recipe's teacher (once: every later step reads ``ResolvedRecipe.teacher``), check the plan
    against it and derive the student config."""
    teacher = Teacher.of_recipe(recipe.teacher)
    teacher_config = teacher.config
    topo = topology_of(meta_unet(teacher_config))
    plan = recipe.plan_obj()
    try:
        layout = check_expressible(plan, topo)
        check_width_levels(plan.ff_ratios, topo)
        check_compat(recipe.compat, plan, topo)
    except UnknownUnitError as exc:
        raise RecipeError(
            f"{source}: {exc}; is this a recipe for another architecture than {recipe.teacher.model}?"
        ) from exc
    except PrunerError as exc:
        raise RecipeError(f"{source}: {exc}") from exc
    config = student_config(teacher_config, layout, topo)
    _check_student(recipe, source, config, _params_model(teacher_config, teacher.ff_inner).params(plan))
    return ResolvedRecipe(recipe, teacher, topo, plan, layout, config)


def save_student(student: UNet2DConditionModel, recipe: Recipe, out_dir: str | Path) -> Path:
    """Save a student as a stock diffusers UNet folder (safetensors) with ``recipe.yaml`` beside it.

    Written under a temporary name and renamed, so an interrupted save never looks complete.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise PrunerError(f"{out} already exists and is not empty; choose another output folder or delete it")
    tmp = temp_dir_beside(out)
    try:
        save_unet(student, tmp)
        write_text(tmp / "recipe.yaml", dump_recipe(recipe))
        return publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def apply_recipe(recipe: Recipe, out_dir: str | Path, source: str = "<recipe>") -> tuple[Path, InitReport]:
    """Build the recipe's student from the teacher's weights (untrained) and save it."""
    resolved = resolve_recipe(recipe, source)
    if resolved.teacher.located is not None and resolved.teacher.located.kind == "architecture":
        raise PrunerError(
            f"{source}: teacher {recipe.teacher.model} has no weights; point teacher.model at a folder or hub id"
        )
    teacher = resolved.teacher.load()
    width = recipe.plan.width
    if width is not None and width.importance == "taylor":
        raise PrunerError(
            f"{source}: plan.width.importance taylor ranks channels on data; `pruner apply` has none, so use "
            "magnitude here or let `pruner distill` build the student"
        )
    student, report = build_student(teacher, resolved.plan)
    spec = StudentSpec(config=_arch_fields(resolved.config), params=sum(p.numel() for p in student.parameters()))
    return save_student(student, recipe.model_copy(update={"student": spec}), out_dir), report
