"""IP-Adapter compatibility: the check follows diffusers' positional numbering, an IP-Adapter built for the
bundled teacher loads through ``load_ip_adapter`` onto a compatible student (with a tiny image encoder built
offline) and drives it, and ``compat: [ip-adapter]`` refuses an incompatible plan with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml
from conftest import random_plans
from diffusers import UNet2DConditionModel
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
from typer.testing import CliRunner

import pruner
from pruner.cli import app
from pruner.compat.ip_adapter import cross_attention_processors, ip_adapter_compatibility, student_sources
from pruner.compat.ip_adapter_port import port_ip_adapter
from pruner.errors import PrunerError
from pruner.recipe import load_recipe
from pruner.student import resolve_recipe
from pruner.study.space import decode, load_space, suggest_genome
from pruner.unet import Plan, build_student, topology_of
from pruner.unet.plan import unit_kinds

FOUND = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "tiny-sdxl-50" / "found.yaml"
EMBED = 16  # the tiny image encoder's projection width


def _ip_adapter(teacher: UNet2DConditionModel, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter for ``teacher`` in the original layout: image projection + one k/v pair per attn2."""
    g = torch.Generator().manual_seed(seed)
    cross = teacher.config.cross_attention_dim
    proj = {"proj.weight": torch.randn(4 * cross, EMBED, generator=g) * 0.1, "proj.bias": torch.zeros(4 * cross),
            "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}  # fmt: skip
    layers = {}
    for k, name in enumerate(cross_attention_processors(topology_of(teacher))):
        hidden = teacher.get_submodule(name).to_q.out_features
        layers[f"{2 * k + 1}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.2
        layers[f"{2 * k + 1}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.2
    return {"image_proj": proj, "ip_adapter": layers}


def _pipeline(student: UNet2DConditionModel) -> Any:
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=EMBED)  # fmt: skip
    torch.manual_seed(0)
    pipe = pruner.unet.load.load_pipeline("tiny-sdxl")
    pipe.unet = student
    pipe.register_modules(
        image_encoder=CLIPVisionModelWithProjection(config).eval(),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_processor_order_is_diffusers_and_a_removed_transformer_layer_moves_the_ones_after_it(
    tiny_unet: UNet2DConditionModel,
) -> None:
    topo = topology_of(tiny_unet)
    real = [n.removesuffix(".processor") for n in tiny_unet.attn_processors if n.endswith("attn2.processor")]
    assert cross_attention_processors(topo) == real
    first = next(n for n, k in unit_kinds(topo).items() if k == "transformer_layer")
    moved = ip_adapter_compatibility(Plan.removing([first]), topo)
    assert not moved.ok and moved.kept == len(real) - 1 and "by position" in moved.line()
    for plan in random_plans(topo, 10, 0):
        result = ip_adapter_compatibility(plan, topo)
        student = build_student(tiny_unet, plan)[0]
        assert result.kept == len([n for n in student.attn_processors if n.endswith("attn2.processor")])


def test_a_teacher_ip_adapter_loads_on_a_compatible_student_and_drives_it(tmp_path: Path) -> None:
    teacher = pruner.load_unet("tiny-sdxl")
    plan = Plan.removing(["mid_block"], ff_keep={1: 0.5})  # mid block (last in order) and a narrowed width
    topo = topology_of(teacher)
    assert ip_adapter_compatibility(plan, topo).ok
    adapter = _ip_adapter(teacher)
    pipe = _pipeline(build_student(teacher, plan)[0].eval())
    pipe.load_ip_adapter(adapter, subfolder="", weight_name="", image_encoder_folder=None)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    runs = {}
    for scale in (0.0, 1.0):
        pipe.set_ip_adapter_scale(scale)
        out = pipe("a red circle", ip_adapter_image=image, num_inference_steps=2, output_type="np",
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
        runs[scale] = out.images[0]
    assert np.abs(runs[1.0] - runs[0.0]).max() > 1e-3  # the adapter acts on the student's pictures
    given = pipe.unet.attn_processors
    kept = [n for n in given if n.endswith("attn2.processor")]
    for k, name in enumerate(kept):  # each processor got the entries made for its own teacher layer
        torch.testing.assert_close(given[name].to_k_ip[0].weight, adapter["ip_adapter"][f"{2 * k + 1}.to_k_ip.weight"])
    assert len(kept) < len(cross_attention_processors(topo))  # the mid block's entries, last, go unused


def test_on_an_incompatible_student_diffusers_fails_on_a_shape_or_gives_a_layer_another_layers_weights() -> None:
    teacher = pruner.load_unet("tiny-sdxl")
    topo = topology_of(teacher)
    names = cross_attention_processors(topo)
    adapter = _ip_adapter(teacher)
    crossing = build_student(teacher, Plan.removing(["up_blocks.0.attentions.0.transformer_blocks.0"]))[0]
    with pytest.raises(ValueError, match="expected shape"):  # the shift reaches a level of another width
        crossing._load_ip_adapter_weights([adapter])  # what load_ip_adapter does to the UNet
    plan = Plan.removing(["up_blocks.1.attentions.0.transformer_blocks.0", "mid_block"])  # the shift stays in a level
    result = ip_adapter_compatibility(plan, topo)
    assert not result.ok and result.first_moved is not None
    student_proc, source, given = result.first_moved
    student = build_student(teacher, plan)[0]
    student._load_ip_adapter_weights([adapter])  # loads without a word
    loaded = student.attn_processors[f"{student_proc}.processor"].to_k_ip[0].weight
    torch.testing.assert_close(loaded, adapter["ip_adapter"][f"{2 * names.index(given) + 1}.to_k_ip.weight"])
    assert not torch.allclose(loaded, adapter["ip_adapter"][f"{2 * names.index(source) + 1}.to_k_ip.weight"])


def test_compat_ip_adapter_refuses_a_plan_that_moves_processors_and_a_space_keeps_to_compatible_ones(
    tmp_path: Path,
) -> None:
    data = yaml.safe_load(FOUND.read_text())
    data.update(compat=["ip-adapter"])
    data.pop("student", None)
    data.pop("provenance", None)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(
        PrunerError, match=r"ip-adapter, but the student keeps \d+ of the teacher's \d+ cross-attention"
    ):
        resolve_recipe(load_recipe(tmp_path / "r.yaml"), str(tmp_path / "r.yaml"))
    space = load_space("ip-adapter")
    assert not space.transformer_layers and not space.layers and space.mid_block and space.width
    topo = topology_of(pruner.load_unet("tiny-sdxl"))
    study = optuna.create_study(directions=["minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        assert ip_adapter_compatibility(decode(suggest_genome(study.ask(), space, topo), space, topo, {}), topo).ok
    inspected = CliRunner().invoke(app, ["inspect", str(FOUND), "--no-macs"])
    assert inspected.exit_code == 0 and "IP-Adapter-compatible: no, the student keeps" in inspected.output


def test_a_ported_ip_adapter_gives_every_processor_of_any_depth_student_its_own_teachers_entries(
    tmp_path: Path,
) -> None:
    teacher = pruner.load_unet("tiny-sdxl")
    names = cross_attention_processors(topology_of(teacher))
    adapter = _ip_adapter(teacher)
    student = pruner.build_student("tiny-sdxl", FOUND).eval()
    student.save_pretrained(tmp_path / "found")
    (tmp_path / "found" / "recipe.yaml").write_text(FOUND.read_text())
    port_ip_adapter(adapter, student=tmp_path / "found", out=tmp_path / "ip.safetensors")
    pipe = _pipeline(student)
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip.safetensors", image_encoder_folder=None)
    sources = dict(zip(cross_attention_processors(topology_of(student)), _sources(FOUND), strict=True))
    for name, processor in pipe.unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            t = names.index(sources[name.removesuffix(".processor")])
            torch.testing.assert_close(
                processor.to_k_ip[0].weight, adapter["ip_adapter"][f"{2 * t + 1}.to_k_ip.weight"]
            )


def _sources(recipe: Path) -> list[str]:
    resolved = resolve_recipe(load_recipe(recipe), str(recipe))
    return [source for _, source in student_sources(resolved.layout)]
