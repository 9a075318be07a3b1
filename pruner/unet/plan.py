"""Plans: which units of a teacher are removed, and the student layout that follows from it.

A plan is a set of removed unit names. The kept units initialise the student in order
(DistilBERT-style): keeping transformer layers 0, 4 and 9 of ten gives a three-layer attention whose
layers start as the teacher's 0, 4 and 9. ``layout_of`` turns a plan into that assignment; the student
config, the weight map, the feature map and the cost model are all read off the layout, so nothing is
written out per architecture.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pruner.errors import InexpressiblePlanError, UnknownUnitError
from pruner.unet.topology import MidKind, Topology

__all__ = [
    "LayerSlot",
    "Layout",
    "Plan",
    "check_expressible",
    "compress_names",
    "expand_names",
    "implied_by",
    "layer_unit",
    "layout_of",
    "nearest_expressible",
    "parent_of",
    "unit_kinds",
]

MID_ATTN = "mid_block.attentions.0"
_RANGE = re.compile(r"^(?P<head>.+\.transformer_blocks)\.(?P<a>\d+)-(?P<b>\d+)$")
_TLAYER = re.compile(r"^(?P<head>.+\.transformer_blocks)\.(?P<m>\d+)$")


@dataclass(frozen=True)
class Plan:
    """The set of teacher units a student leaves out, and how narrow its feed-forwards become.

    ``ff_keep`` holds (level, keep ratio) pairs: the share of feed-forward hidden channels every
    transformer layer at that resolution level keeps (``pruner.unet.width``); levels not named keep all.
    """

    removed: frozenset[str] = field(default_factory=frozenset)
    ff_keep: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        pairs = dict(self.ff_keep)
        for level, ratio in pairs.items():
            if not 0 < ratio <= 1:
                raise ValueError(f"feed-forward keep ratio {ratio} at level {level} is outside (0, 1]")
        object.__setattr__(self, "ff_keep", tuple(sorted((int(k), float(v)) for k, v in pairs.items() if v < 1)))

    @classmethod
    def removing(cls, names: Iterable[str], ff_keep: Mapping[int, float] | None = None) -> Plan:
        return cls(frozenset(expand_names(names)), tuple((ff_keep or {}).items()))

    def __or__(self, other: Plan) -> Plan:
        return Plan(self.removed | other.removed, tuple({**dict(self.ff_keep), **dict(other.ff_keep)}.items()))

    def with_removed(self, removed: Iterable[str]) -> Plan:
        """The same widths with another set of removed units."""
        return replace(self, removed=frozenset(removed))

    def plus(self, names: Iterable[str]) -> Plan:
        return self.with_removed(self.removed | set(names))

    def without(self, names: Iterable[str]) -> Plan:
        return self.with_removed(self.removed - set(names))

    def with_widths(self, ff_keep: Mapping[int, float]) -> Plan:
        return Plan(self.removed, tuple(ff_keep.items()))

    @property
    def ff_ratios(self) -> dict[int, float]:
        return dict(self.ff_keep)

    def sorted_names(self) -> list[str]:
        return sorted(self.removed, key=_natural_key)


@dataclass(frozen=True)
class LayerSlot:
    """One student layer: the teacher layer it comes from and the teacher transformer layers it keeps."""

    teacher: int
    blocks: tuple[int, ...] = ()


@dataclass(frozen=True)
class Layout:
    """Where every student layer comes from. Up blocks are in student order; teacher up index = j + up_offset."""

    down: tuple[tuple[LayerSlot, ...], ...]
    up: tuple[tuple[LayerSlot, ...], ...]
    up_offset: int
    mid: MidKind | None
    mid_blocks: tuple[int, ...]


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def expand_names(names: Iterable[str]) -> list[str]:
    """Expand ``...transformer_blocks.2-9`` shorthands (inclusive) into one name per layer."""
    out: list[str] = []
    for name in names:
        m = _RANGE.match(name)
        if m is None:
            out.append(name)
            continue
        a, b = int(m["a"]), int(m["b"])
        if b < a:
            raise UnknownUnitError(f"range {name!r} runs backwards; write {m['head']}.{b}-{a}")
        out.extend(f"{m['head']}.{k}" for k in range(a, b + 1))
    return out


def compress_names(names: Iterable[str]) -> list[str]:
    """Sort names and fold runs of consecutive transformer layers into ``head.a-b`` (the inverse of expand)."""
    runs: dict[str, list[int]] = {}
    plain: list[str] = []
    for name in names:
        m = _TLAYER.match(name)
        if m:
            runs.setdefault(m["head"], []).append(int(m["m"]))
        else:
            plain.append(name)
    for head, idx in runs.items():
        idx.sort()
        start = prev = idx[0]
        for k in [*idx[1:], None]:
            if k is not None and k == prev + 1:
                prev = k
                continue
            plain.append(f"{head}.{start}" if start == prev else f"{head}.{start}-{prev}")
            if k is not None:
                start = prev = k
    return sorted(plain, key=_natural_key)


def layer_unit(block: int, layer: int) -> str:
    """Name of the layer unit for down block ``block``, layer ``layer`` (it also removes its up partner)."""
    return f"down_blocks.{block}.resnets.{layer}"


def unit_kinds(topo: Topology) -> dict[str, str]:
    """Every removable unit of a topology, name -> kind, in module order."""
    kinds: dict[str, str] = {}
    n = topo.n_blocks
    for i, block in enumerate(topo.down):
        for k, depth in enumerate(block.depths):
            kinds[layer_unit(i, k)] = "layer"
            for m in range(depth):
                kinds[f"down_blocks.{i}.attentions.{k}.transformer_blocks.{m}"] = "transformer_layer"
    if n > 1:
        kinds[f"down_blocks.{n - 1}"] = "stage"
    if topo.mid is not None:
        kinds["mid_block"] = "mid_block"
    if topo.mid == "cross_attn":
        kinds[MID_ATTN] = "mid_attention"
        for m in range(topo.mid_depth):
            kinds[f"{MID_ATTN}.transformer_blocks.{m}"] = "transformer_layer"
    for j, block in enumerate(topo.up):
        for u, depth in enumerate(block.depths):
            for m in range(depth):
                kinds[f"up_blocks.{j}.attentions.{u}.transformer_blocks.{m}"] = "transformer_layer"
    return kinds


def parent_of(name: str, topo: Topology) -> str | None:
    """The unit whose removal removes ``name`` too (None for top-level units)."""
    n = topo.n_blocks
    parts = name.split(".")
    if name.startswith("mid_block."):
        return "mid_block" if name == MID_ATTN else MID_ATTN
    if name.startswith("down_blocks."):
        i = int(parts[1])
        if len(parts) == 2:
            return None
        if parts[2] == "resnets":
            return f"down_blocks.{i}" if i == n - 1 and n > 1 else None
        return layer_unit(i, int(parts[3]))
    if name.startswith("up_blocks."):
        j, u = int(parts[1]), int(parts[3])
        i = n - 1 - j
        layers = topo.down[i].layers
        if u < layers:
            return layer_unit(i, layers - 1 - u)
        return f"down_blocks.{i}" if i == n - 1 and n > 1 else None
    return None


def implied_by(name: str, removed: frozenset[str], topo: Topology) -> bool:
    """Whether removing ``removed`` already removes ``name`` (an enclosing unit is among them)."""
    parent = parent_of(name, topo)
    while parent is not None:
        if parent in removed:
            return True
        parent = parent_of(parent, topo)
    return False


def _kept(attn_path: str, depth: int, removed: frozenset[str]) -> tuple[int, ...]:
    return tuple(m for m in range(depth) if f"{attn_path}.transformer_blocks.{m}" not in removed)


def _down_layout(topo: Topology, n_student: int, removed: frozenset[str]) -> tuple[tuple[LayerSlot, ...], ...]:
    blocks = []
    for i in range(n_student):
        slots = tuple(
            LayerSlot(k, _kept(f"down_blocks.{i}.attentions.{k}", d, removed))
            for k, d in enumerate(topo.down[i].depths)
            if layer_unit(i, k) not in removed
        )
        blocks.append(slots)
    return tuple(blocks)


def _up_layout(
    topo: Topology, down: tuple[tuple[LayerSlot, ...], ...], offset: int, removed: frozenset[str]
) -> tuple[tuple[LayerSlot, ...], ...]:
    n = topo.n_blocks
    blocks = []
    for js in range(len(down)):
        j = js + offset
        i = n - 1 - j
        layers = topo.down[i].layers
        teacher_up = [*sorted(layers - 1 - s.teacher for s in down[i]), layers]
        depths = topo.up[j].depths
        blocks.append(
            tuple(LayerSlot(u, _kept(f"up_blocks.{j}.attentions.{u}", depths[u], removed)) for u in teacher_up)
        )
    return tuple(blocks)


def layout_of(plan: Plan, topo: Topology) -> Layout:
    """The student layout a plan gives on a teacher topology (names are checked, couplings are not)."""
    check_names(plan, topo)
    removed = plan.removed
    n = topo.n_blocks
    offset = 1 if n > 1 and f"down_blocks.{n - 1}" in removed else 0
    down = _down_layout(topo, n - offset, removed)
    up = _up_layout(topo, down, offset, removed)
    mid: MidKind | None = topo.mid
    if mid is not None and "mid_block" in removed:
        mid = None
    elif mid == "cross_attn" and MID_ATTN in removed:
        mid = "resnet"
    mid_blocks = _kept(MID_ATTN, topo.mid_depth, removed) if mid == "cross_attn" else ()
    return Layout(down=down, up=up, up_offset=offset, mid=mid, mid_blocks=mid_blocks)


def check_names(plan: Plan, topo: Topology) -> None:
    """Raise ``UnknownUnitError`` for a name the teacher has no unit for, suggesting the closest one."""
    kinds = unit_kinds(topo)
    for name in sorted(plan.removed, key=_natural_key):
        if name not in kinds:
            close = difflib.get_close_matches(name, list(kinds), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; run `pruner inspect TEACHER` to list the units"
            raise UnknownUnitError(f"unknown unit {name!r}: this teacher has no such removable unit{hint}")


@dataclass(frozen=True)
class _Violation:
    message: str
    readd: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


def _empty_block_violations(layout: Layout) -> list[_Violation]:
    return [
        _Violation(
            f"the plan removes every layer of down_blocks.{i}, but a diffusers block needs layers_per_block >= 1",
            readd=(layer_unit(i, 0),),
        )
        for i, slots in enumerate(layout.down)
        if not slots
    ]


def _mid_violation(layout: Layout, topo: Topology, removed: frozenset[str], prefer: str = "keep") -> _Violation | None:
    last = len(layout.down) - 1
    if layout.mid != "cross_attn" or not topo.down[last].attn or not layout.down[last]:
        return None
    first = layout.down[last][0]
    d_down, d_mid = len(first.blocks), len(layout.mid_blocks)
    if d_down == d_mid:
        return None
    message = (
        f"the mid block keeps {d_mid} transformer layers but down_blocks.{last}.attentions.0 keeps {d_down}; "
        "diffusers builds the mid block with transformer_layers_per_block[-1] (its first entry when nested), "
        "so the two depths must match"
    )
    down_attn = f"down_blocks.{last}.attentions.{first.teacher}.transformer_blocks"
    down_removed = [f"{down_attn}.{m}" for m in range(topo.down[last].depths[first.teacher]) if m not in first.blocks]
    mid_removed = [f"{MID_ATTN}.transformer_blocks.{m}" for m in range(topo.mid_depth) if m not in layout.mid_blocks]
    gap = abs(d_down - d_mid)
    small_removed = mid_removed if d_mid < d_down else down_removed
    if prefer == "keep" and len(small_removed) >= gap:
        return _Violation(message, readd=tuple(small_removed[:gap]))
    big_kept = (
        [f"{down_attn}.{m}" for m in first.blocks]
        if d_down > d_mid
        else [f"{MID_ATTN}.transformer_blocks.{m}" for m in layout.mid_blocks]
    )
    return _Violation(message, remove=tuple(big_kept[-gap:]))


def _violations(plan: Plan, topo: Topology, prefer: str = "keep") -> list[_Violation]:
    layout = layout_of(plan, topo)
    found = _empty_block_violations(layout)
    if not found:
        mid = _mid_violation(layout, topo, plan.removed, prefer)
        if mid is not None:
            found.append(mid)
    return found


def nearest_expressible(plan: Plan, topo: Topology, prefer: str = "keep") -> Plan:
    """The expressible plan closest to ``plan``: add back as few units as possible (or remove, when
    adding back cannot fix a coupling). ``prefer="remove"`` fixes the mid-depth coupling by removing
    layers from the deeper side instead (what a repair towards a budget wants)."""
    for _ in range(4 * len(unit_kinds(topo)) + 4):
        found = _violations(plan, topo, prefer)
        if not found:
            return plan
        v = found[0]
        plan = plan.with_removed((plan.removed - set(v.readd)) | set(v.remove))
    raise InexpressiblePlanError("could not repair the plan into an expressible one")  # pragma: no cover


def _describe_change(old: Plan, new: Plan) -> str:
    keep = compress_names(old.removed - new.removed)
    more = compress_names(new.removed - old.removed)
    parts = []
    if keep:
        parts.append("keep " + ", ".join(keep))
    if more:
        parts.append("also remove " + ", ".join(more))
    return " and ".join(parts)


def check_expressible(plan: Plan, topo: Topology) -> Layout:
    """Return the plan's layout, or raise ``InexpressiblePlanError`` naming the coupling it breaks and the
    nearest expressible plan."""
    found = _violations(plan, topo)
    if found:
        nearest = nearest_expressible(plan, topo)
        raise InexpressiblePlanError(
            f"inexpressible plan: {found[0].message}; nearest expressible plan: {_describe_change(plan, nearest)}",
            nearest=nearest,
        )
    return layout_of(plan, topo)
