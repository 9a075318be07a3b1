"""Distillation: the latent/text-conditioning cache (``pruner cache``), and the trainer that reads it.

The verb is :func:`pruner.distill`; this package is what it runs.
"""

from __future__ import annotations

from pruner.distillation.cache import CacheSummary, LatentCache, build_cache

__all__ = ["CacheSummary", "LatentCache", "build_cache"]
