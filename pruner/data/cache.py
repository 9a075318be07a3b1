"""Turn a captioned image folder into shards of VAE latents and text conditioning (``pruner cache``).

Why: the teacher's VAE and text encoders are frozen during distillation, so their outputs can be computed
once and read back every epoch instead of being recomputed on every step.

Input: an image folder with ``metadata.jsonl`` (one JSON object per line with ``file_name`` and ``text``,
the layout of diffusers' imagefolder). Output, a folder of::

    cache.json                  what was cached, from which data and teacher; the shard list
    shard-00000.safetensors     stacked rows: latents, prompt_embeds, [pooled_prompt_embeds, time_ids], index

``latents`` are already multiplied by the VAE's ``scaling_factor``; ``index`` holds each row's number in
metadata.jsonl (its position among the non-blank lines). Every file is written under a temporary name and
renamed into place, and ``cache.json`` is rewritten after each shard, so an interrupted run leaves a valid
prefix that a re-run of the same command resumes from. Unusable rows are skipped and counted by reason.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from pruner import __version__
from pruner.data.sources import Picture, Source, SourceRow
from pruner.data.sources.folder import ImageFolder, read_metadata
from pruner.diffusion import default_resolution
from pruner.errors import PrunerError
from pruner.io import atomic_path, check_output_dir, output_lock, write_json
from pruner.teacher import Teacher

__all__ = [
    "CACHE_FILE",
    "SCHEMA_VERSION",
    "CacheSummary",
    "LatentCache",
    "build_cache",
    "check_resolution",
    "load_image",
]

SCHEMA_VERSION = 1
CACHE_FILE = "cache.json"
_TMP = ".tmp"  # suffix of files being written; any left over belongs to an interrupted run
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MAX_PIXELS = 1 << 26  # 67 M pixels (8192x8192): larger pictures are skipped as too_large, never decoded
# Fields that must match between a cache folder and a re-run that resumes it: (cache.json key, what to call it).
_IDENTITY = {
    "data": "data folder",
    "metadata_sha256": "metadata",
    "teacher_id": "teacher",
    "resolution": "resolution",
    "dtype": "dtype",
}
Kind = Literal["sdxl", "sd"]
TimeIds = tuple[int, int, int, int, int, int]


@dataclass
class CacheSummary:
    """What ``build_cache`` left in ``out``: counts over the whole cache, not only this call's share.

    ``n_written`` rows are in ``shards`` shard files, ``n_skipped`` rows of metadata.jsonl's ``n_total`` were
    unusable (``skipped_reasons`` says why); ``resumed`` is true when existing shards were kept, and
    ``n_encoded`` counts the rows this call encoded itself.
    """

    n_written: int
    n_skipped: int
    n_total: int
    shards: int
    out: Path
    resumed: bool
    kind: Kind
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    n_encoded: int = 0


@dataclass(frozen=True)
class _Item:
    """A row whose image loaded: pixels in [-1, 1], (C, H, W), and SDXL's size conditioning."""

    index: int
    text: str
    pixels: torch.Tensor
    time_ids: TimeIds


# --------------------------------------------------------------------------- reading pictures


class ImageTooLarge(ValueError):
    """A picture with more pixels than ``MAX_PIXELS``: skipped (reason ``too_large``) before it is decoded."""


