"""A finished search's plans as recipes: each trial's plan, derived student, distillation defaults and
provenance, and the front written as ``front/trial-<n>.yaml``, ``found.yaml`` and ``front.png``.

Everything here reads the study alone (its ``search`` user attribute names the teacher, budget, objectives
and data), so a study from another machine or an earlier run exports the same recipes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from pruner.data.bundled import data_reference
from pruner.errors import PrunerError
from pruner.recipe import DistillSpec, LossSpec, PlanSpec, Provenance, Recipe, StageSpec, TeacherSpec, WidthSpec
from pruner.student import derive_student_spec
from pruner.study.front import cost_keys, export_front, front_recipes
from pruner.teacher import Teacher
from pruner.unet.plan import Plan, compress_names
from pruner.unet.surgery import meta_unet
from pruner.unet.topology import Topology, topology_of

__all__ = ["export_study", "recipe_for_plan", "recipe_for_trial", "slug", "study_recipes"]


def slug(text: str) -> str:
    """``text`` as a name for files and studies: runs of other characters become one dash, lower case."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _distill_spec(teacher: Teacher, data_path: str | None) -> DistillSpec:
    """Distillation defaults for a found recipe, at the teacher profile's scale (SSD-1B's published losses)."""
    loss = LossSpec(task=1.0, output_kd=0.5, feature_kd=0.5, feature_level="sub_block")
    profile = teacher.profile
    stage = StageSpec(steps=profile.steps, learning_rate=profile.learning_rate, loss=loss)
    resolution = profile.resolution or teacher.latent * teacher.vae_scale
    return DistillSpec(resolution=resolution, batch_size=profile.batch_size, data=data_path, stages=[stage])


def recipe_for_plan(plan: Plan, teacher: Teacher, topo: Topology, *, name: str, description: str,
                    provenance: Provenance, data: str | None = None, compat: list[str] | None = None,
                    width_importance: str = "magnitude") -> Recipe:  # fmt: skip
    """The recipe that distils ``plan`` of ``teacher``: its removals and widths, the derived student, the
    teacher profile's distillation defaults on ``data`` (a cache or dataset reference; None: the bundled set)
    and ``provenance``. ``topo`` is the teacher's topology (computed once per export)."""
    ff_keep = dict(plan.ff_keep)
    width = WidthSpec(ff_keep=ff_keep, importance=width_importance) if ff_keep else None
    return Recipe(
        schema_version=1,
        name=name,
        description=description,
        teacher=TeacherSpec(model=teacher.reference, architecture=teacher.architecture),
        plan=PlanSpec(remove=compress_names(plan.removed), width=width),
        compat=list(compat or []),
        student=derive_student_spec(teacher.config, plan, topo, teacher.ff_inner),
        distill=_distill_spec(teacher, data_reference(data)),
        provenance=provenance,
    )


def recipe_for_trial(settings: dict[str, Any], teacher: Teacher, topo: Topology, study_name: str,
                     trial: optuna.trial.FrozenTrial) -> Recipe:  # fmt: skip
    """The recipe of one trial: plan, derived student, distillation stages and provenance.

    ``settings`` is what the search stored in the study's ``search`` user attribute (teacher, budget,
    objectives, data), so a finished study alone suffices (``pruner front --export``); ``topo`` is the
    teacher's topology (computed once per export)."""
    ff_keep = {int(k): float(v) for k, v in (trial.user_attrs.get("ff_keep") or {}).items()}
    plan = Plan.removing(trial.user_attrs["removed"], ff_keep)
    label = trial.user_attrs.get("label")
    objectives = dict(zip(settings["objectives"], trial.values or [], strict=False))
    costs = {k: float(trial.user_attrs[k]) for k in cost_keys() if trial.user_attrs.get(k) is not None}
    style = f", seeded in {label} style" if label else ""
    return recipe_for_plan(
        plan,
        teacher,
        topo,
        name=f"{slug(teacher.reference)}-trial-{trial.number}" + (f"-{label}" if label else ""),
        description=f"Found by `pruner search` ({settings['budget']} budget, trial {trial.number}{style}).",
        provenance=Provenance(
            source="search", study=study_name, trial=trial.number, objectives=objectives, costs=costs
        ),
        data=settings.get("data"),
        compat=settings.get("compat"),
        width_importance=settings.get("width_importance", "magnitude"),
    )


def _search_settings(study: optuna.Study) -> dict[str, Any]:
    settings = study.user_attrs.get("search")
    if not settings:
        raise PrunerError(f"study {study.study_name} was not made by `pruner search`: it records no search settings")
    return dict(settings)


def _recipe_maker(study: optuna.Study, teacher: Teacher | None) -> Callable[[optuna.trial.FrozenTrial], Recipe]:
    """Each trial's recipe, on ``teacher`` (resolved from the study's settings when not given)."""
    settings = _search_settings(study)
    teacher = teacher or Teacher.resolve(settings["teacher"])
    topo = topology_of(meta_unet(teacher.config))
    return lambda trial: recipe_for_trial(settings, teacher, topo, study.study_name, trial)


def export_study(study: optuna.Study, out: Path, teacher: Teacher | None = None) -> dict[str, Path]:
    """Write a finished study's front as recipes, found.yaml and the plot, from the study alone (``teacher``:
    the search's own, already resolved, else the one the study names)."""
    return export_front(study, out, _recipe_maker(study, teacher))


def study_recipes(study: optuna.Study, teacher: Teacher | None = None) -> tuple[Recipe, list[Recipe]]:
    """A finished study's found recipe (``found_trial``: best quality within budget, or the one-shot anchor
    where the best plan's lead over it is within noise) and its Pareto front's recipes, cheapest first."""
    found, front = front_recipes(study, _recipe_maker(study, teacher))
    return found, list(front.values())
