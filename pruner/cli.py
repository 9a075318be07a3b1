"""The ``pruner`` command line: a thin typer layer over the library.

Bad input prints one line, ``error: ...``, and exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.table import Table

from pruner import defaults
from pruner.budget import KINDS
from pruner.errors import PrunerError, SearchInterrupted
from pruner.io import check_output_dir, check_output_file, check_storage_path
from pruner.runtime import configure_threads

if TYPE_CHECKING:
    from pruner.inspection import Inspection


class _Commands(typer.core.TyperGroup):
    """The command group: ``--debug`` is taken after the subcommand too (``pruner search --debug``)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: the click Context typer bundles
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *(a for i, a in enumerate(args) if a != "--debug" or i > end)]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_Commands,
    name="pruner",
    help="Find which blocks of an SDXL-class UNet to remove, then distill the student.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: flags read `--resume`, not `--resume <bool>` (typer 0.29's rich panel)
)
_state: dict[str, bool | int | None] = {"debug": False, "threads": None, "configured": False}
err = Console(stderr=True)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            envvar="PRUNER_THREADS",
            min=1,
            help="CPU threads for torch; default 1 on machines with 2 cores or fewer, else torch's.",
        ),
    ] = None,
) -> None:
    _state["debug"] = debug
    _state.update(threads=threads, configured=False)  # applied when a command starts its work, not for --help


def _configure_runtime() -> None:
    """torch's threads and Optuna's verbosity, set once a command starts working: importing torch and Optuna
    takes seconds, which `--help` and a refused argument should not wait for."""
    if not _state["configured"]:
        _state["configured"] = True
        threads = _state["threads"]
        configure_threads(threads if isinstance(threads, int) and not isinstance(threads, bool) else None)
        optuna_logging_to_warnings()


def optuna_logging_to_warnings() -> None:
    """The CLI shows progress bars and tables; Optuna's per-trial INFO lines would repeat them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


_PARAMETER = re.compile(r"\b([a-z][a-z_]*)=(?=[\s,;:)'\"]|$)")
# API names the CLI spells otherwise
_FLAGS = {"prompts_file": "--prompts", "n_prompts": "--n", "grid_path": "--grid", "eight_bit_adam": "--8bit-adam"}


def flag_names(message: str) -> str:
    """A library message in CLI terms: the API's parameters (``storage=``) become flags (``--storage``)."""
    return _PARAMETER.sub(lambda m: _FLAGS.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)