def _upright_size(opened: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF rotation, read from the header without decoding."""
    width, height = opened.size
    return (height, width) if opened.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)


@contextmanager
def _opened(picture: Picture | str) -> Iterator[Image.Image]:
    """The picture as an open PIL image: a file or bytes is opened lazily (its size read from the header)."""
    if isinstance(picture, Image.Image):
        yield picture
        return
    with Image.open(io.BytesIO(picture) if isinstance(picture, bytes) else picture) as opened:
        yield opened


def load_image(path: Picture | str, resolution: int) -> tuple[torch.Tensor, TimeIds]:
    """RGB pixels in [-1, 1], shape (3, resolution, resolution), and SDXL's time ids for them.

    The shorter side is resized to ``resolution`` (bicubic) and the picture center-cropped, as SDXL's
    training script does; time ids are (original height, original width, crop top, crop left, resolution,
    resolution), the original size taken after EXIF rotation and before resizing. Memory stays bounded by
    the source picture: only the crop's region is resampled (never the whole resized picture, which for a
    400000x1 strip would be gigabytes), JPEGs decode at the smallest scale that still covers the target,
    and pictures over ``MAX_PIXELS`` raise ``ImageTooLarge`` before decoding.
    """
    with _opened(path) as opened:
        width, height = _upright_size(opened)
        if width * height > MAX_PIXELS:
            raise ImageTooLarge(f"{width}x{height} pixels, over the limit of {MAX_PIXELS}")
        scale = resolution / min(height, width)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        opened.draft("RGB", (size[0], size[1]) if (width, height) == opened.size else (size[1], size[0]))
        image = ImageOps.exif_transpose(opened).convert("RGB")
    top, left = round((size[1] - resolution) / 2), round((size[0] - resolution) / 2)
    if size == (image.width, image.height):
        image = image.crop((left, top, left + resolution, top + resolution))
    else:
        sx, sy = image.width / size[0], image.height / size[1]  # 1 / scale (the draft may have halved the source)
        box = (left * sx, top * sy, (left + resolution) * sx, (top + resolution) * sy)
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    return pixels, (height, width, top, left, resolution, resolution)


class _RowReader:
    """Yields loadable rows in order, tallying the rest; ``consumed`` counts rows looked at so far.

    Why a class: a shard records how far the reader got and what it skipped up to there, which is what a
    resumed run restores.
    """

    def __init__(self, source: Source, start: int, skipped: dict[str, int], resolution: int) -> None:
        self.source, self.consumed, self.resolution, self.total = source, start, resolution, len(source)
        self.skipped: Counter[str] = Counter(skipped)

    def _load(self, row: SourceRow) -> _Item | str:
        """The row's item, or the reason it is skipped."""
        if row.skip is not None or row.picture is None:
            return row.skip or "missing"
        if row.caption is None:
            return "no_text"
        try:
            pixels, ids = load_image(row.picture, self.resolution)
        except ImageTooLarge:
            return "too_large"
        except _IMAGE_ERRORS:
            return "unreadable"
        if row.original_size is not None:
            ids = (*row.original_size, *ids[2:])
        return _Item(row.index, row.caption, pixels, ids)

    def __iter__(self) -> Iterator[_Item]:
        for row in self.source.rows(self.consumed, self.total):
            loaded = self._load(row)
            self.consumed += 1
            if isinstance(loaded, str):
                self.skipped[loaded] += 1
            else:
                yield loaded
        self.consumed = self.total  # a source that held fewer rows than it said is read to its end


# --------------------------------------------------------------------------- the teacher


def _pipeline_kind(pipe: Any, teacher: str) -> Kind:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd"
    raise PrunerError(
        f"teacher {teacher} is a {type(pipe).__name__}; caching needs a StableDiffusionXLPipeline or "
        "StableDiffusionPipeline"
    )


@torch.no_grad()
@contextmanager
def _captions_cut_quietly() -> Iterator[None]:
    """The pipeline cuts a caption longer than its text encoder reads (77 tokens for SDXL), as SDXL's training
    scripts do; but diffusers and transformers say so for every such caption, quoting it (a 10,000-character
    caption: about 20 KB of warnings a row). Their warnings are held back while captions are encoded."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def _encode_batch(pipe: Any, kind: Kind, items: list[_Item]) -> dict[str, torch.Tensor]:
    """One batch's cached tensors, computed exactly as the pipeline computes them, returned on the CPU."""
    device = pipe.vae.device
    pixels = torch.stack([item.pixels for item in items]).to(device=device, dtype=pipe.vae.dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    prompts = [item.text for item in items]
    with _captions_cut_quietly():
        text = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=False)  # fmt: skip
    batch = {"latents": latents, "prompt_embeds": text[0]}
    if kind == "sdxl":
        batch["pooled_prompt_embeds"] = text[2]
        batch["time_ids"] = torch.tensor([item.time_ids for item in items], dtype=torch.float32)
    batch["index"] = torch.tensor([item.index for item in items], dtype=torch.int64)
    return {name: tensor.detach().cpu() for name, tensor in batch.items()}


