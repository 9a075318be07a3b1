"""The KD engine: the one training step the search's proxy fine-tune and ``pruner distill`` share.

A step takes a noised batch (``KDInputs``) and the teacher's outputs on it (``TeacherOut``: from a live
teacher pass, or rows of the search's cached calibration), runs the student under autocast on its device
with feature hooks, combines task loss, output KD and feature KD with the caller's ``LossWeights``,
then backward, gradient clipping, optimizer and learning-rate steps. What differs between the two
callers is only around the step: the distiller runs under accelerate (DDP, gradient accumulation,
checkpoints) through ``AccelerateRuntime``, the proxy in-process through ``PlainRuntime``. A fix to the
step is a fix in both.

Also here, once: the held-out KD loss (student vs teacher noise predictions) and the output-KD
gradients that rank channels for Taylor width pruning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers import DDPMScheduler
from torch import nn

from pruner.device import autocast_dtype
from pruner.diffusion import noise_batch
from pruner.distillation.hooks import FeatureRecorder
from pruner.distillation.losses import LossTerms, LossWeights, distill_loss, min_snr_weights, task_target
from pruner.errors import PrunerError

__all__ = [
    "AccelerateRuntime",
    "KDEngine",
    "KDInputs",
    "PlainRuntime",
    "Runtime",
    "TeacherOut",
    "held_out_kd",
    "make_optimizer",
    "output_kd_gradients",
    "teacher_pass",
]


@dataclass(frozen=True)
class KDInputs:
    """One noised, conditioned batch: what both UNets are called on, and what the task loss needs."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None
    latents: torch.Tensor

    @classmethod
    def noised(
        cls,
        scheduler: DDPMScheduler,
        latents: torch.Tensor,
        embeds: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
        generator: torch.Generator | None,
    ) -> KDInputs:
        """Noise ``latents`` with draws from ``generator`` (see ``pruner.diffusion.noise_batch``)."""
        n = noise_batch(scheduler, latents, generator)
        return cls(n.noisy, n.timesteps, n.noise, embeds, added, latents)

    def __len__(self) -> int:
        return len(self.noisy)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> KDInputs:
        """On ``device``; floating inputs the UNet reads (not the loss's noise and latents) cast to ``dtype``."""
        f = lambda x: x.to(device, dtype) if dtype is not None else x.to(device)  # noqa: E731
        added = {k: f(v) for k, v in self.added.items()} if self.added else None
        return KDInputs(f(self.noisy), self.timesteps.to(device), self.noise.to(device), f(self.embeds), added,
                        self.latents.to(device))  # fmt: skip

    def rows(self, index: torch.Tensor) -> KDInputs:
        added = {k: v[index] for k, v in self.added.items()} if self.added else None
        return KDInputs(self.noisy[index], self.timesteps[index], self.noise[index], self.embeds[index], added,
                        self.latents[index])  # fmt: skip

    def unet_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.noisy, self.timesteps, self.embeds


@dataclass(frozen=True)
class TeacherOut:
    """The teacher's noise prediction and recorded features (by teacher module path) on one batch."""

    pred: torch.Tensor
    features: dict[str, torch.Tensor]


