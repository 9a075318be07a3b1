"""The public Python API: the README's "Python API" block runs as written, and leaves no trace on the caller."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import optuna
import pytest
import torch

import pruner
from pruner.recipe import Recipe

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_api_block() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


def test_import_pruner_is_lazy_and_exports_a_curated_api() -> None:
    for name in pruner.__all__:
        assert getattr(pruner, name) is not None, name
    assert callable(pruner.search) and callable(pruner.distill) and callable(pruner.evaluate)
    import importlib

    importlib.import_module("pruner.study.study")  # the packages behind the verbs have other names
    importlib.import_module("pruner.distillation.run")
    assert inspect.isfunction(pruner.search) and inspect.isfunction(pruner.distill)
    assert inspect.isfunction(pruner.evaluate)
    assert {"teacher", "budget"} <= set(inspect.signature(pruner.search).parameters)
    with pytest.raises(AttributeError):
        pruner.no_such_name  # noqa: B018


def test_threads_sets_torch_for_the_block_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    with pruner.threads(2) as n:
        assert n == torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    monkeypatch.setenv("PRUNER_THREADS", "3")
    with pruner.threads("auto") as n:  # what the CLI picks: $PRUNER_THREADS, else one thread on <= 2 cores
        assert n == 3
    assert torch.get_num_threads() == before
    for bad in (0, "2", 1.5, True):
        with pytest.raises(pruner.PrunerError, match="threads must be an integer >= 1 or 'auto'"), pruner.threads(bad):  # type: ignore[arg-type]
            pass


def test_build_student_accepts_a_plan_unit_names_or_a_recipe(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    names = ["down_blocks.2.attentions.1.transformer_blocks.0-1", "mid_block.attentions.0"]
    from_names = pruner.build_student(tiny_sdxl, names)
    from_plan = pruner.build_student(tiny_sdxl, pruner.Plan.removing(names))
    cost = pruner.CostModel(tiny_sdxl.config)
    assert sum(p.numel() for p in from_names.parameters()) == cost.params(pruner.Plan.removing(names))
    assert from_names.config == from_plan.config


def test_a_teacher_object_with_no_reference_is_refused_with_the_fix(tiny_sdxl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pruner.PrunerError, match="save_pretrained"):
        pruner.search(tiny_sdxl, budget="50%", trials=1)


@pytest.mark.slow
def test_the_readme_python_block_runs_and_changes_no_global_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    rng, threads, verbosity = torch.random.get_rng_state(), torch.get_num_threads(), optuna.logging.get_verbosity()
    namespace: dict[str, object] = {}
    exec(compile(readme_python_api_block(), "README.md#python-api", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result.found, Recipe) and result.front  # type: ignore[attr-defined]
    assert result.files == {}  # type: ignore[attr-defined]
    assert (tmp_path / "outputs" / "api-demo" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert pruner.load_recipe(tmp_path / "recipes" / "mine.yaml") == result.found  # type: ignore[attr-defined]
    # only what the block asked for was written: no study database, no search/ or front files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "recipes"]
    assert [p.name for p in (tmp_path / "recipes").iterdir()] == ["mine.yaml"]
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.get_num_threads() == threads and optuna.logging.get_verbosity() == verbosity
    report = namespace["report"]
    assert 0 <= report.prompt_accuracy <= 1 and report.kd_loss > 0  # type: ignore[attr-defined]
    assert "prompt accuracy" in capsys.readouterr().out


def test_the_api_the_cli_and_the_search_config_share_their_defaults() -> None:
    """`pruner search --help`, `pruner.search(...)` and `SearchConfig` agree: one source, pruner.defaults."""
    import dataclasses
    import inspect

    import typer.main

    import pruner.api
    from pruner.cli import app
    from pruner.study.study import SearchConfig

    api = {k: p.default for k, p in inspect.signature(pruner.api.search).parameters.items()}
    config = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    cli = {p.name: p.default for p in commands["search"].params}
    shared = ["budget", "trials", "proxy_steps", "top_steps", "sampler", "noise_seeds", "space", "calibration",
              "held_out", "seed"]  # fmt: skip
    for name in shared:
        assert api[name] == config[name] == cli[name], name
    assert tuple(api["objectives"]) == config["objectives"] == tuple(cli["objectives"].split(","))
    assert cli["teacher"] == config["teacher"]
    evaluate = {k: p.default for k, p in inspect.signature(pruner.api.evaluate).parameters.items()}
    cli_eval = {p.name: p.default for p in commands["eval"].params}
    assert (evaluate["n_prompts"], evaluate["steps"], evaluate["guidance_scale"], evaluate["dtype"]) == (
        cli_eval["n"], cli_eval["steps"], cli_eval["guidance"], cli_eval["dtype"])  # fmt: skip
    cache = {k: p.default for k, p in inspect.signature(pruner.api.cache).parameters.items()}
    cli_cache = {p.name: p.default for p in commands["cache"].params}
    assert all(cache[k] == cli_cache[k] for k in ("teacher", "resolution", "batch_size", "device"))


def test_a_latent_cache_is_made_from_python_and_resumes(tmp_path: Path) -> None:
    """``pruner.cache`` (what `pruner cache` calls) writes a cache the search and the distiller read, and
    a second call on the same folder resumes instead of encoding again."""
    from typer.testing import CliRunner

    from pruner.cli import app
    from pruner.distillation.cache import LatentCache

    made = CliRunner().invoke(app, ["synth-data", "--out", str(tmp_path / "pictures"), "--n", "6"])
    assert made.exit_code == 0, made.output
    summary = pruner.cache(tmp_path / "pictures", tmp_path / "latents", teacher="tiny-sdxl", batch_size=4)
    assert (summary.n_written, summary.n_encoded, summary.resumed) == (6, 6, False)
    assert len(LatentCache(tmp_path / "latents")) == 6
    again = pruner.cache(tmp_path / "pictures", tmp_path / "latents", teacher="tiny-sdxl")
    assert (again.n_written, again.n_encoded, again.resumed) == (6, 0, True)
