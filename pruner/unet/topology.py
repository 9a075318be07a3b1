"""The shape of a UNet that block removal cares about: layers per block, transformer depths, mid block.

Read from a built model (real or on the meta device) rather than re-derived from config fields, so the
same code serves SDXL, SD 1.x and already pruned students with nested or reversed depths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from pruner.errors import PrunerError

__all__ = ["BlockTopology", "MidKind", "Topology", "topology_of"]

MidKind = Literal["cross_attn", "resnet"]

_DOWN_TYPES = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}
_MID_TYPES: dict[str | None, MidKind | None] = {
    "UNetMidBlock2DCrossAttn": "cross_attn",
    "UNetMidBlock2D": "resnet",
    None: None,
}


@dataclass(frozen=True)
class BlockTopology:
    """One down or up block: whether it has attention, and the transformer depth of each layer."""

    attn: bool
    depths: tuple[int, ...]

    @property
    def layers(self) -> int:
        return len(self.depths)


@dataclass(frozen=True)
class Topology:
    """Down blocks in order, up blocks in order (innermost first), and the mid block."""

    down: tuple[BlockTopology, ...]
    up: tuple[BlockTopology, ...]
    mid: MidKind | None
    mid_depth: int

    @property
    def n_blocks(self) -> int:
        return len(self.down)


def _block_topology(block: Any, attn: bool) -> BlockTopology:
    n = len(block.resnets)
    if not attn:
        return BlockTopology(False, (0,) * n)
    depths = tuple(len(block.attentions[k].transformer_blocks) for k in range(n))
    return BlockTopology(True, depths)


def _block_kind(block: nn.Module, table: dict[str, bool], where: str) -> bool:
    name = type(block).__name__
    if name not in table:
        supported = ", ".join(table)
        raise PrunerError(f"{where} is a {name}; pruner supports {supported} only")
    return table[name]


def topology_of(unet: nn.Module) -> Topology:
    """Read the topology of a diffusers ``UNet2DConditionModel`` (weights are not touched)."""
    down = tuple(
        _block_topology(b, _block_kind(b, _DOWN_TYPES, f"down_blocks.{i}"))
        for i, b in enumerate(unet.down_blocks)  # type: ignore[arg-type]
    )
    up = tuple(
        _block_topology(b, _block_kind(b, _UP_TYPES, f"up_blocks.{i}"))
        for i, b in enumerate(unet.up_blocks)  # type: ignore[arg-type]
    )
    config: Any = unet.config
    mid_type: str | None = config.mid_block_type
    if mid_type not in _MID_TYPES:
        raise PrunerError(
            f"mid block type {mid_type} is not supported; use UNetMidBlock2DCrossAttn, UNetMidBlock2D or none"
        )
    mid = _MID_TYPES[mid_type]
    mid_block: Any = unet.mid_block
    mid_depth = len(mid_block.attentions[0].transformer_blocks) if mid == "cross_attn" else 0
    return Topology(down=down, up=up, mid=mid, mid_depth=mid_depth)
