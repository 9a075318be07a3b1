"""Where data is decided: ``open_source`` turns what a user names into a source for ``pruner cache``;
``open_pictures`` does the same for a FID/KID reference set (pictures alone); ``resolve_data`` picks the rows
the search calibrates on and the distiller trains on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruner.data.bundled import BUNDLED_DATA, bundled_cache_path, default_data
from pruner.data.cache import LatentCache
from pruner.data.sources import Source
from pruner.data.sources.folder import METADATA_FILE, ImageFolder, PictureFiles
from pruner.data.sources.hf import HFColumns, HFDataset, is_saved_dataset, load_hf
from pruner.data.sources.webdataset import WebDataset, looks_like_shards
from pruner.errors import PrunerError

if TYPE_CHECKING:
    from pruner.teacher import Teacher

__all__ = ["open_pictures", "open_source", "resolve_data"]

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
    if source is not None and teacher.profile.bundled_data and _is_bundled_set(source):
        source = None  # the bundled set named by its folder: read once built, under its lock (another process
        # may be building it right now)
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


def open_source(
    data: str | Path | Source, *, columns: HFColumns = HFColumns(), split: str | None = None,
    revision: str | None = None, config: str | None = None, streaming: bool = False, max_rows: int | None = None,
) -> Source:  # fmt: skip
    """The source ``data`` names: a Source as it is; tar shards (a glob or brace pattern); an image folder
    with metadata.jsonl; else a ``datasets`` set (a save_to_disk folder, parquet/arrow files or a Hub id)."""
    if isinstance(data, Source):
        return data
    text = str(data)
    path = Path(text).expanduser()
    if looks_like_shards(text):
        key = columns.caption if columns.caption not in ("text", None) else "caption"
        return WebDataset(text, caption_key=key, caption_seed=columns.caption_seed)
    if (path / METADATA_FILE).is_file() or (path.is_dir() and not _holds_dataset(path)) or _local_and_absent(text):
        return ImageFolder(path)
    loaded = load_hf(text, split=split, revision=revision, config=config, streaming=streaming)
    where = text if split is None else f"{text} (split {split})"
    return HFDataset(loaded, where, columns, max_rows=max_rows)


def open_pictures(
    data: str | Path, *, split: str | None = None, image_column: str = "image", max_rows: int | None = None
) -> Source:
    """The pictures ``data`` names, captions not needed (a FID/KID reference set), read by the same sources as
    ``pruner cache``: a folder of pictures with or without metadata.jsonl, tar shards, or a ``datasets`` set
    (its ``split``, capped at ``max_rows``); a local path that is not there is one line."""
    text = str(data)
    path = Path(text).expanduser()
    if not looks_like_shards(text) and _local_and_absent(text):
        raise PrunerError(f"reference= {text} does not exist; give a folder of pictures, a save_to_disk folder, "
                          "parquet files, tar shards or a Hub dataset id")  # fmt: skip
    if path.is_dir() and not (path / METADATA_FILE).is_file() and not _holds_dataset(path):
        return PictureFiles(path)
    columns = HFColumns(image=image_column, caption=None)
    return open_source(text, columns=columns, split=split, max_rows=max_rows)


def _holds_dataset(path: Path) -> bool:
    """A folder of a ``datasets`` set: written by save_to_disk, or holding parquet/arrow files."""
    return is_saved_dataset(path) or any(path.glob("*.parquet")) or any(path.glob("*.arrow"))


def _local_and_absent(text: str) -> bool:
    """A path that names a local folder (absolute, ``./``, ``~`` or deeper than a Hub id's owner/name) that is
    not there: reported as a missing folder, not sent to the Hub."""
    path = Path(text).expanduser()
    local = text.startswith((".", "~", "/")) or text.count("/") > 1
    return local and not path.exists() and not any(ch in text for ch in "*?[")


def _is_bundled_set(path: str) -> bool:
    """Whether ``path`` is the folder of the bundled teacher's own set (``default_data``'s)."""
    return Path(path).resolve() == bundled_cache_path().resolve()