# --------------------------------------------------------------------------- cache.json and shards


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    write_json(out / CACHE_FILE, meta)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PrunerError(f"{path} is unreadable ({type(exc).__name__}); delete {path.parent} and rebuild") from exc
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        found = meta.get("schema_version") if isinstance(meta, dict) else None
        raise PrunerError(f"{path} has schema version {found!r}, this pruner reads {SCHEMA_VERSION}; rebuild it")
    return meta


def _shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def _write_shard(
    out: Path, number: int, parts: list[dict[str, torch.Tensor]], dtype: str, kind: Kind, captions: list[str]
) -> str:
    """Stack the batches of one shard and write them atomically; floats (except time ids) in ``dtype``. The
    rows' captions go in the header, so a cache knows its prompts whatever source it came from."""
    tensors = {name: torch.cat([part[name] for part in parts]).contiguous() for name in parts[0]}
    for name in ("latents", "prompt_embeds", "pooled_prompt_embeds"):
        if name in tensors:
            tensors[name] = tensors[name].to(_DTYPES[dtype])
    name = _shard_name(number)
    with atomic_path(out / name, needed=sum(t.nbytes for t in tensors.values())) as tmp:  # temp name ends in _TMP
        save_file(tensors, str(tmp), metadata={"schema_version": str(SCHEMA_VERSION), "kind": kind,
                                                "captions": json.dumps(captions)})  # fmt: skip
    return name


def _shard_rows(path: Path) -> int | None:
    """Rows in a shard file, read from its header; None when it is missing or damaged."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return int(handle.get_slice("index").get_shape()[0])
    except Exception:  # any unreadable file is simply re-encoded
        return None


def _intact_prefix(out: Path, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listed shards up to the first one that is missing or does not hold its recorded rows."""
    kept = []
    for record in shards:
        if _shard_rows(out / record["file"]) != record["n"]:
            break
        kept.append(record)
    return kept


def _remove_strays(out: Path, kept: list[dict[str, Any]]) -> None:
    """Delete leftover temporary files and shard files cache.json does not list (they would be rewritten)."""
    listed = {record["file"] for record in kept}
    for path in out.iterdir():
        stale_shard = path.name.startswith("shard-") and path.suffix == ".safetensors" and path.name not in listed
        if path.name.endswith(_TMP) or stale_shard:
            path.unlink()


# --------------------------------------------------------------------------- starting or resuming


def _existing_meta(out: Path) -> dict[str, Any] | None:
    """cache.json of ``out`` when it holds a cache; None when ``out`` is absent or empty."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise PrunerError(f"cache folder {out} is a file; give a folder")
    if (out / CACHE_FILE).is_file():
        return _read_meta(out / CACHE_FILE)
    if any(not path.name.endswith(_TMP) for path in out.iterdir()):
        raise PrunerError(f"{out} is not empty and holds no {CACHE_FILE}; give a new or empty folder for the cache")
    return None


def _check_same(meta: dict[str, Any], wanted: dict[str, Any], out: Path) -> None:
    """Raise when the cache in ``out`` was made from other inputs than this run's."""
    for key, what in _IDENTITY.items():
        if key not in wanted or meta.get(key) == wanted[key]:
            continue
        if key == "metadata_sha256":
            raise PrunerError(f"the data {wanted['data']} changed since the cache in {out} was made; "
                              f"delete {out} to rebuild it, or give another out folder")  # fmt: skip
        raise PrunerError(
            f"{out} holds a cache made with {what} {meta.get(key)}, not {wanted[key]}; "
            f"give another out folder or delete {out} to rebuild"
        )


def _fresh_meta(identity: dict[str, Any], teacher: str, kind: Kind, pipe: Any, n_rows: int) -> dict[str, Any]:
    factor = int(pipe.vae_scale_factor)
    side = identity["resolution"] // factor
    keys = ["latents", "prompt_embeds", *(["pooled_prompt_embeds", "time_ids"] if kind == "sdxl" else []), "index"]
    return {"schema_version": SCHEMA_VERSION, "format": "pruner-latent-cache", "pruner_version": __version__,
            "teacher": teacher, "kind": kind, **identity, "n_rows": n_rows,
            "latent_shape": [int(pipe.vae.config.latent_channels), side, side],
            "scaling_factor": float(pipe.vae.config.scaling_factor), "keys": keys,
            "n": 0, "next_row": 0, "complete": False, "skipped": {}, "n_skipped": 0, "shards": []}  # fmt: skip


