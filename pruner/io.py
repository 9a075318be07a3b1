"""Writing outputs safely: atomic file writes, and output locations checked before any compute starts.

Every file pruner writes goes through :func:`atomic_path` (or a helper built on it): the content lands in a
temporary file in the same folder, is flushed and fsynced, then ``os.replace``-d over the final name, so a
reader (or a run killed halfway) sees the old file or the new one, never half of one. Folders are built
under a temporary name and published with :func:`publish_dir`. :func:`cache_dir` is where pruner keeps what
it computes once per machine (cost counts, the bundled data set, calibration backing files).

Two runs never write one output at once: :func:`output_lock` holds an ``flock`` on ``.NAME.lock`` beside the
output for the run (the kernel drops it when the process dies, even by SIGKILL, so a crash never leaves
the output locked). A full disk is recognised once, by :func:`disk_full_cause`, and reported by
:func:`space_for` as one :class:`~pruner.errors.DiskFull` line naming the folder and the bytes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pruner.errors import DiskFull, OutputInUse, PrunerError

__all__ = [
    "atomic_path",
    "cache_dir",
    "check_new_file",
    "check_output_dir",
    "check_output_file",
    "check_storage_path",
    "disk_full_cause",
    "disk_full_error",
    "human_bytes",
    "output_lock",
    "publish_dir",
    "read_prompts",
    "space_for",
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
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was; a full disk is a
    :class:`DiskFull` naming the folder (and ``needed``, the bytes being written, when the caller knows)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with space_for(final.parent, needed):
            yield tmp
            _fsync(tmp)
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, needed=len(data)) as tmp:
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


def cache_dir() -> Path:
    """``$PRUNER_CACHE_DIR`` or ``$XDG_CACHE_HOME/pruner`` (``~/.cache/pruner``)."""
    root = os.environ.get("PRUNER_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pruner"


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


def check_new_file(path: Path, what: str = "--out", *, suffix: str | None = None) -> Path:
    """Raise a one-line PrunerError unless ``path`` is a writable file name with ``suffix`` that does not exist
    yet: an export never replaces a file (checked again under its lock, so a run that finished meanwhile is kept)."""
    if suffix is not None and path.suffix != suffix:
        raise PrunerError(f"{what} {path} must end in {suffix}")
    check_output_file(path, what)
    if path.exists():
        raise PrunerError(f"{path} already exists; choose another {what} or delete it")
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


# --------------------------------------------------------------------------- a full disk

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how a full disk reads when a library has turned the OSError into its own error (safetensors, SQLite)
_FULL_WORDS = ("no space left on device", "disk quota exceeded", "database or disk is full")
RERUN = "free space there (or choose another folder) and rerun the same command: it continues where it stopped"


def human_bytes(n: float) -> str:
    """A byte count for people: 512 B, 3.4 MB, 1.2 GB (powers of 1000, as ``df -H`` and file managers show)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The error in ``exc`` or its chain that says the file system is full or over quota (errno ENOSPC or
    EDQUOT, or a library's wording of them), or None. The one place pruner recognises a full disk."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return current
        if any(words in str(current).lower() for words in _FULL_WORDS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def disk_full_error(folder: str | Path, needed: int | None = None, then: str = RERUN) -> DiskFull:
    """The one-line error for a full disk under ``folder``: what the write needed, what is free, what to do."""
    base = _existing_ancestor(Path(folder))
    try:
        free = f"{human_bytes(shutil.disk_usage(base).free)} free"
    except OSError:
        free = "free space unknown"
    need = f"about {human_bytes(needed)}" if needed else "more space than is left"
    return DiskFull(f"disk full: writing in {Path(folder)} needs {need} ({free} on that file system); {then}")


@contextmanager
def space_for(folder: str | Path, needed: int | None = None, then: str = RERUN) -> Iterator[None]:
    """Turn a full disk inside the block (any error whose chain :func:`disk_full_cause` recognises) into a
    :class:`DiskFull` naming ``folder``; other errors pass unchanged."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if disk_full_cause(exc) is None:
            raise
        raise disk_full_error(folder, needed, then) from exc


# --------------------------------------------------------------------------- one run per output


def _holder(fd: int) -> str:
    """Who holds a lock file, from what it wrote in it: "pid 123 on host h since 09:12:05 UTC"."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%H:%M:%S UTC", time.gmtime(float(record["started"])))
        return f"pid {record['pid']} on host {record['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run"


def _try_lock(lock: Path) -> int | str:
    """An open descriptor holding ``lock``'s flock, or who holds it. Retries when the holder removed the
    file between our open and our flock (we would otherwise hold a lock on a file nobody else sees)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return holder
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            return fd
        os.close(fd)


@contextmanager
def output_lock(path: str | Path, what: str = "output", wait: float = 0.0) -> Iterator[Path]:
    """Own the output ``path`` (a folder or a file) for the block: a second run that asks for it while this
    one holds it is refused with :class:`OutputInUse` (after waiting up to ``wait`` seconds for it).

    The lock is an ``flock`` on ``.NAME.lock`` beside ``path``, holding this run's pid, host and start time
    for the message; the kernel releases it when the process ends, however it ends, so a crashed run never
    keeps its output locked. A second lock on the same output in one process is refused too."""
    target = Path(path).absolute()
    lock = target.with_name(f".{target.name}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrunerError(f"cannot create the folder of {what} {path}: {exc.strerror}; choose another path") from exc
    deadline = time.monotonic() + wait
    while isinstance(held := _try_lock(lock), str):
        if time.monotonic() >= deadline:
            raise OutputInUse(f"{what} {path} is in use by {held}; wait for that run to end, or choose another {what}")
        time.sleep(0.2)
    try:
        yield target
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: a run waiting on this file sees it go and retries
        os.close(held)
