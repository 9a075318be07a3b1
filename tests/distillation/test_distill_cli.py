"""`pruner cache` then `pruner distill` end to end on a tiny SDXL pipeline: outputs, resume, errors, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from typer.testing import CliRunner

from pruner.cli import app
from pruner.distillation import trainer

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tiny_sdxl_pipeline: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(recipe pointing at the tiny pipeline, latent cache of 40 synthetic pictures)."""
    root = tmp_path_factory.mktemp("distill")
    assert runner.invoke(app, ["synth-data", "--out", str(root / "data"), "--n", "40"]).exit_code == 0
    result = runner.invoke(
        app, ["cache", str(root / "data"), "--teacher", tiny_sdxl_pipeline, "--out", str(root / "cache")]
    )
    assert result.exit_code == 0, result.output
    text = (RECIPES / "tiny-sdxl-bk-small.yaml").read_text().replace("model: tiny-sdxl", f"model: {tiny_sdxl_pipeline}")
    (root / "recipe.yaml").write_text(text)
    return root / "recipe.yaml", root / "cache"


def distill(recipe: Path, cache: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["distill", str(recipe), "--data", str(cache), "--output", str(out), "--batch-size", "4", *extra]
    return runner.invoke(app, args)


def unet_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


def test_the_validation_grid_is_drawn_at_the_resolution_the_student_trained_at(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A student distilled on 64px latents is shown at 64px, not at its teacher's native 32px (for SDXL:
    a 512px cache is not validated at 1024, which costs 4x the compute and memory)."""
    from PIL import Image

    recipe, _ = setup
    data = recipe.parent / "data"
    teacher = recipe.read_text().split("model: ")[1].split()[0]
    cache = tmp_path / "cache64"
    made = runner.invoke(app, ["cache", str(data), "--teacher", teacher, "--out", str(cache), "--resolution", "64"])
    assert made.exit_code == 0, made.output
    result = distill(recipe, cache, tmp_path / "out", "--steps", "1")
    assert result.exit_code == 0, result.output
    grid = Image.open(tmp_path / "out" / "validation.png")
    cell = 64 * 4  # pictures are drawn 4x, beside a 70px label column, two rows over the captions
    assert (grid.width - 70) % cell == 0 and 2 * cell <= grid.height < 2 * cell + 100


def test_a_bf16_run_reads_its_teacher_in_bf16_and_trains_an_fp32_student(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The student is built from fp32 master weights; the frozen teacher is read from disk in bf16 (SDXL's
    teacher: 5 GB of host memory, not 10 GB in fp32 before the cast)."""
    from accelerate.state import AcceleratorState

    from pruner.teacher import Teacher

    loads: list[torch.dtype | None] = []
    load = Teacher.load

    def spy(teacher, *, dtype=None, device="cpu"):  # type: ignore[no-untyped-def]
        loads.append(dtype)
        return load(teacher, dtype=dtype, device=device)

    monkeypatch.setattr(Teacher, "load", spy)
    recipe, cache = setup
    AcceleratorState._reset_state(True)  # accelerate keeps one state a process; this run wants bf16
    try:
        result = distill(recipe, cache, tmp_path / "out", "--steps", "1", "--mixed-precision", "bf16")
    finally:
        AcceleratorState._reset_state(True)
    assert result.exit_code == 0, result.output
    assert loads == [torch.float32, torch.bfloat16]
    assert {t.dtype for t in unet_weights(tmp_path / "out").values()} == {torch.float32}


@pytest.mark.slow
def test_distill_writes_a_pipeline_stock_diffusers_loads(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe, cache = setup
    result = distill(
        recipe, cache, tmp_path / "out", "--steps", "6", "--checkpoint-every", "3", "--validate-every", "3"
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    assert unet.config.layers_per_block == 1 and unet.config.mid_block_type is None
    pipe = StableDiffusionXLPipeline.from_pretrained(out, torch_dtype=torch.float32)
    assert pipe(["a small red circle on the left on a grey background"], num_inference_steps=2).images[0].size == (
        32,
        32,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and set(metrics["final_losses"]) == {"total", "task", "output_kd", "feature_kd"}
    assert len(metrics["held_out_kd_history"]) == 3  # steps 3 and 6, and the stage end
    assert (out / "validation.png").is_file() and "tiny-sdxl-bk-small" in (out / "README.md").read_text()
    assert any((out / "logs").rglob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    assert not list(out.glob(".*partial*"))


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    recipe, cache = setup
    assert distill(recipe, cache, tmp_path / "straight", "--steps", "6", "--checkpoint-every", "2").exit_code == 0

    real_step = trainer.Distiller.step

    def dying_step(self):  # type: ignore[no-untyped-def]
        if self.step_count == 5:
            raise KeyboardInterrupt("killed")
        return real_step(self)

    monkeypatch.setattr(trainer.Distiller, "step", dying_step)
    distill(recipe, cache, tmp_path / "resumed", "--steps", "6", "--checkpoint-every", "2")
    assert not (tmp_path / "resumed" / "unet").exists()
    monkeypatch.setattr(trainer.Distiller, "step", real_step)
    result = distill(recipe, cache, tmp_path / "resumed", "--steps", "6", "--checkpoint-every", "2", "--resume")
    assert result.exit_code == 0, result.output
    expected, got = unet_weights(tmp_path / "straight"), unet_weights(tmp_path / "resumed")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_user_errors(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe, cache = setup
    result = distill(recipe, cache, tmp_path / "o", "--resume")
    assert result.exit_code == 2 and "no complete checkpoint" in result.output
    (tmp_path / "o" / "checkpoints" / "step-0000001").mkdir(parents=True)
    (tmp_path / "o" / "checkpoints" / "step-0000001" / "progress.json").write_text("{}")
    result = distill(recipe, cache, tmp_path / "o")
    assert result.exit_code == 2 and "--resume" in result.output
    sdxl_recipe = RECIPES / "sdxl-vega.yaml"
    result = runner.invoke(app, ["distill", str(sdxl_recipe), "--output", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--data" in result.output
    result = runner.invoke(app, ["cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_accelerate_launch_runs_two_processes(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe, cache = setup
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None
    cmd = [accelerate, "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--multi_gpu", "-m", "pruner", "distill", str(recipe), "--data", str(cache),
           "--output", str(tmp_path / "ddp"), "--steps", "3", "--batch-size", "2"]  # fmt: skip
    env = {**os.environ, "PRUNER_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["processes"] == 2  # not one, twice
    assert UNet2DConditionModel.from_pretrained(tmp_path / "ddp", subfolder="unet").config.layers_per_block == 1


def _two_stage_recipe(recipe: Path, tmp_path: Path, remove: str) -> Path:
    text = recipe.read_text()
    stage = text[text.index("  stages:\n") :].split("provenance:")[0]
    second = stage.replace("  stages:\n", "").replace("- teacher: null", f"- remove: [{remove}]\n    teacher: null")
    path = tmp_path / "two-stage.yaml"
    path.write_text(text.replace(stage, stage + second))
    return path


@pytest.mark.slow
def test_a_later_stage_removes_more_of_the_student(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe, cache = setup
    two = _two_stage_recipe(recipe, tmp_path, "down_blocks.2.attentions.0.transformer_blocks.0-1")
    result = distill(two, cache, tmp_path / "out", "--steps", "4", "--checkpoint-every", "1")
    assert result.exit_code == 0, result.output
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "out", subfolder="unet")
    assert unet.config.layers_per_block == 1
    assert [len(a.transformer_blocks) for a in unet.down_blocks[2].attentions] == [4]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["params"] < 5_288_068


def test_a_bad_progressive_removal_is_refused_before_training(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe, cache = setup
    two = _two_stage_recipe(recipe, tmp_path, "down_blocks.2.attentions.0.transformer_blocks.9")
    result = distill(two, cache, tmp_path / "out")
    assert result.exit_code == 2 and "distill.stages.1.remove" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_width_pruned_student_distills_saves_and_shrinks_further(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pruner
    from pruner.unet.width import ff_inner_sizes

    recipe, cache = setup
    text = recipe.read_text().replace("plan:\n", "plan:\n  width: {ff_keep: {1: 0.5, 2: 0.25}, importance: taylor}\n")
    text = text.replace("student:", "student_was:").split("student_was:")[0] + "distill:" + text.split("distill:")[1]
    (tmp_path / "w.yaml").write_text(text)
    two = _two_stage_recipe(tmp_path / "w.yaml", tmp_path, "down_blocks.2.attentions.0.transformer_blocks.0")
    result = distill(two, cache, tmp_path / "out", "--steps", "4", "--checkpoint-every", "2")
    assert result.exit_code == 0, result.output
    with pytest.raises(ValueError, match=r"pruner\.load_unet"):
        UNet2DConditionModel.from_pretrained(tmp_path / "out", subfolder="unet")
    unet = pruner.load_unet(str(tmp_path / "out"))
    sizes = ff_inner_sizes(unet)
    assert sizes["down_blocks.1.attentions.0.transformer_blocks.0.ff"] == 128  # 256 * 0.5
    assert sizes["up_blocks.0.attentions.0.transformer_blocks.0.ff"] == 96  # 384 * 0.25
    assert len(unet.down_blocks[2].attentions[0].transformer_blocks) < 6  # the second stage removed one more
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["params"] == sum(p.numel() for p in unet.parameters())
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "out", unet=unet, torch_dtype=torch.float32)
    assert pipe(["a small red circle on the left on a grey background"], num_inference_steps=2).images[0].size == (
        32,
        32,
    )
    assert "pruner.load_unet" in (tmp_path / "out" / "README.md").read_text()


def test_validation_grids_of_the_given_prompts_are_logged_to_tensorboard_while_training(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--validate-every N: a teacher | student grid of the --validation-prompts every N steps, in TensorBoard's
    event file as an image beside the held-out KD, and kept under validation/."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe, cache = setup
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle on a white background\na large blue square on a grey background\n")
    result = distill(recipe, cache, tmp_path / "out", "--steps", "2", "--validate-every", "1",
                     "--validation-prompts", str(prompts), "--report-to", "tensorboard")  # fmt: skip
    assert result.exit_code == 0, result.output
    grids = sorted(p.name for p in (tmp_path / "out" / "validation").iterdir())
    assert grids == ["step-0000001.png", "step-0000002.png"]
    cell = 32 * 4  # two prompts: two columns of 4x pictures beside the 70px label column
    assert Image.open(tmp_path / "out" / "validation" / grids[0]).width == 70 + 2 * cell
    events = next((tmp_path / "out" / "logs").rglob("events.out.tfevents.*"))
    board = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    board.Reload()
    assert "validation" in board.Tags()["images"] and "val/held_out_kd" in board.Tags()["scalars"]
    assert [e.step for e in board.Images("validation")] == [1, 2]
