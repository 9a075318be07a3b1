"""LoRA porting: a teacher's LoRA, renamed through the plan's weight map, moves the student's output
exactly as the LoRA-fused teacher's student would; loaded as it is, it does not."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import TINY_SDXL, make_unet, random_plans, unet_inputs
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from pruner.compat import naive_lora, port_lora, read_lora
from pruner.compat.sgm import sgm_module_names
from pruner.errors import PrunerError
from pruner.recipe import Recipe
from pruner.unet import Plan, build_student, topology_of

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in"]


def _recipe(teacher_dir: Path, plan: Plan) -> Recipe:
    plan_spec: dict = {"remove": plan.sorted_names()}
    if plan.ff_keep:
        plan_spec["width"] = {"ff_keep": dict(plan.ff_keep)}
    return Recipe.model_validate(
        {
            "schema_version": 1,
            "name": "lora-test",
            "teacher": {"model": str(teacher_dir)},
            "plan": plan_spec,
            "distill": {"stages": [{"steps": 1, "learning_rate": 1e-4}]},
        }
    )


def _lora(teacher: UNet2DConditionModel, targets: list[str], alpha: int = 4, seed: int = 1) -> UNet2DConditionModel:
    """The teacher with a random rank-4 LoRA (small, non-zero lora_B, so outputs change)."""
    model = copy.deepcopy(teacher)
    torch.manual_seed(seed)
    model.add_adapter(LoraConfig(r=4, lora_alpha=alpha, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    return model


def _state(lora_model: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    return {f"unet.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(lora_model).items()}


def _fused(teacher: UNet2DConditionModel, state: dict[str, torch.Tensor]) -> UNet2DConditionModel:
    model = copy.deepcopy(teacher)
    model.load_lora_adapter(state, prefix="unet")
    model.fuse_lora()
    model.unload_lora()
    return model


def _with_lora(student: UNet2DConditionModel, state: dict[str, torch.Tensor]) -> UNet2DConditionModel:
    model = copy.deepcopy(student)
    model.load_lora_adapter(state, prefix="unet")
    return model


def _out(model: UNet2DConditionModel) -> torch.Tensor:
    args, kwargs = unet_inputs(TINY_SDXL, 8, batch=2)
    with torch.no_grad():
        return model(*args, **kwargs).sample


def _student(teacher: UNet2DConditionModel, plan: Plan) -> UNet2DConditionModel:
    torch.manual_seed(0)  # modules with no teacher source start from the same random init every time
    return build_student(teacher, plan)[0].eval()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.fixture(scope="module")
def teacher_dir(tiny_sdxl: UNet2DConditionModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lora") / "teacher"
    tiny_sdxl.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lora_state(tiny_sdxl: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    return _state(_lora(tiny_sdxl, TARGETS))


def test_a_plan_that_keeps_everything_carries_the_whole_lora_and_reproduces_it(
    tiny_sdxl: UNet2DConditionModel, teacher_dir: Path, lora_state: dict[str, torch.Tensor]
) -> None:
    ported = port_lora(lora_state, recipe=_recipe(teacher_dir, Plan()))
    assert ported.report.params_carried == ported.report.params_total
    assert not ported.report.dropped and not ported.report.refused
    expected = _out(_fused(tiny_sdxl, lora_state))
    torch.testing.assert_close(_out(_with_lora(tiny_sdxl, ported.state)), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_kept_module_gets_its_teacher_modules_update_and_a_naive_load_does_worse(
    tiny_sdxl: UNet2DConditionModel, teacher_dir: Path, lora_state: dict[str, torch.Tensor], seed: int
) -> None:
    plan = random_plans(topology_of(tiny_sdxl), 1, seed=seed, p=0.35)[0]
    recipe = _recipe(teacher_dir, plan)
    student = _student(tiny_sdxl, plan)
    base = _out(student)
    reference = _out(_student(_fused(tiny_sdxl, lora_state), plan)) - base  # the fused teacher's student
    ported = port_lora(lora_state, recipe=recipe)
    assert ported.report.dropped, "a random plan removes modules the LoRA touched"
    delta = _out(_with_lora(student, ported.state)) - base
    torch.testing.assert_close(delta, reference, atol=1e-4, rtol=1e-3)
    naive = naive_lora(lora_state, recipe=recipe)
    naive_delta = _out(_with_lora(student, naive.state)) - base
    assert _cos(naive_delta, reference) < _cos(delta, reference) - 0.02


def test_a_width_pruned_feed_forward_refuses_its_entries_with_the_reason(
    teacher_dir: Path, lora_state: dict[str, torch.Tensor]
) -> None:
    ported = port_lora(lora_state, recipe=_recipe(teacher_dir, Plan(ff_keep=((1, 0.5),))))
    reasons = set(ported.report.refused.values())
    assert len(reasons) == 1 and "width pruning" in next(iter(reasons))
    assert all(".ff." in m and m.split(".")[0] in ("down_blocks", "up_blocks") for m in ported.report.refused)
    assert "refused" in ported.report.summary() and "width pruning" in ported.report.summary()


def _kohya(state: dict[str, torch.Tensor], names: dict[str, str], alpha: float) -> dict[str, torch.Tensor]:
    """The same LoRA in kohya's layout: ``lora_unet_<module, dots as underscores>`` with an alpha."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len("unet.") : -len(".lora_A.weight")]
        stem = "lora_unet_" + names[module].replace(".", "_")
        rank = value.shape[0]
        out[f"{stem}.lora_down.weight"] = value
        out[f"{stem}.lora_up.weight"] = state[f"unet.{module}.lora_B.weight"] * rank / alpha
        out[f"{stem}.alpha"] = torch.tensor(alpha)
    return out


