"""Find and load a teacher UNet: a hub id, a local pipeline or UNet folder, a single safetensors file, or an
architecture name with no weights (``sdxl``, ``sd15``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from safetensors import SafetensorError

from pruner.errors import PrunerError, first_line
from pruner.unet.architectures import ARCHITECTURES, HUB_ARCHITECTURES, VAE_SCALES, architecture_config
from pruner.unet.width import WIDTH_KEY, reshape_feed_forwards, unmark_width_config

__all__ = [
    "ARCHITECTURES",
    "HUB_ARCHITECTURES",
    "VAE_SCALES",
    "LocalModel",
    "ModelRef",
    "NamedModel",
    "architecture_config",
    "bundled_teacher",
    "load_pipeline",
    "load_unet",
    "resolve_model",
    "unet_config",
    "unet_ff_inner",
]

LocalKind = Literal["pipeline", "unet_folder", "single_file"]
NamedKind = Literal["architecture", "hub"]
Kind = LocalKind | NamedKind


@dataclass(frozen=True)
class LocalModel:
    """A model on this machine: a pipeline folder, a UNet folder or a single safetensors file at ``path``."""

    target: str
    kind: LocalKind
    path: Path

    @property
    def architecture(self) -> str | None:
        return None


@dataclass(frozen=True)
class NamedModel:
    """A model named rather than located: an architecture pruner ships, or a hub id."""

    target: str
    kind: NamedKind
    path: None = None

    @property
    def architecture(self) -> str | None:
        """The shipped architecture it is (so its config needs no network), if known."""
        return self.target if self.kind == "architecture" else HUB_ARCHITECTURES.get(self.target)


ModelRef = LocalModel | NamedModel
"""A resolved model reference: what kind of thing ``target`` names, and where it is when it is local."""


def _looks_like_path(target: str) -> bool:
    return (
        target.startswith((".", "/", "~"))
        or target.endswith((".safetensors", ".json", ".yaml", ".yml"))
        or (os.sep in target and target.count("/") != 1)
    )


def bundled_teacher() -> Path | None:
    """The trained tiny SDXL pipeline shipped with pruner (``tiny-sdxl``), if this install has it."""
    folder = Path(str(resources.files("pruner.tiny").joinpath("teacher")))
    return folder if (folder / "model_index.json").is_file() else None


def resolve_model(target: str) -> ModelRef:
    """Classify a teacher reference; a missing local path is an error, anything ``org/name``-shaped a hub id."""
    if target == "tiny-sdxl" and (bundled := bundled_teacher()) is not None:
        return LocalModel(target, "pipeline", bundled)
    if target in ARCHITECTURES:
        return NamedModel(target, "architecture")
    path = Path(target).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        return LocalModel(target, "single_file", path)
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
            return LocalModel(target, "pipeline", path)
        if (path / "config.json").is_file():
            return LocalModel(target, "unet_folder", path)
        raise PrunerError(f"{target} is a folder but holds neither model_index.json nor a UNet config.json")
    if path.exists():
        raise PrunerError(
            f"{target} is not a model: give a folder, a .safetensors file, a hub id or {'/'.join(ARCHITECTURES)}"
        )
    if _looks_like_path(target) or target.count("/") != 1:
        raise PrunerError(
            f"path {target} does not exist; give a local model folder, a hub id (org/name) or an architecture name"
        )
    return NamedModel(target, "hub")


def _hub_config(ref: NamedModel) -> dict[str, Any]:
    """A hub UNet's config; hub ids of shipped architectures need no network."""
    if ref.architecture:
        return architecture_config(ref.architecture)
    try:
        return dict(UNet2DConditionModel.load_config(ref.target, subfolder="unet"))
    except Exception as exc:
        raise PrunerError(
            f"cannot read {ref.target} from the Hugging Face hub ({type(exc).__name__}); "
            "download it first or pass a local folder"
        ) from exc


def unet_config(target: str | ModelRef) -> dict[str, Any]:
    """The teacher's UNet config without loading its weights (offline: known hub ids fall back to the
    shipped config of their architecture). A width-pruned model's config is the stock one its depth
    gives; ``unet_ff_inner`` has its feed-forward widths."""
    ref = resolve_model(target) if isinstance(target, str) else target
    if ref.kind == "architecture":
        return architecture_config(ref.target)
    if isinstance(ref, LocalModel) and ref.kind == "single_file":
        from pruner.unet.single_file import single_file_config

        return single_file_config(ref.path)
    return unmark_width_config(_stored_config(ref))[0]


def unet_ff_inner(target: str | ModelRef) -> dict[str, int]:
    """The narrowed feed-forward hidden sizes of a width-pruned UNet by module path (empty for any other
    model), so that it is priced, as a teacher, at the widths it has."""
    ref = resolve_model(target) if isinstance(target, str) else target
    if isinstance(ref, LocalModel) and ref.kind == "single_file":
        from pruner.unet.single_file import single_file_ff_inner

        return single_file_ff_inner(ref.path)
    if ref.kind == "architecture":
        return {}
    return unmark_width_config(_stored_config(ref))[1]