@contextmanager
def user_errors(runtime: bool = True) -> Iterator[None]:
    """Turn pruner's input errors into one line on stderr and exit code 2; with ``runtime``, set up torch's
    threads and Optuna's verbosity first (checks of the arguments alone run without, so they answer at once)."""
    try:
        if runtime:
            _configure_runtime()
        yield
    except SearchInterrupted as exc:
        err.print(str(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except PrunerError as exc:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/red] {flag_names(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _table_console() -> Console:
    """Where tables go: the terminal at its own width; a pipe or file at 120 columns (what a terminal commonly
    shows; wide columns fold rather than overflow)."""
    return Console() if sys.stdout.isatty() else Console(width=120)


def _fmt(n: int | None, kind: str = "params") -> str:
    """A count as its budget kind shows it (``pruner.budget.KINDS``): params in K/M/B/T, MACs in K/M/G/T."""
    return "-" if n is None else KINDS[kind].format(n)


def _units_table(report: Inspection) -> Table:
    table = Table(title=f"{report.target}: {_fmt(report.params)} params, {_fmt(report.macs, 'macs')} MACs "
                        f"at {report.resolution}px batch {report.batch}")  # fmt: skip
    width = max((len(u.name) for u in report.units), default=4)
    for col in ("unit", "kind", "params", "% params", "MACs", "% MACs"):
        table.add_column(
            col,
            justify="left" if col in ("unit", "kind") else "right",
            no_wrap=True,
            min_width=width if col == "unit" else None,
        )
    if report.unit_latency_ms:
        table.add_column("ms", justify="right")
        table.add_column("% time", justify="right")
    for u in report.units:
        row = [u.name, u.kind, _fmt(u.params), f"{100 * u.params / report.params:.2f}"]
        row += [
            _fmt(u.macs, "macs"),
            f"{100 * u.macs / report.macs:.2f}" if u.macs is not None and report.macs else "-",
        ]
        if report.unit_latency_ms and report.latency is not None:
            ms = report.unit_latency_ms[u.name]
            row += [f"{ms:.2f}", f"{100 * ms / report.latency.total_ms:.1f}"]
        table.add_row(*row)
    return table


@app.command()
def inspect(
    target: Annotated[
        str,
        typer.Argument(
            help="Hub id, pipeline or UNet folder, .safetensors file, architecture name "
            "(sdxl, sd15), or a recipe .yaml (then: the student it makes)."
        ),
    ],
    resolution: Annotated[
        int | None, typer.Option(help="Image side in pixels; default: the model's native size.")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size the MACs and latency are taken at.")] = 1,
    device: Annotated[str, typer.Option(help="Device for --latency: cpu, cuda, cuda:1 ...")] = "cpu",
    latency: Annotated[bool, typer.Option("--latency", help="Also time the model and each unit on --device.")] = False,
    macs: Annotated[
        bool, typer.Option("--macs/--no-macs", help="Count MACs with fvcore; --no-macs: parameters only, instant.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """List a model's removable units with their parameters, MACs (multiply-adds per UNet call, attention
    included) and, with --latency, measured time."""
    from pruner.inspection import inspect_model

    with user_errors():
        with err.status("inspecting") as status:
            report = inspect_model(target, resolution=resolution, batch=batch, device=device, macs=macs,
                                   latency=latency, on_status=status.update)  # fmt: skip
        if as_json:
            sys.stdout.write(json.dumps(report.as_dict()) + "\n")
            return
        out = Console() if sys.stdout.isatty() else Console(width=200)  # its unit names need 130 columns with latency
        out.print(_units_table(report))
        if report.controlnet:
            out.print(report.controlnet, highlight=False)
        if report.single_file:
            out.print(report.single_file, highlight=False)
        if report.latency:
            lat = report.latency
            out.print(f"latency: {lat.total_ms:.2f} ms median of {lat.runs} ({lat.device}, {lat.dtype}, "
                            f"latent {lat.latent}x{lat.latent}, batch {lat.batch})")  # fmt: skip


@app.command()
def apply(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML whose student to build.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the student (stock diffusers UNet + recipe.yaml).")],
) -> None:
    """Build a recipe's student, initialised from the teacher's weights (untrained), and save it."""
    from pruner.recipe import load_recipe
    from pruner.student import apply_recipe

    with user_errors():
        check_output_dir(out, "--out")
        with err.status(f"building the student of {recipe}"):
            path, report = apply_recipe(load_recipe(recipe), out, str(recipe))
        err.print(f"saved {path} ({report.summary()})")


@app.command()
def search(
    budget: Annotated[
        str,
        typer.Option(
            help="Size limit naming its unit: 0.74B, 740M, 45% (of the teacher's params), macs=2.8T, macs=60%, "
            "latency=40ms or latency=60% (per UNet call at batch 2, estimated from module times measured once)."
        ),
    ] = defaults.BUDGET,
    teacher: Annotated[
        str, typer.Option(help="Teacher: hub id, pipeline or UNet folder, or tiny-sdxl.")
    ] = defaults.TEACHER,
    objectives: Annotated[
        str, typer.Option(help="Comma-separated, minimised: quality plus macs, params or latency.")
    ] = ",".join(defaults.OBJECTIVES),
    trials: Annotated[
        int, typer.Option(min=1, help="Trials in the study (a re-run resumes up to this many).")
    ] = defaults.TRIALS,
    proxy_steps: Annotated[
        int, typer.Option(min=0, help="KD steps for the better half of plans (every plan is scored zero-shot first).")
    ] = defaults.PROXY_STEPS,
    top_steps: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="KD steps in all for the best third of those; the found plan is chosen among them "
            "(default 10/3 of --proxy-steps: 100 for 30; <= --proxy-steps: two rungs only).",
        ),
    ] = None,
    sampler: Annotated[
        str,
        typer.Option(
            help="mutation (mutations and crossovers of the best scored plans, biased by unit sensitivity), "
            "nsga2 or tpe (multivariate)."
        ),
    ] = defaults.SAMPLER,
    noise_seeds: Annotated[
        int, typer.Option(min=0, help="Re-score the found plan with this many other row orders: the noise floor.")
    ] = defaults.NOISE_SEEDS,
    data: Annotated[str | None, typer.Option(help="Latent cache (from `pruner cache`) to calibrate on.")] = None,
    prompts: Annotated[
        str | None, typer.Option(help="No dataset: prompts file; the teacher generates the latents.")
    ] = None,
    space: Annotated[
        str,
        typer.Option(
            help="Search space: a built-in (default, depth-only, depth-width), search/NAME.yaml by name, or a file."
        ),
    ] = defaults.SPACE,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage: sqlite:///x.db, postgresql://user@host/db or "
            "journal:PATH (workers share it); default sqlite under search/runs/."
        ),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name; default from teacher, budget and space.")] = None,
    out: Annotated[Path, typer.Option(help="Where found.yaml, front/*.yaml and front.png go.")] = Path("recipes"),
    seed: Annotated[int, typer.Option(help="Seeds the sampler, calibration noise and proxy training.")] = 0,
    calibration: Annotated[
        int, typer.Option(min=4, help="Calibration rows the proxy trains on.")
    ] = defaults.CALIBRATION,
    held_out: Annotated[
        int, typer.Option(min=2, help="Rows (fixed noise and timesteps) the proxy scores on; more ranks steadier.")
    ] = defaults.HELD_OUT,
    device: Annotated[
        str | None,
        typer.Option(
            help="Where the teacher, calibration and proxy run: cuda, cuda:1, cpu; default cuda "
            "when available. One worker per GPU: --device cuda:k with a shared --storage."
        ),
    ] = None,
    mixed_precision: Annotated[
        str | None,
        typer.Option(
            help="Autocast of the proxy's students: no, bf16 or fp16; default bf16 on a GPU. "
            "bf16/fp16 also freeze the teacher in that precision (on a CPU too: half the memory)."
        ),
    ] = None,
) -> None:
    """Search which units to remove: an Optuna multi-objective study scores each plan by a short layer-level KD
    fine-tune and by cost, then writes the Pareto front as recipes (found.yaml: the best quality in budget)."""
    import pruner.api
    from pruner.study.front import front_table
    from pruner.study.storage import default_storage
    from pruner.study.study import default_study_name

    with user_errors():
        check_output_dir(out, "--out")
        if storage is not None:
            check_storage_path(storage, "--storage")
        name = study or default_study_name(teacher, budget, space)
        try:
            result = pruner.api.search(
                teacher, budget, objectives=[o.strip() for o in objectives.split(",")], trials=trials,
                proxy_steps=proxy_steps, top_steps=top_steps, sampler=sampler, noise_seeds=noise_seeds, data=data,
                prompts=prompts, space=space,
                storage=storage or default_storage(name), study=name, output=out, seed=seed,
                calibration=calibration, held_out=held_out, device=device,
                mixed_precision=mixed_precision, progress=True,
                status=lambda message: err.print(f"[dim]{message}[/dim]", soft_wrap=True),  # one line a message
            )  # fmt: skip
        except KeyboardInterrupt:  # before the first trial (while loading or calibrating)
            raise SearchInterrupted("interrupted before the first trial; rerun the same command to start") from None
        _table_console().print(front_table(result.study, title=f"Pareto front of {result.study.study_name}"))
        dashboard = result.storage.removeprefix("journal:")
        found, name = result.files["found"], result.study.study_name
        err.print(
            f"found: {found}\nfront: {result.files['front_dir']} and {result.files['plot']}\n"
            f"study: {name} in {result.storage} (show it again: pruner front {result.storage}; browse it: "
            f"pip install 'pruner[dashboard]', then optuna-dashboard {dashboard})\n"
            f"next: pruner distill {found}",
            soft_wrap=True,  # whole commands, to copy
            markup=False,  # 'pruner[dashboard]' is text, not a style
        )


@app.command()
def front(
    study: Annotated[
        str, typer.Argument(help="Study name, or the storage URL `pruner search` printed (when it holds one study).")
    ],
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL; default sqlite under search/runs/.")] = None,
    export: Annotated[Path | None, typer.Option(help="Write front/*.yaml, found.yaml and front.png here.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="PNG of the front; default front.png beside --export, else search/runs/STUDY-front.png."),
    ] = None,
    x: Annotated[str, typer.Option(help="Cost axis of the plot: macs, params or latency_ms.")] = "macs",
) -> None:
    """Show a study's Pareto-optimal trials (params, MACs, latency, proxy loss, removed units) and plot the front
    with the heuristic seeds marked."""
    from pruner.study.export import export_study
    from pruner.study.front import front_table, plot_front
    from pruner.study.storage import default_storage, is_storage_url, load_existing_study, only_study

    with user_errors():
        if export is not None:
            check_output_dir(export, "--export")
        if plot is not None:
            check_output_file(plot, "--plot")
        if storage is None and is_storage_url(study):  # `pruner front URL`, as the search printed it
            storage, study = study, only_study(study)
        loaded = load_existing_study(study, storage or default_storage(study, create=False))
        _table_console().print(front_table(loaded, title=f"Pareto front of {study}"))
        if export is not None:
            paths = export_study(loaded, export)
            err.print(f"recipes: {paths['front_dir']}, {paths['found']}; plot: {paths['plot']}")
        if plot is not None or export is None:
            err.print(f"plot: {plot_front(loaded, plot or Path('search/runs') / f'{study}-front.png', x=x)}")


@app.command()
def cache(
    data: Annotated[Path, typer.Argument(help="Image folder with metadata.jsonl (file_name, text per line).")],
    teacher: Annotated[
        str, typer.Option(help="Pipeline whose VAE and text encoders encode the data.")
    ] = defaults.TEACHER,
    out: Annotated[Path, typer.Option("--out", help="Cache folder to create or resume.")] = Path("cache"),
    resolution: Annotated[int | None, typer.Option(help="Side in pixels; default the teacher's native size.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images encoded per batch.")] = 16,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:1 or cpu; default cuda when available.")] = None,
) -> None:
    """Encode an image folder into shards of VAE latents and text conditioning (safetensors) for
    `pruner distill`. Unreadable images are skipped and counted; re-running resumes."""
    import pruner.api

    with user_errors():
        summary = pruner.api.cache(data, out, teacher=teacher, resolution=resolution, batch_size=batch_size,
                                   device=device, progress=True)  # fmt: skip
        reasons = ", ".join(f"{n} {why}" for why, n in summary.skipped_reasons.items() if n)
        err.print(f"cached {summary.n_written} rows in {summary.out} ({summary.n_skipped} skipped"
                  f"{': ' + reasons if reasons else ''}{', resumed' if summary.resumed else ''})")  # fmt: skip


@app.command()
def distill(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (from `pruner search` or recipes/).")],
    output: Annotated[Path | None, typer.Option(help="Output folder; default outputs/<recipe name>.")] = None,
    data: Annotated[str | None, typer.Option(help="Latent cache from `pruner cache`; optional for tiny-sdxl.")] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Total steps, overriding the recipe's (a quick run).")
    ] = None,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help="Checkpoint every N steps.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last complete checkpoint.")] = False,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size per device; default the recipe's.")] = None,
    validate_every: Annotated[int | None, typer.Option(min=1, help="Held-out KD loss every N steps.")] = None,
    mixed_precision: Annotated[
        str, typer.Option(help="Autocast precision: no, fp16 or bf16 (the frozen teacher too; always half on a GPU).")
    ] = "no",
    grad_accum: Annotated[int, typer.Option(min=1, help="Gradient accumulation steps.")] = 1,
    gradient_checkpointing: Annotated[
        bool,
        typer.Option(
            "--gradient-checkpointing", help="Recompute activations in the backward pass: less memory, slower."
        ),
    ] = False,
    adam_8bit: Annotated[
        bool, typer.Option("--8bit-adam", help="bitsandbytes' 8-bit AdamW (less GPU memory; extra 'pruner[gpu]').")
    ] = False,
    ema_decay: Annotated[
        float | None, typer.Option(help="Keep an EMA of the weights (e.g. 0.999); saved at the end.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds sampling, noise and caption dropout.")] = 0,
) -> None:
    """Train a recipe's student with task loss, output KD and layer-level feature KD, stage by stage.
    Many GPUs: `accelerate launch -m pruner distill RECIPE ...`."""
    import pruner.api
    from pruner.device import check_precision, resolve_device, slow_half_note
    from pruner.recipe import load_recipe

    with user_errors():
        check_precision(mixed_precision, "--mixed-precision")
        note = slow_half_note(resolve_device(None), mixed_precision)
        if note:
            err.print(f"note: {note}")
        loaded = load_recipe(recipe)
        out = output or Path("outputs") / loaded.name
        path = pruner.api.distill(
            recipe, out, data=data, steps=steps, checkpoint_every=checkpoint_every, resume=resume,
            batch_size=batch_size, seed=seed, validate_every=validate_every, mixed_precision=mixed_precision,
            grad_accum=grad_accum, gradient_checkpointing=gradient_checkpointing, ema_decay=ema_decay,
            eight_bit_adam=adam_8bit,
        )  # fmt: skip
        err.print(f"student saved in {path}\nnext: pruner eval {path} --teacher {loaded.teacher.model}", soft_wrap=True)


@app.command("synth-data")
def synth_data(
    out: Annotated[Path, typer.Option("--out", help="Folder to create: PNGs plus metadata.jsonl (file_name, text).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of captioned pictures.")] = 1000,
    seed: Annotated[int, typer.Option(help="Same seed, same pictures and captions, byte for byte.")] = 0,
    size: Annotated[int, typer.Option(min=8, help="Picture side in pixels (the bundled teacher uses 32).")] = 32,
) -> None:
    """Write captioned pictures of shapes ("a small red circle left of a blue square on a grey background"),
    the task the bundled tiny-sdxl teacher was trained on, in the image-folder layout diffusers reads."""
    from pruner.tiny.synth import write_dataset

    with user_errors():
        check_output_dir(out, "--out")
        try:
            summary = write_dataset(out, n, seed, size=size, progress=True)
        except ValueError as exc:
            raise PrunerError(str(exc)) from exc
        err.print(f"wrote {summary['n']} pictures to {summary['out_dir']} ({summary['one_object']} with one object, "
                  f"{summary['two_objects']} with two)")  # fmt: skip


@app.command("eval")
def eval_(
    student: Annotated[str, typer.Argument(help="Student folder: a stock diffusers UNet folder or a pipeline folder.")],
    teacher: Annotated[
        str, typer.Option(help="Teacher pipeline: hub id, pipeline folder, or tiny-sdxl.")
    ] = defaults.TEACHER,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts file, one a line (default for tiny-sdxl: captions not in its data).")
    ] = None,
    n: Annotated[
        int, typer.Option("--n", min=1, help="Number of prompts (and of pictures per model).")
    ] = defaults.EVAL_PROMPTS,
    steps: Annotated[int, typer.Option(min=1, help="Sampling steps per picture.")] = defaults.EVAL_STEPS,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = defaults.GUIDANCE,
    seed: Annotated[int, typer.Option(help="Seeds the prompts, noise and timesteps.")] = 0,
    grid: Annotated[
        Path | None, typer.Option(help="PNG grid, teacher row above student row (outputs/ is gitignored).")
    ] = Path("outputs/eval-grid.png"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:1 or cpu; default cuda when available.")] = None,
    resolution: Annotated[
        int | None, typer.Option(min=8, help="Side in pixels of pictures and latency inputs; default the teacher's.")
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            help="What both UNets and the pipeline run in: auto (bf16 on a GPU, fp32 on a CPU), fp32, bf16 or "
            "fp16; the latency row is this dtype's."
        ),
    ] = "auto",
) -> None:
    """Compare a student with its teacher: held-out KD loss, PSNR of pictures from the same seeds, the
    judge's prompt accuracy ± its standard error (bundled teacher), and UNet latency of both."""
    import pruner.api

    with user_errors():
        if grid is not None:
            check_output_file(grid, "--grid")
    with user_errors(), err.status("generating and comparing"):
        report = pruner.api.evaluate(student, teacher, n_prompts=n, steps=steps, guidance_scale=guidance, seed=seed,
                                     prompts_file=prompts, grid=grid, device=device, resolution=resolution,
                                     dtype=dtype)  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict()) + "\n")
        return
    at = "".join(f", {x}" for x in (f"{report.resolution}px" if report.resolution else None, report.dtype) if x)
    table = Table(title=f"{student} vs {teacher} ({report.n_prompts} prompts, {report.steps} steps{at})")
    table.add_column("metric")
    table.add_column("student", justify="right")
    table.add_column("teacher", justify="right")

    def acc(share: float | None, se: float | None) -> str:
        """A share as "NN.N% ± S.S" (its standard error in percentage points)."""
        return "-" if share is None else f"{100 * share:.1f}%" + ("" if se is None else f" ± {100 * se:.1f}")

    table.add_row("params", _fmt(report.student_params), _fmt(report.teacher_params))
    table.add_row("held-out KD loss (MSE)", f"{report.kd_loss:.5f}", "0")
    table.add_row("PSNR to teacher (dB)", f"{report.psnr:.2f}", "-")
    table.add_row(
        "prompt accuracy ± standard error",
        acc(report.prompt_accuracy, report.prompt_accuracy_se),
        acc(report.teacher_prompt_accuracy, report.teacher_prompt_accuracy_se),
    )
    table.add_row("UNet latency, batch 2 (ms)", f"{report.student_latency_ms:.2f}", f"{report.teacher_latency_ms:.2f}")
    Console().print(table)
    if report.grid:
        err.print(f"grid: {report.grid}")


@app.command("port-lora")
def port_lora(
    lora: Annotated[
        Path, typer.Argument(help="The teacher's LoRA: diffusers/PEFT or kohya .safetensors, or a folder.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Ported LoRA: a .safetensors file, or a folder to write it in.")],
    student: Annotated[
        Path | None, typer.Option(help="Student folder pruner wrote (its recipe.yaml names the plan).")
    ] = None,
    recipe: Annotated[Path | None, typer.Option(help="Recipe the student was made from (or --student).")] = None,
) -> None:
    """Carry a teacher's LoRA over to a student: rename entries through the plan's weight map, drop those of
    removed modules, refuse those whose shapes no longer fit; write diffusers' layout."""
    from pruner.compat import port_lora as port

    with user_errors():
        if (student is None) == (recipe is None):
            raise PrunerError("give --student DIR or --recipe RECIPE (one of them)")
        ported = port(lora, student=student, recipe=recipe, out=out)
    err.print(ported.report.summary(), highlight=False)
    err.print(f"saved {ported.path}; load it with pipe.load_lora_weights on the student's pipeline", highlight=False)


@app.command("export")
def export(
    student: Annotated[str, typer.Argument(help="Student folder (UNet or pipeline) to export.")],
    out: Annotated[Path, typer.Option("--out", help="Single file to write (.safetensors, original SGM key layout).")],
    unet_only: Annotated[
        bool, typer.Option("--unet-only", help="Export only the UNet (needed for pipeline folders for now).")
    ] = False,
) -> None:
    """Write a depth-pruned student's UNet as one .safetensors in the original (SGM) key layout single-file
    loaders read, with its depths and diffusers config in the metadata."""
    from pruner.compat.export import export_single_file

    with user_errors(), err.status(f"exporting {student}"):
        report = export_single_file(student, out, unet_only=unet_only)
    err.print(report.summary(), highlight=False)
    err.print(
        f"load it with UNet2DConditionModel.from_single_file({str(out)!r}, config=<student folder>) "
        "or pruner.load_unet",
        highlight=False,
    )


if __name__ == "__main__":  # pragma: no cover
    app()
