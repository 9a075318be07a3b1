"""Where pictures and captions come from: every source is an iterable of ``SourceRow`` behind one interface.

A new kind of data is one new module here with a class that has ``description``, ``fingerprint``,
``__len__`` and ``rows(start, stop)``; ``open_source`` picks the class from what the user gave.
``rows(start, stop)`` reads a row range, which is how a resumed cache continues and how several processes
split one source.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from PIL import Image

__all__ = ["Picture", "Source", "SourceRow", "choose_caption"]

# A picture as a source holds it: a file, its encoded bytes, an open binary file or a decoded PIL image.
Picture = Path | bytes | IO[bytes] | Image.Image


@dataclass(frozen=True)
class SourceRow:
    """One row of a source: its position (``index``), a stable ``key``, the caption and the picture.

    ``skip`` names why the row cannot be used (``no_text``, ``missing``, ``bad_row``...) when that is known
    before the picture is decoded; ``original_size`` is (height, width) where the source records it.
    """

    index: int
    key: str
    caption: str | None
    picture: Picture | None
    skip: str | None = None
    original_size: tuple[int, int] | None = None


@runtime_checkable
class Source(Protocol):
    """Rows of pictures and captions. ``description`` and ``fingerprint`` tie a cache to this exact data."""

    description: str
    fingerprint: str

    def __len__(self) -> int: ...

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[SourceRow]:
        """Rows ``start`` to ``stop`` (the end when None), in a fixed order."""
        ...


def choose_caption(value: object, seed: int | None = None, index: int = 0) -> str | None:
    """A usable caption from a column value: the string itself, or from a list of captions the first (``seed``
    None) or one picked by ``seed`` and the row's ``index`` (the same pick on every run). Blank: None."""
    if isinstance(value, list | tuple):
        usable = [v for v in value if isinstance(v, str) and v.strip()]
        if not usable:
            return None
        value = usable[0] if seed is None else usable[hash_pick(seed, index, len(usable))]
    if not isinstance(value, str) or not value.strip():
        return None
    # bytes that were not UTF-8 become U+FFFD: a tokenizer takes no lone surrogates
    return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def hash_pick(seed: int, index: int, n: int) -> int:
    """A choice among ``n`` that depends only on (seed, index): stable across runs and processes."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n