def _dtype_of(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def teacher_pass(teacher: nn.Module, inputs: KDInputs, recorder: FeatureRecorder | None = None) -> TeacherOut:
    """The frozen teacher on ``inputs`` in its own dtype (half on a GPU); its features if it is hooked."""
    batch = inputs.to(inputs.noisy.device, _dtype_of(teacher))
    pred = teacher(*batch.unet_args(), added_cond_kwargs=batch.added).sample
    return TeacherOut(pred, dict(recorder.features) if recorder is not None else {})


class Runtime(Protocol):
    """Where and how a step runs: device, autocast, backward and gradient clipping."""

    device: torch.device

    @property
    def sync_gradients(self) -> bool: ...

    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def clip(self, params: Iterable[nn.Parameter], max_norm: float) -> None: ...


class PlainRuntime:
    """One process, one device, torch autocast for ``mixed_precision`` (``no``, ``bf16`` or ``fp16``)."""

    sync_gradients = True

    def __init__(self, device: torch.device | str = "cpu", mixed_precision: str = "no") -> None:
        self.device = torch.device(device)
        self.dtype = autocast_dtype(self.device, mixed_precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def clip(self, params: Iterable[nn.Parameter], max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(list(params), max_norm)


class AccelerateRuntime:
    """accelerate's device, autocast, backward (DDP, gradient accumulation) and clipping."""

    def __init__(self, accelerator: Any) -> None:
        self.acc = accelerator
        self.device = accelerator.device

    @property
    def sync_gradients(self) -> bool:
        return bool(self.acc.sync_gradients)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.acc.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def clip(self, params: Iterable[nn.Parameter], max_norm: float) -> None:
        self.acc.clip_grad_norm_(params, max_norm)


_FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW runs


def make_optimizer(
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 1e-2,
    eight_bit: bool = False,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """AdamW; ``eight_bit`` takes bitsandbytes' 8-bit AdamW (optimizer states in 8 bits: SDXL-size students
    fit in less memory), an error naming the extra when it is not installed. ``fused`` (default: wherever
    every parameter lives on a device it runs on) takes torch's fused AdamW, one kernel over all parameters
    instead of a loop over them: on a CPU, where torch would loop, the optimizer step of a 50% student of the
    bundled teacher takes a third of the time (8.0 ms against 25.8 ms: ``benchmarks/optimizer_step.py``)."""
    params = list(params)
    if not eight_bit:
        if fused is None:
            fused = all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise PrunerError("the 8-bit optimizer needs bitsandbytes: pip install 'pruner[gpu]'") from exc
    optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return optimizer


class KDEngine:
    """One student's KD step; see the module docstring.

    ``model`` is what is called (accelerate may have wrapped it); ``student`` the unwrapped module the
    feature hooks attach to; ``pairs`` (student module, teacher module) feature pairs.
    """

    def __init__(
        self,
        model: nn.Module,
        student: nn.Module,
        pairs: Sequence[tuple[str, str]],
        weights: LossWeights,
        scheduler: DDPMScheduler,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        *,
        lr_scheduler: Any = None,
        max_grad_norm: float = 1.0,
    ) -> None:
        self.model, self.student, self.pairs, self.weights = model, student, list(pairs), weights
        self.scheduler, self.optimizer, self.lr_scheduler = scheduler, optimizer, lr_scheduler
        self.runtime, self.max_grad_norm = runtime, max_grad_norm
        self.recorder = FeatureRecorder(student, [s for s, _ in self.pairs])

    def loss(self, inputs: KDInputs, teacher: TeacherOut) -> LossTerms:
        """Student forward (autocast) and the weighted loss terms against the teacher's outputs."""
        with self.runtime.autocast():
            pred = self.model(*inputs.unet_args(), added_cond_kwargs=inputs.added).sample
        w = self.weights
        target = task_target(self.scheduler, inputs.latents, inputs.noise, inputs.timesteps)
        snr = min_snr_weights(self.scheduler, inputs.timesteps, w.min_snr_gamma) if w.min_snr_gamma else None
        feats = (self.recorder.features, teacher.features, self.pairs)
        return distill_loss(pred, teacher.pred, target, feats, w, snr)

    def step(self, inputs: KDInputs, teacher: TeacherOut) -> LossTerms:
        """Loss, backward, clipping (when gradients sync), optimizer and learning-rate steps."""
        terms = self.loss(inputs, teacher)
        self.runtime.backward(terms.total)
        scaler = getattr(self.runtime, "scaler", None)
        if self.runtime.sync_gradients:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            self.runtime.clip(self.model.parameters(), self.max_grad_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.recorder.clear()
        return terms

    def close(self) -> None:
        self.recorder.remove()


Batches = Iterable[tuple[KDInputs, torch.Tensor]]


@torch.no_grad()
def held_out_kd(model: nn.Module, batches: Batches, runtime: Runtime | None = None) -> float:
    """Mean MSE between the model's noise predictions and the teacher's over ``(inputs, teacher_pred)``
    batches, weighted by batch size; the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    dtype = _dtype_of(model)
    for inputs, teacher_pred in batches:
        batch = inputs.to(inputs.noisy.device, dtype)
        with runtime.autocast() if runtime is not None else contextlib.nullcontext():
            pred = model(*batch.unet_args(), added_cond_kwargs=batch.added).sample
        total += float(((pred.float() - teacher_pred.float()) ** 2).mean()) * len(inputs)
        n += len(inputs)
    model.train(was_training)
    return total / max(n, 1)


def output_kd_gradients(batches: Callable[[], Iterator[tuple[KDInputs, torch.Tensor]]]) -> Callable[[nn.Module], None]:
    """A ``grad_fn`` for Taylor width importance: accumulates the gradients of the output-KD loss (student vs
    teacher prediction) averaged over the batches ``batches()`` yields."""

    def grad_fn(student: nn.Module) -> None:
        items = list(batches())
        for inputs, teacher_pred in items:
            batch = inputs.to(inputs.noisy.device, _dtype_of(student))
            pred = student(*batch.unet_args(), added_cond_kwargs=batch.added).sample
            (torch.nn.functional.mse_loss(pred.float(), teacher_pred.float()) / len(items)).backward()

    return grad_fn
