"""Where a study lives: storage URLs checked before any compute, heartbeats, and bounded retries.

A study is an Optuna study in a storage that many workers may share: an RDB URL (``sqlite:///x.db``,
``postgresql://user@host:port/db``, any SQLAlchemy URL whose driver is installed) or ``journal:PATH``
(Optuna's journal file). Everything a user can get wrong about the URL (a malformed one, a database
driver not installed, a study name that does not exist) is one :class:`PrunerError` line, raised before
the search builds its calibration.

Workers that die (SIGKILL, OOM, preemption) leave a RUNNING trial behind. On RDB storages Optuna's
heartbeat (``heartbeat_interval``, ``grace_period``) marks such a trial FAIL and Optuna's retry callback
enqueues its parameters again; the journal file has no heartbeat, so :func:`fail_stale` does the same
from a heartbeat the search records itself (see :class:`Heartbeat`).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from pruner.errors import DiskFull, PrunerError, first_line
from pruner.io import disk_full_cause, disk_full_error
from pruner.study.damage import SafeJournalFile, check_journal, check_sqlite

__all__ = [
    "Heartbeat",
    "default_storage",
    "fail_stale",
    "has_native_heartbeat",
    "heartbeat",
    "heartbeat_interval",
    "is_storage_url",
    "load_existing_study",
    "only_study",
    "open_storage",
    "open_study",
    "retry_trial",
    "sqlalchemy_url",
    "storage_of",
    "with_retries",
]

T = TypeVar("T")
# Package to install per database driver module SQLAlchemy imports (the module named in its ImportError).
_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary] (pip install 'pruner[postgres]')",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "cx_Oracle": "cx_Oracle",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}
MAX_RETRIES = 3  # a plan whose trial failed this many times is not enqueued again
RETRIED_FROM = "retried_from"  # user attribute: the trial number this one retries


def heartbeat_interval() -> int:
    """Seconds between a running trial's heartbeats (``PRUNER_HEARTBEAT``, default 10); a trial whose
    heartbeat is three intervals old belongs to a dead worker."""
    try:
        return max(1, int(os.environ.get("PRUNER_HEARTBEAT", "10")))
    except ValueError as exc:
        raise PrunerError(f"PRUNER_HEARTBEAT must be whole seconds (got {os.environ['PRUNER_HEARTBEAT']!r})") from exc


def default_storage(study: str, create: bool = True) -> str:
    """A SQLite file under the gitignored ``search/runs/`` folder (created only when ``create``)."""
    folder = Path("search") / "runs"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / (study + '.db')}"


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL for a user's RDB URL, its driver checked: one line when it is malformed or its
    driver is not installed. ``postgresql://`` and ``postgres://`` mean psycopg 3 (the ``postgres`` extra)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url.removeprefix(plain)
    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise PrunerError(
            f"storage= {url!r} is not a storage URL; use sqlite:///PATH.db, postgresql://USER@HOST:PORT/DB "
            "or journal:PATH"
        ) from exc
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (exc.name or dialect.driver).split(".")[0]
        package = _DRIVER_PACKAGES.get(module, module)
        raise PrunerError(
            f"storage= {url.split(':')[0]}:// needs the database driver {module!r}: pip install {package}"
        ) from exc
    return url


def has_native_heartbeat(storage: Any) -> bool:
    """Whether Optuna itself records heartbeats for this storage (RDB storages do, the journal does not)."""
    from optuna.storages import RDBStorage

    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def _retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat-stale callback: enqueue the failed trial's plan again (bounded)."""
    retry_trial(study, trial)


def _rdb_storage(url: str) -> BaseStorage:
    from optuna.storages import RDBStorage

    interval = heartbeat_interval()
    sqlite = url.startswith("sqlite")
    engine = {} if sqlite else {"pool_pre_ping": True}  # reconnect after the server restarts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=interval, grace_period=3 * interval,
                          **_stale_callback_kwarg(RDBStorage))  # fmt: skip


def _stale_callback_kwarg(rdb: type) -> dict[str, Any]:
    """Optuna >= 4.9 names the argument ``heartbeat_stale_trial_callback``; older ones ``failed_trial_callback``."""
    import inspect

    name = "heartbeat_stale_trial_callback"
    if name not in inspect.signature(rdb).parameters:
        name = "failed_trial_callback"
    return {name: _retry_stale}


