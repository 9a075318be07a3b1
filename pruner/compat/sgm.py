"""Module names in the original Stability (SGM / LDM) UNet layout, read off a diffusers UNet.

Single-file checkpoints (``model.diffusion_model.input_blocks.4.1.proj_in.weight``) and kohya LoRAs with
original names (``lora_unet_input_blocks_4_1_proj_in``) number their blocks in one running sequence:
``input_blocks`` holds conv_in, then every down layer (resnet at ``.0``, attention at ``.1``) and every
downsampler in order; ``output_blocks`` every up layer with its upsampler beside it; ``middle_block``
the mid block's resnet, attention, resnet. The numbering is computed from the model's own blocks, so it
holds for pruned students whose blocks have other depths.
"""

from __future__ import annotations

from torch import nn

__all__ = ["sgm_module_names"]

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
