"""The CLI end to end on tiny models: inspect and apply, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_SDXL, unet_inputs
from diffusers import UNet2DConditionModel
from typer.testing import CliRunner

from pruner.cli import app

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
runner = CliRunner()


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def _assert_one_line_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _tiny_recipe(tmp_path: Path, teacher: Path, remove: list[str]) -> Path:
    text = (RECIPES / "sdxl-vega.yaml").read_text().split("plan:")[0]
    text = text.replace("model: stabilityai/stable-diffusion-xl-base-1.0", f"model: {teacher}").replace(
        "  architecture: sdxl\n", ""
    )
    lines = "".join(f"  - {n}\n" for n in remove)
    text += f"plan:\n  remove:\n{lines}distill:\n  stages:\n  - steps: 10\n    learning_rate: 1.0e-4\n"
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_inspect_a_unet_folder_json(tiny_sdxl_dir: Path) -> None:
    result = run("inspect", str(tiny_sdxl_dir), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["params"] == sum(p.numel() for p in UNet2DConditionModel.from_pretrained(tiny_sdxl_dir).parameters())
    assert report["macs"] > 0 and report["resolution"] == 64 and report["latent"] == 8
    unit = next(u for u in report["units"] if u["name"] == "down_blocks.2.attentions.0.transformer_blocks.1")
    assert unit["kind"] == "transformer_layer" and unit["params"] > 0 and unit["macs"] > 0


def test_inspect_table_with_latency(tiny_sdxl_dir: Path) -> None:
    result = run("inspect", str(tiny_sdxl_dir), "--latency", "--resolution", "32")
    assert result.exit_code == 0, result.output
    assert "down_blocks.1.resnets.0" in result.stdout and "% time" in result.stdout
    assert "latency:" in result.stdout and "cpu, float32, latent 4x4, batch 1" in result.stdout


def test_inspect_a_single_safetensors_file(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    single = tmp_path / "unet.safetensors"
    single.write_bytes((tiny_sdxl_dir / "diffusion_pytorch_model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text((tiny_sdxl_dir / "config.json").read_text())
    result = run("inspect", str(single), "--json", "--no-macs")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["macs"] is None


@pytest.mark.parametrize(
    ("name", "params"), [("sdxl-vega", 745_225_604), ("sdxl-koala-700m", 782_822_724), ("sd15-bk-tiny", 323_384_964)]
)
def test_inspect_a_recipe_needs_no_weights(name: str, params: int) -> None:
    result = run("inspect", str(RECIPES / f"{name}.yaml"), "--json", "--no-macs")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["params"] == params and report["source"] == "recipe"


def test_inspect_an_architecture_name() -> None:
    result = run("inspect", "sdxl", "--json", "--no-macs")
    assert json.loads(result.stdout)["params"] == 2_567_463_684


def test_apply_then_load_in_stock_diffusers(tiny_sdxl_dir: Path, tiny_sdxl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = _tiny_recipe(tmp_path, tiny_sdxl_dir, ["mid_block.attentions.0", "down_blocks.1.resnets.1"])
    result = run("apply", str(recipe), "--out", str(tmp_path / "student"))
    assert result.exit_code == 0, result.output
    student = UNet2DConditionModel.from_pretrained(tmp_path / "student").eval()
    assert student.config.mid_block_type == "UNetMidBlock2D" and student.config.layers_per_block == [2, 1, 2]
    args, kwargs = unet_inputs(TINY_SDXL, 8)
    with torch.no_grad():
        assert torch.isfinite(student(*args, **kwargs).sample).all()
    result = run("inspect", str(tmp_path / "student" / "recipe.yaml"), "--json", "--no-macs")
    assert json.loads(result.stdout)["params"] == sum(p.numel() for p in student.parameters())


def test_bad_input_gets_one_line_and_exit_code_2(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    _assert_one_line_error(run("inspect", str(tmp_path / "nope")), "does not exist")
    truncated = tmp_path / "t" / "unet.safetensors"
    truncated.parent.mkdir()
    truncated.write_bytes((tiny_sdxl_dir / "diffusion_pytorch_model.safetensors").read_bytes()[:5000])
    _assert_one_line_error(run("inspect", str(truncated)), "safetensors")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("schema_version: 1\nplan: [a, b\n")
    _assert_one_line_error(run("inspect", str(bad_yaml)), "bad.yaml:", "malformed YAML")
    unknown = _tiny_recipe(tmp_path, tiny_sdxl_dir, ["down_blocks.1.resnets.7"])
    _assert_one_line_error(run("inspect", str(unknown)), "unknown unit 'down_blocks.1.resnets.7'")
    inexpressible = _tiny_recipe(tmp_path, tiny_sdxl_dir, ["mid_block.attentions.0.transformer_blocks.0"])
    _assert_one_line_error(run("apply", str(inexpressible), "--out", str(tmp_path / "o")), "inexpressible", "nearest")
    assert not (tmp_path / "o").exists()
    other = (RECIPES / "sd15-bk-base.yaml").read_text().replace("architecture: sd15", "architecture: sdxl")
    other = other.replace("model: stable-diffusion-v1-5/stable-diffusion-v1-5", "model: sdxl")
    (tmp_path / "other.yaml").write_text(other)
    _assert_one_line_error(run("inspect", str(tmp_path / "other.yaml"), "--no-macs"), "another architecture")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run("--debug", "inspect", str(tmp_path / "nope"))
    assert result.exit_code != 0 and result.exception is not None


def test_console_script_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pruner.cli", "inspect", "--help"], capture_output=True, text=True, check=True
    )
    assert "--resolution" in out.stdout and "--latency" in out.stdout


HEAVY = ("torch", "diffusers", "optuna", "transformers", "matplotlib")


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        ([], ""),
        (["--help"], "distill"),
        (["search", "--help"], "--proxy-steps"),
        (["distill", "--help"], "--8bit-adam"),
        (["eval", "--help"], "--dtype"),
        (["cache", "--help"], "--batch-size"),
        (["search", "--trials", "0"], "error: --trials must be an integer >= 1, got 0"),
        (["search", "--budget", "0.5x"], "error: budget '0.5x'"),
        (["search", "--objectives", "macs"], "error: --objectives takes quality plus"),
        (["distill", "missing.yaml"], "error: RECIPE 'missing.yaml' is not a file"),
        (["distill", str(RECIPES / "tiny-sdxl-bk-small.yaml"), "--mixed-precision", "fp8"], "--mixed-precision must"),
        (["eval", "student/", "--n", "0"], "error: --n must be an integer >= 1, got 0"),
    ],
)
def test_the_cli_imports_nothing_heavy_for_help_or_a_refused_argument(argv: list[str], shown: str) -> None:
    """`import pruner.cli`, every `--help` and a bad argument answer at once: torch, diffusers, optuna,
    transformers and matplotlib (seconds of imports) load only when a command starts working."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pruner.cli import app\n"
        f"out = CliRunner().invoke(app, {argv!r}).output if {argv!r} else ''\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\nprint(out)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "[]" and shown in out, out
    if shown.startswith("error:"):
        assert len([line for line in out.splitlines()[1:] if line.strip()]) == 1, out


