from __future__ import annotations

import pytest
import torch
from conftest import TINY_SDXL, random_plans, unet_inputs
from diffusers import UNet2DConditionModel

from pruner.cost import CostModel, count_params
from pruner.errors import PrunerError
from pruner.recipe import DistillSpec, PlanSpec, Recipe, StageSpec, TeacherSpec
from pruner.student import save_student
from pruner.unet import Plan, build_student, feature_map, layout_of, topology_of, weight_map


def _latent(unet) -> int:  # type: ignore[no-untyped-def]
    return unet.config.sample_size


def test_keeping_every_unit_reproduces_the_teacher_bit_exactly(tiny_unet) -> None:  # type: ignore[no-untyped-def]
    student, report = build_student(tiny_unet, Plan())
    assert not report.fresh and not report.by_position
    args, kwargs = unet_inputs(tiny_unet.config, _latent(tiny_unet))
    with torch.no_grad():
        assert torch.equal(tiny_unet(*args, **kwargs).sample, student(*args, **kwargs).sample)


def test_student_does_not_share_storage_with_the_teacher(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    student, _ = build_student(tiny_sdxl, Plan())
    teacher_ptrs = {p.data_ptr() for p in tiny_sdxl.parameters()}
    assert not any(p.data_ptr() in teacher_ptrs for p in student.parameters())
    assert all(p.requires_grad for p in student.parameters())


def test_kept_layers_start_from_their_teacher_layers(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    plan = Plan.removing(["down_blocks.2.attentions.1.transformer_blocks.0-1", "down_blocks.1.resnets.0"])
    student, _ = build_student(tiny_sdxl, plan)
    t, s = tiny_sdxl.state_dict(), student.state_dict()
    # the only kept layer of attention 1 is the teacher's third
    key = "attentions.1.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(s[f"down_blocks.2.{key}"], t[f"down_blocks.2.{key.replace('blocks.0', 'blocks.2')}"])
    # down_blocks.1 keeps teacher layer 1 as its layer 0; its output side is the teacher's layer 1
    assert torch.equal(s["down_blocks.1.resnets.0.conv2.weight"], t["down_blocks.1.resnets.1.conv2.weight"])
    assert torch.equal(s["down_blocks.1.attentions.0.proj_out.weight"], t["down_blocks.1.attentions.1.proj_out.weight"])
    # ... and its channel-changing input side comes from the teacher layer at the same position
    assert torch.equal(s["down_blocks.1.resnets.0.conv1.weight"], t["down_blocks.1.resnets.0.conv1.weight"])
    # the up partner of the removed layer is gone: up_blocks.1 keeps teacher up layers 0 and 2
    assert torch.equal(s["up_blocks.1.resnets.1.conv2.weight"], t["up_blocks.1.resnets.2.conv2.weight"])


@pytest.mark.slow
def test_random_students_save_and_load_in_stock_diffusers(tiny_unet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    topo = topology_of(tiny_unet)
    cost = CostModel(tiny_unet.config)
    recipe = Recipe(schema_version=1, name="t", teacher=TeacherSpec(model="x"), plan=PlanSpec(),
                    distill=DistillSpec(stages=[StageSpec(steps=1, learning_rate=1e-4)]))  # fmt: skip
    args, kwargs = unet_inputs(tiny_unet.config, _latent(tiny_unet))
    for k, plan in enumerate(random_plans(topo, 6, seed=1, p=0.35)):
        student, _ = build_student(tiny_unet, plan)
        assert count_params(student) == cost.params(plan)
        out = save_student(student, recipe, tmp_path / f"s{k}")
        assert (out / "diffusion_pytorch_model.safetensors").is_file() and (out / "recipe.yaml").is_file()
        loaded = UNet2DConditionModel.from_pretrained(out).eval()
        saved, reloaded = student.state_dict(), loaded.state_dict()
        # stored values, not computed ones: a safetensors round trip is bit-exact on any CPU
        assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
        with torch.no_grad():
            a, b = student(*args, **kwargs).sample, loaded(*args, **kwargs).sample
        # identical weights, but freshly loaded tensors may sit at other alignments, and CPU kernels
        # then round differently (seen: 1.5e-6 on another CPU): compare outputs with a tolerance
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_save_refuses_a_non_empty_folder(tiny_sdxl, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    recipe = Recipe(schema_version=1, name="t", teacher=TeacherSpec(model="x"), plan=PlanSpec(),
                    distill=DistillSpec(stages=[StageSpec(steps=1, learning_rate=1e-4)]))  # fmt: skip
    with pytest.raises(PrunerError, match="not empty"):
        save_student(tiny_sdxl, recipe, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_meta_build_sizes_without_storage(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    plan = Plan.removing(["mid_block"])
    student, _ = build_student(tiny_sdxl, plan, device="meta")
    assert next(student.parameters()).device.type == "meta"
    assert count_params(student) == CostModel(TINY_SDXL).params(plan)


@pytest.mark.parametrize("level", ["block", "sub_block", "layer"])
def test_feature_pairs_have_matching_shapes(tiny_unet, level) -> None:  # type: ignore[no-untyped-def]
    topo = topology_of(tiny_unet)
    args, kwargs = unet_inputs(tiny_unet.config, _latent(tiny_unet))
    for plan in random_plans(topo, 4, seed=7, p=0.3):
        student, _ = build_student(tiny_unet, plan)
        pairs = feature_map(layout_of(plan, topo), topo, level)
        assert pairs, plan
        s_out = _outputs(student, [s for s, _ in pairs], args, kwargs)
        t_out = _outputs(tiny_unet, [t for _, t in pairs], args, kwargs)
        for s, t in pairs:
            assert s_out[s].shape == t_out[t].shape, (s, t)


def test_weight_map_names_existing_teacher_modules(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    topo = topology_of(tiny_sdxl)
    teacher = dict(tiny_sdxl.named_modules())
    for plan in random_plans(topo, 10, seed=2, p=0.3):
        layout = layout_of(plan, topo)
        student = dict(build_student(tiny_sdxl, plan, device="meta")[0].named_modules())
        for s, t in weight_map(layout).items():
            if s in student:
                assert t in teacher, (s, t)


def _outputs(model, names, args, kwargs):  # type: ignore[no-untyped-def]
    found = {}
    modules = dict(model.named_modules())

    def keep(name):  # type: ignore[no-untyped-def]
        return lambda _m, _a, out: found.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    hooks = [modules[n].register_forward_hook(keep(n))
             for n in names]  # fmt: skip
    with torch.no_grad():
        model(*args, **kwargs)
    for h in hooks:
        h.remove()
    return found
