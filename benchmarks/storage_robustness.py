"""How Optuna's own study storages fare on a full disk and on SIGKILL: plain Optuna, no pruner code.

Four measurements, printed one line each (docs/robustness.md quotes them):

- a journal file (JournalFileBackend) whose last line is torn, then appended to;
- a full disk (an 8 MB tmpfs, filled) under a journal file and under SQLite (RDBStorage), then space freed;
- ``--kills`` SIGKILLs of a process writing trials, at random moments, for each of the two.

Needs root for the tmpfs (the full-disk lines are skipped without it).

    sudo python benchmarks/storage_robustness.py --kills 25
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

TORN = b'{"op_code":5,"worker_id":"w","trial_id":3,"par'
WRITER = """
import sys, optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
optuna.logging.set_verbosity(optuna.logging.ERROR)
kind, path = sys.argv[1], sys.argv[2]
storage = JournalStorage(JournalFileBackend(path)) if kind == "journal" else RDBStorage(f"sqlite:///{path}")
study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
print("go", flush=True)
def objective(trial):
    trial.set_user_attr("notes", "y" * 20000)
    return trial.suggest_float("x", 0, 1)
study.optimize(objective, n_trials=100000)
"""


def storage_factory(kind: str, path: Path) -> Callable[[], Any]:
    if kind == "journal":
        return lambda: JournalStorage(JournalFileBackend(str(path)))
    return lambda: RDBStorage(f"sqlite:///{path}")


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1)


def big_objective(trial: optuna.Trial) -> float:
    trial.set_user_attr("notes", "x" * 300_000)  # more than the disk has left
    return objective(trial)


def outcome(call: Callable[[], Any]) -> str:
    """What ``call()`` returned, or its error's class and first words."""
    try:
        return str(call())
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:70]}"


def trials(make: Callable[[], Any]) -> int:
    return len(optuna.load_study(study_name="s", storage=make()).trials)


def append(make: Callable[[], Any]) -> str:
    optuna.load_study(study_name="s", storage=make()).optimize(objective, n_trials=1)
    return "ok"


def chain(exc: BaseException) -> str:
    """The error and its causes, first words of each."""
    parts, current = [], exc
    while current is not None and len(parts) < 3:
        parts.append(f"{type(current).__name__}: {(str(current).splitlines() or [''])[0][:60]}")
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


def torn_then_append() -> None:
    path = Path(tempfile.mkdtemp()) / "s.log"
    make = storage_factory("journal", path)
    optuna.create_study(study_name="s", storage=make()).optimize(objective, n_trials=3)
    path.write_bytes(path.read_bytes() + TORN)
    read = outcome(lambda: trials(make))
    first, second = outcome(lambda: append(make)), outcome(lambda: append(make))
    print(f"[journal, torn last line] read: {read} trials; 1st append: {first}; 2nd append: {second}; "
          f"read: {outcome(lambda: trials(make))}")  # fmt: skip


@contextmanager
def small_disk() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp())
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def full_disk(kind: str) -> None:
    with small_disk() as disk:
        path = disk / ("s.log" if kind == "journal" else "s.db")
        make = storage_factory(kind, path)
        study = optuna.create_study(study_name="s", storage=make())
        study.optimize(objective, n_trials=3)
        fd = os.open(disk / "ballast", os.O_CREAT | os.O_WRONLY)
        os.posix_fallocate(fd, 0, shutil.disk_usage(disk).free - 100_000)
        os.close(fd)
        try:
            study.optimize(big_objective, n_trials=1)
            error = "none"
        except Exception as exc:
            error = chain(exc)
        ends = path.read_bytes().endswith(b"\n") if kind == "journal" else "-"
        (disk / "ballast").unlink()
        read, more = outcome(lambda: trials(make)), outcome(lambda: append(make))
        check = sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()[0] if kind == "sqlite" else "-"
        print(f"[{kind}, full disk] error: {error}; file ends in a newline: {ends}; after freeing: read {read}, "
              f"next trial {more}, read {outcome(lambda: trials(make))}; quick_check: {check}")  # fmt: skip


def kills(kind: str, n: int) -> None:
    path = Path(tempfile.mkdtemp()) / ("s.log" if kind == "journal" else "s.db")
    make = storage_factory(kind, path)
    torn = damaged = 0
    for _ in range(n):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(path)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "go"
        time.sleep(random.uniform(0.2, 1.0))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if kind == "journal":
            torn += not path.read_bytes().endswith(b"\n")
            Path(f"{path}.lock").unlink(missing_ok=True)  # the killed writer's lock: else a 30 s wait
        else:
            damaged += sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()[0] != "ok"
        damaged += not outcome(lambda: trials(make)).isdigit()
    print(f"[{kind}, {n} SIGKILLs] torn last lines: {torn}; unreadable or damaged after a kill: {damaged}; "
          f"trials at the end: {trials(make)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25, help="SIGKILLs of a writer per storage")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"optuna {optuna.__version__}, sqlite {sqlite3.sqlite_version}")
    torn_then_append()
    if os.geteuid() == 0:
        full_disk("journal")
        full_disk("sqlite")
    else:
        print("[full disk] skipped: mounting a small tmpfs needs root")
    kills("journal", args.kills)
    kills("sqlite", args.kills)


if __name__ == "__main__":
    main()