@pytest.mark.parametrize("style", ["diffusers", "sgm"])
def test_kohya_files_with_either_module_naming_read_as_the_diffusers_file_does(
    tiny_sdxl: UNet2DConditionModel, lora_state: dict[str, torch.Tensor], style: str
) -> None:
    sgm = sgm_module_names(tiny_sdxl)
    names = {m: (sgm[m] if style == "sgm" else m) for m in sgm}
    expected = read_lora(lora_state, tiny_sdxl).unet
    parsed = read_lora(_kohya(lora_state, names, alpha=2.0), tiny_sdxl)
    assert set(parsed.unet) == set(expected)
    for module, entry in expected.items():
        torch.testing.assert_close(parsed.unet[module].up, entry.up)


def test_a_saved_lora_file_keeps_its_alpha_and_the_ported_file_loads_with_no_key_warnings(
    tiny_sdxl: UNet2DConditionModel, teacher_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from diffusers import StableDiffusionXLPipeline

    model = _lora(tiny_sdxl, ["to_q", "to_v"], alpha=8)  # scale 2: lost if the metadata were ignored
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path / "teacher-lora",
        unet_lora_layers=get_peft_model_state_dict(model),
        unet_lora_adapter_metadata=model.peft_config["default"].to_dict(),
    )
    out = tmp_path / "ported"
    ported = port_lora(tmp_path / "teacher-lora", recipe=_recipe(teacher_dir, Plan()), out=out)
    assert ported.path == out / "pytorch_lora_weights.safetensors" and ported.path.is_file()
    student = copy.deepcopy(tiny_sdxl)
    with caplog.at_level("WARNING"):
        student.load_lora_adapter(str(ported.path), prefix="unet")
    assert "unexpected" not in caplog.text.lower() and "missing" not in caplog.text.lower()
    torch.testing.assert_close(_out(student), _out(model), atol=1e-4, rtol=1e-4)
    with pytest.raises(PrunerError, match="already exists"):
        port_lora(tmp_path / "teacher-lora", recipe=_recipe(teacher_dir, Plan()), out=out)


def test_a_lora_for_another_model_is_refused_in_one_line(teacher_dir: Path) -> None:
    other = _state(_lora(make_unet({**TINY_SDXL, "block_out_channels": [16, 32, 48]}), ["to_q"]))
    with pytest.raises(PrunerError, match="another model"):
        port_lora(other, recipe=_recipe(teacher_dir, Plan()))
