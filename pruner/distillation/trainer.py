"""Full distillation runs: the KD engine's step under accelerate, with checkpoints.

One ``Distiller`` trains one student against one frozen teacher with accelerate (mixed precision,
gradient accumulation, DDP/FSDP under ``accelerate launch``). Each step: sample a batch from the latent
cache, noise the latents, drop captions (zero embeddings, as SDXL's pipeline feeds for no prompt), run
the live teacher without grad, and hand both to ``pruner.distillation.engine.KDEngine.step`` (the step the
search's proxy fine-tune also takes). State (model, optimizer, schedule and RNG through
``accelerator.save_state``; the sampler and EMA as safetensors + JSON, nothing pickled of ours) checkpoints
under a temporary name, renamed when complete, so a resumed run continues exactly where an uninterrupted
one would have been.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pruner.device import teacher_dtype
from pruner.diffusion import added_cond
from pruner.distillation.engine import (
    AccelerateRuntime,
    KDEngine,
    KDInputs,
    TeacherOut,
    held_out_kd,
    make_optimizer,
    teacher_pass,
)
from pruner.distillation.hooks import FeatureRecorder
from pruner.distillation.losses import LossTerms, LossWeights
from pruner.errors import PrunerError
from pruner.io import publish_dir, space_for, write_json

__all__ = [
    "Distiller",
    "IndexSampler",
    "TrainSettings",
    "batch_inputs",
    "collate",
    "latest_checkpoint",
    "remove_partial_checkpoints",
]


@dataclass(frozen=True)
class TrainSettings:
    """How one stage trains."""

    steps: int
    learning_rate: float
    batch_size: int = 16
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    grad_accum: int = 1
    caption_dropout: float = 0.1
    warmup_steps: int | None = None
    max_grad_norm: float = 1.0
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    validate_every: int | None = None
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    eight_bit_adam: bool = False
    progress: bool = True  # a bar with the loss terms (on the main process)


class IndexSampler:
    """Samples batch rows and noise from one seeded generator whose state is checkpointed."""

    def __init__(self, n_rows: int, seed: int) -> None:
        self.n_rows = n_rows
        self.generator = torch.Generator().manual_seed(seed)

    def rows(self, batch: int) -> torch.Tensor:
        return torch.randint(self.n_rows, (batch,), generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def collate(data: Any, rows: Any) -> dict[str, torch.Tensor]:
    """Stack cache rows into one batch."""
    items = [data[int(i)] for i in rows]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def batch_inputs(
    batch: dict[str, torch.Tensor],
    scheduler: DDPMScheduler,
    generator: torch.Generator,
    caption_dropout: float | None = None,
) -> KDInputs:
    """Cache rows noised (noise, then timesteps, then, for training, which captions drop, all from
    ``generator``), on the CPU."""
    latents = batch["latents"].float()
    n = len(latents)
    embeds, pooled = batch["prompt_embeds"].float(), batch.get("pooled_prompt_embeds")
    ids = batch["time_ids"].float() if "time_ids" in batch else None
    inputs = KDInputs.noised(scheduler, latents, embeds, added_cond(pooled, ids), generator)
    if caption_dropout is None:
        return inputs
    keep = (torch.rand(n, generator=generator) >= caption_dropout).float()
    added = added_cond(pooled.float() * keep[:, None], ids) if pooled is not None else None
    return KDInputs(inputs.noisy, inputs.timesteps, inputs.noise, embeds * keep[:, None, None], added, latents)


def remove_partial_checkpoints(folder: Path) -> None:
    """Delete checkpoints a run left half written (``.step-*.partial``: a full disk or a kill while saving)."""
    for partial in folder.glob(".step-*.partial") if folder.is_dir() else ():
        shutil.rmtree(partial, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (``*/progress.json`` exists), or None."""
    done = [p for p in folder.glob("step-*") if (p / "progress.json").is_file()] if folder.is_dir() else []
    return max(done, key=lambda p: json.loads((p / "progress.json").read_text())["global_step"], default=None)


def _after_full_disk(folder: Path) -> str:
    """What to run once space is freed: resume from the last complete checkpoint, or start again."""
    if latest_checkpoint(folder) is not None:
        return "free space there, then rerun the same command with --resume: it continues from the last checkpoint"
    return "free space there, then rerun the same command: no checkpoint was complete, so it starts again"


