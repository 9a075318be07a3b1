"""Training data a user need not bring: a synthesised, cached training set for the bundled teacher."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pruner.io import cache_dir, output_lock

if TYPE_CHECKING:
    from pruner.teacher import Teacher

__all__ = [
    "BUNDLED_DATA",
    "BUNDLED_ROWS",
    "BUNDLED_SEED",
    "bundled_cache_path",
    "bundled_captions",
    "data_reference",
    "default_data",
    "tiny_sdxl_cache",
]

BUNDLED_DATA = "bundled:tiny-sdxl"  # how a recipe names the bundled teacher's synthesised set
# The bundled set (distillation data and search calibration rows): its size and seed live here alone.
BUNDLED_ROWS = 4096
BUNDLED_SEED = 0
BUILD_WAIT_S = 3600.0  # how long a process waits for another that builds the set (about a minute on 2 cores)


def default_data(teacher: Teacher, progress: bool = True) -> Path | None:
    """The latent cache of the teacher's own data set (built on first use), if its profile has one."""
    return tiny_sdxl_cache(teacher, progress=progress) if teacher.profile.bundled_data else None


def tiny_sdxl_cache(teacher: Teacher, n: int = BUNDLED_ROWS, seed: int = BUNDLED_SEED, progress: bool = True) -> Path:
    """Captioned shape pictures for ``tiny-sdxl``, encoded by ``teacher`` (the bundled one) into a latent
    cache once (resumed if interrupted)."""
    from pruner.data.cache import build_cache
    from pruner.tiny.synth import write_dataset

    cache = bundled_cache_path(n, seed)
    root, images = cache.parent, cache.parent / "images"
    # workers started together on the bundled teacher: one builds the set, the others wait, then read it
    with output_lock(root, "the bundled teacher's data set", wait=BUILD_WAIT_S):
        if not (images / "metadata.jsonl").is_file():
            write_dataset(images, n, seed, progress=progress)
        if not (cache / "cache.json").is_file() or _incomplete(cache):
            build_cache(images, teacher, cache, progress=progress)
    return cache


def bundled_cache_path(n: int = BUNDLED_ROWS, seed: int = BUNDLED_SEED) -> Path:
    """Where ``tiny_sdxl_cache`` keeps the set (whether built yet or not)."""
    return cache_dir() / "data" / f"tiny-sdxl-n{n}-seed{seed}-{_fingerprint()}" / "cache"


@functools.cache
def bundled_captions() -> frozenset[str]:
    """Every caption of the bundled set (``tiny_sdxl_cache()``'s rows), without building it: the built-in
    evaluation prompts skip these, so they are held out from distillation, caching and calibration alike.
    Computed once a process (a second or so)."""
    from pruner.tiny.synth import caption, sample_scenes

    return frozenset(caption(s) for s in sample_scenes(BUNDLED_ROWS, BUNDLED_SEED, stream="dataset"))


def _fingerprint() -> str:
    """Which teacher and which renderer made the set: a retrained teacher or new shapes never reuse a stale cache."""
    from pruner.tiny import synth
    from pruner.unet.load import bundled_teacher

    teacher = bundled_teacher()
    h = hashlib.sha256((teacher / "training.json").read_bytes() if teacher else b"no teacher")
    h.update(repr((synth.HALF_EXTENT, synth.SIZE_JITTER, synth.MARGIN, synth.MIN_GAP, synth.COLOUR_RGB)).encode())
    return h.hexdigest()[:10]


def _incomplete(cache: Path) -> bool:
    """An interrupted `build_cache` leaves ``complete: false`` in cache.json; re-running it resumes."""
    return not json.loads((cache / "cache.json").read_text()).get("complete", False)


def data_reference(path: str | None) -> str | None:
    """How a recipe records its training data: ``bundled:tiny-sdxl`` for the bundled teacher's synthesised
    cache (its folder differs per machine and is rebuilt on demand), otherwise the path as given."""
    if path is None:
        return path
    bundled = (cache_dir() / "data").resolve()
    resolved = Path(path).resolve()
    if resolved.is_relative_to(bundled) and resolved.relative_to(bundled).parts[0].startswith("tiny-sdxl-"):
        return BUNDLED_DATA
    return path
