"""The architecture registry: UNet configs pruner ships (no weights needed), their VAE scales, and the hub
ids known to be one of them (so their configs need no network)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from pruner.errors import PrunerError

__all__ = ["ARCHITECTURES", "HUB_ARCHITECTURES", "VAE_SCALES", "architecture_config"]

ARCHITECTURES = ("sdxl", "sd15", "tiny-sdxl")
VAE_SCALES = {"sdxl": 8, "sd15": 8, "tiny-sdxl": 4}  # pixels per latent pixel of each architecture's VAE
HUB_ARCHITECTURES = {
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "runwayml/stable-diffusion-v1-5": "sd15",
    "CompVis/stable-diffusion-v1-4": "sd15",
}


def architecture_config(name: str) -> dict[str, Any]:
    """The UNet config of a named architecture shipped with pruner: a fresh dict per call, so a caller that
    edits its copy (a student's config, a teacher's) changes no other caller's."""
    return json.loads(_config_text(name))


@cache
def _config_text(name: str) -> str:
    """The shipped config file of ``name``, read once per process."""
    if name not in ARCHITECTURES:
        raise PrunerError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return resources.files("pruner.unet").joinpath(f"configs/{name}.json").read_text()
