"""webdataset shards in img2dataset's layout as a source: tar files named by a glob or a brace pattern
(``shards/{00000..00127}.tar``), each sample ``KEY.jpg``/``.png``/``.webp`` with ``KEY.txt`` or ``KEY.json``
(``caption``) beside it. Read with the standard library's ``tarfile``: nothing to install."""

from __future__ import annotations

import glob
import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from pruner.data.sources import SourceRow, choose_caption
from pruner.errors import PrunerError

__all__ = ["WebDataset", "expand_shards", "looks_like_shards"]

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def looks_like_shards(data: str) -> bool:
    """Whether ``data`` names tar shards: a .tar path, glob or brace pattern."""
    return data.endswith(".tar") or (bool(_BRACE.search(data)) and ".tar" in data)


def expand_shards(pattern: str) -> list[Path]:
    """The tar files a brace pattern (``{000..127}``, zero-padded as written) or a glob names, in order;
    a pattern that names none is one line."""
    names = [pattern]
    while any(_BRACE.search(name) for name in names):
        expanded = []
        for name in names:
            match = _BRACE.search(name)
            if match is None:
                expanded.append(name)
                continue
            width = len(match.group(1))
            for number in range(int(match.group(1)), int(match.group(2)) + 1):
                expanded.append(name[: match.start()] + f"{number:0{width}d}" + name[match.end() :])
        names = expanded
    paths = [Path(p) for name in names for p in (sorted(glob.glob(name)) if glob.has_magic(name) else [name])]
    found = [path for path in paths if path.is_file()]
    if not found:
        raise PrunerError(f"no tar shards match {pattern}; give a glob or brace pattern of existing .tar files")
    return found


@dataclass(frozen=True)
class _Sample:
    """One sample's members in a shard (None when absent); ``damaged`` marks a shard that could not be read."""

    shard: Path
    key: str
    picture: str | None = None
    text: str | None = None
    json: str | None = None
    damaged: bool = False


def _samples_of(shard: Path) -> list[_Sample]:
    """The samples of one shard, from its headers; a damaged tar keeps the samples before the damage and ends
    with one ``damaged`` entry (counted as a ``bad_shard`` skip)."""
    members: dict[str, dict[str, str]] = {}
    damaged = False
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile():
                    key, _, suffix = member.name.partition(".")
                    members.setdefault(key, {})[f".{suffix.lower()}"] = member.name
    except (tarfile.TarError, OSError, EOFError):
        damaged = True
    samples = [_sample(shard, key, found) for key, found in members.items()]
    return samples + ([_Sample(shard, f"{shard.name}:damaged", damaged=True)] if damaged else [])


def _sample(shard: Path, key: str, found: dict[str, str]) -> _Sample:
    picture = next((found[s] for s in PICTURE_SUFFIXES if s in found), None)
    return _Sample(shard, key, picture, found.get(".txt"), found.get(".json"))


class WebDataset:
    """The samples of tar shards in order; a row's key is ``shard:KEY``. A member that cannot be read, bytes
    that are not a picture or a sample without a caption is one counted skip, never the end of the run."""

    def __init__(self, pattern: str, caption_key: str = "caption", caption_seed: int | None = None) -> None:
        self.shards = expand_shards(pattern)
        self.caption_key, self.caption_seed = caption_key, caption_seed
        self.samples = [sample for shard in self.shards for sample in _samples_of(shard)]
        self.description = pattern
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(f"{shard.resolve()}:{shard.stat().st_size}\n".encode())
        self.fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.samples)

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[SourceRow]:
        with ExitStack() as stack:
            opened: dict[Path, tarfile.TarFile] = {}
            for index, sample in enumerate(self.samples[start:stop], start):
                if not sample.damaged and sample.shard not in opened:
                    opened[sample.shard] = stack.enter_context(tarfile.open(sample.shard))
                yield self._row(index, sample, opened)

    def _row(self, index: int, sample: _Sample, opened: dict[Path, tarfile.TarFile]) -> SourceRow:
        key = f"{sample.shard.name}:{sample.key}"
        if sample.damaged:
            return SourceRow(index, key, None, None, skip="bad_shard")
        try:
            caption, size = self._caption(opened[sample.shard], sample, index)
            picture = _read(opened[sample.shard], sample.picture)
        except (tarfile.TarError, OSError, EOFError, ValueError):
            return SourceRow(index, key, None, None, skip="bad_member")
        skip = "missing" if picture is None else "no_text" if caption is None else None
        return SourceRow(index, key, caption, picture, skip=skip, original_size=size)

    def _caption(self, tar: tarfile.TarFile, sample: _Sample, index: int) -> tuple[str | None, tuple[int, int] | None]:
        """The caption (KEY.txt, else KEY.json's caption key) and the original (height, width) img2dataset
        records in KEY.json, where present."""
        text = _read(tar, sample.text)
        record = json.loads(_read(tar, sample.json) or b"{}") if sample.json else {}
        record = record if isinstance(record, dict) else {}
        value = text.decode("utf-8", errors="replace") if text is not None else record.get(self.caption_key)
        height, width = record.get("original_height"), record.get("original_width")
        size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        return choose_caption(value, self.caption_seed, index), size


def _read(tar: tarfile.TarFile, name: str | None) -> bytes | None:
    if name is None:
        return None
    handle = tar.extractfile(name)
    return handle.read() if handle is not None else None
