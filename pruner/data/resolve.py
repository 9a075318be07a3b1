"""``resolve_data``: which rows the search calibrates on and the distiller trains on, decided in one place."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruner.data.bundled import BUNDLED_DATA, default_data
from pruner.data.cache import LatentCache
from pruner.errors import PrunerError

if TYPE_CHECKING:
    from pruner.teacher import Teacher

__all__ = ["resolve_data"]

_NO_DATA = "pass --data CACHE (made with `pruner cache DATA --teacher T --out CACHE`)"


def resolve_data(
    teacher: Teacher,
    data: str | None = None,
    *,
    recorded: str | None = None,
    prompts: str | None = None,
    rows: int = 0,
    seed: int = 0,
    progress: bool = True,
    offer_prompts: bool = False,
) -> tuple[Any, str | None]:
    """The rows to use and the cache folder they come from (None for generated rows), in this order:

    ``data`` (a cache folder given now); ``recorded`` (the cache a recipe names: ``bundled:tiny-sdxl`` or a
    path; a path missing on this machine falls back to the bundled set when the teacher has one);
    ``prompts`` (a prompts file: the teacher generates ``rows`` latents from ``seed``, when the caller
    accepts prompts); else the teacher's bundled set (built on first use). Nothing left: a PrunerError
    naming the options (``--prompts`` too when ``offer_prompts``).
    """
    source = data or (None if recorded == BUNDLED_DATA else recorded)
    if data is None and source is not None and not Path(source).exists() and teacher.profile.bundled_data:
        source = None  # a recipe found on another machine: synthesise the teacher's own data here
    if source is not None:
        return LatentCache(source), source
    if prompts:
        from pruner.data.prompts import prompt_latents

        return prompt_latents(teacher, Path(prompts), rows, seed), None
    if (bundled := default_data(teacher, progress=progress)) is not None:
        return LatentCache(bundled), str(bundled)
    hint = " or --prompts FILE (one prompt a line)" if offer_prompts else ""
    raise PrunerError(f"no data for teacher {teacher.reference}: {_NO_DATA}{hint}")
