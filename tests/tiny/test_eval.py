"""The bundled teacher end to end: inspect it, apply a recipe to it, evaluate students against it."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import pruner.api
from pruner.cli import app
from pruner.data.bundled import BUNDLED_ROWS, BUNDLED_SEED, bundled_captions, tiny_sdxl_cache
from pruner.evaluation import EvalReport, binomial_se, eval_prompts
from pruner.tiny.synth import caption, sample_prompts, sample_scenes
from pruner.unet import bundled_teacher
from pruner.unet.load import resolve_model

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
runner = CliRunner()


def eval_args(student: str, n: int, tmp_path: Path) -> list[str]:
    """`pruner eval STUDENT` against the bundled teacher on ``n`` prompts of ``n`` steps, a grid in tmp_path."""
    grid = str(tmp_path / "g.png")
    return ["eval", student, "--teacher", "tiny-sdxl", "--n", str(n), "--steps", str(n), "--grid", grid]


def test_the_bundled_teacher_is_shipped_and_named_tiny_sdxl() -> None:
    folder = bundled_teacher()
    assert folder is not None and (folder / "judge" / "judge.json").is_file()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 26 * 2**20
    report = json.loads(runner.invoke(app, ["inspect", "tiny-sdxl", "--json"]).stdout)
    assert report["source"] == "pipeline" and report["resolution"] == 32 and report["params"] == 10_140_868


@pytest.mark.slow
def test_eval_of_the_teacher_against_itself_is_perfect(tmp_path: Path) -> None:
    args = eval_args("tiny-sdxl", 4, tmp_path)
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kd_loss"] == 0.0 and report["psnr"] == 100.0
    assert report["prompt_accuracy"] == report["teacher_prompt_accuracy"] is not None
    assert report["prompt_accuracy_se"] == report["teacher_prompt_accuracy_se"]
    assert report["prompt_accuracy_se"] == pytest.approx(binomial_se(report["prompt_accuracy"], 4))
    assert (tmp_path / "g.png").is_file()


@pytest.mark.slow
def test_an_untrained_half_size_student_is_measurably_worse(tmp_path: Path) -> None:
    result = runner.invoke(app, ["apply", str(RECIPES / "tiny-sdxl-bk-small.yaml"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    args = eval_args(str(tmp_path / "s"), 8, tmp_path)
    report = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert report["kd_loss"] > 0 and report["psnr"] < 100
    assert report["student_params"] == 5_288_068 and report["teacher_params"] == 10_140_868
    assert report["prompt_accuracy"] is not None and report["student_latency_ms"] > 0


def test_eval_runs_at_a_resolution_other_than_the_teachers(tmp_path: Path) -> None:
    """`--resolution` (a quick 512px check of an SDXL student): the pictures and the latency inputs take it."""
    args = eval_args("tiny-sdxl", 1, tmp_path)
    native = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    result = runner.invoke(app, [*args, "--json", "--resolution", "64"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert native["resolution"] == 32 and report["resolution"] == 64
    assert report["kd_loss"] == 0.0 and report["psnr"] == 100.0
    from PIL import Image

    assert Image.open(tmp_path / "g.png").width >= 64
    bad = runner.invoke(app, [*args, "--resolution", "30"])
    assert bad.exit_code == 2 and "multiple of the VAE's factor" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_eval_in_bf16_runs_both_unets_in_bf16_and_refuses_an_unknown_dtype(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--dtype bf16` (a GPU's default): the pictures, the KD loss and the latency row are bf16's, not fp32's."""
    import pruner.evaluation

    timed: list[str] = []

    def measure(model, *a, **k):  # type: ignore[no-untyped-def]
        timed.append(str(next(model.parameters()).dtype))
        return real(model, *a, **k)

    real = pruner.evaluation.measure_latency
    monkeypatch.setattr(pruner.evaluation, "measure_latency", measure)
    args = eval_args("tiny-sdxl", 1, tmp_path)
    result = runner.invoke(app, [*args, "--json", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dtype"] == "bfloat16" and timed == ["torch.bfloat16", "torch.bfloat16"]
    assert report["kd_loss"] == 0.0 and report["psnr"] == 100.0  # the same weights in the same dtype
    bad = runner.invoke(app, [*args, "--dtype", "fp8"])
    assert bad.exit_code == 2 and "--dtype must be one of auto, fp32, bf16, fp16, got 'fp8'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_a_model_given_to_evaluate_comes_back_in_its_own_dtype() -> None:
    """``Module.to`` works in place: evaluating a caller's fp32 model in bf16 must leave it as it was, weights
    included (fp32 cast to bf16 and back is rounded)."""
    from pruner.unet.load import load_unet

    student = load_unet("tiny-sdxl")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = pruner.api.evaluate(student, "tiny-sdxl", n_prompts=1, steps=1, dtype="bf16", device="cpu")
    assert report.dtype == "bfloat16" and next(student.parameters()).dtype == torch.float32
    after = student.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())


def test_an_fp16_vae_that_overflows_decodes_in_fp32_and_stays_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDXL's VAE overflows in fp16 (``force_upcast``): ``pruner eval --dtype fp16`` decodes as the stock
    pipeline does, in fp32, and leaves the VAE in fp16."""
    from pruner.evaluation import decode_pictures
    from pruner.unet.load import load_pipeline

    pipe = load_pipeline("tiny-sdxl", dtype=torch.float16)
    pipe.vae.register_to_config(force_upcast=True)
    seen: list[torch.dtype] = []
    decode = pipe.vae.decode

    def recording_decode(z: torch.Tensor) -> Any:
        seen.append(z.dtype)
        return decode(z)

    monkeypatch.setattr(pipe.vae, "decode", recording_decode)
    latents = torch.randn(1, 4, 8, 8, dtype=torch.float16)  # 32px at the tiny VAE's factor 4
    pictures = decode_pictures(pipe, latents)
    assert seen == [torch.float32] and pipe.vae.dtype == torch.float16 and pictures[0].size == (32, 32)
    pipe.vae.register_to_config(force_upcast=False)
    decode_pictures(pipe, latents)
    assert seen[-1] == torch.float16


def test_eval_needs_prompts_for_a_teacher_without_a_judge(tiny_sdxl_dir: Path) -> None:
    result = runner.invoke(app, ["eval", str(tiny_sdxl_dir), "--teacher", str(tiny_sdxl_dir)])
    assert result.exit_code == 2 and "full pipeline" in result.output


def test_synth_data_writes_an_image_folder_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth-data", "--out", str(tmp_path / "d"), "--n", "5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all((tmp_path / "d" / r["file_name"]).is_file() and r["text"] for r in rows)
    again = runner.invoke(app, ["synth-data", "--out", str(tmp_path / "d"), "--n", "5"])
    assert again.exit_code == 2 and len(again.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def dataset_captions() -> set[str]:
    """The captions of the bundled set's rows, from the same scenes `write_dataset` renders for its cache."""
    defaults = inspect.signature(tiny_sdxl_cache).parameters
    assert (defaults["n"].default, defaults["seed"].default) == (BUNDLED_ROWS, BUNDLED_SEED)
    return {caption(s) for s in sample_scenes(BUNDLED_ROWS, BUNDLED_SEED, stream="dataset")}


def test_builtin_eval_prompts_hold_out_every_caption_of_the_bundled_data_set(dataset_captions: set[str]) -> None:
    assert bundled_captions() == dataset_captions
    drawn = sample_prompts(300, seed=0)  # the stream alone repeats training captions verbatim
    assert sum(p in dataset_captions for p in drawn) > 100
    prompts = eval_prompts(300, 0, resolve_model("tiny-sdxl"), None)
    assert len(prompts) == 300 and not set(prompts) & dataset_captions
    # the survivors of the "prompts" stream, in order
    assert prompts == [p for p in sample_prompts(2000, seed=0) if p not in dataset_captions][:300]


def test_builtin_eval_prompts_are_deterministic_and_prefix_stable() -> None:
    ref = resolve_model("tiny-sdxl")
    prompts = eval_prompts(200, 3, ref, None)
    assert prompts == eval_prompts(200, 3, ref, None)
    assert eval_prompts(37, 3, ref, None) == prompts[:37]
    assert eval_prompts(200, 4, ref, None) != prompts


def test_eval_prompts_from_a_file_are_not_filtered(tmp_path: Path) -> None:
    training_caption = next(iter(bundled_captions()))
    (tmp_path / "p.txt").write_text(f"{training_caption}\n")
    assert eval_prompts(1, 0, resolve_model("tiny-sdxl"), tmp_path / "p.txt") == [training_caption]


def test_binomial_standard_error() -> None:
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.9, 256) == pytest.approx(math.sqrt(0.09 / 256)) == pytest.approx(0.01875)
    assert binomial_se(0.0, 64) == binomial_se(1.0, 64) == 0.0
    with pytest.raises(ValueError, match="n=0"):
        binomial_se(0.5, 0)
    with pytest.raises(ValueError, match=r"p=1\.5"):
        binomial_se(1.5, 10)


def test_eval_table_shows_prompt_accuracy_with_its_standard_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report = EvalReport(
        "s", "tiny-sdxl", 0.001, 30.0, 0.75, 0.90625, 10.0, 20.0, 5, 10, 256, 20, 5.0, None,
        prompt_accuracy_se=binomial_se(0.75, 256), teacher_prompt_accuracy_se=binomial_se(0.90625, 256),
    )  # fmt: skip
    monkeypatch.setattr(pruner.api, "evaluate", lambda *a, **k: report)
    table = runner.invoke(app, ["eval", "s", "--grid", str(tmp_path / "g.png"), "--n", "256"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "75.0% ± 2.7" in table.stdout and "90.6% ± 1.8" in table.stdout
    as_json = json.loads(runner.invoke(app, ["eval", "s", "--grid", str(tmp_path / "g.png"), "--json"]).stdout)
    assert as_json["prompt_accuracy_se"] == pytest.approx(0.0270633)
    expected = {"prompt_accuracy_se", "teacher_prompt_accuracy_se", "resolution", "dtype", "metrics",
                "metric_settings", "seed", "protocol"}  # fmt: skip
    assert expected <= set(as_json), sorted(expected - set(as_json))
