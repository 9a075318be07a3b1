"""A Hugging Face ``datasets`` set as a source: a ``save_to_disk`` folder, local parquet or arrow files, or a
Hub id (optionally streamed). Needs the ``data`` extra (``pip install 'pruner[data]'``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from pruner.data.sources import Picture, SourceRow, choose_caption
from pruner.errors import PrunerError

__all__ = ["HFColumns", "HFDataset", "is_saved_dataset", "load_hf"]

DATA_FILE_KINDS = {".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class HFColumns:
    """Which columns hold the picture and the caption (the diffusers example's defaults; caption None: pictures
    alone, as a FID reference reads them), and the seed that picks one of several captions (None: the first)."""

    image: str = "image"
    caption: str | None = "text"
    caption_seed: int | None = None


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise PrunerError("reading a `datasets` set needs the data extra: pip install 'pruner[data]'") from exc
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _one_split(loaded: Any, split: str | None, where: str) -> Any:
    """The split asked for from a DatasetDict (``train`` by default); a plain Dataset as it is."""
    if not hasattr(loaded, "keys"):
        return loaded
    name = split or "train"
    if name not in loaded:
        raise PrunerError(f"{where} has no split {name!r}; pass split= one of {', '.join(loaded)}")
    return loaded[name]


def load_hf(
    data: str, *, split: str | None = None, revision: str | None = None, config: str | None = None,
    streaming: bool = False,
) -> Any:  # fmt: skip
    """The dataset ``data`` names: a save_to_disk folder, parquet/arrow files (a file, folder or glob), or a
    Hub id handed to ``datasets.load_dataset`` with ``config``, ``split``, ``revision`` and ``streaming``."""
    datasets = _datasets()
    path = Path(data).expanduser()
    if is_saved_dataset(path):
        return _one_split(datasets.load_from_disk(str(path)), split, data)
    files = sorted(path.glob("*")) if path.is_dir() else sorted(path.parent.glob(path.name))
    kinds = {DATA_FILE_KINDS[f.suffix] for f in files if f.suffix in DATA_FILE_KINDS}
    if len(kinds) == 1:
        chosen = [str(f) for f in files if f.suffix in DATA_FILE_KINDS]
        return datasets.load_dataset(kinds.pop(), data_files=chosen, split=split or "train", streaming=streaming)
    return _one_split(_from_hub(datasets, data, config, split, revision, streaming), split, data)


def _offline() -> bool:
    """Whether the Hub is switched off (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE), read now, not at import."""
    values = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(value in ("1", "true", "yes", "on") for value in values)


def _from_hub(
    datasets: Any, name: str, config: str | None, split: str | None, revision: str | None, streaming: bool
) -> Any:
    """``datasets.load_dataset`` of a Hub id; a Hub that cannot be reached, or an id it does not hold, is one
    line naming the id and how to give the set instead (a download first, or local files)."""
    local = "or pass a local save_to_disk folder or parquet files"
    try:
        return datasets.load_dataset(name, config, split=split or "train", revision=revision, streaming=streaming)
    except ConnectionError:
        why = "offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set" if _offline() else "no network or Hub"
        here = "" if Path(name).expanduser().exists() else f"no local file or folder {name!r}, and "
        raise PrunerError(
            f"{here}could not reach the Hugging Face Hub for dataset {name!r} ({why}); download it first where the Hub "
            f"is reachable (`hf download {name} --repo-type dataset`, then run again with the same id), {local}"
        ) from None
    except datasets.exceptions.DatasetNotFoundError as exc:  # no such id, revision, or no access to it
        said = " ".join(str(exc).split()).rstrip(".")
        raise PrunerError(
            f"{said}: check the id (owner/name) and revision=, log in with `hf auth login` for a private or gated "
            f"set, {local}"
        ) from None
    except FileNotFoundError:
        raise PrunerError(
            f"{name!r} is neither a local file or folder nor a dataset on the Hugging Face Hub; give an image "
            "folder, a save_to_disk folder, parquet or arrow files, tar shards or a Hub id (owner/name)"
        ) from None


def _picture(value: Any) -> Picture | None:
    """A picture from an image column's undecoded value: encoded bytes, a file path or a PIL image."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        return Path(value)
    return value if value is not None and not isinstance(value, int | float) else None


class HFDataset:
    """Rows of a ``datasets`` Dataset or IterableDataset; a row's key is its position.

    Pictures are read undecoded, so bytes that are not a picture are one counted skip (``unreadable``)
    instead of an error that ends the run. A streamed set is read up to ``max_rows`` rows.
    """

    def __init__(self, dataset: Any, description: str, columns: HFColumns, max_rows: int | None = None) -> None:
        self.columns, self.description = columns, description
        _check_columns(dataset, columns, description)
        self.dataset = _undecoded(dataset, columns.image)
        streamed = not hasattr(dataset, "__len__")
        if streamed and max_rows is None:  # a stream has no length to read
            raise PrunerError(f"{description} is streamed; pass max_rows= to say how many rows to cache")
        self.n: int = max_rows if max_rows is not None else len(dataset)
        self.n = self.n if streamed else min(len(dataset), self.n)
        if self.n == 0:
            raise PrunerError(f"{description} has no rows; give another split or set")
        tag = getattr(dataset, "_fingerprint", None) or description
        self.fingerprint = hashlib.sha256(f"{tag}:{self.n}:{columns}".encode()).hexdigest()

    def __len__(self) -> int:
        return self.n

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[SourceRow]:
        stop = self.n if stop is None else min(stop, self.n)
        if hasattr(self.dataset, "select"):
            records = iter(self.dataset.select(range(start, stop)))
        else:
            records = islice(iter(self.dataset), start, stop)
        for index, record in enumerate(records, start):
            column = self.columns.caption
            caption = None if column is None else choose_caption(record.get(column), self.columns.caption_seed, index)
            picture = _picture(record.get(self.columns.image))
            skip = "no_text" if caption is None else "missing" if picture is None else None
            yield SourceRow(index, str(index), caption, picture, skip=skip)


def _check_columns(dataset: Any, columns: HFColumns, description: str) -> None:
    present = getattr(dataset, "column_names", None)
    if not present:
        return  # a stream whose columns are only known once read
    for role, name in (("image_column", columns.image), ("caption_column", columns.caption)):
        if name is not None and name not in present:
            raise PrunerError(f"{description} has no column {name!r}; pass {role}= one of {', '.join(present)}")


def _undecoded(dataset: Any, column: str) -> Any:
    """The dataset with its picture column left as bytes (decoded by the cache, where bad bytes are a skip)."""
    features = getattr(dataset, "features", None) or {}
    datasets = _datasets()
    if isinstance(features.get(column), datasets.Image):
        return dataset.cast_column(column, datasets.Image(decode=False))
    return dataset
