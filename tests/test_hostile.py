"""Hostile input: every case a user can provoke ends in one line and exit code 2 before any compute, a
resumed run trains what it says, a checkpoint never runs code, and one picture cannot cost gigabytes."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import pruner
from pruner.cli import app
from pruner.errors import PrunerError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
runner = CliRunner()


def one_line_error(result, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    """The CLI result is exit code 2 with a single `error:` line holding every fragment; returns the line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- output locations


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "taken"
    path.write_text("not a folder\n")
    return path


def _commands(a_file: Path, tmp_path: Path) -> dict[str, list[str]]:
    recipe = str(RECIPES / "tiny-sdxl-bk-small.yaml")
    return {
        "apply": ["apply", recipe, "--out", str(a_file)],
        "search --out": ["search", "--out", str(a_file)],
        "search --storage sqlite": ["search", "--out", str(tmp_path / "r"), "--storage", f"sqlite:///{tmp_path}"],
        "search --storage journal": ["search", "--out", str(tmp_path / "r"), "--storage", f"journal:{a_file}/j.log"],
        "distill": ["distill", recipe, "--output", str(a_file)],
        "cache": ["cache", str(tmp_path / "no-data"), "--out", str(a_file / "cache")],
        "synth-data": ["synth-data", "--out", str(a_file / "pictures"), "--n", "2"],
        "eval --grid": ["eval", "tiny-sdxl", "--grid", str(tmp_path)],
        "front --export": ["front", "nosuchstudy", "--export", str(a_file)],
    }


@pytest.mark.parametrize(
    "command",
    [
        "apply",
        "search --out",
        "search --storage sqlite",
        "search --storage journal",
        "distill",
        "cache",
        "synth-data",
        "eval --grid",
        "front --export",
    ],
)
def test_an_unusable_output_location_is_one_line_before_any_work(command: str, a_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, _commands(a_file, tmp_path)[command])
    one_line_error(result, "is a f")  # "is a file, not a folder" or "is a folder, not a file"
    assert not (tmp_path / "r").exists() and a_file.read_text() == "not a folder\n"


def test_a_folder_nothing_can_be_written_in_is_refused(tmp_path: Path) -> None:
    target = Path("/proc/pruner-output")  # creating anything in /proc fails, also for root
    result = runner.invoke(app, ["apply", str(RECIPES / "tiny-sdxl-bk-small.yaml"), "--out", str(target)])
    one_line_error(result, "not writable", "/proc")


# --------------------------------------------------------------------------- damaged inputs


def test_a_unet_config_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "UNet2DConditionModel", ')
    one_line_error(runner.invoke(app, ["inspect", str(folder), "--no-macs"]), "config.json", "not a readable JSON")


def _pictures(tmp_path: Path, n: int) -> Path:
    result = runner.invoke(app, ["synth-data", "--out", str(tmp_path / "pictures"), "--n", str(n)])
    assert result.exit_code == 0, result.output
    return tmp_path / "pictures"


