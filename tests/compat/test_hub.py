"""``pruner push``: the student's folder and its model card go to the Hub through ``HfApi`` (mocked here: no
network): a new private repository, an existing one, a branch; a missing token and offline mode are one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from typer.testing import CliRunner

import pruner
from pruner.cli import app
from pruner.errors import PrunerError
from pruner.hub import TAGS

runner = CliRunner()
FOUND = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "tiny-sdxl-50" / "found.yaml"


class FakeHub:
    """Records what ``HfApi`` was asked; repositories and branches persist across instances of one test."""

    repos: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def create_repo(self, repo_id: str, *, private: bool = False, exist_ok: bool = False, **_: Any) -> str:
        if repo_id in self.repos and not exist_ok:
            raise AssertionError("an existing repository must be reused (exist_ok=True)")
        self.repos.setdefault(repo_id, {"private": private, "branches": {"main": {}}})
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False, **_: Any) -> None:
        self.repos[repo_id]["branches"].setdefault(branch, {})

    def upload_folder(self, *, repo_id: str, folder_path: str, revision: str | None = None,
                      ignore_patterns: list[str] | None = None, **_: Any) -> None:  # fmt: skip
        root = Path(folder_path)
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        files = self.repos[repo_id]["branches"][revision or "main"]
        files.update(dict.fromkeys(filter_repo_objects(names, ignore_patterns=ignore_patterns), b"..."))

    def upload_file(self, *, path_or_fileobj: bytes, path_in_repo: str, repo_id: str, revision: str | None = None,
                    **_: Any) -> None:  # fmt: skip
        self.repos[repo_id]["branches"][revision or "main"][path_in_repo] = path_or_fileobj


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> type[FakeHub]:
    monkeypatch.setattr("huggingface_hub.HfApi", FakeHub)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    FakeHub.repos = {}
    return FakeHub


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The found example applied to the bundled teacher, with the metrics file a distillation writes."""
    out = tmp_path_factory.mktemp("push") / "student"
    assert runner.invoke(app, ["apply", str(FOUND), "--out", str(out)]).exit_code == 0
    metrics = {"steps": 100, "final_losses": {"task": 0.031, "out_kd": 0.012}, "held_out_kd": 0.0144, "params": 4987}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / ".found.lock").write_text("")  # a lock file beside the outputs is not uploaded
    return out


def test_push_creates_a_private_repo_and_uploads_the_folder_with_a_card(hub: type[FakeHub], student: Path) -> None:
    result = pruner.push(student, "me/tiny-student", private=True)
    repo = hub.repos["me/tiny-student"]
    files = repo["branches"]["main"]
    assert repo["private"] and result.private and "me/tiny-student" in result.url
    assert {"config.json", "diffusion_pytorch_model.safetensors", "recipe.yaml", "metrics.json"} <= set(files)
    assert ".found.lock" not in files
    card = ModelCard(files["README.md"].decode())
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and set(TAGS) <= set(data["tags"])
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    text = card.text
    recipe_block = text.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(recipe_block)["plan"]["remove"] == yaml.safe_load(FOUND.read_text())["plan"]["remove"]
    assert "`tiny-sdxl`" in text and "| held_out_kd | 0.0144 |" in text and "| final task loss | 0.031 |" in text
    assert "pruner distill recipe.yaml --data CACHE --output OUT --steps 100" in text


def test_push_to_an_existing_repo_and_a_branch_through_the_cli(hub: type[FakeHub], student: Path) -> None:
    assert runner.invoke(app, ["push", str(student), "--repo", "me/s"]).exit_code == 0
    result = runner.invoke(app, ["push", str(student), "--repo", "me/s", "--revision", "v2"])
    assert result.exit_code == 0, result.output
    assert "me/s@v2" in result.output and "public" in result.output
    branches = hub.repos["me/s"]["branches"]
    assert set(branches) == {"main", "v2"} and "README.md" in branches["v2"] and not hub.repos["me/s"]["private"]


def test_a_missing_token_offline_mode_and_an_unknown_license_are_one_line(
    student: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored token either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    result = runner.invoke(app, ["push", str(student), "--repo", "me/s"])
    assert result.exit_code == 2 and "no Hugging Face token" in result.output and "Traceback" not in result.output
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(PrunerError, match="HF_HUB_OFFLINE"):  # the tests run offline: the real HfApi refuses
        pruner.push(student, "me/s")
    recipe = yaml.safe_load((student / "recipe.yaml").read_text())
    recipe["teacher"]["model"] = str(tmp_path)  # a local teacher folder without a model card
    other = tmp_path / "other"
    other.mkdir()
    (other / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(PrunerError, match="license"):
        pruner.push(other, "me/s")


@pytest.mark.slow
def test_the_card_carries_the_evaluation_and_the_protocol_that_measured_it(
    hub: type[FakeHub], student: Path, tmp_path: Path
) -> None:
    """`pruner eval --json > OUT/eval.json`, then push: the card's Evaluation section has student and teacher
    side by side with each field metric, the settings it was measured under, and the eval command with them."""
    import shutil

    evaluated = tmp_path / "student"
    shutil.copytree(student, evaluated)
    args = ["eval", str(evaluated), "--teacher", "tiny-sdxl", "--n", "2", "--steps", "2", "--seed", "3",
            "--metrics", "clip,pickscore", "--grid", str(tmp_path / "g.png"), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (evaluated / "eval.json").write_text(result.stdout)
    report = json.loads(result.stdout)
    text = ModelCard(pruner.push(evaluated, "me/evaluated").card).text
    evaluation = text.split("## Evaluation")[1].split("## Reproduce")[0]
    pick, teacher_pick = report["metrics"]["pickscore"], report["metrics"]["teacher_pickscore"]
    assert f"| PickScore | {pick:.4g} | {teacher_pick:.4g} |" in evaluation
    assert f"| held-out KD loss (MSE) | {report['kd_loss']:.5f} | - |" in evaluation
    assert "- seed: `3`" in evaluation and "- n: `2`" in evaluation and "- pickscore_model: `" in evaluation
    assert "--n 2 --resolution 32 --steps 2 --guidance 5.0 --seed 3" in text and "--metrics clip,pickscore" in text
