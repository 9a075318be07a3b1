"""Training data a user need not bring: a synthesised, cached training set for the bundled teacher."""

from __future__ import annotations

import json
from pathlib import Path

from pruner.cost.cache import cache_dir

__all__ = ["tiny_sdxl_cache"]


def tiny_sdxl_cache(n: int = 4096, seed: int = 0, progress: bool = True) -> Path:
    """Captioned shape pictures for ``tiny-sdxl``, encoded into a latent cache once (resumed if interrupted)."""
    from pruner.distill.cache import build_cache
    from pruner.tiny.synth import write_dataset

    root = cache_dir() / "data" / f"tiny-sdxl-n{n}-seed{seed}"
    images, cache = root / "images", root / "cache"
    if not (images / "metadata.jsonl").is_file():
        write_dataset(images, n, seed, progress=progress)
    if not (cache / "cache.json").is_file() or _incomplete(cache):
        build_cache(images, "tiny-sdxl", cache, progress=progress)
    return cache


def _incomplete(cache: Path) -> bool:
    """An interrupted `build_cache` leaves ``complete: false`` in cache.json; re-running it resumes."""
    return not json.loads((cache / "cache.json").read_text()).get("complete", False)
