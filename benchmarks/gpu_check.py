"""GPU check: distill steps of SSD-1B and Vega students of SDXL, and UNet latency against SDXL.

SDXL's architecture with random weights (no download), bf16, 1024x1024 (latent 128), batch 1:
- one distill step (task + output KD + sub_block feature KD; AdamW on fp32 master weights under bf16
  autocast) for each recipe: median time and peak GPU memory;
- UNet latency (SDPA, a classifier-free-guidance batch of 2) of SDXL and of each student, with the
  speedup printed beside what the model cards claim (SSD-1B "60% faster", Vega "100% faster").

    python benchmarks/gpu_check.py                 # one H100: a few minutes
    python benchmarks/gpu_check.py --tiny          # the same code at tiny scale on CPU (tested)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from pruner.cost.latency import measure_latency
from pruner.diffusion import sdxl_scheduler
from pruner.distillation.losses import LossWeights
from pruner.distillation.trainer import Distiller, TrainSettings
from pruner.recipe import load_recipe
from pruner.unet import architecture_config, build_student, feature_map, layout_of, topology_of
from pruner.unet.surgery import meta_unet

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = {"sdxl-ssd-1b": "60% faster", "sdxl-vega": "100% faster"}


def random_teacher(arch: str, device: torch.device, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    unet = meta_unet(architecture_config(arch)).to_empty(device=device)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.02)
    return (unet if dtype == torch.float32 else unet.to(dtype)).eval()


def fake_rows(config: dict, latent: int, n: int, seq: int = 77) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    text = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    size = float(latent * 8)
    return [
        {"latents": torch.randn(4, latent, latent, generator=g),
         "prompt_embeds": torch.randn(seq, config["cross_attention_dim"], generator=g),
         "pooled_prompt_embeds": torch.randn(text, generator=g),
         "time_ids": torch.tensor([size, size, 0, 0, size, size])}
        for _ in range(n)
    ]  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def distill_step_figures(teacher, recipe_path: Path, rows, acc: Accelerator, steps: int) -> dict:  # type: ignore[no-untyped-def]
    """Median seconds per distill step and peak GPU memory for one recipe's student."""
    plan = load_recipe(recipe_path).plan_obj()
    topo = topology_of(teacher)
    student, _ = build_student(teacher, plan, dtype=torch.float32)
    pairs = feature_map(layout_of(plan, topo), topo, "sub_block")
    settings = TrainSettings(steps=10**6, learning_rate=1e-5, batch_size=1, weights=LossWeights())
    if acc.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    d = Distiller(student, teacher, pairs, rows, settings, noise_scheduler=sdxl_scheduler(), accelerator=acc)
    times = []
    for k in range(steps + 2):
        sync(acc.device)
        start = time.perf_counter()
        terms = d.step()
        sync(acc.device)
        if k >= 2:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if acc.device.type == "cuda" else float("nan")
    params = sum(p.numel() for p in student.parameters())
    d.close()
    del d
    return {"params": params, "step_s": statistics.median(times), "peak_gib": peak, "loss": terms.as_floats()}


def latencies_ms(models: dict, latent: int, rounds: int) -> dict[str, float]:  # type: ignore[type-arg]
    """Median UNet latency of each model, measured in interleaved rounds so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in models}
    for unet in models.values():
        measure_latency(unet, latent, batch=2, warmup=5, runs=1)
    order = list(models)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:  # alternate the order: no model always goes first
            samples[name].append(measure_latency(models[name], latent, batch=2, warmup=0, runs=3).total_ms)
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  latency {name}: median {median:.1f} ms, min {min(values):.1f} ms over {rounds} rounds")
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny-sdxl architecture at 32 px on CPU in fp32")
    p.add_argument("--steps", type=int, default=5, help="timed distill steps per recipe (after 2 warm-up steps)")
    p.add_argument("--runs", type=int, default=10, help="interleaved latency rounds (3 calls each)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    arch, latent = ("tiny-sdxl", 8) if args.tiny else ("sdxl", 128)
    recipes = ["tiny-sdxl-bk-small", "tiny-sdxl-vega"] if args.tiny else ["sdxl-ssd-1b", "sdxl-vega"]
    use_cuda = torch.cuda.is_available() and not args.tiny
    dtype = torch.bfloat16 if use_cuda else torch.float32
    acc = Accelerator(mixed_precision="bf16" if use_cuda else "no", cpu=not use_cuda)
    torch.backends.cuda.matmul.allow_tf32 = True
    teacher = random_teacher(arch, acc.device, dtype)
    rows = fake_rows(architecture_config(arch), latent, 4, seq=16 if args.tiny else 77)
    figures: dict = {
        "device": torch.cuda.get_device_name() if use_cuda else "cpu",
        "dtype": str(dtype),
        "latent": latent,
    }
    students = {name: build_student(teacher, load_recipe(ROOT / "recipes" / f"{name}.yaml").plan_obj())[0].eval()
                for name in recipes}  # fmt: skip
    lat = latencies_ms({arch: teacher, **students}, latent, args.runs)
    del students
    figures["teacher_latency_ms"] = lat[arch]
    figures["teacher_params"] = sum(q.numel() for q in teacher.parameters())
    for name in recipes:
        fig = distill_step_figures(teacher, ROOT / "recipes" / f"{name}.yaml", rows, acc, args.steps)
        fig["latency_ms"] = lat[name]
        figures[name] = fig
    print(f"{figures['device']}, {figures['dtype']}, latent {latent}x{latent} ({latent * 8}px); latency at CFG batch 2")
    print(f"{'model':<22}{'params':>15}{'step s':>9}{'peak GiB':>10}{'latency ms':>12}{'speedup':>9}  claim")
    print(
        f"{arch:<22}{figures['teacher_params']:>15,}{'-':>9}{'-':>10}{figures['teacher_latency_ms']:>12.1f}{'1.00x':>9}"
    )
    for name in recipes:
        f = figures[name]
        speed = figures["teacher_latency_ms"] / f["latency_ms"]
        f["speedup"] = speed
        print(f"{name:<22}{f['params']:>15,}{f['step_s']:>9.3f}{f['peak_gib']:>10.1f}{f['latency_ms']:>12.1f}"
              f"{speed:>8.2f}x  {CLAIMS.get(name, '')}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
