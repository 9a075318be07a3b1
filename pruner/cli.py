"""The ``pruner`` command line: a thin typer layer over the library.

Bad input prints one line, ``error: ...``, and exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from inspect import Parameter, Signature, signature
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.models import ArgumentInfo

import pruner.api
from pruner import defaults
from pruner.budget import KINDS
from pruner.errors import PrunerError, SearchInterrupted
from pruner.io import check_output_dir, check_output_file, check_storage_path, write_text
from pruner.knobs import check_arguments, cli_parameters, flag, params
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
_state: dict[str, Any] = {"debug": False, "threads": None, "configured": False, "flags": {}}
Knobs = dict[str, Any]  # a command's API arguments, as its options gave them
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
    _state.update(threads=threads, configured=False, flags={})  # applied when a command starts working, not for --help


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


_PARAMETER = re.compile(r"\b([a-z][a-z0-9_]*)=(?=[\s,;:)'\"]|$)")  # hpsv2_model= too
_API = (pruner.api.search, pruner.api.distill, pruner.api.evaluate, pruner.api.cache)
# API names the CLI spells otherwise: the knobs' declared flags, and the library's own name for --grid
_FLAGS = {p.name: flag(p) for fn in _API for p in params(fn).values() if p.knob.flag} | {"grid_path": "--grid"}


def flag_names(message: str, flags: Mapping[str, str] | None = None) -> str:
    """A library message in CLI terms: the API's parameters (``storage=``) become flags (``--storage``), as the
    running command spells them (``flags``), else as the knobs declare them."""
    names = {**_FLAGS, **(flags if flags is not None else _state["flags"])}
    return _PARAMETER.sub(lambda m: names.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)


def knob_options(
    api: Callable[..., Any], skip: Collection[str] = (), cli_defaults: Mapping[str, Any] | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the knobs of ``api`` as its options (flag, type, default and help from the API's
    declaration, :mod:`pruner.knobs`), beside the command's own parameters, which replace a knob of the same
    name. The command receives the knobs' values as ``knobs``, checked first, before anything is imported:
    a bad value is one line naming its flag."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p.replace(kind=Parameter.KEYWORD_ONLY)
               for p in signature(command, eval_str=True).parameters.values() if p.name != "knobs"]  # fmt: skip
        generated = cli_parameters(api, skip={*skip, *(p.name for p in own)}, defaults=cli_defaults)
        flags = {p.name: flag(p) for p in params(api).values()}  # how this command's messages name them
        flags |= {p.name: p.name.upper() for p in generated if isinstance(p.annotation.__metadata__[0], ArgumentInfo)}

        def run(**values: Any) -> None:
            knobs = {p.name: values.pop(p.name) for p in generated}
            _state["flags"] = flags
            later = {k for k, v in knobs.items() if v is None and k in (cli_defaults or {})}  # the command fills it
            with user_errors(runtime=False):
                check_arguments(api, {k: v for k, v in knobs.items() if k not in later})
            command(**values, knobs=knobs)

        run.__name__, run.__doc__ = command.__name__, command.__doc__
        run.__signature__ = Signature([*generated, *own])  # type: ignore[attr-defined]
        return run

    return decorate


@contextmanager
def user_errors(runtime: bool = True) -> Iterator[None]:
    """Turn pruner's input errors into one line on stderr and exit code 2; with ``runtime``, set up torch's
    threads and Optuna's verbosity first (checks of the arguments alone run without, so they answer at once)."""
    try:
        if runtime:
            _configure_runtime()
        yield
    except SearchInterrupted as exc:
        err.print(escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except PrunerError as exc:
        if _state["debug"]:
            raise
        # escaped: "pip install 'pruner[metrics]'" is text, not rich markup (which would drop "[metrics]")
        err.print(f"[red]error:[/red] {escape(flag_names(str(exc)))}", highlight=False, soft_wrap=True)
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


@contextmanager
def elapsed_status(first: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the seconds spent on the current step: a step that runs for minutes (fvcore tracing
    SDXL at 1024 px) still shows that it runs and for how long. Yields the function that names a new step."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as bar:  # fmt: skip
        task = bar.add_task(first, total=None)

        def step(message: str) -> None:
            bar.reset(task, total=None, description=message)

        yield step


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
        with elapsed_status("inspecting") as status:
            report = inspect_model(target, resolution=resolution, batch=batch, device=device, macs=macs,
                                   latency=latency, on_status=status)  # fmt: skip
        if as_json:
            sys.stdout.write(json.dumps(report.as_dict()) + "\n")
            return
        out = Console() if sys.stdout.isatty() else Console(width=200)  # its unit names need 130 columns with latency
        out.print(_units_table(report))
        if report.controlnet:
            out.print(report.controlnet, highlight=False)
        if report.ip_adapter:
            out.print(report.ip_adapter, highlight=False)
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
@knob_options(pruner.api.search, skip=("progress", "status"),
              cli_defaults={"teacher": defaults.TEACHER, "output": Path("recipes")})  # fmt: skip
def search(*, knobs: Knobs) -> None:
    """Search which units to remove: an Optuna multi-objective study scores each plan by a short layer-level KD
    fine-tune and by cost, then writes the Pareto front as recipes (found.yaml: the best quality in budget)."""
    from pruner.study.front import front_table
    from pruner.study.storage import default_storage
    from pruner.study.study import default_study_name

    with user_errors():
        check_output_dir(knobs["output"], "--out")
        if knobs["storage"] is not None:
            check_storage_path(knobs["storage"], "--storage")
        name = knobs["study"] or default_study_name(knobs["teacher"], knobs["budget"], knobs["space"])
        try:
            result = pruner.api.search(
                **{**knobs, "study": name, "storage": knobs["storage"] or default_storage(name)}, progress=True,
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
@knob_options(pruner.api.cache, skip=("progress",), cli_defaults={"output": Path("cache")})
def cache(*, knobs: Knobs) -> None:
    """Encode pictures and captions into shards of VAE latents and text conditioning (safetensors) for
    `pruner search` and `pruner distill`. Unreadable images are skipped and counted; re-running resumes.
    Many processes or machines: `accelerate launch -m pruner cache DATA --out CACHE ...`."""
    with user_errors():
        summary = pruner.api.cache(**knobs, progress=True)
        reasons = ", ".join(f"{n} {why}" for why, n in summary.skipped_reasons.items() if n)
        what = f"{summary.n_written} rows" + (" (this process's share)" if summary.waiting else "")
        left = f"; {summary.waiting} part(s) still running: the last to finish writes the index"
        then = left if summary.waiting else ""
        err.print(f"cached {what} in {summary.out} ({summary.n_skipped} skipped"
                  f"{': ' + reasons if reasons else ''}{', resumed' if summary.resumed else ''}){then}")  # fmt: skip


@app.command()
@knob_options(pruner.api.distill, skip=("progress",), cli_defaults={"output": None})
def distill(*, knobs: Knobs) -> None:
    """Train a recipe's student with task loss, output KD and layer-level feature KD, stage by stage.
    Many GPUs: `accelerate launch -m pruner distill RECIPE ...`."""
    from pruner.device import resolve_device, slow_half_note
    from pruner.recipe import load_recipe

    with user_errors():
        note = slow_half_note(resolve_device(None), knobs["mixed_precision"])
        if note:
            err.print(f"note: {note}")
        loaded = load_recipe(knobs["recipe"])
        output = knobs["output"] or Path("outputs") / loaded.name
        path = pruner.api.distill(**{**knobs, "output": output}, progress=True)
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
@knob_options(pruner.api.evaluate, cli_defaults={"teacher": defaults.TEACHER, "grid": Path("outputs/eval-grid.png")})
def eval_(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    *,
    knobs: Knobs,
) -> None:
    """Compare a student with its teacher: held-out KD loss, PSNR of pictures from the same seeds, the
    judge's prompt accuracy ± its standard error (bundled teacher), and UNet latency of both; with --metrics,
    FID and KID to the teacher's pictures (or --reference) and CLIP score, by torchmetrics, and the preference
    scores PickScore, ImageReward and HPSv2."""
    with user_errors():
        if knobs["grid"] is not None:
            check_output_file(knobs["grid"], "--grid")
    with user_errors(), err.status("generating and comparing"):
        report = pruner.api.evaluate(**knobs)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict()) + "\n")
        return
    at = "".join(f", {x}" for x in (f"{report.resolution}px" if report.resolution else None, report.dtype) if x)
    table = Table(
        title=f"{knobs['student']} vs {knobs['teacher']} ({report.n_prompts} prompts, {report.steps} steps{at})"
    )
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
    for row in _field_metric_rows(report.metrics, report.metric_settings):
        table.add_row(*row)
    _table_console().print(table)  # the title (both model paths) unsqueezed off a terminal
    if report.grid:
        err.print(f"grid: {report.grid}")


@app.command("compare")
@knob_options(pruner.api.evaluate, skip=("student", "keep_pictures"),
              cli_defaults={"teacher": defaults.TEACHER, "grid": Path("outputs/compare-grid.png")})  # fmt: skip
def compare(
    students: Annotated[list[str], typer.Argument(help="Student folders to compare with the teacher and each other.")],
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the table as markdown here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    *,
    knobs: Knobs,
) -> None:
    """The teacher and several students on the same prompts and seeds: one table (params, MACs, latency, KD
    loss, PSNR, prompt accuracy, the --metrics asked for) and one captioned grid, teacher row first."""
    with user_errors():
        for path, name in ((knobs["grid"], "--grid"), (markdown, "--markdown")):
            if path is not None:
                check_output_file(path, name)
    with user_errors(), err.status(f"comparing {len(students)} students with {knobs['teacher']}"):
        result = pruner.api.compare(students, **knobs)
    if markdown is not None:
        write_text(markdown, result.markdown())
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
        return
    heads, body = result.table()
    table = Table(title=f"against {result.teacher}: " + ", ".join(f"{k} {v}" for k, v in result.settings.items()))
    for i, head in enumerate(heads):
        table.add_column(head, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    _table_console().print(table)
    if result.grid:
        err.print(f"grid: {result.grid}")


def _field_metric_rows(metrics: Mapping[str, float], settings: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The table rows of ``pruner eval --metrics``: FID and KID (± its standard deviation over subsets) to the
    reference, CLIP score, the preference scores; the teacher's column where it was scored too."""
    from pruner.comparison import METRIC_HEADINGS
    from pruner.metrics.preference import PREFERENCE

    def value(key: str, fmt: str = ".3f") -> str:
        if key not in metrics:
            return "-"
        spread = metrics.get(key + "_std")
        return f"{metrics[key]:{fmt}}" + ("" if spread is None else f" ± {spread:{fmt}}")

    against = f"to {settings.get('reference')}, {settings.get('features')} features"
    rows = [(f"FID {against}", value("fid"), value("teacher_fid")) if "fid" in metrics else None,
            (f"KID {against}", value("kid", ".4f"), value("teacher_kid", ".4f")) if "kid" in metrics else None,
            (f"CLIP score ({settings.get('clip_model')})", value("clip_score", ".2f"),
             value("teacher_clip_score", ".2f")) if "clip_score" in metrics else None]  # fmt: skip
    rows += [(f"{METRIC_HEADINGS[key]} ({settings.get(key + '_model')})", value(key), value("teacher_" + key))
             for key in PREFERENCE if key in metrics]  # fmt: skip
    return [row for row in rows if row is not None]


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
    out: Annotated[Path, typer.Option("--out", help="File to write: .safetensors (SGM key layout) or .onnx.")],
    fmt: Annotated[
        str, typer.Option("--format", help="safetensors: one file for UIs; onnx: the UNet for ONNX runtimes.")
    ] = "safetensors",
    unet_only: Annotated[
        bool, typer.Option("--unet-only", help="Export only the UNet (needed for pipeline folders for now).")
    ] = False,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="safetensors keys: sgm (the original layout UIs read) or diffusers (what from_single_file loads "
            "unconverted, for students whose down blocks keep different numbers of layers).",
        ),
    ] = "sgm",
    fp16: Annotated[bool, typer.Option("--fp16", help="onnx: trace a half-precision copy.")] = False,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="onnx: compare onnxruntime's output with PyTorch's.")
    ] = True,
) -> None:
    """Write a student's UNet as one .safetensors in the original (SGM) key layout single-file loaders read
    (depths and diffusers config in the metadata), or as an ONNX graph with dynamic batch and resolution."""
    with user_errors(), err.status(f"exporting {student}"):
        if fmt == "onnx":
            from pruner.compat.onnx_export import export_onnx

            summary = export_onnx(student, out, fp16=fp16, check=check).summary()
        elif fmt == "safetensors":
            from pruner.compat.export import export_single_file

            summary = export_single_file(student, out, unet_only=unet_only, layout=layout).summary()
        else:
            raise PrunerError(f"--format {fmt} is not one of safetensors, onnx")
    err.print(summary, highlight=False)


@app.command("push")
def push(
    student: Annotated[str, typer.Argument(help="Student folder (the output of pruner distill or apply).")],
    repo: Annotated[str, typer.Option("--repo", help="Hub repository USER/NAME; created when missing.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch to push to (created from main when missing).")
    ] = None,
    license: Annotated[
        str | None, typer.Option("--license", help="The teacher's license id, when pruner cannot tell it.")
    ] = None,
) -> None:
    """Upload a student's folder to the Hugging Face Hub with a model card (recipe, teacher and its license,
    metrics, the commands that reproduce it). The token comes from `hf auth login` or HF_TOKEN."""
    from pruner.hub import push as push_student

    with user_errors(), err.status(f"pushing {student} to {repo}"):
        result = push_student(student, repo, private=private, revision=revision, license=license)
    err.print(result.summary(), highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
