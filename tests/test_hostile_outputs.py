"""Hostile outputs: one run at a time owns an output (a second is refused in one line; a dead run's lock does not
outlive it), and a full disk anywhere is one line naming the folder and the bytes, after which the same command
continues where it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
