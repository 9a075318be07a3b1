"""The Pareto front of a finished search, as rows, a rich table, a plot and recipes.

The search stores what each trial found as user attributes (``params``, ``macs``, ``latency_ms``, ``proxy_kd``,
``removed``, ``label``, ``recipe``) and its objectives as ``trial.values``: quality first, then costs, all
minimised. Infeasible trials (over the budget) carry a positive constraint. Everything here reads a study
through Optuna's public API, so it works on any storage and in notebooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from pruner.budget import KINDS, kind_of_attr
from pruner.errors import PrunerError
from pruner.io import atomic_path, output_lock
from pruner.recipe import Recipe, save_recipe
from pruner.unet.plan import compress_names, expand_names

__all__ = [
    "best_quality_trial",
    "constraint_values",
    "cost_keys",
    "describe_choice",
    "describe_noise_floor",
    "export_front",
    "feasible_trials",
    "found_trial",
    "front_recipes",
    "front_rows",
    "front_table",
    "is_feasible",
    "pareto_trials",
    "plot_front",
    "rung_summary",
    "tied_trials",
]

EXPORT_WAIT = 120.0  # seconds a worker waits for another worker of the study to finish writing --out
NO_FEASIBLE = "no feasible trial finished; raise trials= or loosen budget="
# Optuna < 5 (``constraints_func``) stored one list under this system attribute; Optuna 5 reads it too.
_LEGACY_CONSTRAINTS_KEY = "constraints"
# Unit-name abbreviations for the table, longest first so that "mid_block." wins over "mid_block".
_SHORT_NAMES = (
    ("transformer_blocks.", "t"),
    ("down_blocks.", "d"),
    ("up_blocks.", "u"),
    ("mid_block.", "mid."),
    ("mid_block", "mid"),
    ("attentions.", "a"),
    ("resnets.", "r"),
)
_SHORT_NAMES_CAPTION = "removed: d/u/mid = down/up/mid block, a = attention, r = resnet layer, t = transformer layers"


def cost_keys() -> tuple[str, ...]:
    """The trial attributes the front shows costs from: one per budget kind (``pruner.budget.KINDS``)."""
    return tuple(kind.attr for kind in KINDS.values())


# --- which trials ------------------------------------------------------------------------------------------


def constraint_values(trial: FrozenTrial) -> list[float]:
    """A trial's constraint values, however they were stored (a value > 0 means infeasible).

    Optuna 5's ``trial.set_constraint(key, value)`` stores one system attribute per constraint, named
    ``"constraints:<key>"``; ``FrozenTrial.constraints`` reads those together with the list that the deprecated
    ``constraints_func`` stored under ``"constraints"``. Older Optuna has only that list.
    """
    constraints = getattr(trial, "constraints", None)
    if isinstance(constraints, dict):
        return [float(v) for v in constraints.values()]
    return [float(v) for v in trial.system_attrs.get(_LEGACY_CONSTRAINTS_KEY) or ()]


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint is satisfied (<= 0); a NaN constraint counts as violated, as in Optuna."""
    return all(v <= 0 for v in constraint_values(trial))


def feasible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials that meet every constraint, in trial order."""
    n_objectives = len(study.directions)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in complete if t.values is not None and len(t.values) == n_objectives and is_feasible(t)]


def _minimised(directions: Sequence[StudyDirection], trial: FrozenTrial) -> tuple[float, ...]:
    """The trial's objective values with maximised ones negated, so that lower is better everywhere."""
    return tuple(-v if d == StudyDirection.MAXIMIZE else v for v, d in zip(trial.values, directions, strict=True))


def _cost_order(key: tuple[float, ...], trial: FrozenTrial) -> tuple[Any, ...]:
    """Sort key: cost objectives first, then quality, then trial number (stable across runs)."""
    return (*key[1:], key[0], trial.number)


