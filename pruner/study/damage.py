"""Study files damaged by a crash or a full disk: found before anything is appended to them.

Optuna's journal file (``journal:PATH``) is one JSON record a line, appended under a lock. A write cut
short (a full disk, a killed machine) leaves a last line without its newline. Optuna's reader skips such a
line, but its writer appends the next record right after it, which turns the torn line into a garbage line
in the middle of the file, and from then on every read of the study fails with ``JSONDecodeError``.
So, before a study is opened:

- a torn last line is dropped (it was never a complete record, so nothing is lost): a repaired copy is
  written beside the journal and renamed over it, the original kept as ``PATH.torn-<time>.bak``;
- a complete line that is not a record (or records after one) is refused in one line naming the file
  and the line: only the user can tell which copy to trust, and a rerun must not make it worse;
- and :class:`SafeJournalFile` appends so that a failed write leaves no torn line in the first place.

A SQLite file (``sqlite:///PATH``) keeps itself consistent through a crash (its rollback journal), but a
file that is not a database, or one whose pages are damaged, is refused in one line, not retried.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from pruner.errors import PrunerError
from pruner.io import disk_full_cause, disk_full_error, space_for, write_bytes

__all__ = ["SafeJournalFile", "check_journal", "check_sqlite"]

SQLITE_HEADER = b"SQLite format 3\x00"


def _first_bad_line(complete: bytes) -> int | None:
    """The 1-based number of the first newline-terminated line that is not a journal record, or None."""
    for number, line in enumerate(complete.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            return number
        if not isinstance(record, dict) or "op_code" not in record:
            return number
    return None


def _drop_torn_tail(path: Path, complete: bytes, torn: bytes) -> Path:
    """Replace ``path`` by its complete lines (a repaired copy renamed over it); the original stays as a backup
    (a hard link: no space needed; a copy where links are not supported). Returns the backup's path."""
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}.bak")
    try:
        os.link(path, backup)
    except OSError:
        write_bytes(backup, complete + torn)
    write_bytes(path, complete)
    return backup


def check_journal(path: Path, repair: bool = True) -> None:
    """Refuse a journal with a damaged line in it; drop a torn last line (when ``repair``) with a note.

    Runs under Optuna's own writer lock, so a worker's append in progress is never mistaken for a torn line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        complete, torn = data[:cut], data[cut:]
        bad = _first_bad_line(complete)
        if bad is not None:
            raise PrunerError(
                f"journal {path} is damaged at line {bad} (not a journal record); restore it from a backup, "
                f"or move it aside and rerun to start a new study"
            )
        if torn and repair:
            with space_for(path.parent, len(complete)):
                backup = _drop_torn_tail(path, complete, torn)
            print(f"note: {path} ended in a torn record ({len(torn)} bytes, left by a crash or a full disk); "
                  f"dropped it, the original is kept as {backup.name}", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        lock.release()


class SafeJournalFile(JournalFileBackend):
    """Optuna's journal file whose failed append (a full disk) leaves no torn line: the file is cut back to
    its length before the append, under the same lock, so the next append starts on a fresh line."""

    def __init__(self, path: str) -> None:
        self._writer_lock = JournalFileSymlinkLock(path)
        super().__init__(path, lock_obj=self._writer_lock)
        self._path = path

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        self._writer_lock.acquire()
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            size = os.fstat(fd).st_size
            try:
                with space_for(Path(self._path).parent, len(data)):
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # frees space: works on a full disk
                raise
            finally:
                os.close(fd)
        finally:
            self._writer_lock.release()


def check_sqlite(path: Path) -> None:
    """Refuse a file that is not a SQLite database, or one SQLite's ``quick_check`` finds damaged.

    An empty or absent file is a new study. A database busy with other workers is left to SQLite (the check
    is skipped rather than waited on: their writes are not damage)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    fix = f"give the study's .db file, or move {path} aside to start a new study"
    if header != SQLITE_HEADER:
        raise PrunerError(f"storage {path} is not a SQLite database (its first bytes are not SQLite's header); {fix}")
    try:
        connection = sqlite3.connect(path, timeout=5)
        try:
            rows = connection.execute("PRAGMA quick_check").fetchall()
        finally:
            connection.close()
    except sqlite3.OperationalError as exc:  # busy, locked, or a full disk while rolling back a crashed write
        if disk_full_cause(exc) is not None:
            raise disk_full_error(path.parent) from exc
        return
    except sqlite3.DatabaseError as exc:
        raise PrunerError(f"storage {path} is a damaged SQLite database ({exc}); {fix}") from exc
    if rows != [("ok",)]:
        raise PrunerError(f"storage {path} is a damaged SQLite database ({rows[0][0]}); restore it from a backup, "
                          f"or recover it with `sqlite3 {path} .recover | sqlite3 recovered.db`")  # fmt: skip
