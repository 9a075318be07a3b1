"""A UNet stored as one ``.safetensors`` file.

Files in diffusers' own key layout are matched to a ``config.json`` beside them or, failing that, to a
shipped architecture whose every tensor shape agrees. Files in the original Stable Diffusion layout
(``model.diffusion_model.*``) that ``pruner export`` wrote carry the student's config and are renamed with
the student's own block numbering (any number of layers per block); other ones go through diffusers'
``from_single_file``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from pruner.errors import PrunerError
from pruner.unet.architectures import ARCHITECTURES, architecture_config
from pruner.unet.width import reshape_feed_forwards

__all__ = ["CONFIG_METADATA_KEY", "FF_INNER_METADATA_KEY", "load_single_file", "single_file_config",
           "single_file_ff_inner"]  # fmt: skip

CONFIG_METADATA_KEY = "pruner.unet_config"  # a pruned UNet's diffusers config, written by `pruner export`
FF_INNER_METADATA_KEY = "pruner.ff_inner"  # a width-pruned UNet's narrowed feed-forward sizes, by module path


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise PrunerError(f"{path} is not a readable safetensors file ({exc}); re-download or re-save it") from exc


def _is_original_layout(shapes: dict[str, tuple[int, ...]]) -> bool:
    return any(k.startswith("model.diffusion_model.") for k in shapes)


def _matching_architecture(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    from pruner.unet.surgery import meta_unet

    for name in ARCHITECTURES:
        config = architecture_config(name)
        expected = {k: tuple(v.shape) for k, v in meta_unet(config).state_dict().items()}
        if expected == shapes:
            return config
    return None


def single_file_config(path: Path) -> dict[str, Any]:
    """The UNet config of a single-file checkpoint, read without loading its tensors."""
    shapes = _header_shapes(path)
    recorded = _recorded_config(path)
    if _is_original_layout(shapes):
        return recorded if recorded is not None else dict(_original_layout_unet(path, None).config)
    if recorded is not None:  # pruner export --layout diffusers
        return recorded
    beside = path.with_name("config.json")
    if beside.is_file():
        return json.loads(beside.read_text())
    config = _matching_architecture(shapes)
    if config is None:
        raise PrunerError(f"cannot tell the architecture of {path}; put the UNet's config.json beside it")
    return config


def _recorded(path: Path, key: str) -> Any:
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(key)
    return json.loads(raw) if raw else None


def _recorded_config(path: Path) -> dict[str, Any] | None:
    return _recorded(path, CONFIG_METADATA_KEY)


def single_file_ff_inner(path: Path) -> dict[str, int]:
    """The narrowed feed-forward sizes ``pruner export`` recorded for a width-pruned UNet (empty for others)."""
    return {str(k): int(v) for k, v in (_recorded(path, FF_INNER_METADATA_KEY) or {}).items()}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise PrunerError(f"{path} is truncated or corrupt ({exc}); re-download or re-save it") from exc


def _recorded_layout_unet(path: Path, config: dict[str, Any]) -> UNet2DConditionModel:
    """An exported student: built from its recorded config, keys renamed with its own block numbering."""
    from pruner.compat.sgm import from_sgm_state_dict

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    reshape_feed_forwards(unet, single_file_ff_inner(path))
    try:
        state = from_sgm_state_dict(_read_tensors(path), unet)
        unet.load_state_dict(state, strict=True, assign=True)
    except (KeyError, RuntimeError) as exc:
        raise PrunerError(f"{path} does not match the config it records ({exc}); re-export the student") from exc
    return unet


def _original_layout_unet(path: Path, dtype: torch.dtype | None) -> UNet2DConditionModel:
    """An exported student through its recorded config; any other SGM file through diffusers' conversion."""
    config = _recorded_config(path)
    if config is not None:
        unet = _recorded_layout_unet(path, config)
        return unet.to(dtype) if dtype is not None else unet
    try:
        return UNet2DConditionModel.from_single_file(str(path), dtype=dtype)
    except Exception as exc:
        raise PrunerError(
            f"diffusers could not convert {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from exc


def load_single_file(path: Path, *, dtype: torch.dtype | None = None) -> UNet2DConditionModel:
    """Load a UNet from one safetensors file (diffusers or original key layout)."""
    shapes = _header_shapes(path)
    if _is_original_layout(shapes):
        return _original_layout_unet(path, dtype)
    unet = UNet2DConditionModel.from_config(single_file_config(path))
    reshape_feed_forwards(unet, single_file_ff_inner(path))
    state = _read_tensors(path)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PrunerError(
            f"{path} does not match its config: {len(missing)} missing and {len(unexpected)} unexpected tensors"
        )
    return unet.to(dtype) if dtype is not None else unet
