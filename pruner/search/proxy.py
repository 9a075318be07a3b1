"""The search's proxy: a fixed calibration set with the teacher's outputs and features computed once, a
zero-shot KD loss, a short layer-level KD fine-tune against the cached teacher, and per-unit sensitivity.

No teacher forward runs inside a trial: every trial reads the same cached teacher predictions and
features, so trials cost one student's training steps and nothing else.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from pruner.distill.hooks import FeatureRecorder
from pruner.distill.losses import feature_kd
from pruner.unet.maps import FeatureLevel, feature_map
from pruner.unet.plan import Plan, check_expressible, layout_of
from pruner.unet.surgery import build_student
from pruner.unet.topology import Topology

__all__ = [
    "Calibration",
    "ProxyScore",
    "build_calibration",
    "calibration_gradients",
    "proxy_score",
    "unit_sensitivity",
]


@dataclass
class Calibration:
    """Noisy inputs, conditioning, and the teacher's predictions and features on them (rows ``n_train:``
    are held out for scoring)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None
    teacher_pred: torch.Tensor
    teacher_features: dict[str, torch.Tensor]
    n_train: int
    level: FeatureLevel

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict | None]:
        added = {k: v[rows] for k, v in self.added.items()} if self.added else None
        return self.noisy[rows], self.timesteps[rows], self.embeds[rows], added

    @property
    def held_out(self) -> torch.Tensor:
        return torch.arange(self.n_train, len(self.noisy))


