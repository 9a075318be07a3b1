"""Distillation: the latent/text-conditioning cache (``pruner cache``), and the trainer that reads it."""

from __future__ import annotations

from pruner.callable_module import make_callable
from pruner.distill.cache import CacheSummary, LatentCache, build_cache

__all__ = ["CacheSummary", "LatentCache", "build_cache"]

make_callable(__name__)  # `pruner.distill(...)` calls pruner.api.distill
