"""ControlNet compatibility of a plan: does a ControlNet made for the teacher still drive the student?

A diffusers ``ControlNetModel`` (``ControlNetModel.from_unet(teacher)`` or any published SDXL ControlNet)
returns one residual per skip connection of the teacher's down path (conv_in, every down layer, every
downsampler) and one for the mid block's output. ``UNet2DConditionModel.forward`` zips the down residuals
with the student's own skip samples, so a student with fewer skips (a removed layer unit or stage) gets
them paired with the wrong features, or fails on a shape; and it adds the mid residual where the mid
block's output is, so a student without a mid block receives it on the down path's output instead.
Transformer layers, the mid block's attention and feed-forward widths change no skip shape: a plan that
removes only those keeps every existing ControlNet usable (how well the control carries over is a matter
of distillation, not of shapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pruner.compat.ip_adapter import ip_adapter_compatibility
from pruner.compat.loaders import single_file_compatibility
from pruner.errors import PrunerError
from pruner.unet.plan import Plan, compress_names, unit_kinds
from pruner.unet.topology import Topology, topology_of

if TYPE_CHECKING:
    from pruner.recipe import Recipe

__all__ = [
    "COMPAT_TARGETS",
    "CONTROLNET_KINDS",
    "ControlNetCompatibility",
    "check_compat",
    "controlnet_compatibility",
    "recipe_compatibility",
]

COMPAT_TARGETS = ("controlnet", "single-file", "ip-adapter")
CONTROLNET_KINDS = frozenset({"transformer_layer", "mid_attention"})  # unit kinds that keep the skip topology

_WHY = {
    "layer": "a removed layer unit takes a skip connection away, so the ControlNet's down residuals no longer pair "
    "with the student's skips",
    "stage": "a removed stage takes its skips and the mid block's resolution away",
    "mid_block": "without a mid block the ControlNet's mid residual lands on the down path's output, "
    "not on the mid block's",
}


@dataclass(frozen=True)
class ControlNetCompatibility:
    """Whether a plan keeps the skip topology a teacher's ControlNet needs, and why not when it does not."""

    ok: bool
    reasons: tuple[str, ...] = ()

    def line(self) -> str:
        """``ControlNet-compatible: yes/no, why``, as ``pruner inspect`` prints it."""
        if self.ok:
            return (
                "ControlNet-compatible: yes (every skip connection and the mid block are kept; "
                "one residual per down skip plus one for the mid block still fit)"
            )
        return "ControlNet-compatible: no, " + "; ".join(self.reasons)


def controlnet_compatibility(plan: Plan, topo: Topology) -> ControlNetCompatibility:
    """Check a plan against the ControlNet rule (only transformer layers and the mid attention may go)."""
    kinds = unit_kinds(topo)
    by_kind: dict[str, list[str]] = {}
    for name in plan.removed:
        kind = kinds.get(name, "")
        if kind not in CONTROLNET_KINDS:
            by_kind.setdefault(kind, []).append(name)
    reasons = tuple(
        f"it removes {', '.join(compress_names(names))}: {_WHY.get(kind, 'this unit changes the skip topology')}"
        for kind, names in sorted(by_kind.items())
    )
    return ControlNetCompatibility(not reasons, reasons)


def check_compat(compat: Sequence[str], plan: Plan, topo: Topology) -> None:
    """Raise ``PrunerError`` when a plan breaks a compatibility the recipe or search space asks for."""
    if "controlnet" in compat:
        result = controlnet_compatibility(plan, topo)
        if not result.ok:
            raise PrunerError(
                f"the plan is not ControlNet-compatible, but compat asks for controlnet: {result.reasons[0]}; "
                "remove only transformer layers and the mid block's attention, or drop compat: [controlnet]"
            )
    if "single-file" in compat:
        reasons = single_file_compatibility(plan, topo).reasons()
        if reasons:
            loader, why = next(iter(reasons.items()))
            raise PrunerError(
                f"compat asks for single-file, but {loader} cannot load the student: {why}; remove the same layers "
                "in every down block and narrow no width, or drop compat: [single-file]"
            )
    if "ip-adapter" in compat:
        ip = ip_adapter_compatibility(plan, topo)
        if not ip.ok:
            raise PrunerError(
                f"compat asks for ip-adapter, but {ip.reason()}; keep every transformer layer and attention before "
                "the mid block, or drop compat: [ip-adapter]"
            )


def recipe_compatibility(recipe: Recipe) -> ControlNetCompatibility:
    """A recipe's plan checked against the ControlNet rule on its teacher's topology."""
    from pruner.teacher import Teacher
    from pruner.unet.surgery import meta_unet

    topo = topology_of(meta_unet(Teacher.of_recipe(recipe.teacher).config))
    return controlnet_compatibility(recipe.plan_obj(), topo)