def _stack_rows(data, rows: Sequence[int]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    items = [data[i] for i in rows]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@torch.no_grad()
def build_calibration(
    teacher: UNet2DConditionModel, data, topo: Topology, *, n_train: int, n_held_out: int, level: FeatureLevel,  # type: ignore[no-untyped-def]
    scheduler: DDPMScheduler, seed: int = 0, batch: int = 16,
) -> Calibration:  # fmt: skip
    """Take the first rows of a latent cache, noise them at seeded timesteps, and record the teacher."""
    n = min(len(data), n_train + n_held_out)
    if n < 4:
        raise ValueError("the calibration set needs at least 4 rows")
    rows = _stack_rows(data, range(n))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(rows["latents"].shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g)
    noisy = scheduler.add_noise(rows["latents"], noise, t)
    added = {"text_embeds": rows["pooled_prompt_embeds"], "time_ids": rows["time_ids"]} if "time_ids" in rows else None
    names = [t_name for _, t_name in feature_map(layout_of(Plan(), topo), topo, level)]
    calib = Calibration(noisy, t, noise, rows["prompt_embeds"], added, torch.empty(0), {}, min(n_train, n - 2), level)
    preds, feats = [], {name: [] for name in names}
    with FeatureRecorder(teacher.eval(), names) as rec:
        for chunk in torch.arange(n).split(batch):
            x, tt, e, a = calib.inputs(chunk)
            preds.append(teacher(x, tt, e, added_cond_kwargs=a).sample)
            for name in names:
                feats[name].append(rec.features[name])
    calib.teacher_pred = torch.cat(preds)
    calib.teacher_features = {k: torch.cat(v) for k, v in feats.items()}
    return calib


@torch.no_grad()
def held_out_kd(model: nn.Module, calib: Calibration, batch: int = 32) -> float:
    """MSE between the model's and the teacher's noise predictions on the held-out rows."""
    model.eval()
    total, rows = 0.0, calib.held_out
    for chunk in rows.split(batch):
        x, t, e, a = calib.inputs(chunk)
        total += float(((model(x, t, e, added_cond_kwargs=a).sample - calib.teacher_pred[chunk]) ** 2).mean()) * len(
            chunk
        )
    return total / len(rows)


@dataclass(frozen=True)
class ProxyScore:
    zero_shot_kd: float
    proxy_kd: float
    steps: int


def _train_steps(
    student: UNet2DConditionModel, calib: Calibration, pairs, steps: int, lr: float, batch: int, seed: int,  # type: ignore[no-untyped-def]
    schedule: str = "cosine",
) -> None:  # fmt: skip
    """Layer-level KD against the cached teacher: output KD + normalised feature KD (+ task loss).

    The learning rate decays to zero (cosine) by default: a constant rate leaves a plan's loss swinging
    between steps, which scrambles how plans rank against each other."""
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(calib.n_train, generator=g)
    chunks = itertools.cycle(order.split(batch))
    with FeatureRecorder(student, [s for s, _ in pairs]) as rec:
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * (0.5 * (1 + math.cos(math.pi * step / steps)) if schedule == "cosine" else 1.0)
            rows = next(chunks)
            x, t, e, a = calib.inputs(rows)
            pred = student(x, t, e, added_cond_kwargs=a).sample
            teacher_feats = {name: calib.teacher_features[name][rows] for _, name in pairs}
            loss = ((pred - calib.teacher_pred[rows]) ** 2).mean() + 0.5 * feature_kd(
                rec.features, teacher_feats, pairs, True
            )
            loss = loss + 0.1 * ((pred - calib.noise[rows]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()


def calibration_gradients(calib: Calibration, rows: int = 32):  # type: ignore[no-untyped-def]
    """A ``grad_fn`` for Taylor width importance: output-KD gradients on the first calibration rows."""

    def grad_fn(student: nn.Module) -> None:
        chunk = torch.arange(min(rows, calib.n_train))
        x, t, e, a = calib.inputs(chunk)
        ((student(x, t, e, added_cond_kwargs=a).sample - calib.teacher_pred[chunk]) ** 2).mean().backward()

    return grad_fn


def proxy_score(
    teacher: UNet2DConditionModel, plan: Plan, topo: Topology, calib: Calibration, *, steps: int, lr: float = 3e-4,  # type: ignore[no-untyped-def]
    batch: int = 16, seed: int = 0, screen=None, importance: str = "magnitude", schedule: str = "cosine",
) -> ProxyScore:  # fmt: skip
    """Zero-shot KD of the freshly built student, then (unless ``screen(zero_shot)`` stops the trial by
    raising) ``steps`` of KD and the held-out KD loss after them."""
    layout = check_expressible(plan, topo)
    grad_fn = calibration_gradients(calib) if importance == "taylor" else None
    student, _ = build_student(teacher, plan, importance=importance, grad_fn=grad_fn)
    zero = held_out_kd(student, calib)
    if screen is not None:
        screen(zero)
    if steps <= 0:
        return ProxyScore(zero, zero, 0)
    torch.manual_seed(seed)
    _train_steps(student, calib, feature_map(layout, topo, calib.level), steps, lr, batch, seed, schedule)
    return ProxyScore(zero, held_out_kd(student, calib), steps)


def _skip_block(_module: nn.Module, args: tuple, _output: torch.Tensor) -> torch.Tensor:
    return args[0]  # a transformer layer is residual: skipping it is exactly removing it


@torch.no_grad()
def unit_sensitivity(
    teacher: UNet2DConditionModel, topo: Topology, calib: Calibration, names: Sequence[str]
) -> dict[str, float]:
    """Zero-shot KD loss of the teacher with each unit alone removed (LAPTOP-Diff's additive criterion).

    Transformer layers are skipped in place (exact, and free of the mid-depth coupling); other units are
    built as students. A unit that cannot be removed alone gets +inf.
    """
    modules = dict(teacher.named_modules())
    scores: dict[str, float] = {}
    for name in names:
        if ".transformer_blocks." in name:
            handle = modules[name].register_forward_hook(_skip_block)
            try:
                scores[name] = held_out_kd(teacher, calib)
            finally:
                handle.remove()
            continue
        try:
            student, _ = build_student(teacher, Plan(frozenset({name})))
        except Exception:
            scores[name] = float("inf")
            continue
        scores[name] = held_out_kd(student, calib)
    return scores
