"""Recipes: the YAML that names a teacher, a plan, the student it makes and how to distill it.

Validated at the door with pydantic (unknown fields are errors) and checked against the teacher's
architecture; a failure names the file, the line and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pruner.errors import RecipeError
from pruner.unet.config import ARCH_FIELDS
from pruner.unet.plan import Plan, compress_names, expand_names

__all__ = [
    "SCHEMA_VERSION",
    "DistillSpec",
    "LossSpec",
    "PlanSpec",
    "Provenance",
    "Recipe",
    "StageSpec",
    "StudentSpec",
    "TeacherSpec",
    "WidthSpec",
    "dump_recipe",
    "load_recipe",
    "parse_recipe",
    "save_recipe",
]

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeacherSpec(_Strict):
    model: str = Field(description="Hub id, local pipeline or UNet folder, .safetensors file, or architecture name.")
    architecture: str | None = Field(
        None, description="Shipped architecture (sdxl, sd15) that sizes the plan when the weights are not at hand."
    )


class WidthSpec(_Strict):
    ff_keep: dict[int, float] = Field(
        description="Per resolution level (down block i, its up partner, and the mid block at the innermost): "
        "the share of feed-forward hidden channels each transformer layer keeps, in (0, 1]."
    )
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="How channels are ranked (torch-pruning): weight magnitude, or Taylor on data."
    )

    @field_validator("ff_keep")
    @classmethod
    def _ratios(cls, ratios: dict[int, float]) -> dict[int, float]:
        for level, ratio in ratios.items():
            if level < 0 or not 0 < ratio <= 1:
                raise ValueError(f"level {level}: keep ratio {ratio} must be in (0, 1] at a level >= 0")
        return ratios


class PlanSpec(_Strict):
    remove: list[str] = Field(
        default_factory=list,
        description="Teacher units the student leaves out; `...transformer_blocks.2-9` names a run (inclusive).",
    )

    @field_validator("remove")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or " " in name or not name[0].isalpha():
                raise ValueError(f"{name!r} is not a unit name such as down_blocks.1.resnets.0")
        return names

    width: WidthSpec | None = Field(None, description="Feed-forward width pruning on top of the removals.")

    def plan(self) -> Plan:
        return Plan.removing(self.remove, self.width.ff_keep if self.width else None)


class StudentSpec(_Strict):
    config: dict[str, Any] = Field(
        description="The diffusers config fields removal changes (derived, checked on load)."
    )
    params: int | None = Field(None, description="Parameter count of the student UNet (derived, checked on load).")


class LossSpec(_Strict):
    task: float = Field(1.0, ge=0, description="Weight of the denoising task loss.")
    output_kd: float = Field(0.5, ge=0, description="Weight of output KD (student vs teacher prediction).")
    feature_kd: float = Field(0.5, ge=0, description="Weight of layer-level feature KD.")
    feature_level: Literal["block", "sub_block", "layer"] = Field(
        "sub_block",
        description="Where features are compared: block outputs, each resnet/attention, each transformer layer.",
    )
    normalize_features: bool = Field(False, description="Divide each feature term by the teacher feature's norm.")
    min_snr_gamma: float | None = Field(None, gt=0, description="Min-SNR weighting of the task loss (5.0 is usual).")


class StageSpec(_Strict):
    teacher: str | None = Field(None, description="Teacher of this stage; None means the recipe's teacher.")
    steps: int = Field(gt=0, description="Optimizer steps in this stage.")
    learning_rate: float = Field(gt=0, description="Peak learning rate of AdamW.")
    loss: LossSpec = Field(default_factory=LossSpec)
    remove: list[str] = Field(
        default_factory=list,
        description="Progressive removal: units of the previous stage's student (its own module paths) that this "
        "stage removes before training; not allowed in the first stage (use plan.remove).",
    )


class DistillSpec(_Strict):
    resolution: int | None = Field(None, gt=0, description="Training resolution in pixels; None: the teacher's.")
    batch_size: int = Field(1, gt=0, description="Batch size per device.")
    data: str | None = Field(
        None,
        description="Cache folder made by `pruner cache` (a relative path is relative to the recipe file), or "
        "`bundled:tiny-sdxl` for the bundled teacher's synthesised set.",
    )
    stages: list[StageSpec] = Field(min_length=1, description="Distillation stages, run in order.")


class Provenance(_Strict):
    source: Literal["hand-written", "search"] = "hand-written"
    reference: str | None = Field(None, description="Paper or model card the recipe reproduces.")
    study: str | None = None
    trial: int | None = None
    objectives: dict[str, float] | None = None
    costs: dict[str, float] | None = None
    choice: str | None = Field(
        None,
        description="Why the search's found.yaml names this plan (a sampled plan over the search's one-shot "
        "anchor only when its lead is clear of the noise).",
    )
    ties: list[int] | None = Field(
        None, description="Trials of the same front whose proxy KD is within the search's noise of this one's."
    )


class Recipe(_Strict):
    schema_version: Literal[1] = Field(description="Recipe format version; this pruner reads 1.")
    name: str
    description: str = ""
    teacher: TeacherSpec
    plan: PlanSpec
    compat: list[Literal["controlnet", "single-file", "ip-adapter"]] = Field(
        default_factory=list,
        description="Compatibilities the plan must keep: controlnet (only transformer layers and the mid block's "
        "attention go, so a teacher's ControlNet still fits); single-file (every down block keeps as many layers "
        "and no width is narrowed, so every single-file loader, diffusers' from_single_file included, takes it); "
        "ip-adapter (every kept cross-attention processor keeps its position, so a teacher's IP-Adapter loads).",
    )
    student: StudentSpec | None = None
    distill: DistillSpec
    provenance: Provenance = Field(default_factory=Provenance)

    def plan_obj(self) -> Plan:
        return self.plan.plan()


# --- YAML with line numbers -------------------------------------------------------------------------


def _node_line(node: yaml.Node, loc: tuple[int | str, ...]) -> int:
    """1-based line of the YAML node at a pydantic error location (the deepest one that exists)."""
    for key in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == key), None)
            if child is None:
                child = next((k for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _yaml_error(source: str, exc: yaml.YAMLError) -> RecipeError:
    mark = getattr(exc, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return RecipeError(f"{source}{line}: malformed YAML: {problem}; fix the indentation or quoting there")


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate recipe YAML; errors name ``source:line: field``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping with schema_version, name, teacher, plan and distill")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _node_line(root, loc) if root is not None else 1
        raise RecipeError(f"{source}:{line}: {field}: {err['msg']}") from exc


def revalidate(recipe: Recipe, source: str = "<recipe>") -> Recipe:
    """``recipe`` checked again: a ``Recipe`` changed after it was made (``model_copy(update=...)``,
    ``model_construct``) skipped validation, and would train and be saved as a file pruner cannot load."""
    try:
        return Recipe.model_validate(recipe.model_dump(warnings=False))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise RecipeError(f"{source} {field}: {err['msg']}; fix that field of the Recipe") from exc


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}; check the path") from exc
    return _resolve_data_path(parse_recipe(text, str(path)), path)


def _is_reference(data: str) -> bool:
    """``bundled:NAME`` and other ``scheme:`` references are not paths (a Windows drive letter is)."""
    head, sep, _ = data.partition(":")
    return bool(sep) and len(head) > 1


def _resolve_data_path(recipe: Recipe, path: Path) -> Recipe:
    """A relative ``distill.data`` read relative to the recipe's folder (a recipe written before that rule
    meant the working folder: kept when only that one exists)."""
    data = recipe.distill.data
    if data is None or _is_reference(data) or Path(data).is_absolute():
        return recipe
    beside = os.path.normpath(path.parent / data)
    if not Path(beside).exists() and Path(data).exists():
        return recipe
    return recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"data": beside})})


def _portable_data_path(recipe: Recipe, path: Path) -> Recipe:
    """``distill.data`` relative to the recipe's folder when the data lies beside it (under the folder's
    parent, as ``cache/`` beside ``recipes/`` does), so a project moved or cloned elsewhere still finds it."""
    data = recipe.distill.data
    if data is None or _is_reference(data):
        return recipe
    folder = path.parent.absolute()
    target = Path(os.path.abspath(data))
    if not target.is_relative_to(folder.parent):
        return recipe
    relative = os.path.relpath(target, folder)
    return recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"data": relative})})


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a recipe, with removed units folded into runs and fields in schema order."""
    data = recipe.model_dump(mode="json", exclude_none=False)
    data["plan"]["remove"] = compress_names(expand_names(data["plan"]["remove"]))
    if data["plan"].get("width") is None:
        data["plan"].pop("width", None)
    if not data.get("compat"):
        data.pop("compat", None)
    if data.get("student"):
        cfg = data["student"]["config"]
        data["student"]["config"] = {k: cfg[k] for k in ARCH_FIELDS if k in cfg}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=110)


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write a recipe atomically (temporary name, then rename)."""
    from pruner.io import write_text

    return write_text(path, dump_recipe(_portable_data_path(recipe, Path(path))))
