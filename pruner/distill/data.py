"""Training data a user need not bring: a synthesised, cached training set for the bundled teacher."""

from __future__ import annotations

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
    if not (cache / "cache.json").is_file() or _incomplete(cache, n):
        build_cache(images, "tiny-sdxl", cache, progress=progress)
    return cache


def _incomplete(cache: Path, n: int) -> bool:
    import json

    meta = json.loads((cache / "cache.json").read_text())
    return (
        int(meta.get("n", 0))
        + int(sum(meta.get("skipped", {}).values()) if isinstance(meta.get("skipped"), dict) else 0)
        < n
    )
