"""Hostile command lines and a new user's frictions: what used to be a traceback is one line, `--debug` works
after the subcommand, `pruner front` takes the storage URL the search printed and fits 120 columns, long
captions do not flood the terminal, and a file name that is not UTF-8 is found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
from conftest import TINY_SDXL, make_unet
from optuna.trial import create_trial
from test_hostile import one_line_error, runner

from pruner.cli import app
from pruner.errors import PrunerError

ROOT = Path(__file__).resolve().parents[1]
REMOVED = [f"down_blocks.{b}.attentions.{a}.transformer_blocks.{t}" for b in (1, 2) for a in (0, 1) for t in (0, 1)]


def test_eval_of_a_student_of_another_teacher_is_one_line_before_any_picture(tmp_path: Path) -> None:
    make_unet({**TINY_SDXL, "cross_attention_dim": 48}).save_pretrained(tmp_path / "other")
    result = runner.invoke(app, ["eval", str(tmp_path / "other"), "--teacher", "tiny-sdxl", "--n", "1", "--steps",
                                 "1", "--grid", str(tmp_path / "g.png")])  # fmt: skip
    one_line_error(result, f"student {tmp_path / 'other'} does not fit teacher tiny-sdxl", "cross_attention_dim")
    assert not (tmp_path / "g.png").exists()


def test_a_data_folder_that_is_a_link_loop_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    result = runner.invoke(app, ["cache", str(tmp_path / "a"), "--teacher", "tiny-sdxl", "--out", str(tmp_path / "c")])
    one_line_error(result, f"data folder {tmp_path / 'a'} cannot be followed", "link loop")


def test_debug_is_taken_after_the_subcommand_too() -> None:
    result = runner.invoke(app, ["inspect", "/nonexistent-model", "--no-macs", "--debug"])
    assert isinstance(result.exception, PrunerError), result.output  # the traceback, not "No such option"


def _front_study(url: str) -> None:
    study = optuna.create_study(study_name="wide", storage=url, directions=["minimize", "minimize"])
    for i in range(4):
        attrs = {"params": 10**6 * (4 - i), "macs": 10**9 * (4 - i), "latency_ms": None, "proxy_kd": 0.1 * (i + 1),
                 "removed": REMOVED[: 2 * i + 1], "label": None, "recipe": None}  # fmt: skip
        study.add_trial(create_trial(values=[0.1 * (i + 1), 10**9 * (4 - i)], user_attrs=attrs))


def test_front_takes_the_storage_url_the_search_printed_and_fits_120_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _front_study(url)
    result = runner.invoke(app, ["front", url, "--plot", str(tmp_path / "front.png")])
    assert result.exit_code == 0, result.output
    assert "Pareto front of wide" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 120, result.stdout
    optuna.create_study(study_name="second", storage=url)
    one_line_error(runner.invoke(app, ["front", url]), "holds 2 studies (wide, second)", "pruner front NAME --storage")


def _pictures(tmp_path: Path, n: int = 4) -> Path:
    assert runner.invoke(app, ["synth-data", "--out", str(tmp_path / "p"), "--n", str(n)]).exit_code == 0
    return tmp_path / "p"


def _rewrite(folder: Path, change: dict[str, str]) -> None:
    """Rewrite metadata.jsonl with each row's text replaced (``text``), or a file renamed to raw bytes."""
    lines = []
    for line in (folder / "metadata.jsonl").read_bytes().splitlines():
        row = json.loads(line)
        if "text" in change:
            row["text"] = change["text"]
        lines.append(json.dumps(row).encode())
    (folder / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_ten_thousand_character_captions_print_no_flood_of_warnings(tmp_path: Path) -> None:
    pictures = _pictures(tmp_path)
    _rewrite(pictures, {"text": ("a small red circle left of a blue square " * 250)[:10_000]})
    command = [
        sys.executable,
        "-m",
        "pruner",
        "cache",
        str(pictures),
        "--teacher",
        "tiny-sdxl",
        "--out",
        str(tmp_path / "c"),
    ]  # fmt: skip (a process of its own: what a terminal shows, logging included)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}  # conftest quiets diffusers
    run = subprocess.run(command, capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and "cached 4 rows" in run.stderr, run.stderr[-2000:]
    assert len(run.stdout) + len(run.stderr) < 3000, run.stderr[:1000]  # was about 20 KB a row


def test_a_file_whose_name_is_not_utf8_is_found(tmp_path: Path) -> None:
    pictures = _pictures(tmp_path)
    first = json.loads((pictures / "metadata.jsonl").read_bytes().splitlines()[0])["file_name"]
    latin1 = b"caf\xe9.png"  # a name written by a Latin-1 system
    os.rename(bytes(pictures / first), bytes(pictures) + b"/" + latin1)
    metadata = (pictures / "metadata.jsonl").read_bytes()
    (pictures / "metadata.jsonl").write_bytes(metadata.replace(first.encode(), latin1, 1))
    result = runner.invoke(app, ["cache", str(pictures), "--teacher", "tiny-sdxl", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0 and "cached 4 rows" in result.output and "missing" not in result.output, result.output