def _stored_config(ref: ModelRef) -> dict[str, Any]:
    """The UNet's config.json as stored (a width-pruned one still marked)."""
    if isinstance(ref, NamedModel):
        return _hub_config(ref)
    folder = ref.path / "unet" if ref.kind == "pipeline" else ref.path
    return _read_config(folder / "config.json")


def _read_config(path: Path) -> dict[str, Any]:
    """A model folder's ``config.json``; unreadable or not a JSON object is a one-line PrunerError."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrunerError(f"{path} is not a readable JSON config ({exc}); restore or re-save the model") from exc
    if not isinstance(config, dict):
        raise PrunerError(f"{path} is not a JSON object; restore or re-save the model")
    return config


def _width_record(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and WIDTH_KEY in _read_config(config)


@contextmanager
def _quiet_torchvision_notice() -> Iterator[None]:
    """Drop transformers' "requires torchvision, falling back to ...Pil" notice while diffusers imports its
    pipelines (pruner never uses those image processors); every other message passes. Removed afterwards."""

    def keep(record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()

    log = logging.getLogger("transformers.utils.import_utils")
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _load_width_pruned(folder: Path, dtype: torch.dtype | None) -> UNet2DConditionModel:
    """A width-pruned student: the stock model from its unmarked config, FeedForwards resized, weights loaded."""
    from safetensors.torch import load_file

    config, inner = unmark_width_config(_read_config(folder / "config.json"))
    weights = sorted(folder.glob("*.safetensors"))
    if len(weights) != 1:
        raise PrunerError(f"{folder} should hold one .safetensors file of UNet weights, found {len(weights)}")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    reshape_feed_forwards(unet, inner)
    try:
        unet.load_state_dict(load_file(str(weights[0])), strict=True, assign=True)
    except (RuntimeError, SafetensorError) as exc:
        raise PrunerError(f"cannot load {weights[0]}: {first_line(exc)}; the folder is damaged") from exc
    return unet.to(dtype or torch.float32)


def _from_pretrained(source: str | Path, subfolder: str | None, dtype: torch.dtype | None) -> UNet2DConditionModel:
    folder = Path(source) / subfolder if subfolder else Path(source)
    if folder.is_dir() and _width_record(folder):
        return _load_width_pruned(folder, dtype)
    try:
        return UNet2DConditionModel.from_pretrained(str(source), subfolder=subfolder, dtype=dtype or torch.float32)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        first = first_line(exc)
        if "width-pruned by pruner" in first and not folder.is_dir():
            return _load_width_pruned(_hub_folder(str(source), subfolder), dtype)
        raise PrunerError(f"cannot load a UNet from {source}: {first}") from exc


def _hub_folder(repo: str, subfolder: str | None) -> Path:
    """The local snapshot of a hub UNet (downloaded into the Hugging Face cache when not there)."""
    from huggingface_hub import snapshot_download

    pattern = f"{subfolder}/*" if subfolder else "*"
    root = Path(snapshot_download(repo, allow_patterns=[pattern]))
    return root / subfolder if subfolder else root


def load_unet(
    target: str | ModelRef, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> UNet2DConditionModel:
    """Load the teacher's UNet with its weights, in eval mode."""
    ref = resolve_model(target) if isinstance(target, str) else target
    if isinstance(ref, NamedModel):
        if ref.kind == "architecture":
            raise PrunerError(
                f"{ref.target} names an architecture with no weights; give a hub id, a folder or a .safetensors file"
            )
        unet = _from_pretrained(ref.target, "unet", dtype)
    elif ref.kind == "single_file":
        from pruner.unet.single_file import load_single_file

        unet = load_single_file(ref.path, dtype=dtype)
    else:
        unet = _from_pretrained(ref.path, "unet" if ref.kind == "pipeline" else None, dtype)
    return unet.to(device).eval()


def load_pipeline(
    target: str | ModelRef,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    with_unet: bool = True,
) -> DiffusionPipeline:
    """Load a full diffusers pipeline (hub id or pipeline folder) with its text encoders and VAE; without its
    UNet when ``with_unet`` is False (encoding pictures and prompts needs none: SDXL's is 10 GB in fp32)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    ref = resolve_model(target) if isinstance(target, str) else target
    if ref.kind not in ("hub", "pipeline"):
        raise PrunerError(f"{ref.target} is a bare UNet; give a full pipeline (hub id or folder with model_index.json)")
    source = ref.target if ref.path is None else str(ref.path)
    extra: dict[str, Any] = {}
    if not with_unet:
        extra["unet"] = None
    elif ref.path is not None and _width_record(ref.path / "unet"):
        extra["unet"] = _load_width_pruned(ref.path / "unet", dtype)
    try:
        with _quiet_torchvision_notice():
            pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, **extra)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise PrunerError(f"cannot load a pipeline from {source}: {first_line(exc)}; the folder is damaged or "
                          "incomplete") from exc  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
