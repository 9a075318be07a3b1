"""The ``pruner`` command line: a thin typer layer over the library.

Bad input prints one line, ``error: ...``, and exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from pruner.errors import PrunerError

app = typer.Typer(
    name="pruner",
    help="Find which blocks of an SDXL-class UNet to remove, then distill the student.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}
err = Console(stderr=True)


def _default_threads() -> int:
    """One thread on machines with two cores or fewer: measured there, thread wake-ups made a tiny UNet's
    call 50-85x slower than one thread did. Elsewhere torch's own default."""
    return 1 if (os.cpu_count() or 1) <= 2 else torch.get_num_threads()


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
    torch.set_num_threads(threads or _default_threads())


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn pruner's input errors into one line on stderr and exit code 2."""
    try:
        yield
    except PrunerError as exc:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _fmt(n: int | None, scales: tuple[tuple[float, str], ...] = ((1e9, "B"), (1e6, "M"), (1e3, "K"))) -> str:
    """Human-readable count: parameters in B/M/K, MACs (with ``_MACS``) in T/G/M."""
    if n is None:
        return "-"
    for scale, suffix in scales:
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


_MACS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def _units_table(report) -> Table:  # type: ignore[no-untyped-def]
    table = Table(title=f"{report.target}: {_fmt(report.params)} params, {_fmt(report.macs, _MACS)} MACs "
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
        row += [_fmt(u.macs, _MACS), f"{100 * u.macs / report.macs:.2f}" if u.macs is not None and report.macs else "-"]
        if report.unit_latency_ms:
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
    no_macs: Annotated[
        bool, typer.Option("--no-macs", help="Skip the fvcore MAC count (parameters only, instant).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """List a model's removable units with their parameters, MACs (multiply-adds per UNet call, attention
    included) and, with --latency, measured time."""
    from pruner.inspection import inspect_model

    with user_errors():
        with err.status("inspecting") as status:
            report = inspect_model(target, resolution=resolution, batch=batch, device=device, macs=not no_macs,
                                   latency=latency, on_status=status.update)  # fmt: skip
        if as_json:
            sys.stdout.write(json.dumps(report.as_dict()) + "\n")
            return
        out = Console() if sys.stdout.isatty() else Console(width=200)
        out.print(_units_table(report))
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
        with err.status(f"building the student of {recipe}"):
            path, report = apply_recipe(load_recipe(recipe), out, str(recipe))
        err.print(f"saved {path} ({report.summary()})")


if __name__ == "__main__":  # pragma: no cover
    app()
