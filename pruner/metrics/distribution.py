"""FID and KID of two picture sets, by torchmetrics, on the features :mod:`pruner.metrics.features` chooses.

FID is the Fréchet distance between Gaussians fitted to the two sets' features (0 for one set against
itself); KID the unbiased squared MMD under a cubic polynomial kernel, averaged over random subsets (its
mean and standard deviation; near 0, and unbiased, on small sets, where FID is biased upwards).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sized
from typing import Any
from urllib.error import URLError

import torch
from torch import nn

from pruner.errors import PrunerError
from pruner.metrics.features import missing_inception

__all__ = ["Pictures", "fid", "kid"]

Pictures = torch.Tensor | Iterable[torch.Tensor]  # a sized iterable of uint8 batches counts its pictures by len


def _metric(factory: Callable[..., Any], feature: int | nn.Module, **kwargs: Any) -> Any:
    """A torchmetrics metric on ``feature``; Inception weights that cannot be fetched are one line."""
    try:
        return factory(feature=feature, **kwargs)
    except (URLError, OSError, RuntimeError) as exc:
        if isinstance(feature, int):
            raise missing_inception() from exc
        raise


def _fill(metric: Any, real: Pictures, fake: Pictures, batch: int = 64) -> Any:
    """The metric fed both sets: a tensor in batches of ``batch``, or an iterable of batches as it comes."""
    for pictures, is_real in ((real, True), (fake, False)):
        for chunk in pictures.split(batch) if isinstance(pictures, torch.Tensor) else pictures:
            metric.update(chunk, real=is_real)
    return metric


def _count(pictures: Pictures) -> int:
    return len(pictures) if isinstance(pictures, torch.Tensor | Sized) else 0


@torch.no_grad()
def fid(real: Pictures, fake: Pictures, feature: int | nn.Module) -> float:
    """Fréchet distance of ``fake`` to ``real``: uint8 pictures (N, 3, H, W), or sized iterables of such
    batches (a large reference set read as it goes); at least 2 pictures each."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if min(_count(real), _count(fake)) < 2:
        raise PrunerError("FID needs at least 2 pictures in each set; raise n_prompts=")
    metric = _metric(FrechetInceptionDistance, feature)
    return max(0.0, float(_fill(metric, real, fake).compute()))  # a set against itself may round below 0


@torch.no_grad()
def kid(real: Pictures, fake: Pictures, feature: int | nn.Module, subsets: int = 100) -> tuple[float, float]:
    """Kernel Inception distance of ``fake`` to ``real`` (as ``fid`` takes them): its mean and standard
    deviation over ``subsets`` random subsets of half the smaller set, at most 1000 (torchmetrics' and
    torch-fidelity's size): subsets of a whole set would all be that set, and their spread say nothing."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(min(_count(real), _count(fake)) // 2, 1000)
    if size < 2:
        raise PrunerError("KID needs at least 4 pictures in each set; raise n_prompts=")
    with warnings.catch_warnings():  # that it keeps every feature: 30,000 x 2048 floats are 0.25 GB
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        metric = _metric(KernelInceptionDistance, feature, subsets=subsets, subset_size=size)
    with torch.random.fork_rng():  # its subsets are drawn from torch's generator: seeded, the caller's kept
        torch.manual_seed(0)
        mean, std = _fill(metric, real, fake).compute()
    return float(mean), float(std)
