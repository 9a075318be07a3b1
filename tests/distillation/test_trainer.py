from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import TINY_SDXL

from pruner.diffusion import sdxl_scheduler
from pruner.distillation.hooks import FeatureRecorder
from pruner.distillation.losses import LossWeights, distill_loss, feature_kd
from pruner.distillation.trainer import Distiller, TrainSettings, latest_checkpoint
from pruner.teacher import Teacher
from pruner.unet import Plan, build_student, feature_map, layout_of, topology_of

PLAN = Plan.removing(
    ["down_blocks.2.attentions.0.transformer_blocks.1-2", "down_blocks.1.resnets.1", "mid_block.attentions.0"]
)


def fake_cache(n: int = 48, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Rows shaped like a latent cache of the tiny SDXL fixture."""
    g = torch.Generator().manual_seed(seed)
    text = TINY_SDXL["projection_class_embeddings_input_dim"] - 6 * TINY_SDXL["addition_time_embed_dim"]
    return [
        {"latents": torch.randn(4, 8, 8, generator=g), "prompt_embeds": torch.randn(7, 32, generator=g),
         "pooled_prompt_embeds": torch.randn(text, generator=g), "time_ids": torch.tensor([64.0, 64, 0, 0, 64, 64])}
        for _ in range(n)
    ]  # fmt: skip


def make(  # type: ignore[no-untyped-def]
    teacher, level: str = "sub_block", steps: int = 6, lr: float = 1e-3, held_out: int = 8, weights=None, ema=None
) -> Distiller:
    topo = topology_of(teacher)
    student, _ = build_student(teacher, PLAN)
    pairs = feature_map(layout_of(PLAN, topo), topo, level)  # type: ignore[arg-type]
    settings = TrainSettings(
        steps=steps,
        learning_rate=lr,
        batch_size=4,
        seed=3,
        warmup_steps=0,
        weights=weights or LossWeights(),
        ema_decay=ema,
    )
    return Distiller(student, teacher, pairs, fake_cache(), settings, noise_scheduler=sdxl_scheduler(),
                     accelerator=Accelerator(cpu=True), held_out=held_out)  # fmt: skip


def test_feature_kd_sums_pairs_and_normalises() -> None:
    s = {"a": torch.ones(2, 3), "b": torch.zeros(2, 3)}
    t = {"x": torch.zeros(2, 3), "y": 2 * torch.ones(2, 3)}
    assert feature_kd(s, t, [("a", "x"), ("b", "y")], normalize=False) == pytest.approx(1 + 4)
    assert feature_kd(s, t, [("b", "y")], normalize=True) == pytest.approx(1.0)


def test_loss_terms_follow_their_weights() -> None:
    pred, teacher, target = torch.ones(2, 4), torch.zeros(2, 4), torch.zeros(2, 4)
    feats = ({"a": torch.ones(1)}, {"a": torch.zeros(1)}, [("a", "a")])
    terms = distill_loss(pred, teacher, target, feats, LossWeights(1.0, 0.5, 0.25))
    assert terms.as_floats() == pytest.approx({"total": 1 + 0.5 + 0.25, "task": 1, "output_kd": 1, "feature_kd": 1})


def test_hooks_record_the_unwrapped_module_paths(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    from conftest import unet_inputs

    args, kwargs = unet_inputs(TINY_SDXL, 8)
    with FeatureRecorder(tiny_sdxl, ["down_blocks.1", "mid_block.attentions.0"]) as rec, torch.no_grad():
        tiny_sdxl(*args, **kwargs)
    assert rec.features["down_blocks.1"].shape == (1, 64, 2, 2)  # after its downsampler
    assert not tiny_sdxl._forward_hooks and not tiny_sdxl.mid_block.attentions[0]._forward_hooks


@pytest.mark.parametrize("level", ["block", "sub_block", "layer"])
def test_distilling_brings_the_student_closer_to_the_teacher(tiny_sdxl, level: str) -> None:  # type: ignore[no-untyped-def]
    weights = LossWeights(task=0.1, output_kd=1.0, feature_kd=0.5, normalize_features=True)
    d = make(tiny_sdxl, level, steps=30, lr=1e-3, weights=weights)
    before = d.held_out_kd()
    seen: list[dict[str, float]] = []
    d.run(30, on_step=lambda _step, terms: seen.append(terms.as_floats()))
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(seen[-5:], "feature_kd") < 0.8 * mean(seen[:5], "feature_kd")
    assert mean(seen[-5:], "total") < mean(seen[:5], "total")
    assert d.held_out_kd() < 1.2 * before  # no blow-up; the output-KD test below asks for a clear drop
    d.close()


def test_output_kd_brings_held_out_predictions_closer(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    d = make(tiny_sdxl, steps=40, lr=5e-4, weights=LossWeights(task=0.0, output_kd=1.0, feature_kd=0.0))
    before = d.held_out_kd()
    d.run(40)
    assert d.held_out_kd() < 0.8 * before
    d.close()


@pytest.mark.parametrize("ema", [None, 0.9])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_sdxl, tmp_path: Path, ema) -> None:  # type: ignore[no-untyped-def]
    straight = make(tiny_sdxl, ema=ema)
    straight.run(6)
    raw = {k: v.clone() for k, v in straight.acc.unwrap_model(straight.model).state_dict().items()}
    expected = {k: v.clone() for k, v in straight.final_student().state_dict().items()}
    assert (ema is None) == all(torch.equal(raw[k], expected[k]) for k in raw)  # EMA weights differ from raw ones
    straight.close()

    first = make(tiny_sdxl, ema=ema)
    first.run(3)
    first.save_checkpoint(tmp_path, {"stage": 0, "stage_step": 3, "global_step": 3})
    first.run(4)  # "killed" after a step past the checkpoint
    first.close()
    (tmp_path / ".step-0000009.partial").mkdir()  # an interrupted save never counts as a checkpoint
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step-0000003"

    resumed = make(tiny_sdxl, ema=ema)
    resumed.load_checkpoint(ckpt)
    resumed.run(6)
    got = resumed.final_student().state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    resumed.close()


def test_only_the_newest_checkpoints_are_kept(tiny_sdxl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = make(tiny_sdxl, steps=4)
    for step in range(1, 5):
        d.run(step)
        d.save_checkpoint(tmp_path, {"stage": 0, "stage_step": step, "global_step": step})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000002", "step-0000003", "step-0000004"]
    d.close()


def test_an_output_interrupted_while_moving_into_place_does_not_read_as_finished(  # type: ignore[no-untyped-def]
    tiny_sdxl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    from types import SimpleNamespace

    from pruner.distillation import output
    from pruner.recipe import DistillSpec, PlanSpec, Recipe, StageSpec, TeacherSpec

    recipe = Recipe(schema_version=1, name="t", teacher=TeacherSpec(model="tiny-sdxl"), plan=PlanSpec(),
                    distill=DistillSpec(stages=[StageSpec(steps=1, learning_rate=1e-4)]))  # fmt: skip
    result = SimpleNamespace(steps=1, final_losses={}, held_out_kd=[], settings=None)
    moved: list[str] = []

    def replace_then_fail(src: str | Path, dst: str | Path) -> None:
        if len(moved) == 2:
            raise OSError("disk full")
        moved.append(Path(src).name)
        os.rename(src, dst)

    monkeypatch.setattr(output.os, "replace", replace_then_fail)
    with pytest.raises(OSError, match="disk full"):
        output.write_outputs(tiny_sdxl, recipe, Teacher.of_recipe(recipe.teacher), tmp_path / "out", result, prompts=[])
    assert moved and output.DONE_MARKER not in moved
    assert not (tmp_path / "out" / output.DONE_MARKER).exists()
    monkeypatch.undo()
    output.write_outputs(tiny_sdxl, recipe, Teacher.of_recipe(recipe.teacher), tmp_path / "out", result, prompts=[])
    assert (tmp_path / "out" / output.DONE_MARKER).is_file() and (tmp_path / "out" / "unet").is_dir()


def test_a_bf16_distiller_freezes_its_teacher_in_bf16_on_the_cpu(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    """`pruner distill --mixed-precision bf16` on a CPU takes the GPU's path: a bf16 teacher, an fp32 student."""
    import copy

    from accelerate.state import AcceleratorState

    teacher = copy.deepcopy(tiny_sdxl)
    topo = topology_of(teacher)
    student, _ = build_student(teacher, PLAN)
    settings = TrainSettings(steps=2, learning_rate=1e-3, batch_size=4, seed=3, warmup_steps=0)
    AcceleratorState._reset_state(True)  # accelerate keeps one state a process; this test wants another precision
    try:
        d = Distiller(student, teacher, feature_map(layout_of(PLAN, topo), topo, "sub_block"), fake_cache(), settings,
                      noise_scheduler=sdxl_scheduler(), accelerator=Accelerator(cpu=True,
                      mixed_precision="bf16"), held_out=8)  # fmt: skip
        assert d.teacher.dtype == torch.bfloat16 and student.dtype == torch.float32
        d.run(2)
        assert d.step_count == 2 and all(torch.isfinite(p).all() for p in student.parameters())
        d.close()
    finally:
        AcceleratorState._reset_state(True)