def test_a_truncated_text_encoder_is_one_line(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    shutil.copytree(ROOT / "pruner" / "tiny" / "teacher", teacher)
    weights = teacher / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = runner.invoke(app, ["cache", str(_pictures(tmp_path, 4)), "--teacher", str(teacher), "--out",
                                 str(tmp_path / "c")])  # fmt: skip
    one_line_error(result, "cannot load a pipeline", str(teacher))


@pytest.fixture(scope="module")
def cached(tiny_sdxl_pipeline: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(recipe of the tiny pipeline's BK-small student, a latent cache of 20 pictures)."""
    root = tmp_path_factory.mktemp("hostile")
    result = runner.invoke(app, ["cache", str(_pictures(root, 20)), "--teacher", tiny_sdxl_pipeline, "--out",
                                 str(root / "cache")])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = (RECIPES / "tiny-sdxl-bk-small.yaml").read_text().replace("model: tiny-sdxl", f"model: {tiny_sdxl_pipeline}")
    (root / "recipe.yaml").write_text(text)
    return root / "recipe.yaml", root / "cache"


def distill(recipe: Path, cache: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["distill", str(recipe), "--data", str(cache), "--output", str(out), "--batch-size", "2", *extra]
    return runner.invoke(app, args)


def test_a_truncated_cache_shard_is_one_line(cached: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, cache = cached
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    shard = next(damaged.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])
    one_line_error(distill(recipe, damaged, tmp_path / "o", "--steps", "1"), "damaged", shard.name)
    assert not (tmp_path / "o").exists()


def test_an_unknown_precision_is_one_line_in_the_cli_and_an_error_in_the_library(cached: tuple[Path, Path]) -> None:
    recipe, cache = cached
    one_line_error(distill(recipe, cache, recipe.parent / "p", "--mixed-precision", "foo"), "--mixed-precision", "bf16")
    from pruner.distillation.run import DistillOptions

    with pytest.raises(PrunerError, match="'foo' is not one of no, fp16, bf16"):
        DistillOptions(mixed_precision="foo")


def test_a_missing_student_is_not_called_a_teacher() -> None:
    line = one_line_error(runner.invoke(app, ["eval", "/missing", "--grid", "/tmp/never.png"]), "/missing")
    assert "teacher" not in line


# --------------------------------------------------------------------------- resume: what, and never code


@pytest.fixture(scope="module")
def trained(cached: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run with a checkpoint after each step."""
    recipe, cache = cached
    out = tmp_path_factory.mktemp("trained") / "run"
    result = distill(recipe, cache, out, "--steps", "2", "--checkpoint-every", "1")
    assert result.exit_code == 0, result.output
    return out


def test_the_outputs_record_what_was_trained(trained: Path) -> None:
    recipe = pruner.recipe.load_recipe(trained / "recipe.yaml")
    assert [s.steps for s in recipe.distill.stages] == [2] and recipe.distill.batch_size == 2
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["trained"]["steps"] == [2] and metrics["trained"]["batch_size"] == 2


def _other_recipe(recipe: Path, tmp_path: Path, change: str) -> Path:
    """The run's recipe with another learning rate, or another recipe (Vega-style) of the same teacher."""
    teacher = pruner.recipe.load_recipe(recipe).teacher.model
    text = recipe.read_text().replace("learning_rate: 0.0002", "learning_rate: 0.0005")
    if change == "architecture":
        text = (RECIPES / "tiny-sdxl-vega.yaml").read_text().replace("model: tiny-sdxl", f"model: {teacher}")
    (tmp_path / "other.yaml").write_text(text)
    return tmp_path / "other.yaml"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("steps", "steps: checkpoint [2], this run [1]"),
        ("seed", "seed: checkpoint 0, this run 3"),
        ("learning rate", "learning_rates: checkpoint [0.0002], this run [0.0005]"),
        ("architecture", "architecture"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(
    cached: tuple[Path, Path], trained: Path, tmp_path: Path, change: str, named: str
) -> None:
    recipe, cache = cached
    args = {"steps": ["--steps", "1"], "seed": ["--steps", "2", "--seed", "3"]}.get(change, ["--steps", "2"])
    if change in ("learning rate", "architecture"):
        recipe = _other_recipe(recipe, tmp_path, change)
    one_line_error(distill(recipe, cache, trained, *args, "--resume"), "--resume", named)
    assert json.loads((trained / "metrics.json").read_text())["steps"] == 2  # the finished run is untouched


def _payload(marker: Path) -> bytes:
    class Plant:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    return pickle.dumps(Plant())


@pytest.mark.slow
@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl"])
def test_a_planted_pickle_in_a_checkpoint_never_runs(
    cached: tuple[Path, Path], trained: Path, tmp_path: Path, planted: str
) -> None:
    """accelerate's custom-state file (which it unpickles with weights_only=False) is no longer ours to load,
    and its optimizer and RNG files load with weights_only=True: a payload never runs."""
    recipe, cache = cached
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "checkpoints" / "step-0000002")  # resume from the middle: the checkpoint is loaded
    marker = tmp_path / "pwned"
    (run / "checkpoints" / "step-0000001" / planted).write_bytes(_payload(marker))
    result = distill(recipe, cache, run, "--steps", "2", "--checkpoint-every", "1", "--resume")
    assert not marker.exists()
    if planted == "random_states_0.pkl":  # accelerate logs an unreadable RNG file and resumes (pruner's sampler
        assert result.exit_code == 0, result.output  # state is its own safetensors file, so batches still match)
    else:
        one_line_error(result, "cannot be resumed", "step-0000001")


# --------------------------------------------------------------------------- pictures


def test_a_400000_by_1_strip_caches_without_gigabytes(tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    Image.new("RGB", (400_000, 1), (200, 30, 30)).save(strip)
    code = (
        "import json, resource, sys\n"
        "from pruner.data.cache import load_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "pixels, ids = load_image(sys.argv[1], 128)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps([list(pixels.shape), list(ids), grown // 1024]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(strip)], capture_output=True, text=True, check=True)
    shape, ids, grown_mb = json.loads(done.stdout)
    assert shape == [3, 128, 128] and ids == [1, 400_000, 0, (400_000 * 128 - 128) // 2, 128, 128]
    assert grown_mb < 200  # resizing the whole strip first took 2.2 GB


def test_a_picture_over_the_pixel_limit_is_skipped_with_a_reason(
    tiny_sdxl_pipeline: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pruner.data import cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_PIXELS", 40 * 40)
    data = _pictures(tmp_path, 3)
    Image.new("RGB", (64, 64)).save(data / "big.png")
    with (data / "metadata.jsonl").open("a") as meta:
        meta.write(json.dumps({"file_name": "big.png", "text": "a big picture"}) + "\n")
    result = runner.invoke(app, ["cache", str(data), "--teacher", tiny_sdxl_pipeline, "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    # the console wraps a line at its width, and where depends on the temporary folder's name
    assert "1 skipped: 1 too_large" in " ".join(result.output.split())


# --------------------------------------------------------------------------- the bundled pipeline, friction


@pytest.mark.slow
def test_stock_diffusers_loads_and_runs_the_bundled_pipeline_with_no_dtype(tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from pruner.unet.plan import Plan
    from pruner.unet.surgery import build_student
    from pruner.unet.width import save_unet

    folder = ROOT / "pruner" / "tiny" / "teacher"
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    assert {pipe.text_encoder.dtype, pipe.text_encoder_2.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    image = pipe("a small red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images  # fmt: skip
    assert image.shape == (1, 32, 32, 3)
    narrow, _ = build_student(pipe.unet, Plan(ff_keep=((1, 0.5), (2, 0.75))))
    save_unet(narrow, tmp_path / "unet")
    student = pruner.load_unet(str(tmp_path / "unet"))
    with_student = StableDiffusionXLPipeline.from_pretrained(folder, unet=student)
    image = with_student("a small red circle", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_loading_a_pipeline_prints_no_deprecation_or_torchvision_notices() -> None:
    code = "from pruner.unet.load import load_pipeline; load_pipeline('tiny-sdxl')"
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, check=True)
    assert "torch_dtype" not in done.stderr and "torchvision" not in done.stderr, done.stderr


def test_generated_recipes_are_gitignored_and_the_examples_committed() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    generated = ["recipes/found.yaml", "recipes/front/trial-1.yaml", "recipes/front.png", "outputs/eval-grid.png"]
    ignored = subprocess.run(["git", "check-ignore", *generated], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == generated
    tracked = subprocess.run(["git", "ls-files", "recipes/examples"], cwd=ROOT, capture_output=True, text=True)
    assert "recipes/examples/tiny-sdxl-50/found.yaml" in tracked.stdout.split()
    example = pruner.recipe.load_recipe(RECIPES / "examples" / "tiny-sdxl-50" / "found.yaml")
    assert example.distill.data == "bundled:tiny-sdxl"


def test_a_recipe_stores_its_data_relative_to_itself(tmp_path: Path) -> None:
    from pruner.recipe import load_recipe, save_recipe

    recipe = load_recipe(RECIPES / "tiny-sdxl-vega.yaml")
    cache = tmp_path / "project" / "cache"
    recipe = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"data": str(cache)})})
    path = save_recipe(recipe, tmp_path / "project" / "recipes" / "found.yaml")
    assert "data: ../cache\n" in path.read_text()
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "project", moved)
    assert load_recipe(moved / "recipes" / "found.yaml").distill.data == str(moved / "cache")


def test_the_bundled_data_is_named_symbolically(tmp_path: Path) -> None:
    from pruner.data.bundled import BUNDLED_DATA, data_reference
    from pruner.io import cache_dir

    bundled = cache_dir() / "data" / "tiny-sdxl-n4096-seed0-abc" / "cache"
    assert data_reference(str(bundled)) == BUNDLED_DATA
    assert data_reference(str(tmp_path / "mine")) == str(tmp_path / "mine")


def test_help_shows_flags_without_placeholders() -> None:
    shown = runner.invoke(app, ["distill", "--help"], terminal_width=200).output
    assert "<bool>" not in shown and "Recompute activations" in shown
    assert "--macs / --no-macs" in runner.invoke(app, ["inspect", "--help"], terminal_width=200).output
