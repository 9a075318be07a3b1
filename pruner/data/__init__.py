"""The data room: where training and calibration rows come from, and the latent cache they become.

* :mod:`pruner.data.cache`: ``build_cache`` (``pruner cache``) writes shards of VAE latents and text
  conditioning; ``LatentCache`` reads them back.
* :mod:`pruner.data.bundled`: the bundled teacher's own synthesised set, built on first use.
* :mod:`pruner.data.prompts`: latents the teacher generates for a prompts file (calibration without data).
* :mod:`pruner.data.resolve`: ``resolve_data``, the one place the search and the distiller pick their rows.
"""

from __future__ import annotations

from pruner.data.cache import CacheSummary, LatentCache, build_cache
from pruner.data.resolve import resolve_data

__all__ = ["CacheSummary", "LatentCache", "build_cache", "resolve_data"]
