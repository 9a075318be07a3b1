"""IP-Adapter compatibility of a plan: does an IP-Adapter made for the teacher load right on the student?

An IP-Adapter's UNet weights (``ip_adapter``: ``1.to_k_ip.weight``, ``1.to_v_ip.weight``, ``3.to_k_ip...``) are
numbered by position: diffusers' ``load_ip_adapter`` walks ``unet.attn_processors`` (down blocks, then up
blocks, then the mid block; within each, every transformer layer's ``attn1`` then ``attn2``) and gives the
k-th cross-attention processor (``attn2``) the entries numbered ``2k - 1``. A student that lost a
transformer layer, an attention, a layer unit with attention or the mid block's attention has fewer
cross-attention processors: every one after the first removed gets the weights made for another layer
(the load fails on a shape where the levels differ, and succeeds silently where they do not). Removals
after the last kept processor, resnet-only layers and feed-forward widths change no position.

:func:`pruner.compat.ip_adapter_port.port_ip_adapter` renumbers a teacher's IP-Adapter for any depth-pruned
student instead (a module of its own: it reads students and recipes, which this check must not import).
"""

from __future__ import annotations

from dataclasses import dataclass

from pruner.unet.plan import MID_ATTN, Layout, Plan, layout_of
from pruner.unet.topology import Topology

__all__ = [
    "IpAdapterCompatibility",
    "cross_attention_processors",
    "ip_adapter_compatibility",
    "student_sources",
]


def cross_attention_processors(topo: Topology) -> list[str]:
    """A UNet's cross-attention modules (``...transformer_blocks.M.attn2``) in diffusers' processor order."""
    names = [
        f"down_blocks.{i}.attentions.{k}.transformer_blocks.{m}.attn2"
        for i, block in enumerate(topo.down) if block.attn
        for k, depth in enumerate(block.depths) for m in range(depth)
    ]  # fmt: skip
    names += [
        f"up_blocks.{j}.attentions.{u}.transformer_blocks.{m}.attn2"
        for j, block in enumerate(topo.up) if block.attn
        for u, depth in enumerate(block.depths) for m in range(depth)
    ]  # fmt: skip
    if topo.mid == "cross_attn":
        names += [f"{MID_ATTN}.transformer_blocks.{m}.attn2" for m in range(topo.mid_depth)]
    return names


def student_sources(layout: Layout) -> list[tuple[str, str]]:
    """(student processor, the teacher processor it comes from), in the student's processor order."""
    pairs = [
        (f"down_blocks.{i}.attentions.{p}.transformer_blocks.{s}.attn2",
         f"down_blocks.{i}.attentions.{slot.teacher}.transformer_blocks.{m}.attn2")
        for i, slots in enumerate(layout.down) for p, slot in enumerate(slots) for s, m in enumerate(slot.blocks)
    ]  # fmt: skip
    pairs += [
        (f"up_blocks.{js}.attentions.{p}.transformer_blocks.{s}.attn2",
         f"up_blocks.{js + layout.up_offset}.attentions.{slot.teacher}.transformer_blocks.{m}.attn2")
        for js, slots in enumerate(layout.up) for p, slot in enumerate(slots) for s, m in enumerate(slot.blocks)
    ]  # fmt: skip
    if layout.mid == "cross_attn":
        pairs += [
            (f"{MID_ATTN}.transformer_blocks.{s}.attn2", f"{MID_ATTN}.transformer_blocks.{m}.attn2")
            for s, m in enumerate(layout.mid_blocks)
        ]
    return pairs


@dataclass(frozen=True)
class IpAdapterCompatibility:
    """How many of the teacher's cross-attention processors the student keeps, and the first one that would
    receive another layer's IP-Adapter weights (None: every kept one gets its own)."""

    teacher: int
    kept: int
    first_moved: tuple[str, str, str] | None = None  # (student processor, its teacher source, weights it would get)

    @property
    def ok(self) -> bool:
        return self.first_moved is None

    def reason(self) -> str:
        if self.first_moved is None:
            return ""
        student, source, given = self.first_moved
        return (
            f"the student keeps {self.kept} of the teacher's {self.teacher} cross-attention processors and diffusers "
            f"numbers IP-Adapter weights by position: {student} (the teacher's {source}) would get the weights "
            f"made for {given}"
        )

    def line(self) -> str:
        """``IP-Adapter-compatible: yes/no, why``, as ``pruner inspect`` prints it."""
        if self.ok:
            return (
                f"IP-Adapter-compatible: yes ({self.kept} of the teacher's {self.teacher} cross-attention processors "
                "kept, each at its own position)"
            )
        return f"IP-Adapter-compatible: no, {self.reason()}; pruner.port_ip_adapter renumbers it for the student"


def ip_adapter_compatibility(plan: Plan, topo: Topology) -> IpAdapterCompatibility:
    """Check a plan: does every cross-attention processor the student keeps sit at its teacher position?"""
    teacher = cross_attention_processors(topo)
    pairs = student_sources(layout_of(plan, topo))
    for k, (student, source) in enumerate(pairs):
        if teacher[k] != source:
            return IpAdapterCompatibility(len(teacher), len(pairs), (student, source, teacher[k]))
    return IpAdapterCompatibility(len(teacher), len(pairs))