class Distiller:
    """Trains ``student`` to match ``teacher`` on a latent cache; see the module docstring."""

    def __init__(
        self,
        student: UNet2DConditionModel,
        teacher: UNet2DConditionModel,
        pairs: Sequence[tuple[str, str]],
        data: Any,
        settings: TrainSettings,
        *,
        noise_scheduler: DDPMScheduler,
        accelerator: Accelerator | None = None,
        held_out: int = 0,
    ) -> None:
        self.settings = settings
        self.acc = accelerator or Accelerator(
            gradient_accumulation_steps=settings.grad_accum, cpu=not torch.cuda.is_available()
        )
        self.noise_scheduler = noise_scheduler
        self.data, self.pairs = data, list(pairs)
        self.n_train = len(data) - held_out
        self.held_out = held_out
        self.teacher = self._frozen_teacher(teacher)
        self.student = student
        if settings.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        self.sampler = IndexSampler(self.n_train, settings.seed + self.acc.process_index)
        self._prepare(student)
        self.step_count = 0

    def _frozen_teacher(self, teacher: UNet2DConditionModel) -> UNet2DConditionModel:
        """Teacher on the device, no grad, in half precision on a GPU or when the student trains in it."""
        dtype = teacher_dtype(self.acc.device, self.acc.mixed_precision)
        teacher = teacher.to(self.acc.device) if dtype == teacher.dtype else teacher.to(self.acc.device, dtype)
        return teacher.eval().requires_grad_(False)

    def _prepare(self, student: UNet2DConditionModel) -> None:
        s = self.settings
        optimizer = make_optimizer(student.parameters(), s.learning_rate, 1e-2, s.eight_bit_adam)
        warmup = s.warmup_steps if s.warmup_steps is not None else min(100, s.steps // 10)
        lr = get_scheduler("cosine", optimizer, num_warmup_steps=warmup * self.acc.num_processes,
                           num_training_steps=s.steps * self.acc.num_processes)  # fmt: skip
        self.model, self.optimizer, self.lr_scheduler = self.acc.prepare(student.train(), optimizer, lr)
        self.ema = None
        if self.settings.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.acc.unwrap_model(self.model).parameters(), decay=self.settings.ema_decay)
            self.ema.to(self.acc.device)
        unwrapped = self.acc.unwrap_model(self.model)
        self.engine = KDEngine(self.model, unwrapped, self.pairs, s.weights, self.noise_scheduler, self.optimizer,
                               AccelerateRuntime(self.acc), lr_scheduler=self.lr_scheduler,
                               max_grad_norm=s.max_grad_norm)  # fmt: skip
        self.teacher_features = FeatureRecorder(self.teacher, [p[1] for p in self.pairs])

    def inputs(self, batch: dict[str, torch.Tensor]) -> KDInputs:
        """One training batch noised, captions dropped, on the device."""
        inputs = batch_inputs(batch, self.noise_scheduler, self.sampler.generator, self.settings.caption_dropout)
        return inputs.to(self.acc.device)

    def teacher_out(self, inputs: KDInputs) -> TeacherOut:
        """The live teacher's prediction and features on ``inputs``."""
        return teacher_pass(self.teacher, inputs, self.teacher_features)

    def step(self) -> LossTerms:
        """One optimizer step (``grad_accum`` micro-batches)."""
        for _ in range(self.settings.grad_accum):
            inputs = self.inputs(collate(self.data, self.sampler.rows(self.settings.batch_size)))
            with self.acc.accumulate(self.model):
                terms = self.engine.step(inputs, self.teacher_out(inputs))
            if self.ema is not None and self.acc.sync_gradients:
                self.ema.step(self.acc.unwrap_model(self.model).parameters())
        self.step_count += 1
        return terms

    def held_out_kd(self, seed: int = 1234) -> float:
        """Mean MSE of student vs teacher noise predictions on the held-out rows, fixed noise and timesteps."""
        if not self.held_out:
            return float("nan")
        rows = torch.arange(self.n_train, len(self.data))
        g = torch.Generator().manual_seed(seed)

        def batches() -> Iterator[tuple[KDInputs, torch.Tensor]]:
            for chunk in rows.split(self.settings.batch_size):
                inputs = batch_inputs(collate(self.data, chunk), self.noise_scheduler, g).to(self.acc.device)
                yield inputs, teacher_pass(self.teacher, inputs).pred

        return held_out_kd(self.acc.unwrap_model(self.model), batches(), self.engine.runtime)

    def save_checkpoint(self, folder: Path, extra: dict[str, Any]) -> Path:
        """Save the full training state atomically, then keep only the newest ``keep_checkpoints``.

        accelerate writes the model (safetensors), optimizer, schedule and RNG states; the sampler and the
        EMA are written here as safetensors + JSON, so resuming never unpickles anything of ours. A full disk
        is one line (the half-written checkpoint removed, so it frees what it took)."""
        final = folder / f"step-{extra['global_step']:07d}"
        tmp = folder / f".{final.name}.partial"
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        try:
            with space_for(folder, self._checkpoint_bytes(folder), _after_full_disk(folder)):
                self._write_checkpoint(tmp, final, extra)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.acc.is_main_process:
            done = sorted((p for p in folder.glob("step-*") if (p / "progress.json").is_file()), key=lambda p: p.name)
            for old in done[: -self.settings.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def _write_checkpoint(self, tmp: Path, final: Path, extra: dict[str, Any]) -> None:
        self.acc.save_state(str(tmp), safe_serialization=True)
        self._save_own_state(tmp)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            write_json(tmp / "progress.json", extra)
            publish_dir(tmp, final)

    def _checkpoint_bytes(self, folder: Path) -> int:
        """About what a checkpoint takes: the last one's size, else the weights and AdamW's two moments."""
        last = latest_checkpoint(folder)
        if last is not None:
            return sum(f.stat().st_size for f in last.rglob("*") if f.is_file())
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return 3 * weights * (2 if self.ema is not None else 1)

    def _save_own_state(self, folder: Path) -> None:
        """This process's sampler generator; on the main process the EMA's shadow weights and counters."""
        i = self.acc.process_index
        save_file({"generator": self.sampler.generator.get_state()}, str(folder / f"sampler_{i}.safetensors"))
        if self.ema is None or not self.acc.is_main_process:
            return
        state = self.ema.state_dict()
        shadow = {f"shadow.{k}": p.detach().cpu().contiguous() for k, p in enumerate(state.pop("shadow_params"))}
        save_file(shadow, str(folder / "ema.safetensors"))
        write_json(folder / "ema.json", state)

    def _load_own_state(self, folder: Path) -> None:
        sampler = load_file(str(folder / f"sampler_{self.acc.process_index}.safetensors"))
        self.sampler.generator.set_state(sampler["generator"])
        if self.ema is None:
            return
        state = json.loads((folder / "ema.json").read_text())
        shadow = load_file(str(folder / "ema.safetensors"), device=str(self.acc.device))
        state["shadow_params"] = [shadow[f"shadow.{k}"] for k in range(len(shadow))]
        self.ema.load_state_dict(state)

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restore the state :meth:`save_checkpoint` wrote. Pickled files accelerate wrote (optimizer,
        schedule, RNG) load with ``weights_only=True``; an unreadable or foreign file is a one-line error."""
        try:
            self.acc.load_state(str(path))
            self._load_own_state(path)
        except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError, SafetensorError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            message = f"checkpoint {path} cannot be resumed ({first}); delete it or start a new --output"
            raise PrunerError(message) from exc
        progress = json.loads((path / "progress.json").read_text())
        self.step_count = int(progress["stage_step"])
        return progress

    def run(
        self, until: int, on_step: Callable[[int, LossTerms], None] | None = None, desc: str = "distill"
    ) -> LossTerms | None:
        """Train until ``step_count == until``, with a progress bar showing the loss terms."""
        terms = None
        shown = self.settings.progress and self.acc.is_local_main_process
        bar = tqdm(total=until, initial=self.step_count, desc=desc, disable=not shown, mininterval=1.0,
                   dynamic_ncols=True)  # fmt: skip
        while self.step_count < until:
            terms = self.step()
            values = terms.as_floats()
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(self.step_count, terms)
        bar.close()
        return terms

    def final_student(self) -> UNet2DConditionModel:
        """The trained student (with its EMA weights, when EMA is on)."""
        student = self.acc.unwrap_model(self.model)
        if self.ema is not None:
            self.ema.copy_to(student.parameters())
        return student

    def close(self) -> None:
        self.engine.close()
        self.teacher_features.remove()