def _pareto(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's Pareto front (``study.best_trials``: non-dominated among the feasible trials), cheapest first."""
    directions = study.directions  # read once: on an RDB storage each read is a query
    return sorted(study.best_trials, key=lambda t: _cost_order(_minimised(directions, t), t))


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated feasible trials over all objectives, cheapest first."""
    return _pareto(study)


def _best(study: optuna.Study, feasible: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """Best quality; ties go to the cheaper trial, so the winner is always on the Pareto front."""
    directions = study.directions
    return min(feasible, key=lambda t: (_minimised(directions, t), t.number), default=None)


def best_quality_trial(study: optuna.Study) -> FrozenTrial | None:
    """The feasible trial with the best quality objective (``values[0]``), or None when there is none."""
    return _best(study, feasible_trials(study))


def _choice_for(study: optuna.Study, best: FrozenTrial | None) -> dict[str, Any]:
    """The search's ``found_choice`` when it was made for ``best`` (later trials may have changed the best)."""
    choice = study.user_attrs.get("found_choice") or {}
    valid = best is not None and choice.get("candidate") == best.number and choice.get("chosen") is not None
    return dict(choice) if valid else {}


def _chosen(study: optuna.Study, best: FrozenTrial | None) -> FrozenTrial | None:
    """The trial the search's ``found_choice`` names when it was made for ``best``, else ``best``."""
    choice = _choice_for(study, best)
    return study.get_trials(deepcopy=False)[int(choice["chosen"])] if choice else best


def found_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial found.yaml names: the best quality, or the one-shot anchor where the search found the best
    plan's lead over it within noise (its ``found_choice``, ``pruner.study.choice``)."""
    return _chosen(study, best_quality_trial(study))


def tied_trials(study: optuna.Study, trials: Sequence[FrozenTrial]) -> dict[int, list[int]]:
    """For each of ``trials``, the others whose proxy KD is within the study's noise of its own (the
    ``tie_margin`` its found choice recorded, a share of the better score): leads too small to count."""
    margin = _choice_for(study, best_quality_trial(study)).get("tie_margin")
    scores = {t.number: q for t in trials if (q := _quality(t)) is not None}
    if not margin:
        return {}
    return {a: [b for b, kb in scores.items() if b != a and abs(ka - kb) <= margin * min(ka, kb)]
            for a, ka in scores.items()}  # fmt: skip


# --- what each trial found ---------------------------------------------------------------------------------


def _metric_names(study: optuna.Study) -> list[str]:
    return list(getattr(study, "metric_names", None) or [])


def _number(value: Any) -> float | None:
    """A finite number from a user attribute, or None for anything else (missing, None, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _cost(trial: FrozenTrial, key: str, names: Sequence[str]) -> float | None:
    """A cost from the trial's user attributes, else from its objective of that name."""
    value = _number(trial.user_attrs.get(key))
    if value is None and key in names and trial.values is not None and names.index(key) < len(trial.values):
        value = _number(trial.values[names.index(key)])
    return value


def _quality(trial: FrozenTrial) -> float | None:
    """The proxy KD loss the search recorded, else the quality objective."""
    value = _number(trial.user_attrs.get("proxy_kd"))
    if value is None and trial.values:
        value = _number(trial.values[0])
    return value


def _removed(trial: FrozenTrial) -> list[str]:
    """Removed unit names, one per unit: the search may store them folded (``...transformer_blocks.2-9``)."""
    raw = trial.user_attrs.get("removed")
    names = [n for n in raw if isinstance(n, str)] if isinstance(raw, list | tuple) else []
    try:
        return sorted(set(expand_names(names)))
    except PrunerError:  # a backwards range: count it as written rather than fail a report
        return sorted(set(names))


def _label(trial: FrozenTrial) -> str | None:
    label = trial.user_attrs.get("label")
    return str(label) if label else None


def _row(trial: FrozenTrial, names: Sequence[str]) -> dict[str, Any]:
    removed = _removed(trial)
    return {
        "number": trial.number,
        "label": _label(trial),
        **{key: _cost(trial, key, names) for key in cost_keys()},
        "proxy_kd": _quality(trial),
        "n_removed": len(removed),
        "removed": ", ".join(compress_names(removed)),
        "ff_keep": {str(k): float(v) for k, v in (trial.user_attrs.get("ff_keep") or {}).items()},
        "recipe": trial.user_attrs.get("recipe"),
    }


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per Pareto trial, cheapest first; ``removed`` is the recipe's folded form, comma-separated, and
    ``ties`` the other front trials whose proxy KD is within noise of this one's (``tied_trials``)."""
    names, front = _metric_names(study), pareto_trials(study)
    ties = tied_trials(study, front)
    return [{**_row(t, names), "ties": ties.get(t.number, [])} for t in front]


# --- table -------------------------------------------------------------------------------------------------


def _short(removed: str) -> str:
    for long, short in _SHORT_NAMES:
        removed = removed.replace(long, short)
    return removed


def _cell(value: float | None, fmt: Callable[[float], str]) -> str:
    return "-" if value is None else fmt(value)


def front_table(study: optuna.Study, title: str | None = None) -> Table:
    """The Pareto front as a rich table; cost columns no trial measured are left out."""
    rows = front_rows(study)
    if title is None:
        title = f"Pareto front of {study.study_name}: {len(rows)} of {len(feasible_trials(study))} feasible trials"
    costs = [k for k in KINDS.values() if any(r[k.attr] is not None for r in rows)]
    notes = [n for n in (rung_summary(study), describe_noise_floor(study), describe_choice(study)) if n]
    table = Table(title=title, caption="\n".join([_SHORT_NAMES_CAPTION, *notes]) if rows else None)
    widths, ties = any(r["ff_keep"] for r in rows), any(r["ties"] for r in rows)
    headers = ("trial", "seed", *(k.noun for k in costs), "proxy KD", *(("ties",) if ties else ()), "n removed",
               *(("FF keep",) if widths else ()))  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header in ("seed", "FF keep", "ties") else "right", no_wrap=True)
    table.add_column("removed", overflow="fold")
    for r in rows:
        cost_cells = [_cell(r[k.attr], k.format) for k in costs]
        quality = _cell(r["proxy_kd"], lambda v: f"{v:.4g}")
        tie = ["=" + ",".join(map(str, r["ties"])) if r["ties"] else ""] if ties else []
        ff = [" ".join(f"L{k}:{v:g}" for k, v in sorted(r["ff_keep"].items())) or "full"] if widths else []
        table.add_row(str(r["number"]), r["label"] or "", *cost_cells, quality, *tie, str(r["n_removed"]), *ff,
                      _short(r["removed"]))  # fmt: skip
    return table


