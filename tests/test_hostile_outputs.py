"""Hostile outputs: one run at a time owns an output (a second is refused in one line; a dead run's lock does not
outlive it), and a full disk anywhere is one line naming the folder and the bytes, after which the same command
continues where it stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_hostile import RECIPES, one_line_error, runner

from pruner.cli import app
from pruner.errors import OutputInUse
from pruner.io import output_lock

ROOT = Path(__file__).resolve().parents[1]
HOLD = (
    "import sys, time; from pruner.io import output_lock\n"
    "with output_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(600)"
)


def error_after_progress(result, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    """Exit code 2, no traceback, and the one `error:` line (after any progress bars) holds every fragment."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _held_elsewhere(path: Path) -> subprocess.Popen[str]:
    """A separate process that takes the lock of ``path`` and sleeps; returns once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_holder_frees_the_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = _held_elsewhere(out)
    try:
        with (
            pytest.raises(OutputInUse, match=rf"--out {out} is in use by pid {holder.pid} on host "),
            output_lock(out, "--out"),
        ):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock with the process
        holder.wait()
    with output_lock(out, "--out"):
        assert (tmp_path / ".run.lock").is_file()
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_a_waiting_run_gets_the_output_when_the_holder_ends(tmp_path: Path) -> None:
    holder = _held_elsewhere(tmp_path / "run")
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
    with output_lock(tmp_path / "run", wait=60):
        assert time.monotonic() - started < 60
    holder.wait()


@pytest.mark.parametrize("command", ["distill", "cache", "export", "port-lora"])
def test_a_run_onto_an_output_another_run_holds_is_one_line(command: str, tmp_path: Path) -> None:
    recipe = str(RECIPES / "tiny-sdxl-bk-small.yaml")
    out = {"export": tmp_path / "u.safetensors", "port-lora": tmp_path / "l.safetensors"}.get(command, tmp_path / "o")
    args = {
        "distill": ["distill", recipe, "--output", str(out), "--steps", "1"],
        "cache": ["cache", str(tmp_path / "pictures"), "--teacher", "tiny-sdxl", "--out", str(out)],
        "export": ["export", "tiny-sdxl", "--unet-only", "--out", str(out)],
        "port-lora": ["port-lora", str(tmp_path / "teacher-lora.safetensors"), "--recipe", recipe, "--out", str(out)],
    }[command]
    if command == "port-lora":
        _teacher_lora(tmp_path / "teacher-lora.safetensors")
    if command == "cache":
        assert runner.invoke(app, ["synth-data", "--out", str(tmp_path / "pictures"), "--n", "2"]).exit_code == 0
    with output_lock(out, "--out"):
        one_line_error(runner.invoke(app, args), str(out), f"is in use by pid {os.getpid()}")
    assert not out.exists()


def _teacher_lora(path: Path) -> None:
    """A rank-2 LoRA of the bundled teacher's first attention query projection (diffusers layout)."""
    import torch
    from safetensors.torch import save_file

    module = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    from pruner.unet import load_unet

    weight = dict(load_unet("tiny-sdxl").named_parameters())[f"{module}.weight"]
    save_file({f"unet.{module}.lora_A.weight": torch.randn(2, weight.shape[1]),
               f"unet.{module}.lora_B.weight": torch.randn(weight.shape[0], 2)}, str(path))  # fmt: skip


