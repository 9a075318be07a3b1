"""Build a student UNet from a teacher and a plan, initialised from the teacher's weights.

The student is constructed on the meta device and each of its leaf modules is filled with a copy of the
mapped teacher module's tensors, so peak memory is teacher + student, never two teachers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from pruner.unet.config import student_config
from pruner.unet.maps import position_map, resolve, weight_map
from pruner.unet.plan import Layout, Plan, check_expressible
from pruner.unet.topology import Topology, topology_of
from pruner.unet.width import (
    GradFn,
    feed_forwards,
    ff_inner_sizes,
    planned_inner_sizes,
    prune_widths,
    reshape_feed_forwards,
)

__all__ = ["InitReport", "build_student", "inherited_widths", "meta_unet", "plan_student_config", "sized_student"]


@dataclass
class InitReport:
    """Where each student leaf module's weights came from."""

    copied: dict[str, str] = field(default_factory=dict)  # student leaf -> source teacher leaf
    by_position: dict[str, str] = field(default_factory=dict)  # source had other shapes: same-position teacher leaf
    fresh: list[str] = field(default_factory=list)  # no teacher module fits: default initialisation
    narrowed: dict[str, tuple[int, int]] = field(default_factory=dict)  # feed-forward -> (hidden was, kept)

    def summary(self) -> str:
        copied, by_position, fresh = len(self.copied), len(self.by_position), len(self.fresh)
        text = f"{copied} modules copied, {by_position} from same-position modules, {fresh} fresh"
        return text + (f", {len(self.narrowed)} feed-forwards narrowed" if self.narrowed else "")


def meta_unet(config: dict[str, Any]) -> UNet2DConditionModel:
    """A UNet with no storage, for sizing and topology (builds SDXL in well under a second)."""
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def plan_student_config(teacher_config: dict[str, Any], plan: Plan, topo: Topology | None = None) -> dict[str, Any]:
    """The diffusers config of the student ``plan`` makes of a teacher with ``teacher_config``."""
    topo = topo or topology_of(meta_unet(teacher_config))
    return student_config(teacher_config, check_expressible(plan, topo), topo)


def _leaf_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters(recurse=False)
    yield from module.named_buffers(recurse=False)


def _fits(student: nn.Module, teacher: nn.Module | None) -> bool:
    if teacher is None or type(teacher) is not type(student):
        return False
    theirs = dict(_leaf_tensors(teacher))
    return all(name in theirs and theirs[name].shape == t.shape for name, t in _leaf_tensors(student))


def _source_leaf(
    path: str, leaf: nn.Module, teacher: dict[str, nn.Module], maps: tuple[dict, dict], report: InitReport
) -> nn.Module | None:
    wmap, pmap = maps
    src = resolve(path, wmap)
    if _fits(leaf, teacher.get(src)):
        report.copied[path] = src
        return teacher[src]
    pos = resolve(path, pmap)
    if _fits(leaf, teacher.get(pos)):
        report.by_position[path] = pos
        return teacher[pos]
    report.fresh.append(path)
    return None


def _materialise(leaf: nn.Module, source: nn.Module | None, device: torch.device, dtype: torch.dtype | None) -> None:
    if source is None:
        leaf.to_empty(device=device, recurse=False)
        reset = getattr(leaf, "reset_parameters", None)
        if callable(reset):
            reset()
        if dtype is not None:
            leaf.to(dtype)
        return
    theirs = dict(_leaf_tensors(source))
    state = {name: theirs[name].detach().to(device=device, dtype=dtype, copy=True) for name, _ in _leaf_tensors(leaf)}
    leaf.load_state_dict(state, strict=True, assign=True)


def _fill(
    student: nn.Module, teacher: nn.Module, layout: Layout, topo: Topology, device: torch.device,
    dtype: torch.dtype | None,
) -> InitReport:  # fmt: skip
    teacher_modules = dict(teacher.named_modules())
    maps = (weight_map(layout), position_map(layout, topo))
    report = InitReport()
    for path, leaf in student.named_modules():
        if next(_leaf_tensors(leaf), None) is None:
            continue
        source = _source_leaf(path, leaf, teacher_modules, maps, report)
        _materialise(leaf, source, device, dtype)
    return report


def inherited_widths(student: nn.Module, narrowed: Mapping[str, int], layout: Layout) -> dict[str, int]:
    """Feed-forward hidden sizes a student takes from an already width-pruned teacher (progressive
    removal), given the teacher's narrowed sizes by module path."""
    if not narrowed:
        return {}
    wmap = weight_map(layout)
    return {path: narrowed[src] for path in feed_forwards(student) if (src := resolve(path, wmap)) in narrowed}


def sized_student(
    config: dict[str, Any], layout: Layout, narrowed: Mapping[str, int], ff_keep: Mapping[int, float] | None = None
) -> UNet2DConditionModel:
    """A student's shapes on the meta device: the config's, the feed-forward widths it inherits from a
    teacher narrowed to ``narrowed`` (module path -> hidden size), then ``ff_keep`` narrowing those."""
    student = meta_unet(config)
    reshape_feed_forwards(student, inherited_widths(student, narrowed, layout))
    if ff_keep:
        reshape_feed_forwards(student, planned_inner_sizes(student, ff_keep))
    return student


def build_student(
    teacher: UNet2DConditionModel,
    plan: Plan,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    importance: str = "magnitude",
    grad_fn: GradFn | None = None,
) -> tuple[UNet2DConditionModel, InitReport]:
    """The student ``plan`` makes of ``teacher``, its weights copied from the mapped teacher modules, then
    its feed-forwards narrowed as the plan says (channels ranked by ``importance``; Taylor calls
    ``grad_fn(student)`` to get gradients of a loss on real batches).

    A plan that keeps every unit gives a model equal to the teacher, bit for bit. On ``device="meta"``
    nothing is copied (for sizing).
    """
    topo = topology_of(teacher)
    layout = check_expressible(plan, topo)
    config = student_config(teacher.config, layout, topo)
    if str(device) == "meta":
        return sized_student(config, layout, ff_inner_sizes(teacher), plan.ff_ratios), InitReport()
    student = sized_student(config, layout, ff_inner_sizes(teacher))
    ref = next(teacher.parameters())
    device = torch.device(device) if device is not None else ref.device
    report = _fill(student, teacher, layout, topo, device, dtype or ref.dtype)
    report.narrowed = prune_widths(student, plan.ff_ratios, importance, grad_fn)
    return student.train(teacher.training), report