def storage_of(url: str) -> Any:
    """An Optuna storage for a URL: an RDB URL (with heartbeats), ``journal:PATH`` (a journal file) or ``memory``.

    Opening a storage touches the database (tables are created on first use): :func:`open_storage` adds
    retries and one-line errors around it. ``memory``: this process only, nothing written."""
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage

        return JournalStorage(SafeJournalFile(url.removeprefix("journal:")))
    return _rdb_storage(sqlalchemy_url(url))


def _transient() -> tuple[type[BaseException], ...]:
    """Errors of a database that is down or restarting, or of two workers creating tables at once."""
    from sqlalchemy.exc import DBAPIError

    return (DBAPIError, optuna.exceptions.StorageInternalError, ConnectionError, TimeoutError)


def _caused_by_outage(exc: BaseException) -> bool:
    """Whether an outage error is the exception or in its chain (Optuna can mask one while failing a trial)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _transient()):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _root_reason(exc: BaseException) -> str:
    """The first line of the deepest error in the chain: the database's own words, not a wrapper's guess
    (Optuna wraps every failed commit as "invalid data ... e.g. exceeding max length")."""
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    return first_line(exc)


def _local_failure(exc: BaseException, what: str, url: str) -> PrunerError | None:
    """A failure of the storage file itself, which waiting does not cure: a full disk, or a SQLite file that
    is not (or no longer) a database. None for anything else."""
    said = _pruner_error_in(exc)
    if said is not None:  # our own journal's one line (a full disk, with its folder), wrapped by Optuna
        return said
    path = _file_of(url)
    if disk_full_cause(exc) is not None:
        if path is not None:
            return disk_full_error(path.parent)
        return DiskFull(f"disk full while {what}: the study storage's file system has no space left; free space "
                        "there and rerun the same command")  # fmt: skip
    reason = _root_reason(exc)
    if path is not None and any(w in reason for w in ("not a database", "malformed", "unable to open", "readonly")):
        return PrunerError(f"storage {path} failed while {what}: {reason}; check the file is still there and "
                           "writable, or restore it from a backup")  # fmt: skip
    return None


def _pruner_error_in(exc: BaseException) -> PrunerError | None:
    """The first PrunerError in ``exc``'s chain (Optuna re-raises a storage's error as its own), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PrunerError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _file_of(url: str) -> Path | None:
    """The file of a file-backed storage URL (sqlite:///PATH, journal:PATH), else None."""
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix) and url.removeprefix(prefix) not in ("", ":memory:"):
            return Path(url.removeprefix(prefix))
    return None


