"""The Teacher: a reference resolved once, with its config, schedule, VAE scale and profile."""

from __future__ import annotations

from pathlib import Path

import pytest

import pruner.teacher as teacher_mod
from pruner.errors import PrunerError
from pruner.profiles import PUBLISHED, TINY_SDXL
from pruner.recipe import TeacherSpec
from pruner.teacher import Teacher
from pruner.unet.architectures import architecture_config
from pruner.unet.load import ModelRef


def test_an_architecture_name_prices_without_weights() -> None:
    teacher = Teacher.resolve("sdxl")
    assert teacher.located is not None and teacher.located.kind == "architecture" and not teacher.has_weights
    assert teacher.latent == 128 and teacher.vae_scale == 8 and teacher.profile is PUBLISHED
    assert teacher.scheduler().config.num_train_timesteps == 1000
    with pytest.raises(PrunerError, match="no weights"):
        teacher.load()


def test_a_known_hub_id_needs_no_network() -> None:
    teacher = Teacher.resolve("stabilityai/stable-diffusion-xl-base-1.0")
    assert teacher.located is not None and teacher.located.kind == "hub" and teacher.has_weights
    assert teacher.config == architecture_config("sdxl") and teacher.vae_scale == 8 and teacher.ff_inner == {}


def test_editing_one_teachers_config_changes_no_other_teachers() -> None:
    edited = Teacher.resolve("sdxl").config
    edited["block_out_channels"].append(4096)  # a caller's own copy, nested lists included
    edited["sample_size"] = 1
    assert Teacher.resolve("sdxl").config == architecture_config("sdxl")
    assert architecture_config("sdxl")["block_out_channels"] == [320, 640, 1280]
    with pytest.raises(PrunerError, match="unknown architecture 'sd3'"):
        architecture_config("sd3")


def test_the_bundled_teacher_reads_its_own_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    resolve = teacher_mod.resolve_model

    def counted(target: str) -> ModelRef:
        calls.append(target)
        return resolve(target)

    monkeypatch.setattr(teacher_mod, "resolve_model", counted)
    teacher = Teacher.resolve("tiny-sdxl")
    assert teacher.profile is TINY_SDXL and teacher.architecture == "tiny-sdxl"
    assert teacher.located is not None and teacher.located.kind == "pipeline"
    assert teacher.vae_scale == 4 and teacher.latent == teacher.config["sample_size"]
    assert teacher.identity == str(teacher.located.path.resolve())
    assert Teacher.resolve(teacher) is teacher
    model = teacher.load()
    assert model.config.sample_size == teacher.latent and not model.training
    assert calls == ["tiny-sdxl"]  # resolved once, whatever was read from it after


def test_a_recipes_teacher_from_another_machine_falls_back_on_its_architecture(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")
    teacher = Teacher.of_recipe(TeacherSpec(model=missing, architecture="sdxl"))
    assert teacher.located is None and not teacher.has_weights
    assert teacher.config == architecture_config("sdxl") and teacher.ff_inner == {} and teacher.vae_scale == 8
    with pytest.raises(PrunerError, match="does not exist"):
        teacher.load()
    with pytest.raises(PrunerError, match="does not exist"):
        Teacher.of_recipe(TeacherSpec(model=missing))


def test_a_loaded_model_needs_a_reference_recipes_can_name(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PrunerError, match="save_pretrained"):
        Teacher.resolve(tiny_sdxl)
