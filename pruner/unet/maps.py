"""Weight and feature maps between a student and its teacher, read off the layout.

- The weight map says which teacher module initialises each student module (its *source*).
- The position map says which teacher module sits at the same place in the network, so has the same
  shapes and cost; it initialises the input side of a layer whose source has other channels (a kept
  second layer that becomes a block's first, channel-changing layer).
- The feature map pairs student and teacher modules whose outputs feature KD compares.
"""

from __future__ import annotations

from typing import Literal

from pruner.unet.plan import MID_ATTN, Layout
from pruner.unet.topology import Topology

__all__ = ["FeatureLevel", "feature_map", "position_map", "resolve", "weight_map"]

FeatureLevel = Literal["block", "sub_block", "layer"]


def _layer_entries(student: str, teacher: str, s_idx: int, t_idx: int, blocks: tuple[int, ...]) -> dict[str, str]:
    out = {
        f"{student}.resnets.{s_idx}": f"{teacher}.resnets.{t_idx}",
        f"{student}.attentions.{s_idx}": f"{teacher}.attentions.{t_idx}",
    }
    for m, src in enumerate(blocks):
        out[f"{student}.attentions.{s_idx}.transformer_blocks.{m}"] = (
            f"{teacher}.attentions.{t_idx}.transformer_blocks.{src}"
        )
    return out


def _mid_entries(layout: Layout) -> dict[str, str]:
    if layout.mid is None:
        return {}
    out = {"mid_block.resnets.0": "mid_block.resnets.0"}
    if layout.mid == "cross_attn":
        out["mid_block.resnets.1"] = "mid_block.resnets.1"
        out[MID_ATTN] = MID_ATTN
        for m, src in enumerate(layout.mid_blocks):
            out[f"{MID_ATTN}.transformer_blocks.{m}"] = f"{MID_ATTN}.transformer_blocks.{src}"
    return out


def weight_map(layout: Layout) -> dict[str, str]:
    """Student module path -> source teacher module path, for every module that moves.

    Modules not listed (conv_in, embeddings, samplers of unchanged blocks, conv_out) map to themselves;
    use :func:`resolve` to look a parameter up.
    """
    out: dict[str, str] = {}
    for i, slots in enumerate(layout.down):
        for p, slot in enumerate(slots):
            out.update(_layer_entries(f"down_blocks.{i}", f"down_blocks.{i}", p, slot.teacher, slot.blocks))
    for js, slots in enumerate(layout.up):
        student, teacher = f"up_blocks.{js}", f"up_blocks.{js + layout.up_offset}"
        out[f"{student}.upsamplers"] = f"{teacher}.upsamplers"
        for p, slot in enumerate(slots):
            out.update(_layer_entries(student, teacher, p, slot.teacher, slot.blocks))
    out.update(_mid_entries(layout))
    return out


def position_map(layout: Layout, topo: Topology) -> dict[str, str]:
    """Student resnet/attention path -> the teacher module at the same structural position."""
    out: dict[str, str] = {}
    n = topo.n_blocks
    for i, slots in enumerate(layout.down):
        for p in range(len(slots)):
            for kind in ("resnets", "attentions"):
                out[f"down_blocks.{i}.{kind}.{p}"] = f"down_blocks.{i}.{kind}.{p}"
    for js, slots in enumerate(layout.up):
        j = js + layout.up_offset
        last = topo.down[n - 1 - j].layers
        for p in range(len(slots)):
            t = p if p < len(slots) - 1 else last
            for kind in ("resnets", "attentions"):
                out[f"up_blocks.{js}.{kind}.{p}"] = f"up_blocks.{j}.{kind}.{t}"
    return out


def resolve(path: str, table: dict[str, str]) -> str:
    """Map a student parameter or module path through a map by its longest matching prefix."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            return ".".join([table[prefix], *parts[cut:]])
    return path


def _block_pairs(layout: Layout, topo: Topology) -> list[tuple[str, str]]:
    pairs = []
    full = len(layout.down) == topo.n_blocks
    for i in range(len(layout.down)):
        if full or i < len(layout.down) - 1:  # the new innermost block lost its downsampler
            pairs.append((f"down_blocks.{i}", f"down_blocks.{i}"))
    if layout.mid is not None and topo.mid is not None and full:
        pairs.append(("mid_block", "mid_block"))
    pairs += [(f"up_blocks.{js}", f"up_blocks.{js + layout.up_offset}") for js in range(len(layout.up))]
    return pairs


def feature_map(layout: Layout, topo: Topology, level: FeatureLevel = "sub_block") -> list[tuple[str, str]]:
    """(student module, teacher module) pairs whose outputs have the same shape, for feature KD.

    ``block``: outputs of down, mid and up blocks. ``sub_block``: each resnet and attention module, paired
    with its source. ``layer``: each transformer layer, paired with its source.
    """
    if level == "block":
        return _block_pairs(layout, topo)
    wmap = weight_map(layout)
    stage_removed = len(layout.down) < topo.n_blocks  # the mid block then runs at another width and size
    if level == "layer":
        return [
            (s, t)
            for s, t in wmap.items()
            if ".transformer_blocks." in s and not (stage_removed and s.startswith("mid_block"))
        ]
    if level != "sub_block":
        raise ValueError(f"unknown feature level {level!r}; use block, sub_block or layer")
    pairs = []
    for s, t in wmap.items():
        if ".transformer_blocks." in s or s.endswith("upsamplers"):
            continue
        if ".attentions." in s and not _has_attention(s, layout, topo):
            continue
        if s.startswith("mid_block") and stage_removed:
            continue
        pairs.append((s, t))
    return pairs


def _has_attention(student_path: str, layout: Layout, topo: Topology) -> bool:
    parts = student_path.split(".")
    if parts[0] == "mid_block":
        return layout.mid == "cross_attn"
    idx = int(parts[1])
    if parts[0] == "down_blocks":
        return topo.down[idx].attn
    return topo.up[idx + layout.up_offset].attn