def rung_summary(study: optuna.Study) -> str | None:
    """How many plans each fidelity scored, e.g. ``fidelity: 24 plans zero-shot, 12 at 30 steps, 5 at 100``."""
    reached: dict[int, int] = {}
    for t in study.get_trials(deepcopy=False):
        for steps in (t.user_attrs.get("rung_kd") or {}) if not t.user_attrs.get("skipped") else ():
            reached[int(steps)] = reached.get(int(steps), 0) + 1
    if not reached:
        return None
    parts = [f"{n} at {s} steps" if s else f"{n} zero-shot" for s, n in sorted(reached.items())]
    return "fidelity: " + ", ".join(parts)


def describe_noise_floor(study: optuna.Study) -> str | None:
    """The found plan's held-out KD under several row orders (the spread gaps must beat), or None."""
    floor = study.user_attrs.get("noise_floor")
    if not floor:
        return None
    kd = floor["kd"]
    return (
        f"noise floor: trial {floor['trial']} scored with {len(kd)} seeds at {floor['steps']} steps: "
        f"KD {min(kd):.4g}-{max(kd):.4g} (spread {100 * floor['spread']:.1f}%, sd {floor['std']:.2g})"
    )


def describe_choice(study: optuna.Study) -> str | None:
    """Why found.yaml names the plan it names (the search's ``found_choice``), or None before it was made."""
    choice = _choice_for(study, best_quality_trial(study))
    if not choice:
        return None
    margin = choice.get("tie_margin")
    ties = f"; front plans within {100 * margin:.1f}% of each other are ties" if margin else ""
    return f"found: {choice['reason']}{ties}"


