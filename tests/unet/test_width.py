"""Width pruning: GEGLU halves pruned together, exact costs, saving and loading, the recipe field."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import SEQ, TINY_SDXL, random_plans, unet_inputs
from diffusers import UNet2DConditionModel
from diffusers.models.attention import FeedForward

import pruner
from pruner.cost import CostModel, count_macs
from pruner.errors import PrunerError, RecipeError
from pruner.recipe import parse_recipe
from pruner.unet import Plan, build_student, nearest_expressible, topology_of
from pruner.unet.width import (
    WIDTH_KEY,
    feed_forwards,
    ff_inner_sizes,
    ff_level,
    keep_count,
    prune_feed_forward,
    save_unet,
)


def _ff(seed: int = 0) -> FeedForward:
    torch.manual_seed(seed)
    return FeedForward(16, activation_fn="geglu").eval()


def test_geglu_value_and_gate_halves_lose_the_same_channels() -> None:
    ff = _ff()
    x = torch.randn(3, 5, 16)
    inner = ff.net[2].in_features
    w_in, b_in = ff.net[0].proj.weight.detach().clone(), ff.net[0].proj.bias.detach().clone()
    w_out = ff.net[2].weight.detach().clone()
    prune_feed_forward(ff, keep=24)
    assert (ff.net[0].proj.out_features, ff.net[2].in_features) == (48, 24)
    kept = [c for c in range(inner) if any(torch.equal(w_out[:, c], ff.net[2].weight[:, k]) for k in range(24))]
    assert len(kept) == 24
    # the pruned module computes what the original does with the other hidden channels switched off
    with torch.no_grad():
        value, gate = (x @ w_in.T + b_in).chunk(2, dim=-1)
        hidden = value * torch.nn.functional.gelu(gate)
        mask = torch.zeros(inner)
        mask[kept] = 1.0
        expected = (hidden * mask) @ w_out.T + ff.net[2].bias
        torch.testing.assert_close(ff(x), expected, rtol=1e-5, atol=1e-6)


def test_magnitude_keeps_the_largest_channels() -> None:
    ff = _ff()
    with torch.no_grad():
        ff.net[2].weight[:, :8] *= 100.0  # channels 0-7 dominate the group's magnitude
    big = ff.net[2].weight[:, :8].detach().clone()
    prune_feed_forward(ff, keep=8, importance="magnitude")
    assert torch.equal(ff.net[2].weight.detach(), big)


@pytest.mark.parametrize("ratio,inner,kept", [(0.5, 64, 32), (0.25, 384, 96), (0.3, 10, 3), (0.01, 64, 1)])
def test_keep_count_rounds_and_keeps_one(ratio: float, inner: int, kept: int) -> None:
    assert keep_count(inner, ratio) == kept


def test_levels_pair_down_up_and_mid() -> None:
    paths = ("down_blocks.1.a", "up_blocks.1.a", "up_blocks.0.a", "mid_block.a")
    assert [ff_level(p, 3) for p in paths] == [1, 1, 2, 2]


def _width_plans(unet: UNet2DConditionModel, n: int, seed: int) -> list[Plan]:
    rng = random.Random(seed)
    levels = sorted({ff_level(p, len(unet.down_blocks)) for p in feed_forwards(unet)})
    depth_plans = random_plans(topology_of(unet), n, seed=seed, p=0.3)
    return [p.with_widths({lv: rng.choice([0.25, 0.5, 0.75, 1.0]) for lv in levels}) for p in depth_plans]


@pytest.mark.slow
def test_composed_cost_of_width_plans_equals_a_direct_count(tiny_unet) -> None:  # type: ignore[no-untyped-def]
    latent = tiny_unet.config.sample_size
    cost = CostModel(tiny_unet.config, latent=latent, seq_len=SEQ, teacher=tiny_unet)
    plans = _width_plans(tiny_unet, 8, seed=3)
    assert any(p.ff_keep for p in plans)
    for plan in plans:
        student, report = build_student(tiny_unet, plan)
        assert cost.params(plan) == sum(p.numel() for p in student.parameters())
        assert cost.macs(plan) == count_macs(student, latent, 1, SEQ).total
        meta, _ = build_student(tiny_unet, plan, device="meta")
        assert ff_inner_sizes(meta) == ff_inner_sizes(student)
        for path, (was, kept) in report.narrowed.items():
            level = ff_level(path, len(student.down_blocks))
            assert kept == keep_count(was, plan.ff_ratios[level])


@pytest.mark.slow
def test_a_width_pruned_teacher_is_priced_at_its_own_widths(tiny_sdxl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A width-pruned model used as the next teacher: budgets and recipe sizes count its narrowed
    feed-forwards, its MACs are cached apart from the full-width architecture's, and later widths
    apply to what it kept."""
    from pruner.unet.load import unet_config, unet_ff_inner

    latent = tiny_sdxl.config.sample_size
    full = CostModel(tiny_sdxl.config, latent=latent, seq_len=SEQ, teacher=tiny_sdxl)
    full_macs = full.macs(Plan())
    narrow, _ = build_student(tiny_sdxl, Plan(ff_keep=((1, 0.5), (2, 0.75))))
    save_unet(narrow, tmp_path / "narrow")
    inner = unet_ff_inner(str(tmp_path / "narrow"))
    assert inner == ff_inner_sizes(narrow)
    stage = nearest_expressible(Plan.removing([f"down_blocks.{len(narrow.down_blocks) - 1}"]), topology_of(narrow))
    plans = [Plan(), stage, stage.with_widths({1: 0.5}), *_width_plans(narrow, 5, seed=7)]
    from_folder = CostModel(unet_config(str(tmp_path / "narrow")), latent=latent, seq_len=SEQ, inner=inner)
    from_model = CostModel(narrow.config, latent=latent, seq_len=SEQ, teacher=narrow)
    for plan in plans:  # each student built and counted once, against both cost models
        student, _ = build_student(narrow, plan)
        params, macs = sum(p.numel() for p in student.parameters()), count_macs(student, latent, 1, SEQ).total
        for cost in (from_model, from_folder):
            assert (cost.params(plan), cost.macs(plan)) == (params, macs), plan
    assert CostModel(tiny_sdxl.config, latent=latent, seq_len=SEQ).macs(Plan()) == full_macs  # cache not poisoned


