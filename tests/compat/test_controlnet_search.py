"""`pruner search --space controlnet` on a tiny SDXL pipeline returns only ControlNet-compatible plans."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from pruner.cli import app
from pruner.compat.controlnet import controlnet_compatibility, recipe_compatibility
from pruner.recipe import load_recipe
from pruner.unet import Plan, architecture_config, meta_unet, topology_of

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_cache(tiny_sdxl_pipeline: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cn-search-data")
    assert runner.invoke(app, ["synth-data", "--out", str(root / "data"), "--n", "24"]).exit_code == 0
    made = runner.invoke(app, ["cache", str(root / "data"), "--teacher", tiny_sdxl_pipeline, "--out", str(root / "c")])
    assert made.exit_code == 0, made.output
    return root / "c"


@pytest.mark.slow
def test_a_search_in_a_controlnet_space_finds_only_compatible_plans(
    tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["search", "--teacher", tiny_sdxl_pipeline, "--data", str(tiny_cache), "--space", "controlnet",
            "--budget", "70%", "--trials", "4", "--proxy-steps", "2", "--calibration", "16",
            "--storage", storage, "--study", "cn", "--out", str(tmp_path / "r")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    topo = topology_of(meta_unet(architecture_config("tiny-sdxl")))
    trials = [t for t in optuna.load_study(study_name="cn", storage=storage).trials if t.state.name == "COMPLETE"]
    assert trials
    for trial in trials:
        assert controlnet_compatibility(Plan.removing(trial.user_attrs["removed"]), topo).ok, trial.user_attrs
    recipes = [tmp_path / "r" / "found.yaml", *(tmp_path / "r" / "front").glob("*.yaml")]
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.compat == ["controlnet"] and recipe_compatibility(recipe).ok
