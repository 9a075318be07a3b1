"""Overhead of pruner's distill step over the bare work it contains, per feature level.

Bare work: teacher forward (no grad) + student forward/backward on an output-MSE loss + optimizer step,
on the same batches and models. The distill step adds sampling, caption dropout, feature hooks and the
loss terms. Both are timed in one run, interleaved, and reported as a ratio (the machine is noisy).

    python benchmarks/distill_step.py                      # tiny-sdxl architecture, CPU
    python benchmarks/distill_step.py --arch sdxl --latent 64 --batch 1 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from accelerate import Accelerator

from pruner.diffusion import sdxl_scheduler
from pruner.distillation.engine import teacher_pass
from pruner.distillation.losses import LossWeights
from pruner.distillation.trainer import Distiller, TrainSettings, collate
from pruner.recipe import load_recipe
from pruner.unet import architecture_config, build_student, feature_map, layout_of, topology_of
from pruner.unet.surgery import meta_unet


def fake_rows(config: dict, latent: int, n: int, seq: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    cross = config["cross_attention_dim"]
    rows = []
    for _ in range(n):
        row = {
            "latents": torch.randn(4, latent, latent, generator=g),
            "prompt_embeds": torch.randn(seq, cross, generator=g),
        }
        if config.get("addition_embed_type") == "text_time":
            text = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
            row["pooled_prompt_embeds"] = torch.randn(text, generator=g)
            row["time_ids"] = torch.tensor([1024.0, 1024, 0, 0, 1024, 1024])
        rows.append(row)
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(d: Distiller, batch: dict[str, torch.Tensor]) -> None:
    """The irreducible work: teacher forward, student forward/backward, optimizer step."""
    inputs = d.inputs(batch)
    teacher = teacher_pass(d.teacher, inputs).pred
    with d.acc.autocast():
        student = d.model(*inputs.unet_args(), added_cond_kwargs=inputs.added).sample
    loss = torch.nn.functional.mse_loss(student.float(), teacher.float())
    d.acc.backward(loss)
    d.optimizer.step()
    d.optimizer.zero_grad(set_to_none=True)


def timed(fn, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tiny-sdxl")
    p.add_argument("--recipe", default=None, help="plan to distill (default: recipes/<arch>-vega.yaml if any)")
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--mixed-precision", default="no")
    args = p.parse_args()
    torch.manual_seed(0)
    config = architecture_config(args.arch)
    acc = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    teacher = meta_unet(config).to_empty(device=acc.device)
    for param in teacher.parameters():
        torch.nn.init.normal_(param, std=0.02)
    recipe = load_recipe(args.recipe or f"recipes/{args.arch}-vega.yaml")
    plan = recipe.plan_obj()
    topo = topology_of(teacher)
    data = fake_rows(config, args.latent, 4 * args.batch, args.seq)
    where = f"{acc.device}, {args.mixed_precision}"
    print(f"{args.arch}, latent {args.latent}, batch {args.batch}, {where}; plan {recipe.name}")
    print(f"{'feature level':<14}{'pairs':>6}{'bare ms':>10}{'distill ms':>12}{'overhead':>10}")
    for level in ("block", "sub_block", "layer"):
        student, _ = build_student(teacher, plan)
        pairs = feature_map(layout_of(plan, topo), topo, level)  # type: ignore[arg-type]
        settings = TrainSettings(steps=10**6, learning_rate=1e-5, batch_size=args.batch, weights=LossWeights())
        d = Distiller(student, teacher, pairs, data, settings, noise_scheduler=sdxl_scheduler(), accelerator=acc)
        batch = collate(data, d.sampler.rows(args.batch))
        for _ in range(2):
            d.step()
            bare_step(d, batch)
        bare, full = [], []
        for _ in range(args.steps):
            bare.append(timed(lambda: bare_step(d, batch), acc.device))  # noqa: B023
            full.append(timed(d.step, acc.device))
        b, f = statistics.median(bare) * 1000, statistics.median(full) * 1000
        print(f"{level:<14}{len(pairs):>6}{b:>10.1f}{f:>12.1f}{100 * (f / b - 1):>9.1f}%")
        d.close()


if __name__ == "__main__":
    main()
