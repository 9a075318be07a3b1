"""Storage URLs, study settings and trial bookkeeping: one line for what a user gets wrong, before any compute;
claims that keep workers from scoring a plan twice or overshooting --trials; dead workers' trials retried."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from pruner.cli import app
from pruner.errors import PrunerError
from pruner.study.storage import fail_stale, sqlalchemy_url
from pruner.study.workers import check_settings, claim_plan, claim_slot, counted, plan_key, worker_seed
from pruner.unet.plan import Plan

runner = CliRunner()


def one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/db", "pip install mysqlclient"),
        ("mysql+pymysql://root@localhost/db", "pip install pymysql"),
        ("nonsense", "is not a storage URL"),
        ("foo://bar", "is not a storage URL"),
    ],
)
def test_a_storage_url_without_its_driver_or_malformed_gets_one_line_before_any_compute(
    url: str, message: str, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["search", "--storage", url, "--study", "s", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert message in one_error_line(result.output)  # no "building the calibration set" line before it


def test_plain_postgresql_urls_mean_psycopg() -> None:
    assert sqlalchemy_url("postgresql://me@db:5432/studies") == "postgresql+psycopg://me@db:5432/studies"
    assert sqlalchemy_url("postgres://me@db/studies") == "postgresql+psycopg://me@db/studies"


def test_front_of_a_study_that_does_not_exist_creates_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["front", "nosuchstudy"])
    assert result.exit_code == 2 and "nosuchstudy" in one_error_line(result.output)
    assert not list(tmp_path.rglob("*")), "nothing may be created"
    journal = runner.invoke(app, ["front", "x", "--storage", f"journal:{tmp_path / 'j.log'}"])
    assert journal.exit_code == 2 and not (tmp_path / "j.log").exists()


def test_a_rerun_with_another_budget_is_refused_naming_the_difference(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage, directions=["minimize", "minimize"])
    study.set_user_attr("search", {"teacher": "tiny-sdxl", "budget": "50% of the teacher's parameters",
                                   "space": "default", "objectives": ["quality", "macs"]})  # fmt: skip
    result = runner.invoke(app, ["search", "--budget", "30%", "--storage", storage, "--study", "s",
                                 "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert "budget" in line and "50%" in line and "30%" in line
    with pytest.raises(PrunerError, match="space"):
        check_settings(study, {**study.user_attrs["search"], "space": "depth-width"})
    check_settings(study, study.user_attrs["search"])  # the same settings pass


def test_a_plan_claimed_by_a_running_or_finished_trial_is_not_scored_again() -> None:
    study = optuna.create_study()
    first, second = study.ask(), study.ask()
    key = plan_key(Plan.removing(["mid_block"]))
    claim_plan(first, key)
    with pytest.raises(optuna.TrialPruned):
        claim_plan(second, key)
    assert second.user_attrs["skipped"] == "duplicate" and second.user_attrs["duplicate_of"] == first.number
    assert plan_key(Plan.removing(["mid_block"])) == key != plan_key(Plan.removing(["mid_block"], {1: 0.5}))


def test_a_trial_beyond_the_count_steps_aside_and_does_not_count() -> None:
    study = optuna.create_study()
    running = [study.ask() for _ in range(2)]
    for trial in running:
        claim_slot(trial, 2)
    extra = study.ask()
    with pytest.raises(optuna.TrialPruned):
        claim_slot(extra, 2)
    study.tell(extra, state=TrialState.PRUNED)
    study.tell(running[0], 1.0)
    frozen = study.trials
    assert counted(frozen[0]) and not counted(frozen[2]) and frozen[2].user_attrs["skipped"] == "surplus"


def test_workers_joining_a_study_get_different_sampler_seeds() -> None:
    study = optuna.create_study()
    seeds = [worker_seed(study, 7) for _ in range(3)]
    assert seeds[0] == 7 and len(set(seeds)) == 3


def test_a_trial_whose_heartbeat_stopped_is_failed_and_its_plan_enqueued_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PRUNER_HEARTBEAT", "1")
    storage = optuna.storages.InMemoryStorage()  # like the journal file: no heartbeat of its own
    study = optuna.create_study(storage=storage)
    stale = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    proposed = {"removed": ["mid_block"], "ff_keep": {}}  # a plan sampler's proposal: retried as the same plan
    for key, value in {"slot": True, "plan_key": "abc", "proposed": proposed, "heartbeat": 0.0}.items():
        stale.set_user_attr(key, value)
    alive = study.ask()
    alive.set_user_attr("heartbeat", 1e12)  # far in the future: beating
    assert fail_stale(study, storage) == 1
    trials = study.trials
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.RUNNING
    retry = trials[2]
    assert retry.state == TrialState.WAITING and retry.params == trials[0].params
    assert retry.user_attrs["retried_from"] == 0 and retry.user_attrs["plan_key"] == "abc"
    assert retry.user_attrs["proposed"] == proposed


@pytest.mark.slow
def test_ctrl_c_in_search_is_one_line_and_exit_code_130(
    tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pruner.study.study as study_module

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "run_worker", interrupted)
    result = runner.invoke(app, ["search", "--teacher", tiny_sdxl_pipeline, "--data", str(tiny_cache), "--trials", "2",
                                 "--calibration", "8", "--held-out", "4", "--storage",
                                 f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == (
        "interrupted: 0 of 2 trials complete; rerun the same command to continue"
    )


def test_a_storage_down_for_a_moment_is_retried_with_a_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy.exc import OperationalError

    from pruner.study.storage import with_retries

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
        return "ok"

    assert with_retries(flaky, "reading the study", wait=0.01) == "ok"
    assert capsys.readouterr().err.count("storage unreachable while reading the study; retry") == 2

    def masked() -> str:  # Optuna may raise another error while failing a trial during the outage
        calls.append(1)
        if len(calls) < 5:
            try:
                raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
            except OperationalError:
                raise UnboundLocalError("updated_state") from None
        return "ok"

    assert with_retries(masked, "running a trial", wait=0.01) == "ok"

    def down() -> str:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    with pytest.raises(PrunerError, match="storage unreachable while reading the study after 2 tries"):
        with_retries(down, "reading the study", attempts=2, wait=0.01)
