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

Several processes (``accelerate launch -m pruner cache ...``): the source's rows are cut into one contiguous
range per process, a *part*, written like a one-process cache in ``part-0000K-of-0000N/`` (its own
``cache.json``, shards and resume). The last process to finish, seen on disk, writes the top ``cache.json``:
one index listing every part's shards in row order, so the rows do not depend on the number of processes.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
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
from pruner.data.prefetch import decode_threads, ordered_map, prefetched
from pruner.data.sources import Picture, Source, SourceRow
from pruner.data.sources.folder import ImageFolder, read_metadata
from pruner.data.world import World, row_range
from pruner.diffusion import default_resolution
from pruner.errors import PrunerError
from pruner.io import atomic_path, check_output_dir, output_lock, write_json
from pruner.teacher import Teacher

__all__ = [
    "CACHE_FILE",
    "IMAGE_ERRORS",
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
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # a picture that cannot be read
MAX_PIXELS = 1 << 26  # 67 M pixels (8192x8192): larger pictures are skipped as too_large, never decoded
# Fields that must match between a cache folder and a re-run that resumes it: (cache.json key, what to call it).
_IDENTITY = {
    "data": "data folder",
    "metadata_sha256": "metadata",
    "teacher_id": "teacher",
    "resolution": "resolution",
    "dtype": "dtype",
}
_PART = re.compile(r"part-(\d{5})-of-(\d{5})")  # the folder of one process's row range
INDEX_WAIT_S = 600.0  # how long a finishing process waits for another that is writing the index
Kind = Literal["sdxl", "sd"]
TimeIds = tuple[int, int, int, int, int, int]


@dataclass
class CacheSummary:
    """What ``build_cache`` left in ``out``: counts over the whole cache, not only this call's share.

    ``n_written`` rows are in ``shards`` shard files, ``n_skipped`` rows of the source's ``n_total`` were
    unusable (``skipped_reasons`` says why); ``resumed`` is true when existing shards were kept, and
    ``n_encoded`` counts the rows this call encoded itself, in ``seconds`` of reading and encoding of which
    ``encoder_seconds`` in the VAE and text encoders, using ``cpu_seconds`` of CPU time (all of the process's
    threads: over ``seconds``, the cores it kept busy). With several processes, ``waiting`` counts the parts
    others are still writing when this one finished: the counts are then this process's share, and the
    last process to finish writes the index.
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
    seconds: float = 0.0
    encoder_seconds: float = 0.0
    cpu_seconds: float = 0.0
    waiting: int = 0


@dataclass(frozen=True)
class _Item:
    """A row whose image loaded: pixels in [-1, 1], (C, H, W), and SDXL's size conditioning; ``consumed`` and
    ``skipped`` are the reader's progress once it was read (what a shard ending with it records)."""

    index: int
    text: str
    pixels: torch.Tensor
    time_ids: TimeIds
    consumed: int
    skipped: dict[str, int]


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
    """Yields the loadable rows of ``[start, stop)`` in order, tallying the rest; ``consumed`` counts the source
    rows looked at so far (an absolute row number).

    Why a class: a shard records how far the reader got and what it skipped up to there, which is what a
    resumed run restores.
    """

    def __init__(
        self, source: Source, start: int, stop: int, skipped: dict[str, int], resolution: int, threads: int = 1
    ) -> None:
        self.source, self.consumed, self.stop, self.resolution = source, start, stop, resolution
        self.skipped: Counter[str] = Counter(skipped)
        self.threads = threads  # pictures decoded at once

    def _load(self, row: SourceRow) -> tuple[str, torch.Tensor, TimeIds] | str:
        """The row's caption, pixels and time ids, or the reason it is skipped."""
        if row.skip is not None or row.picture is None:
            return row.skip or "missing"
        if row.caption is None:
            return "no_text"
        try:
            pixels, ids = load_image(row.picture, self.resolution)
        except ImageTooLarge:
            return "too_large"
        except IMAGE_ERRORS:
            return "unreadable"
        if row.original_size is not None:
            ids = (*row.original_size, *ids[2:])
        return row.caption, pixels, ids

    def __iter__(self) -> Iterator[_Item]:
        for row, loaded in ordered_map(self._load, self.source.rows(self.consumed, self.stop), self.threads):
            self.consumed += 1
            if isinstance(loaded, str):
                self.skipped[loaded] += 1
            else:
                yield _Item(row.index, *loaded, consumed=self.consumed, skipped=dict(self.skipped))
        self.consumed = self.stop  # a source that held fewer rows than it said is read to its end


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


@torch.no_grad()  # the encoders' parameters require grad as loaded: without it each batch keeps its activations
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


def _fresh_meta(
    identity: dict[str, Any], teacher: str, kind: Kind, pipe: Any, n_rows: int, rows: tuple[int, int]
) -> dict[str, Any]:
    """A new cache.json for rows ``rows`` (all ``n_rows`` of the source for a one-process cache)."""
    factor = int(pipe.vae_scale_factor)
    side = identity["resolution"] // factor
    keys = ["latents", "prompt_embeds", *(["pooled_prompt_embeds", "time_ids"] if kind == "sdxl" else []), "index"]
    return {"schema_version": SCHEMA_VERSION, "format": "pruner-latent-cache", "pruner_version": __version__,
            "teacher": teacher, "kind": kind, **identity, "n_rows": n_rows,
            "latent_shape": [int(pipe.vae.config.latent_channels), side, side],
            "scaling_factor": float(pipe.vae.config.scaling_factor), "keys": keys,
            "start_row": rows[0], "stop_row": rows[1], "n": 0, "next_row": rows[0], "complete": False,
            "skipped": {}, "n_skipped": 0, "shards": []}  # fmt: skip


def _resumable(meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """``meta`` cut back to the shards still intact on disk, with the progress recorded at the last of them."""
    kept = _intact_prefix(out, meta["shards"])
    _remove_strays(out, kept)
    if len(kept) == len(meta["shards"]) and meta["complete"]:
        return meta
    last: dict[str, Any] = kept[-1] if kept else {"end_row": meta.get("start_row", 0), "skipped": {}}
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


@dataclass(frozen=True)
class _Job:
    """What writing any part of one cache needs: the source, the loaded encoders and the run's settings."""

    source: Source
    pipe: Any
    kind: Kind
    identity: dict[str, Any]
    teacher: str
    batch_size: int
    shard_size: int
    progress: bool
    position: int  # the progress bar's line: the process's rank, so that several bars do not overwrite
    threads: int  # pictures decoded at once


@dataclass
class _Work:
    """What this call did: rows encoded, seconds spent reading and encoding, the part of them in the encoders."""

    encoded: int = 0
    seconds: float = 0.0
    encoder_seconds: float = 0.0
    cpu_seconds: float = 0.0
    resumed: bool = False
    kind: Kind | None = None  # the teacher's, once its pipeline is loaded


def _batched(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _record_progress(meta: dict[str, Any], consumed: int, skipped: dict[str, int]) -> None:
    meta["next_row"] = consumed
    meta["skipped"] = dict(sorted(skipped.items()))
    meta["n_skipped"] = sum(skipped.values())
    meta["complete"] = consumed == meta.get("stop_row", meta["n_rows"])


def _encode_shards(job: _Job, meta: dict[str, Any], reader: _RowReader, out: Path, bar: tqdm, work: _Work) -> None:
    """Encode the reader's rows shard by shard, recording each shard in cache.json once it is on disk. Rows are
    read and decoded a few batches ahead in a thread, while the encoders work on the current batch."""
    started, cpu, first = time.perf_counter(), time.process_time(), meta.get("start_row", 0)
    with closing(prefetched(iter(reader), depth=2 * job.batch_size)) as items:
        while True:
            parts, captions, last = [], [], None
            for batch in _batched(itertools.islice(items, job.shard_size), job.batch_size):
                before = time.perf_counter()
                parts.append(_encode_batch(job.pipe, job.kind, batch))
                work.encoder_seconds += time.perf_counter() - before
                captions += [item.text for item in batch]
                last = batch[-1]
                bar.update(last.consumed - first - bar.n)
                bar.set_postfix(skipped=sum(last.skipped.values()), refresh=False)
            if last is None:
                break
            name = _write_shard(out, len(meta["shards"]), parts, meta["dtype"], job.kind, captions)
            rows = sum(len(part["index"]) for part in parts)
            _record_progress(meta, last.consumed, last.skipped)
            meta["shards"].append({"file": name, "n": rows, "end_row": last.consumed, "skipped": meta["skipped"]})
            meta["n"] += rows
            work.encoded += rows
            _write_meta(out, meta)
    _record_progress(meta, reader.consumed, reader.skipped)
    _write_meta(out, meta)
    bar.update(reader.consumed - first - bar.n)
    work.seconds += time.perf_counter() - started
    work.cpu_seconds += time.process_time() - cpu


def _write_part(job: _Job, folder: Path, rows: tuple[int, int], existing: dict[str, Any] | None, work: _Work) -> None:
    """Write, or resume, the cache of the source's rows ``rows`` in ``folder``."""
    meta = _start_or_resume(folder, existing, job.identity, lambda: _fresh_meta(
        job.identity, job.teacher, job.kind, job.pipe, len(job.source), rows))  # fmt: skip
    work.resumed |= existing is not None and meta["next_row"] > rows[0]
    reader = _RowReader(job.source, meta["next_row"], rows[1], meta["skipped"], job.identity["resolution"], job.threads)
    desc = f"cache {folder.name}" if _PART.fullmatch(folder.name) else "cache"
    with tqdm(total=rows[1] - rows[0], initial=meta["next_row"] - rows[0], desc=desc, unit="img",
              disable=not job.progress, position=job.position) as bar:  # fmt: skip
        _encode_shards(job, meta, reader, folder, bar, work)


def _check_arguments(batch_size: int, shard_size: int, dtype: str) -> None:
    if batch_size < 1 or shard_size < 1:
        raise PrunerError(f"batch_size and shard_size must be at least 1, got {batch_size} and {shard_size}")
    if dtype not in _DTYPES:
        raise PrunerError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")


def _process_device(device: str | torch.device, world: World) -> str | torch.device:
    """The accelerator accelerate gave this process when ``device`` names only a kind (``cuda``): with several
    processes on one machine, each encodes on its own GPU."""
    if world.device is not None and torch.device(device).index is None and torch.device(device).type == "cuda":
        return world.device
    return device


def _load_job(
    source: Source, teacher: Teacher, identity: dict[str, Any], resolution: int | None, device: str | torch.device,
    sizes: tuple[int, int], progress: bool, world: World,
) -> _Job:  # fmt: skip
    """Load the teacher's VAE and text encoders on this process's device; settle the resolution."""
    pipe = teacher.pipeline(dtype=torch.float32, device=_process_device(device, world), with_unet=False)
    kind = _pipeline_kind(pipe, teacher.reference)
    # the UNet's config (the pipeline is loaded without it) at the VAE's scale
    identity["resolution"] = resolution or default_resolution(teacher.config, int(pipe.vae_scale_factor))
    check_resolution(identity["resolution"], pipe)
    pipe.vae.use_slicing = vae_batch_too_big(sizes[0], identity["resolution"], pipe.vae.device)
    threads = decode_threads(world.here)
    return _Job(source, pipe, kind, identity, teacher.reference, *sizes, progress, world.rank, threads)


# SDXL's VAE encoder in fp32 without grad held 48.6 GiB for 16 pictures at 1024 px (one H200, 2026-12-04,
# benchmarks/vae_memory.py): about 3.1 GiB a megapixel. SD1.5's VAE has the same widths.
VAE_GIB_PER_MEGAPIXEL = 3.1


def vae_batch_too_big(batch_size: int, resolution: int, device: torch.device) -> bool:
    """Whether a whole batch's VAE activations would pass 80% of the device's free memory; the VAE then
    encodes one picture at a time (diffusers' slicing: the same latents; on the H200, 1/13 of the memory at
    0.66x the VAE's speed at 1024 px), while the text encoders still take the whole batch."""
    from pruner.device import free_memory

    need = batch_size * (resolution * resolution / 2**20) * VAE_GIB_PER_MEGAPIXEL * 2**30
    return need > 0.8 * free_memory(device)


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
    world: World | None = None,
) -> CacheSummary:
    """Encode every usable row of ``data`` with ``teacher``'s VAE and text encoder(s) into shards in ``out``.

    ``resolution`` defaults to the pipeline's default image size. Re-running the same call on the same
    ``out`` resumes after the last complete shard; a cache of other data, teacher, resolution or dtype is
    refused with a PrunerError. ``dtype`` is how floats are stored; the encoders always run in float32.

    ``world`` is this process's place in a launch (:func:`pruner.data.world.current_world`; default: one
    process). A cache is written in as many parts (row ranges) as the run that started it had processes,
    and process ``rank`` writes parts ``rank``, ``rank + size``, ...: a resumed run may have any number.
    """
    _check_arguments(batch_size, shard_size, dtype)
    out_dir = check_output_dir(Path(out).expanduser(), "cache folder")
    source = data if isinstance(data, Source) else ImageFolder(data)
    world = world or World()
    identity: dict[str, Any] = {"data": source.description, "metadata_sha256": source.fingerprint,
                                "teacher_id": teacher.identity, "dtype": dtype,
                                **({"resolution": resolution} if resolution else {})}  # fmt: skip
    parts = _part_count(out_dir, world.size)
    if parts > 1 and _finished_index(out_dir, identity) is not None:
        return _summary(out_dir, parts, [], _Work())
    mine, work = list(range(world.rank, parts, world.size)), _Work()
    folders = [_part_folder(out_dir, part, parts) for part in mine]
    with ExitStack() as locks:
        for folder in folders:
            locks.enter_context(output_lock(folder, "cache folder"))
        existing = [_existing_meta(folder) for folder in folders]
        for folder, meta in zip(folders, existing, strict=True):
            if meta is not None:
                _check_same(meta, identity, folder)
        job = _load_job(source, teacher, identity, resolution, device, (batch_size, shard_size), progress, world)
        work.kind = job.kind
        for part, folder, meta in zip(mine, folders, existing, strict=True):
            _write_part(job, folder, row_range(len(source), part, parts), meta, work)
    return _summary(out_dir, parts, mine, work)


# --------------------------------------------------------------------------- parts written by several processes


def _part_folder(out: Path, part: int, parts: int) -> Path:
    """Where part ``part`` of ``parts`` is written: ``out`` itself for a one-process cache."""
    return out if parts == 1 else out / f"part-{part:05d}-of-{parts:05d}"


def _part_count(out: Path, processes: int) -> int:
    """In how many parts the cache in ``out`` is written: as its index or part folders say (a resumed cache
    keeps its parts, whatever the number of processes now), else one per process. A folder holding other
    things than a cache is refused."""
    if (out / CACHE_FILE).is_file():
        return int(_read_meta(out / CACHE_FILE).get("parts", 1))
    entries = [path for path in out.iterdir() if not path.name.startswith(".")] if out.is_dir() else []
    counts = {int(match.group(2)) for path in entries if (match := _PART.fullmatch(path.name)) and path.is_dir()}
    if len(counts) > 1:
        raise PrunerError(f"{out} holds parts of caches cut {sorted(counts)} ways; delete {out} and rebuild")
    if counts and len(entries) > sum(1 for path in entries if _PART.fullmatch(path.name)):
        counts = set()  # other things beside the parts: refused below
    if counts:
        return counts.pop()
    if entries and any(not path.name.endswith(_TMP) for path in entries):
        raise PrunerError(f"{out} is not empty and holds no {CACHE_FILE}; give a new or empty folder for the cache")
    return processes


def _intact_index(out: Path) -> dict[str, Any] | None:
    """The index in ``out`` when it is complete and every shard it lists holds its rows; else None."""
    if not (out / CACHE_FILE).is_file():
        return None
    meta = _read_meta(out / CACHE_FILE)
    return meta if meta["complete"] and _intact_prefix(out, meta["shards"]) == meta["shards"] else None


def _finished_index(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The index of a finished cache of several parts made from this run's inputs (None: work is left)."""
    if (out / CACHE_FILE).is_file():
        _check_same(_read_meta(out / CACHE_FILE), identity, out)
    return _intact_index(out)


def _part_metas(out: Path, parts: int) -> list[dict[str, Any] | None]:
    """Each part's cache.json as it is on disk (None for a part not started)."""
    paths = [_part_folder(out, part, parts) / CACHE_FILE for part in range(parts)]
    return [_read_meta(path) if path.is_file() else None for path in paths]


def _merged(metas: list[dict[str, Any]], parts: int) -> dict[str, Any]:
    """One index for the complete parts ``metas``: their shards in row order (each record's skips counted
    from the first row, as a one-process cache counts them), their rows and skips added up."""
    shards, skipped = [], Counter[str]()
    for part, meta in enumerate(metas):
        folder = _part_folder(Path(), part, parts).name
        for record in meta["shards"]:
            upto = dict(sorted((skipped + Counter(record["skipped"])).items()))
            shards.append({**record, "file": f"{folder}/{record['file']}", "skipped": upto})
        skipped += Counter(meta["skipped"])
    first = metas[0]
    return {**first, "parts": parts, "start_row": 0, "stop_row": first["n_rows"], "next_row": first["n_rows"],
            "n": sum(meta["n"] for meta in metas), "skipped": dict(sorted(skipped.items())),
            "n_skipped": sum(skipped.values()), "complete": True, "shards": shards}  # fmt: skip


def _write_index(out: Path, parts: int) -> dict[str, Any] | None:
    """Write the index once every part is complete, and return it (None while parts are left).

    Every process calls this when its parts are done, under a lock: the last to finish sees every part
    complete (each wrote its own cache.json before asking) and writes the index; one that comes later finds it.
    Nothing waits on the others through the process group, so parts that end hours apart are fine."""
    with output_lock(out / CACHE_FILE, "cache index", wait=INDEX_WAIT_S):
        if (index := _intact_index(out)) is not None:
            return index
        metas = _part_metas(out, parts)
        complete = [meta for meta in metas if meta is not None and meta["complete"]]
        if len(complete) < parts:
            return None
        index = _merged(complete, parts)
        _write_meta(out, index)
        return index


def _summary(out: Path, parts: int, mine: list[int], work: _Work) -> CacheSummary:
    """What ``out`` holds once this process is done: the whole cache when its index is written, else this
    process's parts, with the number of parts that others are still writing."""
    index = _write_index(out, parts) if parts > 1 else _intact_index(out)
    on_disk = _part_metas(out, parts)
    own = [index] if index is not None else [meta for part in mine if (meta := on_disk[part]) is not None]
    waiting = 0 if index is not None else sum(meta is None or not meta["complete"] for meta in on_disk)
    skipped = sum((Counter(meta["skipped"]) for meta in own), Counter[str]())
    return CacheSummary(
        n_written=sum(meta["n"] for meta in own), n_skipped=sum(skipped.values()),
        n_total=sum(meta.get("stop_row", meta["n_rows"]) - meta.get("start_row", 0) for meta in own),
        shards=sum(len(meta["shards"]) for meta in own), out=out, resumed=work.resumed,
        kind=work.kind or own[0]["kind"], skipped_reasons=dict(sorted(skipped.items())),
        n_encoded=work.encoded, seconds=work.seconds, encoder_seconds=work.encoder_seconds,
        cpu_seconds=work.cpu_seconds, waiting=waiting,
    )  # fmt: skip


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
