"""The teacher: one reference, resolved once where a command or API call starts, and passed down.

A :class:`Teacher` holds what every room reads about the model being compressed: the reference recipes
and studies name it by, what that reference resolves to (hub id, pipeline folder, UNet folder, single
file, architecture name), its UNet config and a width-pruned teacher's feed-forward sizes, its noise
schedule, its VAE's scale, its profile (defaults that depend on the teacher) and, where the caller gave
one, the model already loaded. Loading stays lazy: a search on a hub id that only prices plans never
loads weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from pruner.diffusion import VAE_SCALE, sdxl_scheduler
from pruner.errors import PrunerError
from pruner.profiles import TeacherProfile, profile_for
from pruner.unet.architectures import VAE_SCALES, architecture_config
from pruner.unet.load import ModelRef, load_pipeline, load_unet, resolve_model, unet_config, unet_ff_inner

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel

    from pruner.recipe import TeacherSpec

__all__ = ["Teacher"]

UNNAMED = (
    "the teacher model was not loaded from a hub id or folder, so recipes could not name it; "
    "save it with teacher.save_pretrained(DIR) and pass DIR (or the hub id) as the teacher"
)


@dataclass(frozen=True, eq=False)
class Teacher:
    """A teacher reference resolved once, with its config, schedule, VAE scale and profile.

    ``located`` is None where the reference names nothing on this machine (a recipe's teacher folder
    from another machine): its config then comes from the architecture the recipe records, and loading
    it is an error that says so.
    """

    reference: str
    located: ModelRef | None
    profile: TeacherProfile  # defaults that depend on the teacher (distillation scale, bundled data)
    architecture: str | None = None  # a shipped architecture to price it by when its weights are absent
    model: UNet2DConditionModel | None = None  # already loaded by the caller
    unresolved: str = ""  # why ``located`` is None

    @classmethod
    def resolve(cls, teacher: str | UNet2DConditionModel | Teacher) -> Teacher:
        """The teacher a reference or a loaded model names; a bad reference is a one-line PrunerError."""
        if isinstance(teacher, Teacher):
            return teacher
        if isinstance(teacher, str):
            profile = profile_for(teacher)
            return cls(teacher, resolve_model(teacher), profile, profile.architecture)
        name = str(getattr(teacher.config, "_name_or_path", "") or "")
        try:
            located = resolve_model(name) if name else None
        except PrunerError:
            located = None
        if located is None:
            raise PrunerError(UNNAMED)
        profile = profile_for(name)
        return cls(name, located, profile, profile.architecture, model=teacher)

    @classmethod
    def of_recipe(cls, spec: TeacherSpec) -> Teacher:
        """A recipe's teacher: its weights where the reference resolves here, else its recorded architecture."""
        profile = profile_for(spec.model)
        try:
            return cls(spec.model, resolve_model(spec.model), profile, spec.architecture)
        except PrunerError as exc:
            if not spec.architecture:
                raise
            return cls(spec.model, None, profile, spec.architecture, unresolved=str(exc))

    @property
    def ref(self) -> ModelRef:
        """The resolved reference; where there is none, the error that resolving it gave."""
        if self.located is None:
            raise PrunerError(self.unresolved or f"teacher {self.reference} cannot be found here")
        return self.located

    @property
    def has_weights(self) -> bool:
        """Whether the teacher can be loaded (an architecture name, or an absent folder, cannot)."""
        return self.model is not None or (self.located is not None and self.located.kind != "architecture")

    @cached_property
    def config(self) -> dict[str, Any]:
        """The UNet's config without loading weights; the recorded architecture's where the weights are absent."""
        try:
            return unet_config(self.ref)
        except PrunerError:
            if self.architecture:
                return architecture_config(self.architecture)
            raise

    @cached_property
    def ff_inner(self) -> dict[str, int]:
        """A width-pruned teacher's narrowed feed-forward sizes by module path (empty for any other)."""
        try:
            return unet_ff_inner(self.ref)
        except PrunerError:
            return {}

    @property
    def latent(self) -> int:
        """The latent side the UNet was trained at (its ``sample_size``)."""
        sample = self.config.get("sample_size", 64)
        return int(sample if isinstance(sample, int) else sample[0])

    @cached_property
    def vae_scale(self) -> int:
        """Pixels per latent pixel: the architecture's, or read from a pipeline's VAE, else Stable Diffusion's."""
        ref = self.located
        if ref is not None and ref.kind == "pipeline" and ref.path is not None:
            vae = ref.path / "vae" / "config.json"
            if vae.is_file():
                return int(2 ** (len(json.loads(vae.read_text())["block_out_channels"]) - 1))
        architecture = ref.architecture if ref is not None else None
        return VAE_SCALES.get(architecture or self.architecture or "", VAE_SCALE)

    def scheduler(self) -> DDPMScheduler:
        """The teacher's training noise schedule (its pipeline's scheduler config), SDXL's otherwise."""
        from diffusers import DDPMScheduler

        ref = self.located
        if ref is not None and ref.kind == "pipeline" and ref.path is not None and (ref.path / "scheduler").is_dir():
            return DDPMScheduler.from_pretrained(ref.path, subfolder="scheduler")
        return sdxl_scheduler()

    def load(self, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> UNet2DConditionModel:
        """The UNet with its weights, in eval mode: the caller's model moved to ``device`` (its dtype kept),
        else loaded from the reference in ``dtype``."""
        if self.model is not None:
            return self.model.to(device)
        return load_unet(self.ref, dtype=dtype, device=device)

    def pipeline(
        self, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", with_unet: bool = True
    ) -> DiffusionPipeline:
        """The full diffusers pipeline (text encoders, VAE; the UNet unless ``with_unet`` is False)."""
        return load_pipeline(self.ref, dtype=dtype, device=device, with_unet=with_unet)

    @property
    def identity(self) -> str:
        """A spelling-independent name: the resolved folder or file, else the hub id or architecture."""
        ref = self.ref
        return str(ref.path.resolve()) if ref.path is not None else ref.target
