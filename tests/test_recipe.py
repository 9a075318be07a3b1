from __future__ import annotations

from pathlib import Path

import pytest

from pruner.cost import CostModel
from pruner.errors import RecipeError
from pruner.recipe import dump_recipe, load_recipe, parse_recipe
from pruner.student import resolve_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PUBLISHED = {
    "sdxl-ssd-1b": 1_331_334_404,
    "sdxl-vega": 745_225_604,
    "sdxl-koala-1b": 1_161_184_324,
    "sdxl-koala-700m": 782_822_724,
    "sd15-bk-base": 579_384_964,
    "sd15-bk-small": 482_346_884,
    "sd15-bk-tiny": 323_384_964,
}


@pytest.mark.parametrize(("name", "params"), PUBLISHED.items())
def test_published_recipes_give_the_published_parameter_counts(name: str, params: int) -> None:
    resolved = resolve_recipe(load_recipe(RECIPES / f"{name}.yaml"))
    assert CostModel(resolved.teacher_config).params(resolved.plan) == params


def test_bk_tiny_matches_bk_sdm_config() -> None:
    config = resolve_recipe(load_recipe(RECIPES / "sd15-bk-tiny.yaml")).config
    assert config["block_out_channels"] == [320, 640, 1280]
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3
    assert config["up_block_types"] == ["CrossAttnUpBlock2D"] * 3
    assert (config["layers_per_block"], config["mid_block_type"]) == (1, None)


def test_yaml_round_trip() -> None:
    recipe = load_recipe(RECIPES / "sdxl-ssd-1b.yaml")
    again = parse_recipe(dump_recipe(recipe))
    assert again == recipe.model_copy(update={"plan": again.plan}) and again.plan_obj() == recipe.plan_obj()


def _broken(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def test_errors_name_the_line_and_the_field() -> None:
    text = (RECIPES / "sdxl-vega.yaml").read_text()
    with pytest.raises(RecipeError, match=r"x.yaml:\d+: distill.stages.0.learning_rate: .*greater than 0"):
        parse_recipe(_broken(text, "learning_rate: 1.0e-05", "learning_rate: -1"), "x.yaml")
    line = text.splitlines().index("teacher:") + 1
    with pytest.raises(RecipeError, match=rf"x.yaml:{line + 1}: teacher.colour: Extra inputs are not permitted"):
        parse_recipe(_broken(text, "teacher:\n", "teacher:\n  colour: red\n"), "x.yaml")
    with pytest.raises(RecipeError, match=r"x.yaml:1: schema_version"):
        parse_recipe(_broken(text, "schema_version: 1", "schema_version: 7"), "x.yaml")


def test_malformed_yaml_names_its_line() -> None:
    with pytest.raises(RecipeError, match=r"x.yaml:3: malformed YAML"):
        parse_recipe("schema_version: 1\nname: x\nteacher: model: y\nplan: {}\n", "x.yaml")


def test_a_recipe_for_another_architecture_is_refused() -> None:
    text = (RECIPES / "sdxl-vega.yaml").read_text()
    text = text.replace("model: stabilityai/stable-diffusion-xl-base-1.0", "model: sd15").replace(
        "architecture: sdxl", "architecture: sd15"
    )
    with pytest.raises(RecipeError, match="another architecture"):
        resolve_recipe(parse_recipe(text, "x.yaml"), "x.yaml")


def test_a_stale_student_section_is_refused() -> None:
    text = (RECIPES / "sdxl-vega.yaml").read_text()
    with pytest.raises(RecipeError, match=r"student\.params"):
        resolve_recipe(parse_recipe(text.replace("params: 745225604", "params: 745225605"), "x.yaml"), "x.yaml")
