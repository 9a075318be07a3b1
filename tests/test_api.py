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
    assert pruner.load_recipe(tmp_path / "outputs" / "mine.yaml") == result.found  # type: ignore[attr-defined]
    # only what the block asked for was written (under outputs/, which git ignores): no study database, no
    # search/ or front files, nothing left in the project's recipes/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    written = sorted(p.name for p in (tmp_path / "outputs").iterdir() if not p.name.startswith("."))
    assert written == ["api-demo", "mine.yaml"]
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.get_num_threads() == threads and optuna.logging.get_verbosity() == verbosity
    report = namespace["report"]
    assert 0 <= report.prompt_accuracy <= 1 and report.kd_loss > 0  # type: ignore[attr-defined]
    assert "prompt accuracy" in capsys.readouterr().out


COMMANDS = {"search": "search", "distill": "distill", "evaluate": "eval", "cache": "cache"}
PYTHON_ONLY = {"progress", "status"}  # a callback and a bar the CLI always shows


@pytest.mark.parametrize("api", sorted(COMMANDS))
def test_every_api_knob_is_a_cli_option_with_its_flag_help_and_default(api: str) -> None:
    """The knobs are declared once, in the API's signature and docstring: each is an option (or argument) of
    its command with the declared flag, the docstring's help and the API's default (or the CLI's own)."""
    import typer.main

    from pruner.cli import app
    from pruner.knobs import flag, params

    command = typer.main.get_command(app).commands[COMMANDS[api]]  # type: ignore[attr-defined]
    options = {p.name: p for p in command.params}
    declared = params(getattr(pruner.api, api))
    # where the CLI's default differs from the API's (a required argument, no files written)
    cli_defaults: dict[str, dict[str, object]] = {
        "search": {"teacher": "tiny-sdxl", "output": Path("recipes")},
        "distill": {"output": None},
        "evaluate": {"teacher": "tiny-sdxl", "grid": Path("outputs/eval-grid.png")},
        "cache": {"output": Path("cache")},
    }
    cli_default = cli_defaults[api]
    for name, knob in declared.items():
        assert knob.help, f"{api}: {name} has no Args: entry in the docstring"
        if name in PYTHON_ONLY:
            continue
        option = options[name]
        assert option.param_type_name == "argument" or flag(knob) in option.opts, (name, option.opts)
        assert option.help is not None or option.param_type_name == "argument"
        assert knob.help.split(" ")[0].strip("(,.") in (getattr(option, "help", "") or ""), name
        if name in cli_default:
            assert option.default == cli_default[name], name
        elif not knob.required:
            assert option.default == (",".join(knob.default) if isinstance(knob.default, tuple) else knob.default)
    assert set(options) - set(declared) <= {"as_json"}, "the CLI declares no knob of its own"


