"""Hostile storage: a study file damaged by a crash or a full disk is found before anything is appended to it,
repaired where nothing is lost (a journal's torn last line) or refused in one line, never made worse by a rerun."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import optuna
import pytest
from test_hostile import one_line_error, runner

from pruner.cli import app
from pruner.errors import DiskFull, PrunerError
from pruner.study.storage import open_storage
from pruner.study.workers import counted

TORN = b'{"op_code":5,"worker_id":"dead","trial_id":3,"par'


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def _study(url: str, trials: int) -> optuna.Study:
    """Open (or join) study "s" in ``url`` the way pruner does, and run ``trials`` more trials on it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=open_storage(url), load_if_exists=True)
    study.optimize(_objective, n_trials=trials)
    return study


def _trials(url: str) -> int:
    return len(optuna.load_study(study_name="s", storage=open_storage(url, repair=False)).trials)


def test_a_torn_last_journal_line_is_dropped_with_a_note_and_the_rerun_appends_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, url = tmp_path / "study.log", f"journal:{tmp_path / 'study.log'}"
    _study(url, 3)
    intact = path.read_bytes()
    path.write_bytes(intact + TORN)  # what a full disk or a killed machine leaves
    _study(url, 2)  # the rerun the project recommends
    assert "torn record" in capsys.readouterr().err
    assert _trials(url) == 5 and path.read_bytes().startswith(intact)
    (backup,) = tmp_path.glob("study.log.torn-*.bak")
    assert backup.read_bytes() == intact + TORN  # the original, kept


def test_reading_a_journal_with_a_torn_last_line_changes_nothing(tmp_path: Path) -> None:
    path, url = tmp_path / "study.log", f"journal:{tmp_path / 'study.log'}"
    _study(url, 2)
    path.write_bytes(path.read_bytes() + TORN)
    before = path.read_bytes()
    assert _trials(url) == 2 and path.read_bytes() == before


def test_a_garbage_line_in_a_journal_is_refused_in_one_line_and_left_as_it_was(tmp_path: Path) -> None:
    path, url = tmp_path / "study.log", f"journal:{tmp_path / 'study.log'}"
    _study(url, 3)
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = b"".join([*lines[:2], b"\x00\x00garbage\n", *lines[2:]])
    path.write_bytes(damaged)
    with pytest.raises(PrunerError, match=rf"journal {path} is damaged at line 3 .*restore it from a backup"):
        _study(url, 1)
    one_line_error(runner.invoke(app, ["front", "s", "--storage", url]), str(path), "line 3")
    assert path.read_bytes() == damaged  # never made worse


def test_a_journal_append_cut_short_by_a_full_disk_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, url = tmp_path / "study.log", f"journal:{tmp_path / 'study.log'}"
    study = _study(url, 2)
    write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if os.fstat(fd).st_ino != path.stat().st_ino:
            return write(fd, data)
        write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(DiskFull, match=rf"disk full: writing in {tmp_path} needs about \d+ B"):
        study.optimize(_objective, n_trials=1)
    monkeypatch.undo()
    assert path.read_bytes().endswith(b"\n")
    _study(url, 1)
    assert _trials(url) >= 3


def _sqlite(tmp_path: Path, content: bytes | None = None) -> tuple[Path, str]:
    path = tmp_path / "study.db"
    if content is None:
        _study(f"sqlite:///{path}", 3)
        data = bytearray(path.read_bytes())
        for page in range(2 * 4096, len(data), 4096):  # every page header from the third on
            data[page : page + 8] = b"\xff" * 8
        content = bytes(data)
    path.write_bytes(content)
    return path, f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("content", "said"),
    [(b"this is a text file, not a database\n" * 40, "not a SQLite database"), (None, "damaged SQLite database")],
)
@pytest.mark.parametrize("command", ["front", "search"])
def test_a_sqlite_file_that_is_not_a_sound_database_is_one_line_at_once(
    tmp_path: Path, content: bytes | None, said: str, command: str
) -> None:
    path, url = _sqlite(tmp_path, content)
    before = path.read_bytes()
    args = ["front", "s"] if command == "front" else ["search", "--out", str(tmp_path / "r"), "--study", "s"]
    one_line_error(runner.invoke(app, [*args, "--storage", url]), str(path), said)
    assert path.read_bytes() == before


@pytest.mark.slow
def test_a_search_rerun_on_a_journal_a_full_disk_tore_repairs_it_and_finishes(
    tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path
) -> None:
    path = tmp_path / "study.log"
    args = ["search", "--teacher", tiny_sdxl_pipeline, "--data", str(tiny_cache), "--budget", "50%", "--proxy-steps",
            "1", "--calibration", "8", "--noise-seeds", "0", "--storage", f"journal:{path}", "--study", "t", "--out",
            str(tmp_path / "r")]  # fmt: skip
    assert runner.invoke(app, [*args, "--trials", "2"]).exit_code == 0
    path.write_bytes(path.read_bytes() + TORN)
    result = runner.invoke(app, [*args, "--trials", "3"])  # the rerun the project recommends
    assert result.exit_code == 0 and "torn record" in result.output, result.output
    study = optuna.load_study(study_name="t", storage=open_storage(f"journal:{path}", repair=False))
    assert sum(counted(t) for t in study.trials) == 3
    assert runner.invoke(app, ["front", f"journal:{path}", "--plot", str(tmp_path / "front.png")]).exit_code == 0
    assert (tmp_path / "front.png").is_file()