# --- plot --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Point:
    x: float
    y: float
    label: str | None
    number: int = -1


def _points(trials: Sequence[FrozenTrial], x: str, names: Sequence[str]) -> list[_Point]:
    """(cost, quality) of each trial that has both, finite."""
    points = []
    for trial in trials:
        cost, quality = _cost(trial, x, names), _quality(trial)
        if cost is not None and quality is not None:
            points.append(_Point(cost, quality, _label(trial), trial.number))
    return points


def _staircase(front: Sequence[_Point]) -> list[_Point]:
    """The front as seen on this axis: points in cost order that improve quality on every cheaper one."""
    stairs: list[_Point] = []
    for p in sorted(front, key=lambda p: (p.x, p.y)):
        if not stairs or p.y < stairs[-1].y:
            stairs.append(p)
    return stairs


def _draw(ax: Axes, everyone: Sequence[_Point], front: Sequence[_Point], scale: float) -> None:
    ax.scatter([p.x / scale for p in everyone], [p.y for p in everyone], s=12, color="0.7", label="feasible trials")
    stairs = _staircase(front)
    ax.step([p.x / scale for p in stairs], [p.y for p in stairs], where="post", color="C0", linewidth=1.2)
    ax.scatter([p.x / scale for p in front], [p.y for p in front], s=40, color="C0", zorder=3, label="Pareto front")
    seeds = [p for p in everyone if p.label]
    if seeds:
        ax.scatter([p.x / scale for p in seeds], [p.y for p in seeds], s=140, marker="*", color="C3", zorder=4,
                   edgecolors="black", linewidths=0.5, label="heuristic seeds")  # fmt: skip
    for p in seeds:
        ax.annotate(
            p.label or "", (p.x / scale, p.y), xytext=(6, 4), textcoords="offset points", fontsize=8, color="C3"
        )


def _draw_ties(ax: Axes, front: Sequence[_Point], ties: dict[int, list[int]], scale: float) -> None:
    """A dotted line between front plans whose proxy KD is within noise of each other."""
    at = {p.number: p for p in front}
    pairs = {(a, b) for a, others in ties.items() for b in others if a < b and a in at and b in at}
    for k, (a, b) in enumerate(sorted(pairs)):
        ax.plot([at[a].x / scale, at[b].x / scale], [at[a].y, at[b].y], linestyle=":", color="C1", linewidth=1.2,
                zorder=2, label="ties (within noise)" if k == 0 else None)  # fmt: skip


def _use_log_scale(points: Sequence[_Point]) -> bool:
    low, high = min(p.y for p in points), max(p.y for p in points)
    return low > 0 and high / low > 10


