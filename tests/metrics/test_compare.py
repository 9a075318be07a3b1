"""`pruner compare`: the teacher and several students on the same prompts and seeds, one table (terminal,
markdown, JSON) and one captioned grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pruner.cli import app
from pruner.unet import bundled_teacher

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
runner = CliRunner()
pytestmark = pytest.mark.skipif(bundled_teacher() is None, reason="the bundled teacher is not installed")


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two untrained students of the bundled teacher: BK-SDM-Small's and Segmind-Vega's styles."""
    root = tmp_path_factory.mktemp("students")
    made = []
    for name in ("tiny-sdxl-bk-small", "tiny-sdxl-vega"):
        result = runner.invoke(app, ["apply", str(RECIPES / f"{name}.yaml"), "--out", str(root / name)])
        assert result.exit_code == 0, result.output
        made.append(str(root / name))
    return made


@pytest.mark.slow
def test_compare_writes_one_table_and_one_grid_of_the_teacher_and_every_student(
    students: list[str], tmp_path: Path
) -> None:
    grid, markdown_file = tmp_path / "g.png", tmp_path / "table.md"
    args = ["compare", *students, "--n", "3", "--steps", "10", "--metrics", "fid,clip", "--grid", str(grid),
            "--markdown", str(markdown_file), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    teacher, *rows = report["rows"]
    assert [r["name"] for r in rows] == students and teacher["name"] == "tiny-sdxl (teacher)"
    assert teacher["params"] == 10_140_868 and all(r["params"] < teacher["params"] for r in rows)
    assert all(r["macs"] < teacher["macs"] for r in rows) and teacher["kd_loss"] is None
    assert teacher["metrics"]["fid"] == 0.0 and all(r["metrics"]["fid"] > 0 for r in rows)
    assert all(r["metrics"]["clip_score"] < teacher["metrics"]["clip_score"] for r in rows)  # untrained students
    assert report["settings"]["steps"] == 10 and report["settings"]["clip_model"].endswith("clip")
    markdown = markdown_file.read_text()
    assert markdown.startswith("| model | params | MACs |") and markdown.count("\n| ") == 3  # teacher and two students
    height = Image.open(grid).height
    assert 3 * 32 * 4 <= height < 3 * 32 * 4 + 100  # teacher row and one row per student, over the captions
