"""Removable units of a UNet: what each one is, which modules it takes away, and what it costs.

A unit's cost is marginal: the teacher's cost minus that of the student which removes this unit alone,
so a layer unit's parameters include its up-block partner and anything whose shape changes with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pruner.unet.plan import MID_ATTN, Plan, parent_of, unit_kinds
from pruner.unet.topology import Topology

if TYPE_CHECKING:
    from pruner.cost.model import CostModel

__all__ = ["Unit", "list_units", "unit_modules"]


@dataclass(frozen=True)
class Unit:
    """One removable unit, named by its module path in the teacher."""

    name: str
    kind: str
    modules: tuple[str, ...]
    params: int
    macs: int | None
    parent: str | None
    coupled: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _layer_modules(name: str, topo: Topology) -> tuple[str, ...]:
    _, i_s, _, k_s = name.split(".")
    i, k = int(i_s), int(k_s)
    j, u = topo.n_blocks - 1 - i, topo.down[i].layers - 1 - k
    mods = [f"down_blocks.{i}.resnets.{k}", f"up_blocks.{j}.resnets.{u}"]
    if topo.down[i].attn:
        mods.insert(1, f"down_blocks.{i}.attentions.{k}")
    if topo.up[j].attn:
        mods.append(f"up_blocks.{j}.attentions.{u}")
    return tuple(mods)


def unit_modules(name: str, kind: str, topo: Topology) -> tuple[str, ...]:
    """The teacher modules a unit removes."""
    if kind == "layer":
        return _layer_modules(name, topo)
    if kind == "stage":
        n = topo.n_blocks
        return (f"down_blocks.{n - 1}", f"down_blocks.{n - 2}.downsamplers.0", "up_blocks.0")
    return (name,)


def _coupled(name: str, kind: str, topo: Topology, kinds: dict[str, str]) -> tuple[str, ...]:
    """Units tied to this one by a diffusers coupling (see the brief): the mid block's depth equals the
    depth of the innermost down block's first attention; a removed stage changes the mid block's width."""
    last = topo.n_blocks - 1
    first_attn = f"down_blocks.{last}.attentions.0.transformer_blocks."
    mid_layers = f"{MID_ATTN}.transformer_blocks."
    if topo.mid != "cross_attn" or not topo.down[last].attn:
        return ("mid_block",) if kind == "stage" and "mid_block" in kinds else ()
    if name.startswith(mid_layers):
        return tuple(n for n in kinds if n.startswith(first_attn))
    if name.startswith(first_attn):
        return tuple(n for n in kinds if n.startswith(mid_layers))
    if kind == "stage":
        return ("mid_block",)
    return ()


def list_units(topo: Topology, cost: CostModel | None = None, base: Plan | None = None) -> list[Unit]:
    """Every removable unit of a topology, in module order, with marginal params (and MACs when the cost
    model has a resolution) on top of ``base`` (its feed-forward widths; nothing removed)."""
    kinds = unit_kinds(topo)
    base = base or Plan()
    units = []
    base_params = cost.params(base) if cost else 0
    base_macs = cost.macs(base) if cost and cost.latent else None
    for name, kind in kinds.items():
        alone = base.plus({name})
        params = base_params - cost.params(alone) if cost else 0
        macs = base_macs - cost.macs(alone) if cost and base_macs is not None else None
        units.append(
            Unit(
                name,
                kind,
                unit_modules(name, kind, topo),
                params,
                macs,
                parent_of(name, topo),
                _coupled(name, kind, topo, kinds),
            )
        )
    return units
