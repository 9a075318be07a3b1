"""The bundled teacher end to end: inspect it, apply a recipe to it, evaluate students against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pruner.cli import app
from pruner.unet import bundled_teacher

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
runner = CliRunner()


def test_the_bundled_teacher_is_shipped_and_named_tiny_sdxl() -> None:
    folder = bundled_teacher()
    assert folder is not None and (folder / "judge" / "judge.json").is_file()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 26 * 2**20
    report = json.loads(runner.invoke(app, ["inspect", "tiny-sdxl", "--json"]).stdout)
    assert report["source"] == "pipeline" and report["resolution"] == 32 and report["params"] == 10_140_868


@pytest.mark.slow
def test_eval_of_the_teacher_against_itself_is_perfect(tmp_path: Path) -> None:
    args = [
        "eval",
        "tiny-sdxl",
        "--teacher",
        "tiny-sdxl",
        "--n",
        "4",
        "--steps",
        "4",
        "--grid",
        str(tmp_path / "g.png"),
    ]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kd_loss"] == 0.0 and report["psnr"] == 100.0
    assert report["prompt_accuracy"] == report["teacher_prompt_accuracy"] is not None
    assert (tmp_path / "g.png").is_file()


@pytest.mark.slow
def test_an_untrained_half_size_student_is_measurably_worse(tmp_path: Path) -> None:
    result = runner.invoke(app, ["apply", str(RECIPES / "tiny-sdxl-bk-small.yaml"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    args = [
        "eval",
        str(tmp_path / "s"),
        "--teacher",
        "tiny-sdxl",
        "--n",
        "8",
        "--steps",
        "8",
        "--grid",
        str(tmp_path / "g.png"),
    ]
    report = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert report["kd_loss"] > 0 and report["psnr"] < 100
    assert report["student_params"] == 5_288_068 and report["teacher_params"] == 10_140_868
    assert report["prompt_accuracy"] is not None and report["student_latency_ms"] > 0


def test_eval_needs_prompts_for_a_teacher_without_a_judge(tiny_sdxl_dir: Path) -> None:
    result = runner.invoke(app, ["eval", str(tiny_sdxl_dir), "--teacher", str(tiny_sdxl_dir)])
    assert result.exit_code == 2 and "full pipeline" in result.output


def test_synth_data_writes_an_image_folder_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth-data", "--out", str(tmp_path / "d"), "--n", "5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all((tmp_path / "d" / r["file_name"]).is_file() and r["text"] for r in rows)
    again = runner.invoke(app, ["synth-data", "--out", str(tmp_path / "d"), "--n", "5"])
    assert again.exit_code == 2 and len(again.output.strip().splitlines()) == 1