def test_width_pruned_student_saves_and_loads_only_through_pruner(tiny_sdxl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = Plan.removing(["down_blocks.2.attentions.1.transformer_blocks.1"], {1: 0.5, 2: 0.25})
    student, _ = build_student(tiny_sdxl, plan)
    save_unet(student, tmp_path / "unet")
    assert WIDTH_KEY in json.loads((tmp_path / "unet" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"pruner\.load_unet"):
        UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    loaded = pruner.load_unet(str(tmp_path / "unet"))
    args, kwargs = unet_inputs(TINY_SDXL, TINY_SDXL["sample_size"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args, **kwargs).sample, student.eval()(*args, **kwargs).sample)


def test_depth_only_student_stays_stock(tiny_sdxl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    student, _ = build_student(tiny_sdxl, Plan.removing(["mid_block.attentions.0"]))
    save_unet(student, tmp_path / "unet")
    assert WIDTH_KEY not in json.loads((tmp_path / "unet" / "config.json").read_text())
    UNet2DConditionModel.from_pretrained(tmp_path / "unet")


def test_taylor_needs_gradients_and_uses_them(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    plan = Plan(ff_keep=((1, 0.5),))
    with pytest.raises(PrunerError, match="calibration"):
        build_student(tiny_sdxl, plan, importance="taylor")
    args, kwargs = unet_inputs(TINY_SDXL, TINY_SDXL["sample_size"], batch=2)

    def grad_fn(student: torch.nn.Module) -> None:
        student(*args, **kwargs).sample.pow(2).mean().backward()

    taylor, _ = build_student(tiny_sdxl, plan, importance="taylor", grad_fn=grad_fn)
    magnitude, _ = build_student(tiny_sdxl, plan)
    path = "down_blocks.1.attentions.0.transformer_blocks.0.ff"
    assert ff_inner_sizes(taylor) == ff_inner_sizes(magnitude)
    assert not torch.equal(taylor.get_submodule(path).net[2].weight, magnitude.get_submodule(path).net[2].weight)
    assert all(p.grad is None for p in taylor.parameters())


def _recipe(width: str) -> str:
    return (
        "schema_version: 1\nname: w\nteacher: {model: tiny-sdxl}\nplan:\n  remove: []\n"
        f"{width}distill: {{stages: [{{steps: 1, learning_rate: 1.0e-4}}]}}\n"
    )


def test_recipe_carries_widths_and_checks_them() -> None:
    recipe = parse_recipe(_recipe("  width: {ff_keep: {1: 0.5, 2: 0.75}, importance: taylor}\n"))
    assert recipe.plan_obj().ff_ratios == {1: 0.5, 2: 0.75}
    with pytest.raises(RecipeError, match=r"<recipe>:7: plan.width.ff_keep"):
        parse_recipe(_recipe("  width:\n    ff_keep: {1: 1.5}\n"))


def test_recipe_width_on_a_level_without_attention_is_refused() -> None:
    from pruner.student import resolve_recipe

    with pytest.raises(RecipeError, match="level 0 has no transformer layers"):
        resolve_recipe(parse_recipe(_recipe("  width: {ff_keep: {0: 0.5}}\n")))


@pytest.mark.slow
def test_width_pruned_student_of_the_bundled_teacher_generates_in_the_stock_pipeline(tmp_path: Path) -> None:
    import numpy as np
    from diffusers import StableDiffusionXLPipeline

    from pruner.unet.load import bundled_teacher, load_unet

    teacher_dir = bundled_teacher()
    assert teacher_dir is not None
    teacher = load_unet(str(teacher_dir))
    plan = Plan.removing(["down_blocks.2.attentions.1.transformer_blocks.4-5"], {1: 0.5, 2: 0.5})
    student, _ = build_student(teacher, plan)
    latent = teacher.config.sample_size
    assert CostModel(teacher.config, latent=latent).macs(plan) == count_macs(student, latent, 1, 77).total
    save_unet(student, tmp_path / "unet")
    unet = pruner.load_unet(str(tmp_path / "unet"))
    assert sum(p.numel() for p in unet.parameters()) < sum(p.numel() for p in load_unet(str(teacher_dir)).parameters())
    pipe = StableDiffusionXLPipeline.from_pretrained(teacher_dir, unet=unet, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a large red circle in the centre on a black background", num_inference_steps=8,
                 generator=torch.Generator().manual_seed(0), height=32, width=32).images[0]  # fmt: skip
    pixels = np.asarray(image).astype(float)
    assert image.size == (32, 32) and pixels.std() > 5  # a picture, not a blank


def test_apply_and_inspect_price_a_width_recipe_exactly(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pruner.cli import app

    runner = CliRunner()
    recipe = (Path(__file__).resolve().parents[2] / "recipes" / "tiny-sdxl-vega.yaml").read_text()
    recipe = recipe.replace("plan:\n", "plan:\n  width: {ff_keep: {1: 0.5, 2: 0.25}}\n")
    recipe = recipe[: recipe.index("student:")] + recipe[recipe.index("distill:") :]
    (tmp_path / "w.yaml").write_text(recipe)
    applied = runner.invoke(app, ["apply", str(tmp_path / "w.yaml"), "--out", str(tmp_path / "s")])
    assert applied.exit_code == 0, applied.output
    student = pruner.load_unet(str(tmp_path / "s"))
    params = sum(p.numel() for p in student.parameters())
    latent = student.config.sample_size
    for target in (tmp_path / "w.yaml", tmp_path / "s"):
        shown = runner.invoke(app, ["inspect", str(target), "--json"])
        assert shown.exit_code == 0, shown.output
        report = json.loads(shown.stdout)
        assert report["params"] == params
        assert report["macs"] == count_macs(student, latent, 1, 77).total
    # the width-pruned student as the next teacher: its widths carry over and the plan narrows what it kept
    second = (
        recipe[: recipe.index("teacher:")]
        + f"teacher:\n  model: {tmp_path / 's'}\nplan:\n"
        + "  remove: [up_blocks.0.attentions.2.transformer_blocks.1]\n  width: {ff_keep: {1: 0.5}}\n"
        + recipe[recipe.index("distill:") :]
    )
    (tmp_path / "second.yaml").write_text(second)
    applied = runner.invoke(app, ["apply", str(tmp_path / "second.yaml"), "--out", str(tmp_path / "s2")])
    assert applied.exit_code == 0, applied.output
    grandchild = pruner.load_unet(str(tmp_path / "s2"))
    assert ff_inner_sizes(grandchild)["down_blocks.1.attentions.0.transformer_blocks.0.ff"] == 64  # 256 * 0.5 * 0.5
    shown = runner.invoke(app, ["inspect", str(tmp_path / "second.yaml"), "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report["params"] == sum(p.numel() for p in grandchild.parameters())
    assert report["macs"] == count_macs(grandchild, latent, 1, 77).total
