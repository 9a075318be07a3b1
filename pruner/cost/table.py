"""Per-module cost tables and exact composition of a plan's cost from them.

One table per base architecture (the teacher, or the teacher less its innermost stage) holds each
block's resnet costs by position, the cost of an attention module's shell (norm and projections) and of
one transformer layer, the mid block's parts, and the fixed rest. A student's cost is then a sum over its
layout: every student module costs what the teacher module at the same position costs, because it has the
same shapes and runs at the same resolution. Works for parameters and MACs alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pruner.unet.plan import Layout
from pruner.unet.topology import Topology

__all__ = ["BlockCost", "CostTable", "compose", "table_from_modules"]


@dataclass(frozen=True)
class BlockCost:
    """Costs inside one down or up block."""

    attn: bool
    resnets: tuple[int, ...]
    shell: int
    layer: int


@dataclass(frozen=True)
class CostTable:
    """The composable cost of one base architecture (one metric: parameters or MACs)."""

    total: int
    fixed: int
    down: tuple[BlockCost, ...]
    up: tuple[BlockCost, ...]
    mid_resnets: tuple[int, ...]
    mid_shell: int
    mid_layer: int


def _attention_costs(values: Mapping[str, int], prefix: str, depths: tuple[int, ...]) -> tuple[int, int]:
    """(shell, one layer) of a block's attention modules, which all share one width."""
    shell = values[f"{prefix}.attentions.0"] - sum(
        values[f"{prefix}.attentions.0.transformer_blocks.{m}"] for m in range(depths[0])
    )
    layer = next(
        (values[f"{prefix}.attentions.{k}.transformer_blocks.0"] for k, d in enumerate(depths) if d > 0),
        0,
    )
    return shell, layer


def _block_cost(values: Mapping[str, int], prefix: str, attn: bool, depths: tuple[int, ...]) -> BlockCost:
    resnets = tuple(values[f"{prefix}.resnets.{k}"] for k in range(len(depths)))
    shell, layer = _attention_costs(values, prefix, depths) if attn else (0, 0)
    return BlockCost(attn, resnets, shell, layer)


def _block_total(values: Mapping[str, int], prefix: str, block: BlockCost) -> int:
    total = sum(block.resnets)
    if block.attn:
        total += sum(values[f"{prefix}.attentions.{k}"] for k in range(len(block.resnets)))
    return total


def table_from_modules(values: Mapping[str, int], topo: Topology, total: int) -> CostTable:
    """Build a table from per-module numbers (each module's own total, children included)."""
    down = tuple(_block_cost(values, f"down_blocks.{i}", b.attn, b.depths) for i, b in enumerate(topo.down))
    up = tuple(_block_cost(values, f"up_blocks.{j}", b.attn, b.depths) for j, b in enumerate(topo.up))
    mid_resnets: tuple[int, ...] = ()
    mid_shell = mid_layer = 0
    if topo.mid is not None:
        mid_resnets = tuple(values[f"mid_block.resnets.{r}"] for r in range(2 if topo.mid == "cross_attn" else 1))
    if topo.mid == "cross_attn":
        mid_shell, mid_layer = _attention_costs(values, "mid_block", (topo.mid_depth,))
    variable = sum(_block_total(values, f"down_blocks.{i}", b) for i, b in enumerate(down))
    variable += sum(_block_total(values, f"up_blocks.{j}", b) for j, b in enumerate(up))
    variable += values.get("mid_block", 0) if topo.mid is not None else 0
    return CostTable(total, total - variable, down, up, mid_resnets, mid_shell, mid_layer)


def _layer_cost(block: BlockCost, position: int, depth: int) -> int:
    return block.resnets[position] + (block.shell + depth * block.layer if block.attn else 0)


def compose(table: CostTable, layout: Layout) -> int:
    """The cost of the student a layout describes, exactly, as a sum over the table."""
    cost = table.fixed
    for block, slots in zip(table.down, layout.down, strict=True):
        cost += sum(_layer_cost(block, p, len(s.blocks)) for p, s in enumerate(slots))
    for block, slots in zip(table.up, layout.up, strict=True):
        last = len(slots) - 1
        cost += sum(_layer_cost(block, p if p < last else -1, len(s.blocks)) for p, s in enumerate(slots))
    if layout.mid == "cross_attn":
        cost += sum(table.mid_resnets) + table.mid_shell + len(layout.mid_blocks) * table.mid_layer
    elif layout.mid == "resnet":
        cost += table.mid_resnets[0]
    return cost
