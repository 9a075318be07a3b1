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
from pruner.unet.width import keep_count

__all__ = ["BlockCost", "CostTable", "FFCost", "FFShapes", "compose", "table_from_modules"]

FFShapes = Mapping[str, tuple[int, int]]  # block prefix -> (feed-forward hidden size, its fixed cost)


@dataclass(frozen=True)
class FFCost:
    """The feed-forward inside one transformer layer: its cost, the part that does not scale with its
    hidden size (the output bias), and that hidden size. Everything else scales linearly with it: exactly
    for counts, approximately (``exact=False``, rounded) for measured times."""

    total: int
    fixed: int
    inner: int
    exact: bool = True

    def at(self, keep: int) -> int:
        if not self.exact:
            return self.fixed + round((self.total - self.fixed) * keep / self.inner)
        per_channel, rest = divmod(self.total - self.fixed, self.inner)
        if rest:
            raise ValueError(f"feed-forward cost {self.total} is not linear in its {self.inner} hidden channels")
        return self.fixed + per_channel * keep


@dataclass(frozen=True)
class BlockCost:
    """Costs inside one down or up block."""

    attn: bool
    resnets: tuple[int, ...]
    shell: int
    layer: int
    ff: FFCost | None = None


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
    mid_ff: FFCost | None = None


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


def _ff_cost(
    values: Mapping[str, int], prefix: str, depths: tuple[int, ...], ff: FFShapes, exact: bool = True
) -> FFCost | None:
    """The first transformer layer's feed-forward of a block (all share one width in the base)."""
    k = next((k for k, d in enumerate(depths) if d > 0), None)
    if k is None or prefix not in ff:
        return None
    inner, fixed = ff[prefix]
    return FFCost(values[f"{prefix}.attentions.{k}.transformer_blocks.0.ff"], fixed, inner, exact)


def _block_cost(
    values: Mapping[str, int], prefix: str, attn: bool, depths: tuple[int, ...], ff: FFShapes, exact: bool = True
) -> BlockCost:
    resnets = tuple(values[f"{prefix}.resnets.{k}"] for k in range(len(depths)))
    shell, layer = _attention_costs(values, prefix, depths) if attn else (0, 0)
    return BlockCost(attn, resnets, shell, layer, _ff_cost(values, prefix, depths, ff, exact) if attn else None)


def _block_total(values: Mapping[str, int], prefix: str, block: BlockCost) -> int:
    total = sum(block.resnets)
    if block.attn:
        total += sum(values[f"{prefix}.attentions.{k}"] for k in range(len(block.resnets)))
    return total


def table_from_modules(
    values: Mapping[str, int], topo: Topology, total: int, ff: FFShapes | None = None, exact: bool = True
) -> CostTable:
    """Build a table from per-module numbers (each module's own total, children included).

    ``ff`` gives, per block prefix (``down_blocks.1``, ``mid_block``), the feed-forward hidden size and the
    part of its cost that does not scale with it; without it the table prices depth only. ``exact=False``
    for measured times, which scale with the hidden size only approximately.
    """
    ff = ff or {}
    down = tuple(_block_cost(values, f"down_blocks.{i}", b.attn, b.depths, ff, exact) for i, b in enumerate(topo.down))
    up = tuple(_block_cost(values, f"up_blocks.{j}", b.attn, b.depths, ff, exact) for j, b in enumerate(topo.up))
    mid_resnets: tuple[int, ...] = ()
    mid_shell = mid_layer = 0
    mid_ff = None
    if topo.mid is not None:
        mid_resnets = tuple(values[f"mid_block.resnets.{r}"] for r in range(2 if topo.mid == "cross_attn" else 1))
    if topo.mid == "cross_attn":
        mid_shell, mid_layer = _attention_costs(values, "mid_block", (topo.mid_depth,))
        mid_ff = _ff_cost(values, "mid_block", (topo.mid_depth,), ff, exact)
    variable = sum(_block_total(values, f"down_blocks.{i}", b) for i, b in enumerate(down))
    variable += sum(_block_total(values, f"up_blocks.{j}", b) for j, b in enumerate(up))
    variable += values.get("mid_block", 0) if topo.mid is not None else 0
    # measured times: modules timed in their own pass can sum past the whole call, never a negative rest
    return CostTable(total, max(0, total - variable), down, up, mid_resnets, mid_shell, mid_layer, mid_ff)


def _transformer_layer(layer: int, ff: FFCost | None, ratio: float | None) -> int:
    """One transformer layer's cost with its feed-forward narrowed to ``ratio`` (None: full width)."""
    if ratio is None or ff is None:
        return layer
    return layer - ff.total + ff.at(keep_count(ff.inner, ratio))


def _layer_cost(block: BlockCost, position: int, depth: int, ratio: float | None) -> int:
    if not block.attn:
        return block.resnets[position]
    return block.resnets[position] + block.shell + depth * _transformer_layer(block.layer, block.ff, ratio)


def compose(table: CostTable, layout: Layout, ff_keep: Mapping[int, float] | None = None) -> int:
    """The cost of the student a layout describes, exactly, as a sum over the table; ``ff_keep`` narrows
    the feed-forwards per resolution level (down block i, up block n-1-i, and the mid block at the innermost)."""
    ff_keep = ff_keep or {}
    n = len(table.down)
    cost = table.fixed
    for i, (block, slots) in enumerate(zip(table.down, layout.down, strict=True)):
        cost += sum(_layer_cost(block, p, len(s.blocks), ff_keep.get(i)) for p, s in enumerate(slots))
    for j, (block, slots) in enumerate(zip(table.up, layout.up, strict=True)):
        last, ratio = len(slots) - 1, ff_keep.get(n - 1 - j)
        cost += sum(_layer_cost(block, p if p < last else -1, len(s.blocks), ratio) for p, s in enumerate(slots))
    if layout.mid == "cross_attn":
        layer = _transformer_layer(table.mid_layer, table.mid_ff, ff_keep.get(n - 1))
        cost += sum(table.mid_resnets) + table.mid_shell + len(layout.mid_blocks) * layer
    elif layout.mid == "resnet":
        cost += table.mid_resnets[0]
    return cost
