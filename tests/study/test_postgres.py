"""Many workers on one study in a real PostgreSQL server: exact trial counts, no plan scored twice, killed
workers' trials failed by heartbeat and retried, and `pruner front` reading the study."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from pruner.cli import app
from pruner.study.front import front_rows
from pruner.study.storage import storage_of
from pruner.study.workers import counted

pytestmark = pytest.mark.slow
WORKER_ENV = {"PRUNER_THREADS": "1", "OMP_NUM_THREADS": "1", "PRUNER_HEARTBEAT": "1"}


def search_command(teacher: str, cache: Path, url: str, study: str, trials: int, out: Path, steps: int = 1) -> list:
    """A CLI worker; ``steps`` of proxy KD at the second rung, and no longer third rung (the default 10/3 of it:
    40 steps for 12, which only lengthened the killed-worker test's surviving run)."""
    return [sys.executable, "-m", "pruner", "search", "--teacher", teacher, "--data", str(cache), "--budget", "50%",
            "--trials", str(trials), "--proxy-steps", str(steps), "--top-steps", str(steps), "--calibration", "8",
            "--held-out", "4", "--storage", url, "--study", study, "--out", str(out)]  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **WORKER_ENV}  # read at the call: the test's pruner cache, not the user's
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def finish(worker: subprocess.Popen[bytes], log: Path) -> None:
    assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]


def load(url: str, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=storage_of(url))


@pytest.fixture(scope="module")
def three_worker_study(tiny_sdxl_pipeline: str, tiny_cache: Path, postgres_url: str, tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    """Three CLI workers started together on one new study of 7 trials."""
    root = tmp_path_factory.mktemp("three")
    logs = [root / f"w{k}.log" for k in range(3)]
    workers = [start(search_command(tiny_sdxl_pipeline, tiny_cache, postgres_url, "three", 7, root / f"r{k}"), log)
               for k, log in enumerate(logs)]  # fmt: skip
    for worker, log in zip(workers, logs, strict=True):
        finish(worker, log)
    return "three"


def test_three_workers_reach_exactly_the_trial_count_without_scoring_a_plan_twice(
    three_worker_study: str, postgres_url: str
) -> None:
    study = load(postgres_url, three_worker_study)
    assert sum(counted(t) for t in study.trials) == 7
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    keys = collections.Counter(t.user_attrs["plan_key"] for t in complete)
    assert complete and max(keys.values()) == 1
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    seeds = collections.Counter(t.user_attrs["label"] for t in complete if t.user_attrs.get("label"))
    assert seeds and max(seeds.values()) == 1
    assert len([k for k in study.user_attrs if k.startswith("worker:")]) == 3


def test_pruner_front_on_the_postgres_study_equals_the_front_of_the_same_trials_in_memory(
    three_worker_study: str, postgres_url: str, tmp_path: Path
) -> None:
    study = load(postgres_url, three_worker_study)
    memory = optuna.create_study(directions=study.directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        memory.set_metric_names(study.metric_names or [])
    memory.add_trials(study.trials)
    for key, value in study.user_attrs.items():  # the noise floor and found choice too: ties are drawn from them
        memory.set_user_attr(key, value)
    expected = front_rows(memory)
    assert expected and front_rows(study) == expected
    shown = CliRunner().invoke(app, ["front", three_worker_study, "--storage", postgres_url,
                                     "--plot", str(tmp_path / "f.png")])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    cells = [line.split("│")[1].strip() for line in shown.stdout.splitlines() if line.startswith("│")]
    table_numbers = [c for c in cells if c]  # a row whose units wrap (the table fits 120 columns) goes on blank
    assert table_numbers == [str(r["number"]) for r in expected]


def _running_scored_trial(url: str, study: str) -> int | None:
    try:
        trials = load(url, study).trials
    except KeyError:
        return None
    running = [t.number for t in trials if t.state.name == "RUNNING" and "plan_key" in t.user_attrs]
    return running[0] if running else None


def test_a_worker_killed_mid_trial_is_failed_by_heartbeat_and_its_plan_retried(
    tiny_sdxl_pipeline: str, tiny_cache: Path, postgres_url: str, tmp_path: Path
) -> None:
    cmd = search_command(tiny_sdxl_pipeline, tiny_cache, postgres_url, "killed", 2, tmp_path / "r", steps=12)
    victim = start(cmd, tmp_path / "victim.log")
    deadline, killed = time.monotonic() + 300, None
    while killed is None and time.monotonic() < deadline and victim.poll() is None:
        killed = _running_scored_trial(postgres_url, "killed")
        time.sleep(0.2)
    assert killed is not None, (tmp_path / "victim.log").read_text()[-3000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = start(cmd, tmp_path / "survivor.log")
    finish(survivor, tmp_path / "survivor.log")
    study = load(postgres_url, "killed")
    assert study.trials[killed].state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get("retried_from") == killed]
    assert len(retries) == 1 and counted(retries[0])
    assert retries[0].user_attrs["plan_key"] == study.trials[killed].user_attrs["plan_key"]
    assert sum(counted(t) for t in study.trials) == 2
    complete = [t.user_attrs["plan_key"] for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete))
