"""An image folder with ``metadata.jsonl`` (one JSON object per line with ``file_name`` and ``text``, the
layout of diffusers' imagefolder): the source ``pruner cache`` has always read; and a folder of pictures without
captions (``PictureFiles``: a reference set such as MS-COCO's val2014 for FID and KID)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pruner.data.sources import SourceRow, choose_caption
from pruner.errors import PrunerError

__all__ = ["METADATA_FILE", "ImageFolder", "PictureFiles", "Row", "data_folder", "read_metadata"]

METADATA_FILE = "metadata.jsonl"
_PICTURE_FILES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Row:
    """One line of metadata.jsonl; ``file_name``/``text`` are None when absent or not usable strings."""

    index: int
    file_name: str | None
    text: str | None


def nonblank_string(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _parse_row(index: int, line: str) -> Row:
    try:
        record = json.loads(line)
    except ValueError:
        return Row(index, None, None)
    if not isinstance(record, dict):
        return Row(index, None, None)
    return Row(index, nonblank_string(record.get("file_name")), choose_caption(record.get("text")))


def data_folder(data: str | Path) -> Path:
    """``data`` with its links followed; a link loop (or a path the system cannot follow) is one line."""
    try:
        return Path(data).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise PrunerError(
            f"data folder {data} cannot be followed ({exc}); give the folder itself, not a link loop"
        ) from exc


def read_metadata(data: str | Path) -> tuple[list[Row], str]:
    """The rows of ``data/metadata.jsonl`` and the file's sha256 (which ties a cache to this exact list)."""
    folder = Path(data)
    if not folder.is_dir():
        raise PrunerError(f"data folder {folder} does not exist; give a folder of images with {METADATA_FILE}")
    path = folder / METADATA_FILE
    if not path.is_file():
        if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
            raise PrunerError(
                f"{folder} is a `datasets` save_to_disk folder; export it as images plus {METADATA_FILE} "
                "(file_name, text per line)"
            )
        raise PrunerError(f"{folder} has no {METADATA_FILE}; write one JSON object per image with file_name and text")
    raw = path.read_bytes()
    # surrogateescape: a file name in another encoding than UTF-8 keeps its bytes, so the file is found
    lines = [line for line in raw.decode("utf-8", errors="surrogateescape").splitlines() if line.strip()]
    if not lines:
        raise PrunerError(f"{path} has no rows; write one JSON object per image with file_name and text")
    return [_parse_row(i, line) for i, line in enumerate(lines)], hashlib.sha256(raw).hexdigest()


class ImageFolder:
    """The rows of ``folder/metadata.jsonl``; a row's key is its file name."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = data_folder(folder)
        self._rows, self.fingerprint = read_metadata(self.folder)
        self.description = str(self.folder)

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[SourceRow]:
        for row in self._rows[start:stop]:
            yield _source_row(self.folder, row)


def _source_row(folder: Path, row: Row) -> SourceRow:
    """The row with the reason it is skipped, if any, known before the picture is opened (a row without a
    caption keeps its picture: a reference set for FID reads pictures alone)."""
    key = row.file_name or f"row-{row.index}"
    if row.file_name is None:
        return SourceRow(row.index, key, row.text, None, skip="bad_row")
    if not (folder / row.file_name).is_file():
        return SourceRow(row.index, key, row.text, None, skip="no_text" if row.text is None else "missing")
    return SourceRow(row.index, key, row.text, folder / row.file_name, skip="no_text" if row.text is None else None)


class PictureFiles:
    """Every picture file under a folder (sub-folders too), sorted by path, without captions; a row's key is
    its path in the folder. What FID and KID read as a reference set; ``pruner cache`` needs captions and
    reads an ``ImageFolder`` instead."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = data_folder(folder)
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in _PICTURE_FILES and p.is_file())
        self.description = str(self.folder)
        listing = "\n".join(f"{p.relative_to(self.folder)}:{p.stat().st_size}" for p in self.files)
        self.fingerprint = hashlib.sha256(listing.encode("utf-8", errors="surrogateescape")).hexdigest()

    def __len__(self) -> int:
        return len(self.files)

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[SourceRow]:
        for index, path in enumerate(self.files[start:stop], start):
            yield SourceRow(index, str(path.relative_to(self.folder)), None, path)
