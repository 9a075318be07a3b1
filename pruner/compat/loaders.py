"""Which single-file loaders rebuild a student from its SGM file (``pruner export``), and why not.

Three kinds of loader read a UNet from ``model.diffusion_model.*`` keys:

- ``pruner.load_unet(FILE)`` reads the diffusers config the export records and renames the keys with the
  student's own numbering: every depth-pruned student.
- Layer-counting loaders (ComfyUI's model detection, SGM's ``UNetModel`` with ``num_res_blocks`` per level)
  count each level's layers between resamplers and each attention's transformer layers from the keys
  (``pruner.compat.sgm.sgm_topology`` reads them the same way): every depth-pruned student.
- diffusers' ``UNet2DConditionModel.from_single_file(FILE, config=STUDENT)``: its converter
  (``convert_ldm_unet_checkpoint``, diffusers 0.42) maps ``input_blocks.N`` to a block with the one stride
  ``layers_per_block + 1`` and fails on a per-block list, so it takes only students whose down blocks keep
  equal numbers of layers from an SGM file; ``pruner export --layout diffusers`` writes diffusers' own keys,
  which it loads unconverted whatever the depths.

Of these only ``pruner.load_unet`` reads a width-pruned student's file: the export records the narrowed
feed-forward sizes in the metadata, and the other loaders build feed-forwards at the width the config implies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pruner.unet.plan import Plan, layout_of
from pruner.unet.topology import Topology

__all__ = ["LOADERS", "SingleFileCompatibility", "config_single_file_compatibility", "single_file_compatibility"]

LOADERS = ("pruner.load_unet", "layer-counting loaders (ComfyUI-style)", "diffusers from_single_file")


@dataclass(frozen=True)
class SingleFileCompatibility:
    """A student's down-block layer counts and narrowed feed-forwards, and what that means per loader."""

    layers: tuple[int, ...]
    narrowed: bool = False
    layout: str = "sgm"  # the file's keys: "sgm" (original) or "diffusers" (pruner export --layout)

    def reasons(self) -> dict[str, str]:
        """Loader -> why it cannot rebuild the student (loaders that can are absent)."""
        width = "the student is width-pruned and it builds feed-forwards at the width the config implies"
        if self.layout == "diffusers":
            why = {LOADERS[1]: "it reads the original SGM keys and this file has diffusers' (export --layout sgm)"}
            return {**why, LOADERS[2]: width} if self.narrowed else why
        if self.narrowed:
            return dict.fromkeys(LOADERS[1:], width)
        if len(set(self.layers)) > 1:
            return {
                LOADERS[2]: f"its converter numbers blocks with one layers_per_block and the student keeps "
                f"{list(self.layers)} layers in its down blocks (export --layout diffusers for it)"
            }
        return {}

    @property
    def ok(self) -> bool:
        """Every loader takes the student (what ``compat: [single-file]`` asks for)."""
        return not self.reasons()

    def line(self) -> str:
        """``Single file: ...``, as ``pruner inspect`` prints it."""
        reasons = self.reasons()
        takes = ", ".join(name for name in LOADERS if name not in reasons)
        return "Single file: " + "; ".join([f"{takes}: yes", *(f"{n}: no, {why}" for n, why in reasons.items())])


def single_file_compatibility(plan: Plan, topo: Topology) -> SingleFileCompatibility:
    """A plan on a teacher topology, checked against the single-file loaders."""
    layers = tuple(len(block) for block in layout_of(plan, topo).down)
    return SingleFileCompatibility(layers, narrowed=bool(plan.ff_keep))


def config_single_file_compatibility(
    config: dict[str, Any], narrowed: Sequence[str] = (), *, layout: str = "sgm"
) -> SingleFileCompatibility:
    """A saved student's config (and its narrowed feed-forwards, if any) checked against the loaders, for a
    file in ``layout``."""
    layers = config["layers_per_block"]
    n = len(config["down_block_types"])
    counts = tuple(layers) if isinstance(layers, list | tuple) else (int(layers),) * n
    return SingleFileCompatibility(counts, narrowed=bool(narrowed), layout=layout)
