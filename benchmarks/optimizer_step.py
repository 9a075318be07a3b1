"""The training step with torch's fused AdamW against its per-parameter loop, on the same student and batch.

A student of the bundled teacher has about 1,200 parameter tensors; where torch loops over them (its default
on a CPU) the optimizer step is a large share of a KD step. ``make_optimizer`` takes the fused AdamW wherever
it runs. Both optimizers step the same student, built twice from one plan, on the same batch (student
forward, output MSE against the teacher, backward, gradient clipping, optimizer step), interleaved in one
run; the table gives the median milliseconds of the whole step and of the optimizer step alone, and the ratio.
Also checks that the two students stay within float rounding of each other after those steps.

    python benchmarks/optimizer_step.py                         # the search's proxy batch, one thread
    python benchmarks/optimizer_step.py --recipe recipes/oracle-30.yaml --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from distill_step import fake_rows

from pruner.distillation.engine import make_optimizer
from pruner.distillation.trainer import collate
from pruner.recipe import load_recipe
from pruner.teacher import Teacher
from pruner.unet import build_student

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(ROOT / "recipes/oracle-50.yaml"), help="the plan whose student is trained")
    p.add_argument("--batch", type=int, default=16, help="rows a step (the search's proxy batch: 16)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the search's repeats use one each)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = Teacher.resolve("tiny-sdxl")
    unet = teacher.load()
    plan = load_recipe(args.recipe).plan_obj()
    students = {kind: build_student(unet, plan)[0].train() for kind in ("loop", "fused")}
    opts = {kind: make_optimizer(s.parameters(), 3e-4, weight_decay=0.0, fused=kind == "fused")
            for kind, s in students.items()}  # fmt: skip
    rows = fake_rows(unet.config, teacher.latent, args.batch, 16)
    batch = collate(rows, list(range(args.batch)))
    with torch.no_grad():
        args_, added = _unet_inputs(batch)
        target = unet(*args_, added_cond_kwargs=added).sample
    times: dict[str, dict[str, list[float]]] = {k: {"step": [], "optimizer": []} for k in students}
    for i in range(args.steps + 2):
        for kind, student in students.items():
            start = time.perf_counter()
            loss = torch.nn.functional.mse_loss(student(*args_, added_cond_kwargs=added).sample, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(student.parameters()), 1.0)
            middle = time.perf_counter()
            opts[kind].step()
            opts[kind].zero_grad(set_to_none=True)
            end = time.perf_counter()
            if i >= 2:  # the first two steps allocate the optimizer's state
                times[kind]["step"].append(end - start)
                times[kind]["optimizer"].append(end - middle)
    tensors = sum(1 for _ in students["loop"].parameters())
    drift = max((a - b).abs().max().item() for a, b in
                zip(students["loop"].parameters(), students["fused"].parameters(), strict=True))  # fmt: skip
    print(f"{plan_name(args.recipe)}: {tensors} parameter tensors, batch {args.batch}, {args.threads} thread(s), "
          f"{args.steps} steps each, interleaved")  # fmt: skip
    print(f"{'AdamW':<8}{'step ms':>10}{'optimizer ms':>15}{'step vs loop':>15}")
    base = statistics.median(times["loop"]["step"])
    for kind, t in times.items():
        step, opt = statistics.median(t["step"]) * 1000, statistics.median(t["optimizer"]) * 1000
        print(f"{kind:<8}{step:>10.1f}{opt:>15.1f}{step / (base * 1000):>14.2f}x")
    print(f"largest weight difference between the two students after {args.steps + 2} steps: {drift:.2e}")


def _unet_inputs(batch: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """A noisy-latent call of the UNet on ``batch`` (fixed timesteps): its positional arguments and added
    conditioning."""
    latents = batch["latents"]
    timesteps = torch.full((latents.shape[0],), 500, dtype=torch.long)
    added = {"text_embeds": batch["pooled_prompt_embeds"], "time_ids": batch["time_ids"]}
    return (latents, timesteps, batch["prompt_embeds"]), added


def plan_name(recipe: str) -> str:
    return load_recipe(recipe).name


if __name__ == "__main__":
    main()
