"""Distillation: the trainer that reads a latent cache (made by ``pruner cache``, see :mod:`pruner.data`).

The verb is :func:`pruner.distill`; this package is what it runs.
"""

from __future__ import annotations
