"""Student config: the stock diffusers ``UNet2DConditionModel`` config that describes a layout.

Only the fields block removal touches change; everything else is the teacher's. The result is written in
the plainest form diffusers accepts (an int where every block agrees, nested depths and
``reverse_transformer_layers_per_block`` only where up and down blocks differ), so published
architectures come out as their published configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pruner.unet.plan import Layout
from pruner.unet.topology import Topology

__all__ = ["ARCH_FIELDS", "student_config"]

ARCH_FIELDS = (
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "transformer_layers_per_block",
    "reverse_transformer_layers_per_block",
    "mid_block_type",
)
# Config fields that may hold one entry per down block, which a removed stage shortens.
_PER_BLOCK = ("attention_head_dim", "num_attention_heads", "cross_attention_dim", "only_cross_attention")
_MID_TYPE = {"cross_attn": "UNetMidBlock2DCrossAttn", "resnet": "UNetMidBlock2D", None: None}


def _teacher_depth_entries(cfg: Mapping[str, Any], n: int) -> list[Any]:
    value = cfg.get("transformer_layers_per_block", 1)
    return list(value) if isinstance(value, list | tuple) else [value] * n


def _uniform(values: list[int]) -> int | None:
    return values[0] if values and all(v == values[0] for v in values) else None


def _depth_entries(layout: Layout, topo: Topology, teacher_entries: list[Any]) -> tuple[list[Any], list[Any], bool]:
    """Per-block transformer depths for the down and up blocks, and whether up mirrors down exactly."""
    n = len(layout.down)
    down: list[Any] = []
    up: list[Any] = [None] * n
    mirrored = True
    for i in range(n):
        j = n - 1 - i
        up_attn = topo.up[j + layout.up_offset].attn
        d = [len(s.blocks) for s in layout.down[i]] if topo.down[i].attn else []
        u = [len(s.blocks) for s in layout.up[j]] if up_attn else []
        plain = teacher_entries[i] if isinstance(teacher_entries[i], int) else 1
        if i == n - 1 and layout.mid == "cross_attn" and not d:
            plain = len(layout.mid_blocks)  # free for an attention-less block: carries the mid depth
        down.append(_uniform(d) if d and _uniform(d) is not None else (d or plain))
        up[j] = _uniform(u) if u and _uniform(u) is not None else (u or plain)
        both = d + u
        if not both:
            continue
        if _uniform(both) is None:
            mirrored = False
        else:
            down[i] = up[j] = both[0]
    return down, up, mirrored


def _per_block_fields(cfg: dict[str, Any], n: int) -> None:
    for key in _PER_BLOCK:
        value = cfg.get(key)
        if isinstance(value, list | tuple) and len(value) > n:
            cfg[key] = list(value)[:n]
    cfg["down_block_types"] = list(cfg["down_block_types"])[:n]
    cfg["up_block_types"] = list(cfg["up_block_types"])[-n:]
    cfg["block_out_channels"] = list(cfg["block_out_channels"])[:n]


def _compact(values: list[Any], original: Any) -> Any:
    """An int where all entries agree and the teacher also wrote an int; the list otherwise."""
    if isinstance(original, int) and all(isinstance(v, int) for v in values) and _uniform(values) is not None:
        return values[0]
    return values


def student_config(teacher_config: Mapping[str, Any], layout: Layout, topo: Topology) -> dict[str, Any]:
    """The diffusers config of the student a layout describes (the teacher's, with the removal applied)."""
    cfg = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    n = len(layout.down)
    if n < topo.n_blocks:
        _per_block_fields(cfg, n)
    layers = [len(slots) for slots in layout.down]
    cfg["layers_per_block"] = _compact(layers, teacher_config.get("layers_per_block", 2))
    down, up, mirrored = _depth_entries(layout, topo, _teacher_depth_entries(teacher_config, topo.n_blocks))
    if mirrored and all(isinstance(v, int) for v in down):
        cfg["transformer_layers_per_block"] = _compact(down, teacher_config.get("transformer_layers_per_block", 1))
        cfg["reverse_transformer_layers_per_block"] = None
    else:
        cfg["transformer_layers_per_block"] = down
        cfg["reverse_transformer_layers_per_block"] = up
    cfg["mid_block_type"] = _MID_TYPE[layout.mid]
    return cfg
