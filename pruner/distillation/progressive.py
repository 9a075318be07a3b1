"""Progressive removal: a stage may start from the previous stage's student and remove more of it.

Each stage's removal is a plan on the previous stage's student, so feature pairs are composed through the
chain: (stage-k student module -> stage-(k-1) module -> ... -> teacher module).
"""

from __future__ import annotations

from diffusers import UNet2DConditionModel

from pruner.errors import PrunerError, RecipeError
from pruner.student import ResolvedRecipe
from pruner.unet.config import student_config
from pruner.unet.maps import FeatureLevel, feature_map
from pruner.unet.plan import Layout, Plan, check_expressible
from pruner.unet.surgery import build_student, meta_unet
from pruner.unet.topology import Topology, topology_of

__all__ = ["Chain", "composed_pairs", "shrink", "stage_chains"]

Chain = list[tuple[Layout, Topology]]


def stage_chains(resolved: ResolvedRecipe, source: str = "<recipe>") -> list[Chain]:
    """For each stage, the layouts from the teacher to that stage's student (checked before training)."""
    chain: Chain = [(resolved.layout, resolved.topology)]
    config = resolved.config
    chains = []
    for k, stage in enumerate(resolved.recipe.distill.stages):
        if stage.remove:
            if k == 0:
                raise RecipeError(
                    f"{source}: distill.stages.0.remove: the first stage removes nothing; use plan.remove"
                )
            topo = topology_of(meta_unet(config))
            try:
                layout = check_expressible(Plan.removing(stage.remove), topo)
            except PrunerError as exc:
                raise RecipeError(f"{source}: distill.stages.{k}.remove: {exc}") from exc
            config = student_config(config, layout, topo)
            chain = [*chain, (layout, topo)]
        chains.append(list(chain))
    return chains


def composed_pairs(chain: Chain, level: FeatureLevel) -> list[tuple[str, str]]:
    """(current student module, teacher module) pairs through every removal of the chain."""
    layout, topo = chain[0]
    pairs = dict(feature_map(layout, topo, level))
    for layout, topo in chain[1:]:
        pairs = {s: pairs[prev] for s, prev in feature_map(layout, topo, level) if prev in pairs}
    return list(pairs.items())


def shrink(student: UNet2DConditionModel, remove: list[str]) -> UNet2DConditionModel:
    """The student with more units removed, initialised from its own weights."""
    return build_student(student, Plan.removing(remove))[0] if remove else student