def with_retries(call: Callable[[], T], what: str, attempts: int = 6, wait: float = 1.0, url: str = "") -> T:
    """``call()``, retried with exponential backoff while the database is unreachable, each retry said on
    stderr; after ``attempts`` tries one line says what failed. A full disk or a damaged file (of ``url``)
    is one line at once: retrying cannot help."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except PrunerError:
            raise
        except Exception as exc:
            local = _local_failure(exc, what, url)
            if local is not None:
                raise local from exc
            if not _caused_by_outage(exc):
                raise
            if attempt == attempts:
                raise PrunerError(
                    f"storage unreachable while {what} after {attempts} tries: {_root_reason(exc)}"
                ) from exc
            delay = wait * 2 ** (attempt - 1) * (1 + random.random() / 2)
            print(f"storage unreachable while {what}; retry {attempt}/{attempts - 1} in {delay:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(delay)
    raise AssertionError("unreachable")


def open_storage(url: str, repair: bool = True) -> Any:
    """:func:`storage_of`, with a file storage's location checked and retries while the server is down (a
    malformed URL or a missing driver is one line at once: those errors are not retried).

    A file damaged by a crash or a full disk is found here, before anything is appended: a journal's torn
    last line is dropped (``repair``; else left, Optuna's reader skips it), a damaged line or a file that
    is not a SQLite database is refused (see :mod:`pruner.study.damage`)."""
    path = _file_of(url)
    if path is not None:
        _check_writable(path)
        if url.startswith("journal:"):
            check_journal(path, repair=repair)
        else:
            check_sqlite(path)
    return with_retries(lambda: storage_of(url), "opening the study storage", url=url)


def _check_writable(path: Path) -> None:
    """A file storage's folder exists (or can be made) and the path is not a folder."""
    if path.is_dir():
        raise PrunerError(f"storage= path {path} is a folder; name a file in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrunerError(f"cannot create the folder of storage= {path}: {exc.strerror}") from exc
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PrunerError(f"storage= {path} is not writable; choose another path")


def open_study(
    name: str, url: str, directions: Sequence[Literal["minimize", "maximize"]], sampler: optuna.samplers.BaseSampler
) -> tuple[optuna.Study, Any]:
    """Create the study, or join it when it exists, and return it with its storage. Many workers may run
    this at the same moment: a lost race to create it (a unique-constraint error) loads the winner's study."""
    storage = open_storage(url)

    def create() -> optuna.Study:
        try:
            return optuna.create_study(study_name=name, storage=storage, directions=list(directions),
                                       sampler=sampler, load_if_exists=True)  # fmt: skip
        except optuna.exceptions.DuplicatedStudyError:  # created between our insert and our lookup
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)

    try:
        return with_retries(create, f"opening study {name!r}", url=url), storage
    except ValueError as exc:
        raise PrunerError(
            f"study {name!r} in {url} does not match these objectives ({exc}); use another study="
        ) from exc


def is_storage_url(text: str) -> bool:
    """Whether ``text`` is a storage URL (``sqlite:///x.db``, ``journal:PATH``, ``postgresql://...``), not a name."""
    return "://" in text or text.startswith("journal:")


def _existing_file(url: str, name: str) -> None:
    """A file storage's file exists (nothing is created to find out it held no study)."""
    path = _file_of(url)
    if path is not None and not path.is_file():
        raise PrunerError(f"no study {name!r}: {path} does not exist; check storage=")


def only_study(url: str) -> str:
    """The name of the one study ``url`` holds (so a storage URL can stand for its study); one line when it
    holds none or several."""
    _existing_file(url, url)
    names = optuna.get_all_study_names(open_storage(url, repair=False))
    if len(names) != 1:
        listed = (
            f"{len(names)} studies ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else "no study"
        )
        raise PrunerError(f"{url} holds {listed}; name the study: pruner front NAME --storage {url}")
    return names[0]


def load_existing_study(name: str, url: str) -> optuna.Study:
    """Load a study that must exist; creates nothing (no empty database file, no tables) when it does not."""
    _existing_file(url, name)
    storage = open_storage(url, repair=False)  # reading changes nothing: Optuna's reader skips a torn last line
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        raise PrunerError(f"no study {name!r} in {url}; check the name `pruner search` printed, or storage=") from exc


# --- dead workers ------------------------------------------------------------------------------------------


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Enqueue a failed trial's parameters and plan again (WAITING), unless it already failed ``MAX_RETRIES``
    times; returns whether it did. The retry carries the plan's user attributes (``seed_removed``,
    ``proposed``, ``label``, ``plan_key``), so it scores the same plan, and ``retried_from`` names the first failure."""
    history = [*trial.user_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRIES:
        return False
    plan_attrs = ("label", "seed_removed", "proposed", "origin", "plan_key")
    keep: dict[str, Any] = {k: trial.user_attrs[k] for k in plan_attrs if k in trial.user_attrs}
    attrs: dict[str, Any] = {**keep, RETRIED_FROM: history[0], "retry_history": history}
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, user_attrs=attrs))  # fmt: skip
    return True


class Heartbeat:
    """A running trial's own heartbeat, for storages without Optuna's (the journal file): a daemon thread
    stores the time in the ``heartbeat`` user attribute every :func:`heartbeat_interval` seconds."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self._trial, self._interval, self._stop = trial, interval, threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a storage hiccup: the next beat tries again
                self._trial.set_user_attr("heartbeat", time.time())
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def heartbeat(trial: optuna.Trial, storage: Any) -> Iterator[None]:
    """Beat for the trial when its storage has no heartbeat of its own; nothing otherwise."""
    if has_native_heartbeat(storage):
        yield
        return
    with Heartbeat(trial, heartbeat_interval()):
        yield


def fail_stale(study: optuna.Study, storage: Any) -> int:
    """Mark the trials of dead workers FAIL and enqueue their plans again; returns how many.

    RDB storages: Optuna's heartbeat check (its callback retries). Others: RUNNING trials whose own
    ``heartbeat`` user attribute (else their start) is older than three intervals."""
    if has_native_heartbeat(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
            optuna.storages.fail_stale_trials(study)
            return len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - before
    grace, now, failed = 3 * heartbeat_interval(), time.time(), 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        start = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - float(trial.user_attrs.get("heartbeat", start)) > grace:
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError):  # another worker failed it first
                continue
            failed += 1
            retry_trial(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))
    return failed
