"""Does a teacher's LoRA still work on a pruned student once pruner ports it?

On the bundled teacher (tiny-sdxl): train a small PEFT LoRA that remaps a colour word ("red" draws
blue), distill the found recipe's student for a few hundred steps, then generate the held-out "red"
prompts with: the teacher with and without the LoRA, the student alone, the student with the LoRA ported
by pruner, and the student with the LoRA loaded as it is (no renaming: what a user gets without pruner).
The judge reads each picture; the behaviour's rate is the share of pictures whose every attribute
matches the prompt with "red" read as "blue". Prints a Markdown table.

    python benchmarks/lora_port.py --out /tmp/lora-port --lora-steps 300 --distill-steps 300

CPU-costly (minutes); figures compare within one run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from pruner.compat import naive_lora, port_lora
from pruner.distillation.run import DistillOptions, distill_recipe
from pruner.recipe import load_recipe, save_recipe
from pruner.runtime import default_threads
from pruner.tiny.judge import Judge
from pruner.tiny.synth import Scene, SceneObject, caption, render, sample_scenes
from pruner.unet import bundled_teacher, load_pipeline

SOURCE, TARGET = "red", "blue"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _recoloured(scene: Scene) -> Scene:
    objects: tuple[SceneObject, ...] = tuple(
        dataclasses.replace(o, colour=TARGET) if o.colour == SOURCE else o for o in scene.objects
    )
    return dataclasses.replace(scene, objects=objects)


def _red_scenes(n: int, seed: int, stream: str) -> list[Scene]:
    """Scenes that name a red object and whose recoloured version is still a valid scene."""
    out: list[Scene] = []
    for scene in sample_scenes(20 * n, seed, stream):
        if any(o.colour == SOURCE for o in scene.objects) and not any(o.colour == TARGET for o in scene.objects):
            out.append(scene)
        if len(out) == n:
            break
    return out


def _conditioning(pipe, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    size = pipe.default_sample_size * pipe.vae_scale_factor
    ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=embeds.dtype).repeat(len(prompts), 1)
    return embeds, {"text_embeds": pooled, "time_ids": ids}


def _training_set(pipe, scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """Latents of the recoloured pictures, with the conditioning of the original ("red") captions."""
    pixels = torch.stack([torch.from_numpy(np.asarray(render(_recoloured(s)), dtype=np.float32)) for s in scenes])
    pixels = pixels.permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        embeds, added = _conditioning(pipe, [caption(s) for s in scenes])
    return latents, embeds, added


def train_lora(pipe, scenes: list[Scene], steps: int, batch: int, out: Path, seed: int = 0) -> Path:  # type: ignore[no-untyped-def]
    """A rank-8 LoRA on the teacher's attention projections, trained on the remapped pictures."""
    latents, embeds, added = _training_set(pipe, scenes)
    unet = copy.deepcopy(pipe.unet).train()
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights="gaussian"))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,))
        noise = torch.randn_like(latents[idx])
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,))
        noisy = noise_sched.add_noise(latents[idx], noise, t)
        cond = {k: v[idx] for k, v in added.items()}
        pred = unet(noisy, t, embeds[idx], added_cond_kwargs=cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"lora step {step}: loss {loss.item():.4f}", flush=True)
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet))
    return out / "pytorch_lora_weights.safetensors"


def behaviour_rate(pipe, judge: Judge, scenes: list[Scene], steps: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(share of pictures that match the prompt with red read as blue, share that match it as written)."""
    prompts = [caption(s.labels()) for s in scenes]
    gens = [torch.Generator().manual_seed(k) for k in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, generator=gens).images
    remapped = [caption(_recoloured(s.labels())) for s in scenes]
    return judge.score(images, remapped)["prompt_accuracy"], judge.score(images, prompts)["prompt_accuracy"]


def _student(root: Path, steps: int) -> Path:
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "examples" / "tiny-sdxl-50" / "found.yaml")
    path = save_recipe(recipe.model_copy(update={"student": None}), root / "found.yaml")
    out = root / "student"
    if not (out / "recipe.yaml").is_file():
        distill_recipe(path, out, DistillOptions(steps=steps, seed=0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lora-port"))
    parser.add_argument("--lora-steps", type=int, default=300)
    parser.add_argument("--lora-batch", type=int, default=32)
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="Sampling steps per picture.")
    args = parser.parse_args()
    torch.set_num_threads(default_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = load_pipeline("tiny-sdxl")
    teacher.set_progress_bar_config(disable=True)
    judge = Judge.load(bundled_teacher() / "judge")  # type: ignore[operator]
    lora = args.out / "lora" / "pytorch_lora_weights.safetensors"
    if not lora.is_file():
        lora = train_lora(teacher, _red_scenes(args.n_train, 0, "dataset"), args.lora_steps, args.lora_batch,
                          args.out / "lora")  # fmt: skip
    student_dir = _student(args.out, args.distill_steps)
    scenes = _red_scenes(args.n_eval, 1, "prompts")
    ported = port_lora(lora, student=student_dir)
    naive = naive_lora(lora, student=student_dir)
    print(ported.report.summary())
    rows = [("teacher", teacher, None), ("teacher + LoRA", teacher, str(lora))]
    student = load_pipeline(str(student_dir))
    student.set_progress_bar_config(disable=True)
    rows += [("student", student, None), ("student + ported LoRA", student, ported.state),
             ("student + LoRA loaded as it is", student, naive.state)]  # fmt: skip
    print(f"\n| model ({args.n_eval} held-out '{SOURCE}' prompts) | draws {TARGET} (LoRA behaviour) | draws {SOURCE} |")
    print("|---|---:|---:|")
    for name, pipe, weights in rows:
        if weights is not None:
            pipe.load_lora_weights(weights)
        remapped, as_written = behaviour_rate(pipe, judge, scenes, args.steps)
        if weights is not None:
            pipe.unload_lora_weights()
        print(f"| {name} | {100 * remapped:.1f}% | {100 * as_written:.1f}% |", flush=True)
    print(f"\nLoRA entries: {ported.report.summary().splitlines()[0]}; loaded as it is: "
          f"{naive.report.summary().splitlines()[0]}")  # fmt: skip


if __name__ == "__main__":
    main()
