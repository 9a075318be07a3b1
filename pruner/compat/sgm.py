"""Module names in the original Stability (SGM / LDM) UNet layout, read off a diffusers UNet.

Single-file checkpoints (``model.diffusion_model.input_blocks.4.1.proj_in.weight``) and kohya LoRAs with
original names (``lora_unet_input_blocks_4_1_proj_in``) number their blocks in one running sequence:
``input_blocks`` holds conv_in, then every down layer (resnet at ``.0``, attention at ``.1``) and every
downsampler in order; ``output_blocks`` every up layer with its upsampler beside it; ``middle_block``
the mid block's resnet, attention, resnet. The numbering is computed from the model's own blocks, so it
holds for pruned students whose blocks have other depths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from pruner.unet.topology import BlockTopology, MidKind, Topology

__all__ = ["UNET_PREFIX", "from_sgm_state_dict", "sgm_module_names", "sgm_topology"]

UNET_PREFIX = "model.diffusion_model."

_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _down_prefixes(unet: nn.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    n = 1
    blocks = list(unet.down_blocks)  # type: ignore[arg-type]
    for i, block in enumerate(blocks):
        for k in range(len(block.resnets)):
            out[f"down_blocks.{i}.resnets.{k}"] = f"input_blocks.{n}.0"
            if getattr(block, "attentions", None) is not None:
                out[f"down_blocks.{i}.attentions.{k}"] = f"input_blocks.{n}.1"
            n += 1
        if getattr(block, "downsamplers", None) is not None:
            out[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1
    return out


def _up_prefixes(unet: nn.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    m = 0
    for j, block in enumerate(unet.up_blocks):  # type: ignore[arg-type]
        attn = getattr(block, "attentions", None) is not None
        for u in range(len(block.resnets)):
            out[f"up_blocks.{j}.resnets.{u}"] = f"output_blocks.{m}.0"
            if attn:
                out[f"up_blocks.{j}.attentions.{u}"] = f"output_blocks.{m}.1"
            m += 1
        if getattr(block, "upsamplers", None) is not None:
            out[f"up_blocks.{j}.upsamplers.0.conv"] = f"output_blocks.{m - 1}.{2 if attn else 1}.conv"
    return out


def _mid_prefixes(unet: nn.Module) -> dict[str, str]:
    mid = getattr(unet, "mid_block", None)
    if mid is None:
        return {}
    if getattr(mid, "attentions", None) is not None and len(mid.attentions) > 0 and mid.attentions[0] is not None:
        return {
            "mid_block.resnets.0": "middle_block.0",
            "mid_block.attentions.0": "middle_block.1",
            "mid_block.resnets.1": "middle_block.2",
        }
    return {"mid_block.resnets.0": "middle_block.0"}


def _rename(path: str, prefixes: dict[str, str]) -> str | None:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head not in prefixes:
            continue
        rest = parts[cut:]
        if ".resnets." in head and rest and rest[0] in _RESNET:
            rest = [_RESNET[rest[0]], *rest[1:]]
        return ".".join([prefixes[head], *rest])
    return None


def sgm_module_names(unet: nn.Module) -> dict[str, str]:
    """Every module that holds parameters: diffusers path -> SGM path (no ``model.diffusion_model.``).

    Raises ``KeyError`` naming a module the SGM layout has no place for (an unusual UNet).
    """
    prefixes = {**_TOP, **_down_prefixes(unet), **_mid_prefixes(unet), **_up_prefixes(unet)}
    out: dict[str, str] = {}
    for path, module in unet.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        name = _rename(path, prefixes)
        if name is None:
            raise KeyError(path)
        out[path] = name
    return out


def from_sgm_state_dict(state: Mapping[str, torch.Tensor], unet: nn.Module) -> dict[str, torch.Tensor]:
    """SGM-keyed tensors (with or without ``model.diffusion_model.``) under ``unet``'s own diffusers keys.

    The inverse of the export's renaming, numbered from ``unet``'s blocks (any depth per block), so a file
    whose keys name a module ``unet`` does not have raises ``KeyError`` naming that key.
    """
    back = {sgm: path for path, sgm in sgm_module_names(unet).items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, name = key.removeprefix(UNET_PREFIX).rpartition(".")
        if module not in back:
            raise KeyError(key)
        out[f"{back[module]}.{name}"] = tensor
    return out


def _numbered(keys: Iterable[str], group: str) -> dict[int, set[str]]:
    """``group.N.rest`` keys as N -> the set of rests, in index order."""
    out: dict[int, set[str]] = {}
    for key in keys:
        head, _, rest = key.removeprefix(UNET_PREFIX).partition(".")
        index, _, tail = rest.partition(".")
        if head == group and index.isdigit():
            out.setdefault(int(index), set()).add(tail)
    return dict(sorted(out.items()))


def _attention_depth(tails: set[str]) -> int | None:
    """Transformer layers of the attention at ``.1`` of an SGM block (None: the block has no attention)."""
    if not any(t.startswith("1.proj_in.") for t in tails):
        return None
    return len({t.split(".")[2] for t in tails if t.startswith("1.transformer_blocks.")})


def _block(depths: list[int | None]) -> BlockTopology:
    attn = any(d is not None for d in depths)
    return BlockTopology(attn, tuple(d or 0 for d in depths))


def _levels(blocks: dict[int, set[str]], ends_level: str) -> list[BlockTopology]:
    """Group numbered SGM blocks into levels: a block matching ``ends_level`` (a resampler) closes one."""
    levels: list[BlockTopology] = []
    current: list[int | None] = []
    for tails in blocks.values():
        resampler = any(re.match(ends_level, t) for t in tails)
        if any(t.startswith("0.in_layers.") for t in tails):
            current.append(_attention_depth(tails))
        if resampler:
            levels.append(_block(current))
            current = []
    return [*levels, _block(current)] if current else levels


def sgm_topology(keys: Iterable[str]) -> Topology:
    """The depths an SGM checkpoint's keys describe, read as a layer-counting loader reads them.

    ComfyUI's model detection and SGM's ``UNetModel`` (``num_res_blocks`` per level) count the layers of each
    level between downsamplers (``input_blocks.N.0.op``) and upsamplers (``output_blocks.N.{1,2}.conv``), and
    the transformer layers of each block's attention; no single ``layers_per_block`` is assumed.
    """
    keys = list(keys)
    down = _levels({k: v for k, v in _numbered(keys, "input_blocks").items() if k > 0}, r"0\.op\.")
    up = _levels(_numbered(keys, "output_blocks"), r"[12]\.conv\.")
    return Topology(tuple(down), tuple(up), *_mid(keys))


def _mid(keys: list[str]) -> tuple[MidKind | None, int]:
    middle = _numbered(keys, "middle_block")
    depth = _attention_depth({f"1.{t}" for t in middle.get(1, set())})
    if depth is not None:
        return "cross_attn", depth
    return ("resnet" if middle else None), 0
