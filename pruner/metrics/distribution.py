"""FID and KID of two picture sets, by torchmetrics, on the features :mod:`pruner.metrics.features` chooses.

FID is the Fréchet distance between Gaussians fitted to the two sets' features (0 for one set against
itself); KID the unbiased squared MMD under a cubic polynomial kernel, averaged over random subsets (its
mean and standard deviation; near 0, and unbiased, on small sets, where FID is biased upwards).

Both are fed batch by batch (torchmetrics' ``update``), as pictures are generated or read: only their features
are kept (KID keeps every feature, 30,000 x 2048 floats are 0.25 GB; FID their running sums), never the pictures.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterable
from typing import Any
from urllib.error import URLError

import torch
from torch import nn

from pruner.errors import PrunerError
from pruner.metrics.features import missing_inception

__all__ = ["Distances", "Pictures", "fid", "kid"]

Pictures = torch.Tensor | Iterable[torch.Tensor]  # uint8 pictures (N, 3, H, W), or an iterable of such batches
KID_SUBSET = 1000  # the largest KID subset: torchmetrics' and torch-fidelity's size


def _metric(factory: Callable[..., Any], feature: int | nn.Module, **kwargs: Any) -> Any:
    """A torchmetrics metric on ``feature``; Inception weights that cannot be fetched are one line."""
    try:
        return factory(feature=feature, **kwargs)
    except (URLError, OSError, RuntimeError) as exc:
        if isinstance(feature, int):
            raise missing_inception() from exc
        raise


class Distances:
    """FID and/or KID (``metrics``) of generated pictures to a reference set, each set fed in batches by
    ``add(pictures, real=...)``; ``result()`` computes them once every batch is in."""

    def __init__(self, metrics: Collection[str], feature: int | nn.Module, subsets: int = 100) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.fid = _metric(FrechetInceptionDistance, feature) if "fid" in metrics else None
        self.kid = None
        if "kid" in metrics:
            with warnings.catch_warnings():  # that it keeps every feature: said in the module docstring
                warnings.filterwarnings("ignore", message=".*will save all extracted features")
                self.kid = _metric(KernelInceptionDistance, feature, subsets=subsets)  # subset size set at the end
        self.counts = {True: 0, False: 0}  # pictures fed: real (the reference), generated

    @torch.no_grad()
    def add(self, pictures: torch.Tensor, real: bool) -> None:
        """One batch of uint8 pictures (N, 3, H, W) of the reference (``real``) or the generated set."""
        for metric in (self.fid, self.kid):
            if metric is not None:
                metric.update(pictures, real=real)
        self.counts[real] += len(pictures)

    def result(self, prefix: str = "") -> dict[str, float]:
        """``fid``, ``kid`` and ``kid_std`` (those asked), keys prefixed by ``prefix``. KID's subsets are half
        the smaller set, at most ``KID_SUBSET``: subsets of a whole set would all be that set, and their spread
        say nothing."""
        fewest = min(self.counts.values())
        out: dict[str, float] = {}
        if self.fid is not None:
            self._check("FID", 2)
            out[prefix + "fid"] = max(0.0, float(self.fid.compute()))  # a set against itself may round below 0
        if self.kid is not None:
            self._check("KID", 4)
            self.kid.subset_size = min(fewest // 2, KID_SUBSET)
            with torch.random.fork_rng():  # its subsets are drawn from torch's generator: seeded, the caller's kept
                torch.manual_seed(0)
                mean, std = self.kid.compute()
            out[prefix + "kid"], out[prefix + "kid_std"] = float(mean), float(std)
        return out

    def _check(self, name: str, least: int) -> None:
        if min(self.counts.values()) < least:
            raise PrunerError(
                f"{name} needs at least {least} pictures in each set, got {self.counts[True]} reference and "
                f"{self.counts[False]} generated; raise n_prompts= or give a larger reference="
            )


def _fed(distances: Distances, real: Pictures, fake: Pictures, batch: int = 64) -> Distances:
    """``distances`` fed both sets: a tensor in batches of ``batch``, or an iterable of batches as it comes."""
    for pictures, is_real in ((real, True), (fake, False)):
        for chunk in pictures.split(batch) if isinstance(pictures, torch.Tensor) else pictures:
            distances.add(chunk, real=is_real)
    return distances


def fid(real: Pictures, fake: Pictures, feature: int | nn.Module) -> float:
    """Fréchet distance of ``fake`` to ``real``: uint8 pictures (N, 3, H, W), or iterables of such batches (a
    large reference set read as it goes); at least 2 pictures each."""
    return _fed(Distances(("fid",), feature), real, fake).result()["fid"]


def kid(real: Pictures, fake: Pictures, feature: int | nn.Module, subsets: int = 100) -> tuple[float, float]:
    """Kernel Inception distance of ``fake`` to ``real`` (as ``fid`` takes them): its mean and standard
    deviation over ``subsets`` random subsets; at least 4 pictures each."""
    out = _fed(Distances(("kid",), feature, subsets=subsets), real, fake).result()
    return out["kid"], out["kid_std"]