def test_threads_apply_when_a_command_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int | None] = []
    monkeypatch.setattr("pruner.cli.configure_threads", seen.append)
    assert run("--threads", "2", "inspect", "sdxl", "--json", "--no-macs").exit_code == 0
    assert run("--threads", "2", "inspect", "--help").exit_code == 0  # help sets nothing
    assert seen == [2]


OOM = (
    "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 23.55 GiB of which 1.21 GiB "
    "is free. Including non-PyTorch memory, this process has 22.33 GiB memory in use. Of the allocated memory "
    "21.90 GiB is allocated by PyTorch. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)


@pytest.mark.parametrize(
    ("command", "target", "fix"),
    [
        (["search", "--budget", "50%", "--trials", "1"], "pruner.study.study.run_search", "--calibration"),
        (
            ["distill", str(RECIPES / "tiny-sdxl-bk-small.yaml")],
            "pruner.distillation.run.distill_recipe",
            "--8bit-adam",
        ),
        (["eval", "tiny-sdxl"], "pruner.evaluation.evaluate_student", "--dtype bf16"),
        (["cache", "DATA", "--teacher", "tiny-sdxl"], "pruner.data.cache.build_cache", "--batch-size 1"),
    ],
)
def test_a_gpu_out_of_memory_says_what_ran_out_and_which_flags_need_less(
    command: list[str], target: str, fix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 24 GB card running SDXL at 1024: one line naming what was asked of what, and the flags that fix
    it, instead of torch's traceback and allocator advice."""

    def out_of_memory(*_a, **_k):  # type: ignore[no-untyped-def]
        raise torch.OutOfMemoryError(OOM)

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(module + "." + name, out_of_memory)
    (tmp_path / "data").mkdir()  # an image folder's list is read before the encoders run out of memory
    (tmp_path / "data" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a red circle"}\n')
    command = [str(tmp_path / "data") if part == "DATA" else part for part in command]
    where = {"search": ["--out", str(tmp_path / "r")], "distill": ["--output", str(tmp_path / "s")],
             "eval": ["--grid", str(tmp_path / "g.png")], "cache": ["--out", str(tmp_path / "c")]}  # fmt: skip
    result = run(*command, *where[command[0]])
    _assert_one_line_error(result, "out of GPU memory while", "Tried to allocate 2.50 GiB", fix)
    assert "PYTORCH_CUDA_ALLOC_CONF" not in result.output