def _save_atomically(fig: Figure, path: Path) -> Path:
    """Write the figure under a temporary name, then rename, so a reader never sees half a file."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=150)
    return path


def plot_front(study: optuna.Study, path: Path, x: str = "macs") -> Path:
    """Plot quality against one cost: feasible trials light, the Pareto front as a staircase, seeds starred.

    Uses matplotlib's Agg canvas directly (no pyplot), so it changes no global backend in a notebook.
    """
    kind = kind_of_attr(x)
    if kind is None:
        raise PrunerError(f"cannot plot against {x!r}; choose one of {', '.join(cost_keys())}")
    names, feasible = _metric_names(study), feasible_trials(study)
    everyone = _points(feasible, x, names)
    if not everyone:
        raise PrunerError(
            NO_FEASIBLE if not feasible else f"no feasible trial recorded {x}; plot against macs or params"
        )
    pareto = _pareto(study)
    front = _points(pareto, x, names)
    scale, x_label = kind.axis(max(p.x for p in everyone))
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw(ax, everyone, front, scale)
    _draw_ties(ax, front, tied_trials(study, pareto), scale)
    if _use_log_scale(everyone):
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    quality = names[0] if names and names[0] != "proxy_kd" else "proxy KD loss"
    ax.set_ylabel(f"{quality} (lower is better)")
    ax.set_title(f"{study.study_name}: {len(front)} on the front of {len(everyone)} feasible trials", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save_atomically(fig, Path(path))


# --- recipes -----------------------------------------------------------------------------------------------


def _plot_axis(study: optuna.Study, trials: Sequence[FrozenTrial]) -> str:
    """The cost to plot against: the study's first cost objective, else MACs, else parameters."""
    names = _metric_names(study)
    keys = cost_keys()
    candidates = [n for n in names[1:] if n in keys] + ["macs", *keys]
    return next((c for c in candidates if any(_cost(t, c, names) is not None for t in trials)), "macs")


def _write_front(front_dir: Path, recipes: dict[int, Recipe]) -> None:
    """Write ``trial-<number>.yaml`` per front trial and remove the ones an earlier export left behind.

    Only ``trial-*.yaml`` files are removed: those are the names this function writes, so a recipe a user put
    in the folder by hand survives.
    """
    written = {save_recipe(recipe, front_dir / f"trial-{number}.yaml") for number, recipe in recipes.items()}
    for old in front_dir.glob("trial-*.yaml"):
        if old not in written:
            old.unlink()


def _with_provenance(recipe: Recipe, **fields: Any) -> Recipe:
    """``recipe`` with provenance ``fields`` set (those given as None left as they are)."""
    given = {k: v for k, v in fields.items() if v is not None}
    return recipe.model_copy(update={"provenance": recipe.provenance.model_copy(update=given)}) if given else recipe


def front_recipes(study: optuna.Study, recipe_of: Callable[[FrozenTrial], Recipe]) -> tuple[Recipe, dict[int, Recipe]]:
    """The found recipe (``found_trial``'s, saying why it was chosen) and each Pareto trial's (naming its ties),
    by trial number."""
    best = _best(study, feasible_trials(study))
    found = _chosen(study, best)
    if found is None:
        raise PrunerError(NO_FEASIBLE)
    front = _pareto(study)
    ties = tied_trials(study, front)
    recipes = {t.number: _with_provenance(recipe_of(t), ties=ties.get(t.number) or None) for t in front}
    choice = _choice_for(study, best).get("reason")
    return _with_provenance(recipes.get(found.number) or recipe_of(found), choice=choice), recipes


def export_front(study: optuna.Study, out_dir: Path, recipe_of: Callable[[FrozenTrial], Recipe]) -> dict[str, Path]:
    """Write ``front/trial-<n>.yaml`` per Pareto trial, ``found.yaml`` and ``front.png`` (``front_recipes``).

    Every recipe is built before any file is written, so a failing ``recipe_of`` leaves an earlier export whole.
    """
    out_dir = Path(out_dir)
    found_recipe, recipes = front_recipes(study, recipe_of)
    front_dir = out_dir / "front"
    with output_lock(out_dir, "--out", wait=EXPORT_WAIT):  # workers of one study end together: one at a time
        front_dir.mkdir(parents=True, exist_ok=True)
        _write_front(front_dir, recipes)
        found = save_recipe(found_recipe, out_dir / "found.yaml")
        plot = plot_front(study, out_dir / "front.png", x=_plot_axis(study, feasible_trials(study)))
    return {"found": found, "front_dir": front_dir, "plot": plot}
