"""Calibration latents for a user with no dataset: the teacher's own generations for their prompts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pruner.io import read_prompts

if TYPE_CHECKING:
    from pruner.teacher import Teacher

__all__ = ["prompt_latents"]


@torch.no_grad()
def prompt_latents(
    teacher: Teacher, prompts_file: Path, n: int, seed: int, steps: int = 20
) -> list[dict[str, torch.Tensor]]:
    """Rows shaped like a latent cache's: the teacher generates one latent per prompt (cycled to ``n``)."""
    from pruner.diffusion import conditioning, generate

    prompts = read_prompts(prompts_file, n)
    pipe = teacher.pipeline()
    rows: list[dict[str, torch.Tensor]] = []
    for start in range(0, n, 16):
        chunk = prompts[start : start + 16]
        latents = generate(pipe, chunk, seed=seed + start, steps=steps, output_type="latent").images
        embeds, added = conditioning(pipe, chunk)
        for k in range(len(chunk)):
            row = {"latents": latents[k].float(), "prompt_embeds": embeds[k].float()}
            if added is not None:
                row |= {
                    "pooled_prompt_embeds": added["text_embeds"][k].float(),
                    "time_ids": added["time_ids"][k].float(),
                }
            rows.append(row)
    return rows
