"""`pruner search --space single-file` and `--space ip-adapter` on a tiny SDXL pipeline return only plans the
compatibility keeps, and their recipes carry it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from typer.testing import CliRunner

from pruner.cli import app
from pruner.compat.ip_adapter import ip_adapter_compatibility
from pruner.compat.loaders import single_file_compatibility
from pruner.recipe import load_recipe
from pruner.student import resolve_recipe
from pruner.unet import Plan, Topology, architecture_config, meta_unet, topology_of

runner = CliRunner()
CHECKS: dict[str, Callable[[Plan, Topology], Any]] = {
    "single-file": single_file_compatibility,
    "ip-adapter": ip_adapter_compatibility,
}


@pytest.mark.slow
@pytest.mark.parametrize(("space", "budget"), [("single-file", "70%"), ("ip-adapter", "85%")])
def test_a_search_in_a_compat_space_finds_only_compatible_plans(
    space: str, budget: str, tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["search", "--teacher", tiny_sdxl_pipeline, "--data", str(tiny_cache), "--space", space,
            "--budget", budget, "--trials", "4", "--proxy-steps", "2", "--calibration", "16",
            "--storage", storage, "--study", "s", "--out", str(tmp_path / "r")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    topo = topology_of(meta_unet(architecture_config("tiny-sdxl")))
    trials = [t for t in optuna.load_study(study_name="s", storage=storage).trials if t.state.name == "COMPLETE"]
    assert trials
    for trial in trials:
        ff_keep = {int(k): float(v) for k, v in (trial.user_attrs.get("ff_keep") or {}).items()}
        plan = Plan.removing(trial.user_attrs["removed"], ff_keep)
        assert CHECKS[space](plan, topo).ok, trial.user_attrs
    for path in [tmp_path / "r" / "found.yaml", *(tmp_path / "r" / "front").glob("*.yaml")]:
        recipe = load_recipe(path)
        assert recipe.compat == [space]
        resolve_recipe(recipe, str(path))  # the recipe's own compat check passes
