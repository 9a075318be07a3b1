"""A small CLIP of the shape world: the CLIP score's stand-in on the bundled teacher.

The field's CLIP score reads pictures and prompts with OpenAI's CLIP, which knows no more about "a small red
circle left of a blue square" than any photo caption. This one is a transformers ``CLIPModel`` at tiny widths
(a ViT on 32-pixel pictures, 4-pixel patches; the teacher's own caption tokenizer), trained contrastively on
the pictures and captions ``pruner.tiny.synth`` renders, so its score of a picture against its own caption is
well above its score against another's: a student that draws the wrong shapes scores lower, as a
real student's pictures score lower under OpenAI's CLIP. Saved as a CLIP folder (model and processor), it
loads as any CLIP does (``clip_model=`` its folder)::

    python -m pruner.tiny.clip --out pruner/tiny/teacher/clip --steps 600
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from pruner.tiny.synth import Scene, caption, iter_scenes, render
from pruner.tiny.text import MAX_TOKENS

__all__ = ["build_clip", "clip_batch", "clip_processor", "train_clip"]

SIZE = 32  # the bundled teacher's pictures
MEAN, STD = 0.5, 0.25  # the judge's input normalisation (the pictures' grey backgrounds sit near the middle)


def clip_processor(tokenizer_dir: Path) -> CLIPProcessor:
    """The teacher's caption tokenizer with an image processor for 32-pixel pictures (a larger picture is
    resized and centre-cropped to 32, as OpenAI's processor does to 224)."""
    images = CLIPImageProcessor(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}, image_mean=[MEAN] * 3,
        image_std=[STD] * 3,
    )  # fmt: skip
    return CLIPProcessor(image_processor=images, tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)))


def build_clip(vocab_size: int, seed: int, width: int = 64, layers: int = 2) -> CLIPModel:
    """A seeded CLIP of ``width`` and ``layers`` in both towers (projection ``width``)."""
    torch.manual_seed(seed)
    text = {"vocab_size": vocab_size, "hidden_size": width, "intermediate_size": 4 * width,
            "num_hidden_layers": layers, "num_attention_heads": 4, "max_position_embeddings": MAX_TOKENS,
            "bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1}  # fmt: skip
    vision = {"image_size": SIZE, "patch_size": 4, "hidden_size": width, "intermediate_size": 4 * width,
              "num_hidden_layers": layers, "num_attention_heads": 4}  # fmt: skip
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=width))


def clip_batch(processor: CLIPProcessor, scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """The model's inputs for ``scenes``: their rendered pictures, normalised, and their captions' tokens."""
    pixels = np.stack([np.asarray(render(s, SIZE), dtype=np.float32) / 255 for s in scenes])
    text = processor.tokenizer([caption(s) for s in scenes], padding="max_length", max_length=MAX_TOKENS,
                               truncation=True, return_tensors="pt")  # fmt: skip
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return {"pixel_values": (x - MEAN) / STD, "input_ids": text.input_ids, "attention_mask": text.attention_mask}


def train_clip(
    tokenizer_dir: Path, steps: int = 600, batch_size: int = 128, seed: int = 0, lr: float = 2e-3
) -> tuple[CLIPModel, CLIPProcessor, dict[str, Any]]:
    """Train a small CLIP on fresh rendered scenes (a new batch a step, no picture seen twice); the figures
    (steps, final loss, seconds) come back with it."""
    processor = clip_processor(tokenizer_dir)
    model = build_clip(len(processor.tokenizer), seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    started, loss = time.perf_counter(), torch.tensor(float("nan"))
    model.train()
    stream = iter_scenes(seed, stream="clip")
    for _ in range(steps):
        batch = clip_batch(processor, list(itertools.islice(stream, batch_size)))
        loss = model(**batch, return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    seconds = round(time.perf_counter() - started, 1)
    figures = {"steps": steps, "batch_size": batch_size, "seed": seed, "final_loss": float(loss.detach()),
               "seconds": seconds}  # fmt: skip
    return model, processor, figures


def main() -> None:
    """Train and save the stand-in CLIP (``--out`` folder: model, processor, training figures in the config)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from pruner.unet.load import bundled_teacher

    teacher = bundled_teacher()
    if teacher is None:
        raise SystemExit("the bundled teacher is missing: its tokenizer names the captions' words")
    torch.set_num_threads(1)
    model, processor, figures = train_clip(teacher / "tokenizer", steps=args.steps, seed=args.seed)
    model.config.pruner_training = figures
    model.save_pretrained(str(args.out))
    processor.save_pretrained(str(args.out))
    print(figures)


if __name__ == "__main__":
    main()