def _resumable(meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """``meta`` cut back to the shards still intact on disk, with the progress recorded at the last of them."""
    kept = _intact_prefix(out, meta["shards"])
    _remove_strays(out, kept)
    if len(kept) == len(meta["shards"]) and meta["complete"]:
        return meta
    last: dict[str, Any] = kept[-1] if kept else {"end_row": 0, "skipped": {}}
    skipped: dict[str, int] = dict(last["skipped"])
    return {**meta, "shards": kept, "n": sum(record["n"] for record in kept), "next_row": last["end_row"],
            "skipped": skipped, "n_skipped": sum(skipped.values()), "complete": False}  # fmt: skip


def _start_or_resume(
    out: Path, existing: dict[str, Any] | None, identity: dict[str, Any], fresh: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The cache.json to continue from: the existing one cut back to its intact shards, or ``fresh()``."""
    if existing is not None:
        _check_same(existing, identity, out)
        return _resumable(existing, out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_strays(out, [])
    return fresh()


def check_resolution(resolution: int, pipe: Any) -> None:
    """A picture side the pipeline's VAE can encode: a positive multiple of its scale factor."""
    factor = int(pipe.vae_scale_factor)
    if resolution < factor or resolution % factor:
        raise PrunerError(f"resolution {resolution} must be a positive multiple of the VAE's factor {factor}")


# --------------------------------------------------------------------------- the run


def _batched(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _record_progress(meta: dict[str, Any], reader: _RowReader) -> None:
    meta["next_row"] = reader.consumed
    meta["skipped"] = dict(sorted(reader.skipped.items()))
    meta["n_skipped"] = sum(reader.skipped.values())
    meta["complete"] = reader.consumed == reader.total


def _encode_shards(
    pipe: Any, meta: dict[str, Any], reader: _RowReader, out: Path, batch_size: int, shard_size: int, bar: tqdm
) -> int:
    """Encode the reader's rows shard by shard, recording each shard in cache.json once it is on disk."""
    items = iter(reader)
    encoded = 0
    while True:
        parts, captions = [], []
        for batch in _batched(itertools.islice(items, shard_size), batch_size):
            parts.append(_encode_batch(pipe, meta["kind"], batch))
            captions += [item.text for item in batch]
            bar.update(reader.consumed - bar.n)
            bar.set_postfix(skipped=sum(reader.skipped.values()), refresh=False)
        if not parts:
            break
        name = _write_shard(out, len(meta["shards"]), parts, meta["dtype"], meta["kind"], captions)
        rows = sum(len(part["index"]) for part in parts)
        _record_progress(meta, reader)
        meta["shards"].append({"file": name, "n": rows, "end_row": reader.consumed, "skipped": meta["skipped"]})
        meta["n"] += rows
        encoded += rows
        _write_meta(out, meta)
    _record_progress(meta, reader)
    _write_meta(out, meta)
    bar.update(reader.consumed - bar.n)
    return encoded


def _check_arguments(batch_size: int, shard_size: int, dtype: str) -> None:
    if batch_size < 1 or shard_size < 1:
        raise PrunerError(f"batch_size and shard_size must be at least 1, got {batch_size} and {shard_size}")
    if dtype not in _DTYPES:
        raise PrunerError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")


def build_cache(
    data: str | Path | Source,
    teacher: Teacher,
    out: str | Path,
    *,
    resolution: int | None = None,
    batch_size: int = 16,
    shard_size: int = 1024,
    progress: bool = True,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
) -> CacheSummary:
    """Encode every usable row of ``data`` with ``teacher``'s VAE and text encoder(s) into shards in ``out``.

    ``resolution`` defaults to the pipeline's default image size. Re-running the same call on the same
    ``out`` resumes after the last complete shard; a cache of other data, teacher, resolution or dtype is
    refused with a PrunerError. ``dtype`` is how floats are stored; the encoders always run in float32.
    """
    _check_arguments(batch_size, shard_size, dtype)
    out_dir = check_output_dir(Path(out).expanduser(), "cache folder")
    source = data if isinstance(data, Source) else ImageFolder(data)
    with output_lock(out_dir, "cache folder"):
        identity: dict[str, Any] = {"data": source.description, "metadata_sha256": source.fingerprint,
                                    "teacher_id": teacher.identity, "dtype": dtype}  # fmt: skip
        existing = _existing_meta(out_dir)
        if existing is not None:
            _check_same(existing, identity, out_dir)
        pipe = teacher.pipeline(dtype=torch.float32, device=device, with_unet=False)
        kind = _pipeline_kind(pipe, teacher.reference)
        # the UNet's config (the pipeline is loaded without it) at the VAE's scale
        identity["resolution"] = resolution or default_resolution(teacher.config, int(pipe.vae_scale_factor))
        check_resolution(identity["resolution"], pipe)
        meta = _start_or_resume(
            out_dir, existing, identity, lambda: _fresh_meta(identity, teacher.reference, kind, pipe, len(source))
        )
        resumed = existing is not None and meta["next_row"] > 0
        reader = _RowReader(source, meta["next_row"], meta["skipped"], identity["resolution"])
        with tqdm(total=reader.total, initial=reader.consumed, desc="cache", unit="img", disable=not progress) as bar:
            encoded = _encode_shards(pipe, meta, reader, out_dir, batch_size, shard_size, bar)
        return CacheSummary(n_written=meta["n"], n_skipped=meta["n_skipped"], n_total=reader.total,
                            shards=len(meta["shards"]), out=out_dir, resumed=resumed, kind=kind,
                            skipped_reasons=dict(meta["skipped"]), n_encoded=encoded)  # fmt: skip


# --------------------------------------------------------------------------- reading a cache


class LatentCache(torch.utils.data.Dataset):
    """A cache folder as a map-style dataset; shards are memory-mapped with ``safetensors.safe_open``.

    Items are dicts of ``latents`` (C, h, w; already scaled), ``prompt_embeds`` (L, D) and, for SDXL,
    ``pooled_prompt_embeds`` (P,) and ``time_ids`` (6,), in the stored dtype. Shard handles are opened
    lazily in each process, so the dataset pickles into DataLoader workers.
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / CACHE_FILE).is_file():
            raise PrunerError(f"{self.path} is not a cache made by `pruner cache` (no {CACHE_FILE})")
        self.meta: dict[str, Any] = _read_meta(self.path / CACHE_FILE)
        if not self.meta["complete"] and not allow_incomplete:
            raise PrunerError(
                f"cache {self.path} is incomplete ({self.meta['next_row']} of {self.meta['n_rows']} rows read); "
                "re-run `pruner cache` with the same arguments to finish it"
            )
        self.keys = tuple(key for key in self.meta["keys"] if key != "index")
        self._files = [Path(self.path) / record["file"] for record in self.meta["shards"]]
        if missing := [str(path) for path in self._files if not path.is_file()]:
            raise PrunerError(f"cache shard {missing[0]} is missing; re-run `pruner cache` to rebuild it")
        for path, record in zip(self._files, self.meta["shards"], strict=True):
            if _shard_rows(Path(path)) != record["n"]:
                raise PrunerError(f"cache shard {path} is damaged (truncated or rewritten); delete it and re-run "
                                  "`pruner cache` with the same arguments to rebuild it")  # fmt: skip
        self._ends = list(itertools.accumulate(record["n"] for record in self.meta["shards"]))
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _locate(self, i: int) -> tuple[Any, int]:
        """The open shard holding item ``i`` and the row within it."""
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a cache of {len(self)} rows")
        shard = bisect.bisect_right(self._ends, i)
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self._files[shard]), framework="pt")
        return self._handles[shard], i - (self._ends[shard - 1] if shard else 0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        handle, row = self._locate(i)
        return {key: handle.get_slice(key)[row : row + 1][0] for key in self.keys}

    def caption(self, i: int) -> str | None:
        """Item ``i``'s caption, from its shard's header (a cache written before captions were kept there: from
        its image folder's metadata.jsonl)."""
        handle, row = self._locate(i)
        captions = (handle.metadata() or {}).get("captions")
        if captions:
            return str(json.loads(captions)[row])
        rows, _ = read_metadata(self.meta["data"])  # an older cache: its image folder's list
        return rows[self.source_row(i)].text

    def source_row(self, i: int) -> int:
        """Item ``i``'s row number in the data folder's metadata.jsonl."""
        handle, row = self._locate(i)
        return int(handle.get_slice("index")[row : row + 1][0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}
