"""Writing outputs safely: atomic file writes, and output locations checked before any compute starts.

Every file pruner writes goes through :func:`atomic_path` (or a helper built on it): the content lands in a
temporary file in the same folder, is flushed and fsynced, then ``os.replace``-d over the final name, so a
reader (or a run killed halfway) sees the old file or the new one, never half of one. Folders are built
under a temporary name and published with :func:`publish_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pruner.errors import PrunerError

__all__ = [
    "atomic_path",
    "check_output_dir",
    "check_output_file",
    "check_storage_path",
    "publish_dir",
    "read_prompts",
    "temp_dir_beside",
    "write_bytes",
    "write_json",
    "write_text",
    "write_yaml",
]


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Any, indent: int | None = 2) -> Path:
    """Write ``payload`` as JSON (newline-terminated) atomically."""
    return write_text(path, json.dumps(payload, indent=indent) + "\n")


def write_yaml(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as block-style YAML, keys in insertion order, atomically."""
    return write_text(path, yaml.safe_dump(payload, sort_keys=False, default_flow_style=False, width=110))


def temp_dir_beside(final: str | Path) -> Path:
    """A fresh, empty folder next to ``final`` (same file system, so :func:`publish_dir` is a rename)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    return tmp


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Replace ``final`` (absent, or a folder) by the complete folder ``tmp``."""
    tmp, final = Path(tmp), Path(final)
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists (the folder a new path would be created in)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path) -> str | None:
    """Why nothing can be created in ``folder``, or None. Creates and removes a file: permission bits alone
    do not tell (root ignores them; a read-only mount does not show in them)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".pruner-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Raise a one-line PrunerError unless ``path`` is (or can be created as) a folder pruner can write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PrunerError(f"{what} {path} is a file, not a folder; choose another path or delete the file")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise PrunerError(f"{what} {path}: {base} is a file, not a folder; choose another path")
    reason = _probe(base)
    if reason is not None:
        raise PrunerError(f"{what} {path} is not writable ({base}: {reason}); choose another path")
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Raise a one-line PrunerError unless ``path`` can be written as a file (not a folder; parent writable)."""
    path = Path(path)
    if path.is_dir():
        raise PrunerError(f"{what} {path} is a folder, not a file; name a file")
    check_output_dir(path.parent, f"folder of {what} {path}")
    if path.exists() and not os.access(path, os.W_OK):
        raise PrunerError(f"{what} {path} is not writable; choose another path")
    return path


def check_storage_path(url: str, what: str = "storage") -> Path | None:
    """For a file-backed study storage (``sqlite:///PATH``, ``journal:PATH``), check PATH can be written as a
    file and return it; None for server URLs (their connection is checked when the study opens)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
    elif url.startswith("journal:"):
        path = url.removeprefix("journal:")
    else:
        return None
    if not path or path == ":memory:":
        return None
    return check_output_file(Path(path), f"{what} file")


def read_prompts(path: str | Path, n: int) -> list[str]:
    """``n`` prompts from a file of one prompt per line (blank lines skipped), cycled when it holds fewer."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise PrunerError(f"cannot read prompts file {path}: {exc}; give a text file, one prompt per line") from exc
    if not lines:
        raise PrunerError(f"{path} holds no prompts; write one prompt per line")
    return (lines * (n // len(lines) + 1))[:n]
