"""Single-file export: a student's UNet as one ``.safetensors`` in the original Stability (SGM / LDM) layout.

UIs and ``from_single_file`` loaders read ``model.diffusion_model.input_blocks.4.1.proj_in.weight``-style
keys. The SGM numbering is computed from the student's own blocks (``pruner.compat.sgm``), and the
metadata records the pruned depths and the full diffusers config (``pruner.unet_config``, which
``pruner.load_unet`` reads back), so that a loader which cannot infer a pruned architecture from the keys
can be given it: ``UNet2DConditionModel.from_single_file(FILE, config=STUDENT_DIR)``. diffusers' converter
numbers SGM blocks with one ``layers_per_block``, so for students whose down blocks keep different numbers of
layers ``layout="diffusers"`` writes diffusers' own keys instead, which ``from_single_file`` loads unconverted.

Every student is written, whatever number of layers each block keeps: the numbering runs on through the
student's own blocks, as layer-counting loaders (ComfyUI's model detection) read it. A width-pruned
student's narrowed feed-forward sizes go in the metadata too (``pruner.ff_inner``), which only
``pruner.load_unet`` reads. ``pruner.compat.loaders`` says which loaders take a student.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from pruner.compat.loaders import SingleFileCompatibility, config_single_file_compatibility
from pruner.compat.sgm import UNET_PREFIX, sgm_module_names
from pruner.errors import PrunerError
from pruner.io import atomic_path, check_new_file, output_lock
from pruner.knobs import Knob, check_arguments
from pruner.unet.load import load_unet, resolve_model, unet_config, unet_ff_inner
from pruner.unet.single_file import CONFIG_METADATA_KEY, FF_INNER_METADATA_KEY

__all__ = ["LAYOUTS", "ExportReport", "diffusers_state_dict", "export_single_file", "sgm_state_dict"]

LAYOUTS = ("sgm", "diffusers")
LAYOUT_METADATA_KEY = "pruner.layout"
LAYOUT_NAMES = {"sgm": "SGM", "diffusers": "diffusers"}

DEPTH_FIELDS = ("layers_per_block", "transformer_layers_per_block", "reverse_transformer_layers_per_block",
                "mid_block_type", "block_out_channels", "down_block_types", "up_block_types")  # fmt: skip


@dataclass(frozen=True)
class ExportReport:
    """What was written: the file, its tensor count and the metadata it carries."""

    path: Path
    tensors: int
    metadata: dict[str, str]
    loaders: SingleFileCompatibility

    def summary(self) -> str:
        depths = json.loads(self.metadata["pruner.depths"])
        layout = LAYOUT_NAMES[self.metadata[LAYOUT_METADATA_KEY]]
        return (
            f"wrote {self.path} ({self.tensors} UNet tensors, {layout} layout); layers_per_block "
            f"{depths['layers_per_block']}, transformer_layers_per_block {depths['transformer_layers_per_block']}, "
            f"mid {depths['mid_block_type']}\n{self.loaders.line()}"
        )


def sgm_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A UNet's tensors under SGM keys (``model.diffusion_model.`` + the SGM module path + the tensor name)."""
    try:
        names = sgm_module_names(unet)
    except KeyError as exc:
        raise PrunerError(f"module {exc.args[0]} has no place in the original SGM layout; export the folder") from None
    out: dict[str, torch.Tensor] = {}
    for key, tensor in unet.state_dict().items():
        module, _, name = key.rpartition(".")
        out[f"{UNET_PREFIX}{names[module]}.{name}"] = tensor.detach().contiguous()
    return out


def diffusers_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A UNet's tensors under diffusers' own keys (what ``from_single_file`` loads without converting)."""
    return {key: tensor.detach().contiguous() for key, tensor in unet.state_dict().items()}


def _metadata(config: dict, student: str) -> dict[str, str]:
    meta = {
        "format": "pt",
        CONFIG_METADATA_KEY: json.dumps({k: v for k, v in config.items() if not k.startswith("_")}),
        "pruner.depths": json.dumps({k: config.get(k) for k in DEPTH_FIELDS}),
        "pruner.note": "pruned by pruner; diffusers: UNet2DConditionModel.from_single_file(file, config=<student "
        "folder>), the config is also in pruner.unet_config",
    }
    for candidate in (Path(student) / "recipe.yaml", Path(student).parent / "recipe.yaml"):
        if candidate.is_file():
            meta["pruner.recipe"] = candidate.read_text()
            break
    return meta


def export_single_file(
    student: str | Path,
    out: str | Path,
    *,
    unet_only: bool = False,
    dtype: torch.dtype | None = None,
    layout: Annotated[str, Knob(choices=LAYOUTS)] = "sgm",
) -> ExportReport:
    """Write a student's UNet as one ``.safetensors`` with its depths and config in the metadata (any number of
    layers per block; narrowed feed-forwards recorded too; the report says which loaders take it).

    ``student``: a student folder (UNet or pipeline) or anything ``pruner.load_unet`` reads. A pipeline
    needs ``unet_only=True`` for now: its VAE and text encoders are not converted to their original layouts.
    ``layout``: ``sgm`` (the original key layout UIs read) or ``diffusers`` (diffusers' own keys, which
    ``UNet2DConditionModel.from_single_file(FILE, config=STUDENT)`` loads without conversion, for students
    whose down blocks keep different numbers of layers, which its SGM converter cannot number).
    """
    check_arguments(export_single_file, locals())  # types before any reading: PrunerError naming the parameter
    out = Path(out)
    check_new_file(out, suffix=".safetensors")
    ref = resolve_model(str(student))
    if ref.kind in ("pipeline", "hub") and not unet_only:
        raise PrunerError(
            f"{student} is a pipeline, and whole-pipeline single-file export is not supported yet (its VAE and text "
            "encoders are not converted to their original layouts); pass --unet-only to export its UNet"
        )
    narrowed = unet_ff_inner(ref)
    compat = config_single_file_compatibility(unet_config(ref), list(narrowed), layout=layout)
    unet: UNet2DConditionModel = load_unet(ref, dtype=dtype)
    state = sgm_state_dict(unet) if layout == "sgm" else diffusers_state_dict(unet)
    metadata = _metadata(dict(unet.config), str(student))
    metadata[LAYOUT_METADATA_KEY] = layout
    if narrowed:
        metadata[FF_INNER_METADATA_KEY] = json.dumps(dict(sorted(narrowed.items())))
    with output_lock(out, "--out"):
        check_new_file(out, suffix=".safetensors")  # again under the lock: a run that finished meanwhile is kept
        with atomic_path(out, needed=sum(t.nbytes for t in state.values())) as tmp:
            save_file(state, str(tmp), metadata=metadata)
    return ExportReport(out, len(state), metadata, compat)
