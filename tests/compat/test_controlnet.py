"""ControlNet compatibility: which plans keep the skip topology a teacher's ControlNet needs, recipes and
spaces that ask for it, and a ControlNet made from the bundled teacher driving a compatible student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pruner.compat.controlnet import controlnet_compatibility
from pruner.errors import PrunerError, RecipeError
from pruner.inspection import inspect_model
from pruner.recipe import Recipe, save_recipe
from pruner.student import resolve_recipe
from pruner.study.space import SearchSpace, load_space
from pruner.unet import Plan, architecture_config, build_student, load_pipeline, meta_unet, topology_of

COMPATIBLE = [
    "down_blocks.2.attentions.0.transformer_blocks.2-5",
    "up_blocks.0.attentions.1.transformer_blocks.0-3",
    "mid_block.attentions.0",
]
LAYER_UNIT = "down_blocks.1.resnets.1"


def _topo():  # type: ignore[no-untyped-def]
    return topology_of(meta_unet(architecture_config("tiny-sdxl")))


def _recipe(remove: list[str], compat: list[str]) -> Recipe:
    return Recipe.model_validate(
        {
            "schema_version": 1,
            "name": "cn",
            "teacher": {"model": "tiny-sdxl"},
            "plan": {"remove": remove},
            "compat": compat,
            "distill": {"stages": [{"steps": 1, "learning_rate": 1e-4}]},
        }
    )


def test_transformer_layers_and_the_mid_attention_keep_a_plan_controlnet_compatible() -> None:
    verdict = controlnet_compatibility(Plan.removing(COMPATIBLE, {1: 0.5}), _topo())
    assert verdict.ok and verdict.line().startswith("ControlNet-compatible: yes")


@pytest.mark.parametrize(
    ("unit", "why"),
    [(LAYER_UNIT, "skip connection"), ("mid_block", "mid residual"), ("down_blocks.2", "stage")],
)
def test_layer_units_the_mid_block_and_stages_break_controlnet_compatibility_with_the_reason(
    unit: str, why: str
) -> None:
    verdict = controlnet_compatibility(Plan.removing([*COMPATIBLE[:2], unit]), _topo())
    assert not verdict.ok
    assert verdict.line().startswith("ControlNet-compatible: no") and unit in verdict.line() and why in verdict.line()


def test_a_recipe_asking_for_controlnet_refuses_an_incompatible_plan_with_the_reason() -> None:
    resolve_recipe(_recipe(COMPATIBLE, ["controlnet"]))
    resolve_recipe(_recipe([LAYER_UNIT], []))  # without compat the same plan is fine
    with pytest.raises(RecipeError, match=r"not ControlNet-compatible.*down_blocks\.1\.resnets\.1.*skip connection"):
        resolve_recipe(_recipe([LAYER_UNIT], ["controlnet"]), "cn.yaml")


def test_inspect_reports_controlnet_compatibility_of_a_recipe(tmp_path: Path) -> None:
    good = save_recipe(_recipe(COMPATIBLE, []), tmp_path / "good.yaml")
    bad = save_recipe(_recipe([LAYER_UNIT], []), tmp_path / "bad.yaml")
    assert inspect_model(str(good), macs=False).controlnet.startswith("ControlNet-compatible: yes")  # type: ignore[union-attr]
    line = inspect_model(str(bad), macs=False).controlnet
    assert line is not None and line.startswith("ControlNet-compatible: no") and LAYER_UNIT in line
    assert inspect_model("tiny-sdxl", macs=False).controlnet is None  # a teacher has no plan to judge


def test_a_space_with_compat_controlnet_removes_no_skip_and_says_so_when_asked_to(tmp_path: Path) -> None:
    space = load_space("controlnet")
    assert space.compat == ("controlnet",) and not space.layers and not space.mid_block and space.keep_skip_topology
    bad = tmp_path / "bad.yaml"
    bad.write_text("compat: [controlnet]\nlayers: true\n")
    with pytest.raises(PrunerError, match="drop layers: true"):
        load_space(str(bad))
    assert not SearchSpace.model_validate({"compat": ["controlnet"]}).mid_block


def _controlnet_pipe(student):  # type: ignore[no-untyped-def]
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    base = load_pipeline("tiny-sdxl")
    # the bundled teacher's VAE downsamples 4x, so the control image's embedding does too (diffusers' default is 8x)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(16, 32, 96))
    parts = {k: v for k, v in base.components.items() if k in StableDiffusionXLControlNetPipeline._optional_components
             or k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")}  # fmt: skip
    pipe = StableDiffusionXLControlNetPipeline(**parts, unet=student, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe) -> list[Image.Image]:  # type: ignore[no-untyped-def]
    control = Image.new("RGB", (32, 32), "white")
    generator = torch.Generator().manual_seed(0)
    return pipe(["a red circle"], image=control, num_inference_steps=2, height=32, width=32, generator=generator).images


@pytest.mark.slow
def test_a_controlnet_of_the_teacher_drives_a_compatible_student_and_breaks_an_incompatible_one() -> None:
    teacher = load_pipeline("tiny-sdxl").unet
    student, _ = build_student(teacher, Plan.removing(COMPATIBLE))
    images = _draw(_controlnet_pipe(student))
    assert len(images) == 1 and images[0].size == (32, 32)
    assert torch.tensor(list(images[0].getdata()), dtype=torch.float32).std() > 0  # a picture, not a blank
    broken, _ = build_student(teacher, Plan.removing([LAYER_UNIT]))
    with pytest.raises(RuntimeError):  # the residuals pair with the wrong skips: shapes disagree
        _draw(_controlnet_pipe(broken))
