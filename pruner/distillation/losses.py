"""The distillation loss: task loss + output KD + layer-level feature KD, each named and weighted.

Feature terms compare (student module, teacher module) outputs from the plan's feature map; they are
summed over pairs (as BK-SDM and SSD-1B do) and, optionally, each divided by the mean square of the
teacher feature (as LAPTOP-Diff does), since raw feature terms are orders of magnitude larger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

__all__ = ["LossTerms", "LossWeights", "distill_loss", "feature_kd", "min_snr_weights", "task_target"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms (published default 1 / 0.5 / 0.5) and feature normalisation."""

    task: float = 1.0
    output_kd: float = 0.5
    feature_kd: float = 0.5
    normalize_features: bool = False
    min_snr_gamma: float | None = None


@dataclass(frozen=True)
class LossTerms:
    """The total and each term, detached copies kept for logging."""

    total: torch.Tensor
    task: torch.Tensor
    output_kd: torch.Tensor
    feature_kd: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "task", "output_kd", "feature_kd")}


def task_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict for the scheduler's prediction type (epsilon or v)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction type {kind!r} is not supported; use epsilon or v_prediction")


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights per sample (Hang et al. 2023)."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a.float(), b.float(), reduction="none").flatten(1).mean(1)


def feature_kd(
    student: Mapping[str, torch.Tensor],
    teacher: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    normalize: bool,
) -> torch.Tensor:
    """Sum over pairs of the MSE between student and teacher features (optionally normalised)."""
    total = torch.zeros((), device=next(iter(teacher.values())).device) if teacher else torch.zeros(())
    for s_name, t_name in pairs:
        t = teacher[t_name]
        term = (student[s_name] - t).float().pow(2).mean()  # one fp32 copy, of the difference only
        if normalize:
            term = term / t.float().pow(2).mean().clamp_min(1e-8)
        total = total + term
    return total


def distill_loss(
    student_pred: torch.Tensor,
    teacher_pred: torch.Tensor,
    target: torch.Tensor,
    features: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], Sequence[tuple[str, str]]],
    weights: LossWeights,
    sample_weights: torch.Tensor | None = None,
) -> LossTerms:
    """Combine the terms; ``sample_weights`` (Min-SNR) scales the task term per sample."""
    task = _per_sample_mse(student_pred, target)
    task = (task * sample_weights).mean() if sample_weights is not None else task.mean()
    output = F.mse_loss(student_pred.float(), teacher_pred.float())
    feat = (
        feature_kd(features[0], features[1], features[2], weights.normalize_features)
        if weights.feature_kd
        else task * 0
    )
    total = weights.task * task + weights.output_kd * output + weights.feature_kd * feat
    return LossTerms(total, task.detach(), output.detach(), feat.detach())
