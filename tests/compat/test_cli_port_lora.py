"""`pruner port-lora` end to end on the bundled teacher: a PEFT LoRA of the teacher, ported to a student
that `pruner apply` built, loads into the student's pipeline with no key warnings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from typer.testing import CliRunner

from pruner.cli import app
from pruner.recipe import Recipe, save_recipe
from pruner.unet import load_pipeline, load_unet

runner = CliRunner()
REMOVE = [
    "down_blocks.1.resnets.1",
    "down_blocks.2.attentions.0.transformer_blocks.2-5",
    "down_blocks.2.attentions.1.transformer_blocks.1-3",
    "mid_block.attentions.0",
    "up_blocks.0.attentions.1.transformer_blocks.0-2",
]


def _recipe(tmp_path: Path) -> Path:
    recipe = Recipe.model_validate(
        {
            "schema_version": 1,
            "name": "port-lora-cli",
            "teacher": {"model": "tiny-sdxl"},
            "plan": {"remove": REMOVE},
            "distill": {"stages": [{"steps": 1, "learning_rate": 1e-4}]},
        }
    )
    return save_recipe(recipe, tmp_path / "recipe.yaml")


def _teacher_lora(tmp_path: Path) -> Path:
    unet = load_unet("tiny-sdxl")
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    return tmp_path / "lora" / "pytorch_lora_weights.safetensors"


@pytest.mark.slow
def test_port_lora_prints_what_it_carried_and_the_student_pipeline_loads_it_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = _recipe(tmp_path)
    assert runner.invoke(app, ["apply", str(recipe), "--out", str(tmp_path / "student")]).exit_code == 0
    lora = _teacher_lora(tmp_path)
    result = runner.invoke(
        app, ["port-lora", str(lora), "--student", str(tmp_path / "student"), "--out", str(tmp_path / "ported")]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps lines where the folder names make it
    assert "carried over" in said and "dropped" in said
    assert "% of the LoRA's UNet parameters" in said
    pipe = load_pipeline("tiny-sdxl")
    pipe.unet = UNet2DConditionModel.from_pretrained(tmp_path / "student")
    with caplog.at_level(logging.WARNING, logger="diffusers"):
        pipe.load_lora_weights(str(tmp_path / "ported"))  # the text encoders' "no keys" notes are expected
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("diffusers")]
    key_warnings = [m for m in messages if not m.startswith("No LoRA keys associated to CLIPTextModel")]
    assert not key_warnings, key_warnings
    assert pipe.unet.peft_config  # the adapter is in place


def test_port_lora_needs_a_student_or_a_recipe_and_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["port-lora", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--student" in result.output
