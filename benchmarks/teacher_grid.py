"""A captioned grid of the bundled tiny teacher's pictures, generated offline on CPU with stock diffusers.

    python benchmarks/teacher_grid.py --out docs/tiny-sdxl-grid.png

Loads the bundled folder with ``StableDiffusionXLPipeline.from_pretrained`` (no pruner code in the
generation path), draws held-out captions with classifier-free guidance, and prints the judge's verdict.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image, ImageDraw

from pruner.tiny.judge import Judge
from pruner.tiny.synth import sample_prompts
from pruner.unet import bundled_teacher


def captioned(images: list[Image.Image], prompts: list[str], columns: int, scale: int = 5) -> Image.Image:
    side = images[0].width * scale
    cell_h = side + 48
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * side, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for k, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        x, y = (k % columns) * side, (k // columns) * cell_h
        grid.paste(image.resize((side, side), Image.NEAREST), (x, y))
        draw.multiline_text((x + 3, y + side + 2), "\n".join(textwrap.wrap(prompt, 30)), fill="black")
    return grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/tiny-sdxl-grid.png"))
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    folder = bundled_teacher()
    assert folder is not None, "the bundled teacher is missing"
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)  # fp32 by default
    pipe.set_progress_bar_config(disable=True)
    prompts = sample_prompts(args.n, args.seed)
    generators = [torch.Generator().manual_seed(args.seed + k) for k in range(args.n)]
    images = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators).images
    verdict = Judge.load(folder / "judge").score(images, prompts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    captioned(images, prompts, args.columns).save(args.out)
    print(f"wrote {args.out}: judge prompt accuracy {100 * verdict['prompt_accuracy']:.1f}% on these {args.n}")


if __name__ == "__main__":
    main()
