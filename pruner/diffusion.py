"""What every room of pruner needs from diffusion, once: the training noise schedule, noising a batch,
SDXL's extra conditioning, prompt conditioning from a pipeline's text encoders, generation, and
captioned picture grids.

The search's calibration, the distiller, Taylor gradients and ``pruner eval`` all noise latents through
``noise_batch`` (noise first, then timesteps, from one generator), so a seed means the same thing in each.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "VAE_SCALE",
    "Noised",
    "added_cond",
    "conditioning",
    "default_resolution",
    "generate",
    "image_grid",
    "noise_batch",
    "sdxl_scheduler",
    "time_ids",
]

VAE_SCALE = 8
"""Pixels per latent pixel of Stable Diffusion's VAEs (a pipeline's own ``vae_scale_factor`` wins)."""


def sdxl_scheduler() -> DDPMScheduler:
    """SDXL's training noise schedule (scaled-linear betas, 1000 steps, epsilon prediction)."""
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def default_resolution(unet_config: dict[str, Any], scale: int = VAE_SCALE) -> int:
    """The image side a UNet was trained at: its latent ``sample_size`` times the VAE's scale."""
    sample = unet_config.get("sample_size", 64)
    return int(sample if isinstance(sample, int) else sample[0]) * scale


@dataclass(frozen=True)
class Noised:
    """A noised batch: the UNet's input, the timesteps and the noise that made it."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


def noise_batch(scheduler: DDPMScheduler, latents: torch.Tensor, generator: torch.Generator | None = None) -> Noised:
    """Draw noise (first) and timesteps (second) from ``generator`` on the CPU, and noise ``latents``.

    Draws happen on the CPU so that a seed gives the same batch on every device; the result is moved to
    the latents' device."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noise, t = noise.to(latents.device), t.to(latents.device)
    return Noised(scheduler.add_noise(latents, noise, t), t, noise)


def added_cond(pooled: torch.Tensor | None, ids: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
    """SDXL's ``added_cond_kwargs`` (pooled text embedding and size/crop time ids); None for SD 1.x/2.x."""
    if pooled is None or ids is None:
        return None
    return {"text_embeds": pooled, "time_ids": ids}


def time_ids(size: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SDXL time ids of ``n`` uncropped square pictures of side ``size``: (original, crop, target)."""
    return torch.tensor([[size, size, 0, 0, size, size]], dtype=dtype).repeat(n, 1)


def conditioning(
    pipe: Any, prompts: Sequence[str], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Prompt embeddings as the pipeline computes them (SDXL: with pooled embeddings and time ids)."""
    encoded = pipe.encode_prompt(
        list(prompts), device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    if len(encoded) == 4:  # SDXL: embeds, negative, pooled, negative pooled
        size = pipe.default_sample_size * pipe.vae_scale_factor
        return encoded[0], added_cond(encoded[2], time_ids(size, len(prompts), encoded[0].dtype).to(device))
    return encoded[0], None


def generate(
    pipe: Any,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 5.0,
    output_type: str = "pil",
    resolution: int | None = None,
) -> Any:
    """Run the pipeline, picture ``k`` from its own generator seeded ``seed + k`` (so one prompt's picture
    does not depend on which others share its batch); ``resolution`` pixels a side (default: the pipeline's)."""
    gens = [torch.Generator().manual_seed(seed + k) for k in range(len(prompts))]
    return pipe(
        list(prompts), num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type=output_type,
        height=resolution, width=resolution,
    )  # fmt: skip


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _caption_height(captions: Sequence[str], width: int) -> tuple[list[list[str]], int]:
    chars = max(8, width // 6)
    lines = [textwrap.wrap(c, chars)[:4] for c in captions]
    return lines, (4 + 13 * max((len(x) for x in lines), default=0)) if any(lines) else 0


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    path: Path,
    *,
    captions: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    scale: int = 4,
) -> Path:
    """Save pictures as a grid (one list per row, same size each), upscaled ``scale`` times (nearest), with
    each column's caption under it and each row's label at its left; written under a temporary name, then
    renamed."""
    w, h = rows[0][0].size
    w, h = w * scale, h * scale
    label_w = 70 if row_labels else 0
    lines, cap_h = _caption_height(captions, w)
    grid = Image.new("RGB", (label_w + w * len(rows[0]), h * len(rows) + cap_h), "white")
    draw, font = ImageDraw.Draw(grid), _font()
    for r, row in enumerate(rows):
        for k, img in enumerate(row):
            grid.paste(img.resize((w, h), Image.Resampling.NEAREST), (label_w + k * w, r * h))
        if r < len(row_labels):
            draw.text((4, r * h + h // 2 - 6), row_labels[r], fill="black", font=font)
    for k, text in enumerate(lines):
        for j, line in enumerate(text):
            draw.text((label_w + k * w + 3, len(rows) * h + 2 + 13 * j), line, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    grid.save(tmp, format="PNG")
    tmp.replace(path)
    return path
