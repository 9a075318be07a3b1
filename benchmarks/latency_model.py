"""How close the latency model (module times measured once, summed over a plan's layout, then calibrated
on a few whole anchor students) comes to the measured latency of the built student, over random depth
(and width) plans other than the anchors. Prints one table, with the uncalibrated sum beside it.

    python benchmarks/latency_model.py --plans 12                 # bundled teacher, CPU, about 2 minutes
    python benchmarks/latency_model.py --teacher sdxl --device cuda --plans 16  # random SDXL weights, one GPU

The search prices every candidate of a ``latency=`` budget with this estimate, so its error is the margin
to leave in a budget. Measured and estimated times come from the same run, interleaved per plan.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from pruner.cost import CostModel
from pruner.cost.latency import measure_latency
from pruner.cost.latency_model import LatencyModel
from pruner.runtime import default_threads
from pruner.teacher import Teacher
from pruner.unet import (
    Plan,
    build_student,
    nearest_expressible,
    topology_of,
    unit_kinds,
)
from pruner.unet.width import feed_forwards, ff_level


def random_plans(teacher: torch.nn.Module, n: int, seed: int, width: bool) -> list[Plan]:
    """Plans removing 10-70% of the units (never the whole innermost stage), some with narrower feed-forwards."""
    topo = topology_of(teacher)
    rng = random.Random(seed)
    names = [u for u, kind in unit_kinds(topo).items() if kind != "stage"]
    levels = sorted({ff_level(p, len(teacher.down_blocks)) for p in feed_forwards(teacher)})
    plans = []
    for _ in range(n):
        p = rng.uniform(0.1, 0.7)
        plan = nearest_expressible(Plan(frozenset(u for u in names if rng.random() < p)), topo)
        if width and rng.random() < 0.5:
            plan = plan.with_widths({lv: rng.choice([0.25, 0.5, 0.75]) for lv in levels})
        plans.append(plan)
    return plans


def _teacher(name: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The teacher's UNet; an architecture name (sdxl, sd15) gets random weights: timing needs no training."""
    teacher = Teacher.resolve(name)
    if teacher.has_weights:
        return teacher.load(dtype=dtype, device=device)
    return UNet2DConditionModel.from_config(teacher.config).to(device, dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="tiny-sdxl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plans", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2, help="2: one image with classifier-free guidance")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3, help="passes over all plans (all students stay in memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-width", action="store_true", help="depth-only plans")
    parser.add_argument("--anchors", type=int, default=None,
                        help="whole students the sum is fitted to (default: 4 on a GPU, 0 on a CPU)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(default_threads())
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    teacher = _teacher(args.teacher, dtype, args.device)
    latent = int(teacher.config.sample_size)
    t0 = time.perf_counter()
    model = LatencyModel(CostModel(teacher.config, latent=latent, teacher=teacher), teacher, batch=args.batch,
                         runs=args.runs, anchors=args.anchors)  # fmt: skip
    model.table(0)
    fixed, scale = model.calibrate(0) if model.n_anchors else (0.0, 1.0)
    build_s = time.perf_counter() - t0
    plans = [Plan(), *random_plans(teacher, args.plans, args.seed, not args.no_width)]
    students = [build_student(teacher, plan)[0] for plan in plans]
    # rounds over all plans, the least median per plan: a burst of other work inflates a few
    # consecutive measurements, rarely the same plan in every round
    measured = [math.inf] * len(plans)
    for _ in range(args.rounds):
        for i, student in enumerate(students):
            ms = measure_latency(student, latent, batch=args.batch, warmup=2, runs=args.runs).total_ms
            measured[i] = min(measured[i], ms)
    rows = [(i, len(plan.removed), dict(plan.ff_keep), model.composed_ms(plan), model.ms(plan), measured[i])
            for i, plan in enumerate(plans)]  # fmt: skip
    print(f"{args.teacher} on {args.device} ({dtype}), latent {latent}, batch {args.batch}; measured: least of "
          f"{args.rounds} medians of {args.runs} calls; tables and {model.n_anchors} anchors in {build_s:.1f} s; "
          f"fit: fixed {fixed:.2f} ms, scale {scale:.3f}")  # fmt: skip
    print(f"{'plan':>4} {'removed':>8} {'FF keep':<22} {'summed ms':>10} {'estimate ms':>12} {'measured ms':>12} "
          f"{'ratio':>7}")  # fmt: skip
    for i, removed, widths, summed, est, meas in rows:
        shown = ", ".join(f"L{k} {v:g}" for k, v in widths.items()) or "full"
        print(f"{i:>4} {removed:>8} {shown:<22} {summed:>10.2f} {est:>12.2f} {meas:>12.2f} {est / meas:>7.3f}")
    for name, col in (("estimate", 4), ("summed (uncalibrated)", 3)):
        errors = [abs(r[col] / r[5] - 1) for r in rows[1:]]
        print(f"{name}: mean |error| {100 * statistics.mean(errors):.1f}%, max {100 * max(errors):.1f}% over "
              f"{len(errors)} plans (teacher: {rows[0][col] / rows[0][5]:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