def test_every_search_and_distill_knob_reaches_its_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The settings objects are built from the checked arguments by name: a knob given to the API arrives."""
    from pruner.distillation.run import DistillOptions
    from pruner.study.config import SearchConfig

    seen: dict[str, object] = {}

    def caught(config: object, *_a: object, **_k: object) -> None:
        seen["config"] = config
        raise KeyboardInterrupt

    monkeypatch.setattr("pruner.study.study.run_search", caught)
    given = {"trials": 3, "proxy_steps": 5, "top_steps": 7, "sampler": "tpe", "noise_seeds": 1, "calibration": 9,
             "held_out": 11, "study": "s", "seed": 4, "device": "cpu", "mixed_precision": "bf16", "space": "depth-only",
             "storage": "sqlite:///x.db", "prompts": "p.txt", "confirm_steps": 12, "confirm_calibration": 13,
             "confirm_lead": 0.1, "confirm_runners_up": 2}  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        pruner.search("tiny-sdxl", "40%", objectives="quality, params", **given)  # type: ignore[arg-type]
    config = seen["config"]
    assert isinstance(config, SearchConfig)
    assert {k: getattr(config, k) for k in given} == given
    assert (config.budget, config.objectives, config.teacher) == ("40%", ("quality", "params"), "tiny-sdxl")
    monkeypatch.setattr("pruner.distillation.run.distill_recipe", lambda _r, _o, opts: caught(opts))
    knobs = {"steps": 2, "batch_size": 3, "mixed_precision": "bf16", "gradient_checkpointing": True,
             "eight_bit_adam": True, "grad_accum": 2, "ema_decay": 0.9, "checkpoint_every": 5, "validate_every": 6,
             "resume": True, "seed": 7, "progress": True}  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        pruner.distill(RECIPE, tmp_path / "o", data="cache/", **knobs)  # type: ignore[arg-type]
    options = seen["config"]
    assert isinstance(options, DistillOptions)
    assert {k: getattr(options, k) for k in knobs} == knobs and options.data == "cache/"


RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-sdxl-bk-small.yaml"
COMPUTE = {  # where each public function's work starts: a call that gets there was not refused at the door
    "search": "pruner.study.study.run_search",
    "distill": "pruner.distillation.run.distill_recipe",
    "evaluate": "pruner.evaluation.evaluate_student",
    "cache": "pruner.data.cache.build_cache",
    "build_student": "pruner.unet.surgery.build_student",
    "port_lora": "pruner.compat.lora.plan_target",
    "export_single_file": "pruner.compat.export.resolve_model",
}


def _valid_arguments(name: str, tmp_path: Path) -> dict[str, object]:
    valid: dict[str, dict[str, object]] = {
        "search": {"teacher": "tiny-sdxl"},
        "distill": {"recipe": RECIPE, "output": tmp_path / "o"},
        "evaluate": {"student": "student/", "teacher": "tiny-sdxl"},
        "cache": {"data": tmp_path, "output": tmp_path / "c"},
        "build_student": {"teacher": "tiny-sdxl", "plan": ["mid_block.attentions.0"]},
        "port_lora": {"lora": tmp_path / "l.safetensors", "recipe": RECIPE},
        "export_single_file": {"student": "student/", "out": tmp_path / "e.safetensors"},
    }
    return valid[name]


class ReachedCompute(Exception):
    pass


def _stop_at_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(*_a: object, **_k: object) -> None:
        raise ReachedCompute

    for target in COMPUTE.values():
        monkeypatch.setattr(target, reached)


def _bad_values() -> list[tuple[str, str, object]]:
    """For every parameter of every public function: a value of no type it takes, and one out of its range
    or choices where it declares them."""
    from pruner.knobs import params

    cases = []
    for name in COMPUTE:
        for param in params(getattr(pruner, name)).values():
            cases.append((name, param.name, object()))
            if param.knob.min is not None:
                cases.append((name, param.name, int(param.knob.min) - 1))
            if param.knob.max is not None:
                cases.append((name, param.name, param.knob.max + 1))
            if param.knob.choices:
                cases.append((name, param.name, "nope"))
    return cases


@pytest.mark.parametrize(("function", "parameter", "value"), _bad_values(), ids=lambda v: str(v)[:20])
def test_every_parameter_is_checked_at_the_door(
    function: str, parameter: str, value: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stop_at_compute(monkeypatch)
    arguments = {**_valid_arguments(function, tmp_path), parameter: value}
    with pytest.raises(pruner.PrunerError, match=f"^{parameter}= ") as caught:
        getattr(pruner, function)(**arguments)
    assert "--" not in str(caught.value), "the API speaks in its parameters' names, not the CLI's flags"


def _issue_recipe(change: str) -> Recipe:
    recipe = pruner.load_recipe(RECIPE)
    if change == "name":
        return recipe.model_copy(update={"name": None})
    stage = recipe.distill.stages[0].model_copy(update={"learning_rate": -1e-4})
    return recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"stages": [stage]})})


@pytest.mark.parametrize(
    ("function", "arguments", "message"),
    [
        ("search", {"trials": 0}, "trials= must be an integer >= 1, got 0"),
        ("search", {"trials": -1}, "trials= must be an integer >= 1, got -1"),
        ("search", {"trials": "3"}, "trials= must be an integer >= 1, got '3'"),
        ("search", {"budget": 0.5}, "budget= must be a string, got 0.5"),
        ("search", {"budget": "0.5x"}, "budget '0.5x'"),
        ("search", {"teacher": None}, "teacher= must be a hub id"),
        ("search", {"teacher": torch.nn.Linear(2, 2)}, "got Linear(in_features=2"),
        ("search", {"held_out": 0}, "held_out= must be an integer >= 2, got 0"),
        ("search", {"calibration": 1}, "calibration= must be an integer >= 4, got 1"),
        ("search", {"proxy_steps": -5}, "proxy_steps= must be an integer >= 0, got -5"),
        ("search", {"objectives": "macs"}, "objectives= takes quality"),
        ("search", {"objectives": "quality,flops"}, "objectives= must be one of quality, macs, params, latency"),
        ("distill", {"steps": -3}, "steps= must be an integer >= 1 or None, got -3"),
        ("distill", {"batch_size": 0}, "batch_size= must be an integer >= 1 or None, got 0"),
        ("distill", {"recipe": {"name": "x"}}, "recipe= must be a Recipe or the path of a recipe YAML"),
        ("distill", {"recipe": "missing.yaml"}, "recipe= 'missing.yaml' is not a file"),
        ("distill", {"recipe": "name"}, "recipe= name: Input should be a valid string"),
        ("distill", {"recipe": "learning_rate"}, "recipe= distill.stages.0.learning_rate: Input should be greater"),
        ("distill", {"ema_decay": float("nan")}, "ema_decay= must be a number >= 0 and <= 1 or None, got nan"),
        ("evaluate", {"steps": True}, "steps= must be an integer >= 1, got True"),
    ],
)
def test_what_the_hostile_review_passed_is_refused_in_one_line(
    function: str, arguments: dict[str, object], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 27's cases: each refused before any compute, naming the parameter in the API's words."""
    _stop_at_compute(monkeypatch)
    if arguments.get("recipe") in ("name", "learning_rate"):
        arguments = {"recipe": _issue_recipe(str(arguments["recipe"]))}
    with pytest.raises(pruner.PrunerError) as caught:
        getattr(pruner, function)(**{**_valid_arguments(function, tmp_path), **arguments})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_choices_a_knob_declares_are_the_ones_the_library_takes() -> None:
    """The declaration names the choices without importing torch; the tables that act on them agree."""
    from pruner import defaults
    from pruner.device import PRECISIONS
    from pruner.evaluation import DTYPES
    from pruner.study.config import OBJECTIVES, SAMPLERS

    assert tuple(PRECISIONS) == defaults.PRECISIONS and set(defaults.EVAL_DTYPES) == {"auto", *DTYPES}
    assert tuple(SAMPLERS) == defaults.SAMPLERS and set(OBJECTIVES) == set(defaults.OBJECTIVE_NAMES)


def test_objectives_as_one_string_are_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    _stop_at_compute(monkeypatch)
    with pytest.raises(ReachedCompute):
        pruner.search("tiny-sdxl", objectives="quality,macs")


def test_a_latent_cache_is_made_from_python_and_resumes(tmp_path: Path) -> None:
    """``pruner.cache`` (what `pruner cache` calls) writes a cache the search and the distiller read, and
    a second call on the same folder resumes instead of encoding again."""
    from typer.testing import CliRunner

    from pruner.cli import app
    from pruner.data.cache import LatentCache

    made = CliRunner().invoke(app, ["synth-data", "--out", str(tmp_path / "pictures"), "--n", "6"])
    assert made.exit_code == 0, made.output
    summary = pruner.cache(tmp_path / "pictures", tmp_path / "latents", teacher="tiny-sdxl", batch_size=4)
    assert (summary.n_written, summary.n_encoded, summary.resumed) == (6, 6, False)
    assert len(LatentCache(tmp_path / "latents")) == 6
    again = pruner.cache(tmp_path / "pictures", tmp_path / "latents", teacher="tiny-sdxl")
    assert (again.n_written, again.n_encoded, again.resumed) == (6, 0, True)
