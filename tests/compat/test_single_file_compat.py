"""``compat: [single-file]``: recipes and search spaces kept to plans every single-file loader takes, and the
``Single file:`` line of ``pruner inspect``."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from conftest import random_plans
from typer.testing import CliRunner

from pruner.cli import app
from pruner.compat.loaders import single_file_compatibility
from pruner.errors import PrunerError
from pruner.recipe import load_recipe
from pruner.student import resolve_recipe
from pruner.study.space import SearchSpace, decode, load_space, suggest_genome
from pruner.unet import architecture_config, meta_unet, topology_of

runner = CliRunner()
FOUND = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "tiny-sdxl-50" / "found.yaml"


def _recipe_with(tmp_path: Path, remove: list[str], compat: list[str]) -> Path:
    data = yaml.safe_load(FOUND.read_text())
    data.update(compat=compat, plan={"remove": remove})
    data.pop("student", None)
    data.pop("provenance", None)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_recipe_asking_for_single_file_refuses_uneven_layers_with_the_reason_and_takes_even_ones(
    tmp_path: Path,
) -> None:
    uneven = _recipe_with(tmp_path, ["down_blocks.2.resnets.1"], ["single-file"])
    with pytest.raises(PrunerError, match=r"from_single_file cannot load the student: .*\[2, 2, 1\]"):
        resolve_recipe(load_recipe(uneven), str(uneven))
    even = _recipe_with(tmp_path, [f"down_blocks.{i}.resnets.1" for i in range(3)], ["single-file"])
    assert resolve_recipe(load_recipe(even), str(even)).config["layers_per_block"] == 1


def test_a_single_file_space_searches_no_layer_or_width_gene_so_every_sampled_plan_loads_everywhere() -> None:
    space = load_space("single-file")
    assert not space.layers and not space.width
    with pytest.raises(ValueError, match="single-file"):
        SearchSpace.model_validate({"compat": ["single-file"], "layers": True})
    topo = topology_of(meta_unet(architecture_config("tiny-sdxl")))
    study = optuna.create_study(directions=["minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        plan = decode(suggest_genome(study.ask(), space, topo), space, topo, {})
        assert single_file_compatibility(plan, topo).ok
    uneven = [p for p in random_plans(topo, 20, 0) if not single_file_compatibility(p, topo).ok]
    assert uneven  # the default space does emit plans only some loaders take


def test_pruner_inspect_says_which_loaders_take_a_student(tmp_path: Path) -> None:
    found = runner.invoke(app, ["inspect", str(FOUND), "--no-macs"])
    assert found.exit_code == 0, found.output
    line = next(x for x in found.output.splitlines() if x.startswith("Single file:"))
    assert "pruner.load_unet" in line and "diffusers from_single_file: no" in line and "[2, 2, 1]" in line
    teacher = runner.invoke(app, ["inspect", "tiny-sdxl", "--no-macs"])
    assert teacher.exit_code == 0 and "diffusers from_single_file: yes" in teacher.output