@pytest.mark.slow
def test_two_distills_started_together_onto_one_output_one_is_refused(tmp_path: Path) -> None:
    recipe, out = str(RECIPES / "tiny-sdxl-bk-small.yaml"), tmp_path / "o"
    command = [sys.executable, "-m", "pruner", "distill", recipe, "--output", str(out), "--steps", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(run.wait(), run.communicate()[1]) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert f"--output {out} is in use by pid" in refused and "Traceback" not in refused


# --------------------------------------------------------------------------- a full disk, for real


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 128 MB tmpfs: a real file system that fills up. Skipped where mounting is not permitted (not root,
    or a container without CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a small tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of ``disk`` with a ballast file; delete it to free the space."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, max(4096, shutil.disk_usage(disk).free - leave))
    finally:
        os.close(fd)
    return ballast


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latent cache of 12 pictures of the bundled teacher."""
    root = tmp_path_factory.mktemp("full-disk")
    assert runner.invoke(app, ["synth-data", "--out", str(root / "pictures"), "--n", "12"]).exit_code == 0
    result = runner.invoke(app, ["cache", str(root / "pictures"), "--teacher", "tiny-sdxl", "--out", str(root / "c")])
    assert result.exit_code == 0, result.output
    return root / "c"


def test_a_full_disk_in_cache_is_one_line_and_the_rerun_finishes(small_disk: Path, tiny_cache: Path) -> None:
    pictures, out = tiny_cache.parent / "pictures", small_disk / "cache"
    args = ["cache", str(pictures), "--teacher", "tiny-sdxl", "--out", str(out)]
    ballast = _fill(small_disk, 8192)
    error_after_progress(runner.invoke(app, args), f"disk full: writing in {out} needs about", "free", "rerun")
    ballast.unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "cached 12 rows" in result.output, result.output


def _distill(data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    recipe = str(RECIPES / "tiny-sdxl-bk-small.yaml")
    return runner.invoke(app, ["distill", recipe, "--data", str(data), "--output", str(out), "--steps", "1",
                               "--batch-size", "2", *extra])  # fmt: skip


@pytest.mark.slow
def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_the_same_command_then_trains(
    small_disk: Path, tiny_cache: Path
) -> None:
    out = small_disk / "o"
    ballast = _fill(small_disk, 16_000_000)  # a checkpoint of this student takes 64 MB
    line = error_after_progress(_distill(tiny_cache, out), f"disk full: writing in {out}/checkpoints needs about")
    assert "rerun the same command" in line and "--resume" not in line
    assert not list((out / "checkpoints").glob(".*partial"))  # what it took is freed at once
    ballast.unlink()
    result = _distill(tiny_cache, out)
    assert result.exit_code == 0 and (out / "unet" / "config.json").is_file(), result.output


@pytest.mark.slow
def test_a_full_disk_at_the_final_write_is_one_line_and_resume_writes_the_outputs(
    small_disk: Path, tiny_cache: Path
) -> None:
    out = small_disk / "o"
    ballast = _fill(small_disk, 64_100_000 + 12_000_000)  # room for the checkpoint, not for the 26 MB outputs
    error_after_progress(_distill(tiny_cache, out), f"disk full: writing in {out} needs about", "--resume")
    assert not (out / "unet").exists() and not (out / ".final.partial").exists()
    ballast.unlink()
    result = _distill(tiny_cache, out, "--resume")
    assert result.exit_code == 0 and (out / "metrics.json").is_file(), result.output


def test_a_checkpoint_left_half_written_is_no_dead_end(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    partial = out / "checkpoints" / ".step-0000002.partial"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"cut short")
    result = _distill(tiny_cache, out)  # the plain rerun: no complete checkpoint, so it starts again
    assert result.exit_code == 0 and (out / "unet" / "config.json").is_file(), result.output
    assert not partial.exists()
    assert f"next: pruner eval {out} --teacher tiny-sdxl" in result.output  # what to run next, as search says


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_full_disk_under_a_study_is_one_line_at_once_and_the_study_continues(small_disk: Path, kind: str) -> None:
    import optuna

    from pruner.errors import DiskFull
    from pruner.study.storage import open_storage, with_retries

    url = f"sqlite:///{small_disk}/s.db" if kind == "sqlite" else f"journal:{small_disk}/s.log"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    ballast = _fill(small_disk, 0)

    def big_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("notes", "x" * 200_000)
        return trial.suggest_float("x", 0, 1)

    started = time.monotonic()
    with pytest.raises(DiskFull, match=rf"disk full: writing in {small_disk}"):
        rdb_url = url if kind == "sqlite" else ""  # what a worker knows: an RDB storage's URL; the journal names itself
        with_retries(lambda: study.optimize(big_trial, n_trials=1), "running a trial", url=rdb_url)
    assert time.monotonic() - started < 10  # not retried as "unreachable"
    ballast.unlink()
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3


def test_a_search_writing_an_out_another_run_holds_waits_then_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from test_hostile_cli import _front_study

    import pruner.study.front as front
    from pruner.recipe import Recipe

    url = f"sqlite:///{tmp_path / 's.db'}"
    _front_study(url)
    study = optuna.load_study(study_name="wide", storage=url)
    recipe = Recipe.model_validate({"schema_version": 1, "name": "r", "teacher": {"model": "tiny-sdxl"},
                                    "plan": {"remove": []},
                                    "distill": {"stages": [{"steps": 1, "learning_rate": 1e-4}]}})  # fmt: skip
    monkeypatch.setattr(front, "EXPORT_WAIT", 0.5)  # a worker of the same study would finish within it
    with output_lock(tmp_path / "r", "--out"), pytest.raises(OutputInUse, match=f"--out {tmp_path / 'r'} is in use"):
        front.export_front(study, tmp_path / "r", lambda _trial: recipe)
    assert not (tmp_path / "r").exists()
    assert front.export_front(study, tmp_path / "r", lambda _trial: recipe)["found"].is_file()
