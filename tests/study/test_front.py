"""The Pareto front of a hand-built study: which trials, rows, table, plot and exported recipes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial
from rich.console import Console

from pruner.errors import PrunerError
from pruner.recipe import Recipe, load_recipe
from pruner.study.front import (
    best_quality_trial,
    constraint_values,
    export_front,
    feasible_trials,
    front_rows,
    front_table,
    pareto_trials,
    plot_front,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
G = 1e9
Direction = Literal["minimize", "maximize"]
REMOVED = ["down_blocks.2.attentions.0.transformer_blocks.1-2", "mid_block.attentions.0"]  # folded, as stored


def _trial(
    kd: float,
    macs: float,
    *,
    label: str | None = None,
    latency: float | None = None,
    constraints: dict[str, float] | None = None,
    system_attrs: dict[str, Any] | None = None,
) -> FrozenTrial:
    attrs: dict[str, Any] = {"params": int(macs / 100), "macs": int(macs), "latency_ms": latency, "proxy_kd": kd}
    attrs |= {"removed": REMOVED, "label": label, "recipe": None}
    return create_trial(values=[kd, macs], user_attrs=attrs, constraints=constraints, system_attrs=system_attrs)


def _study(trials: list[FrozenTrial], directions: tuple[Direction, ...] = ("minimize", "minimize")) -> optuna.Study:
    study = optuna.create_study(directions=list(directions), study_name="front-test")
    study.add_trials(trials)
    return study


@pytest.fixture
def study() -> optuna.Study:
    """Trials 0, 1, 7, 4 form the front; 5 and 8 would dominate it but break the budget."""
    return _study(
        [
            _trial(0.50, 100 * G, constraints={"budget": -10.0}),  # 0: front
            _trial(0.30, 200 * G, label="bk", constraints={"budget": 0.0}),  # 1: front, a seed
            _trial(0.40, 250 * G),  # 2: dominated by 1
            _trial(0.10, 500 * G),  # 3: same quality as 4, dearer
            _trial(0.10, 400 * G),  # 4: front, best quality
            _trial(0.05, 150 * G, label="ssd", constraints={"budget": 5.0}),  # 5: infeasible (set_constraint form)
            create_trial(state=TrialState.PRUNED, constraints={"budget": 1.0}),  # 6: pruned
            _trial(0.20, 300 * G, label="koala"),  # 7: front, a seed
            _trial(0.01, 50 * G, system_attrs={"constraints": [0.0, 2.0]}),  # 8: infeasible (legacy list form)
            create_trial(state=TrialState.FAIL),  # 9: failed
        ]
    )


def _recipe_of(trial: FrozenTrial) -> Recipe:
    """A minimal valid recipe that removes what the trial removed, validated from a dict as a YAML file would be."""
    return Recipe.model_validate(
        {
            "schema_version": 1,
            "name": f"trial-{trial.number}",
            "teacher": {"model": "tiny-sdxl"},
            "plan": {"remove": trial.user_attrs.get("removed") or []},
            "distill": {"stages": [{"steps": 10, "learning_rate": 1e-4}]},
        }
    )


# --- which trials ------------------------------------------------------------------------------------------


def test_constraints_are_read_in_both_optuna_forms(study: optuna.Study) -> None:
    trials = study.trials
    assert trials[5].system_attrs == {"constraints:budget": 5.0}  # Optuna 5: trial.set_constraint("budget", 5.0)
    assert constraint_values(trials[5]) == [5.0]
    assert constraint_values(trials[8]) == [0.0, 2.0]  # constraints_func's list under "constraints"
    assert constraint_values(trials[2]) == []


def test_feasible_trials_are_complete_and_within_every_constraint(study: optuna.Study) -> None:
    assert [t.number for t in feasible_trials(study)] == [0, 1, 2, 3, 4, 7]


def test_pareto_trials_are_the_non_dominated_feasible_ones_cheapest_first(study: optuna.Study) -> None:
    front = pareto_trials(study)
    assert [t.number for t in front] == [0, 1, 7, 4]
    assert {t.number for t in front} == {t.number for t in study.best_trials}  # Optuna agrees


def test_best_quality_trial_is_feasible_and_cheapest_among_ties(study: optuna.Study) -> None:
    best = best_quality_trial(study)
    assert best is not None and best.number == 4


def test_no_feasible_trial_gives_no_front_and_no_best() -> None:
    study = _study([_trial(0.1, G, constraints={"budget": 1.0}), create_trial(state=TrialState.PRUNED)])
    assert pareto_trials(study) == [] and best_quality_trial(study) is None
    assert best_quality_trial(_study([])) is None


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def test_pareto_trials_match_the_definition_on_random_studies() -> None:
    rng = random.Random(0)
    for _ in range(5):
        trials = [
            create_trial(
                values=[rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)],  # small ints: many ties
                constraints={"budget": rng.choice([-1.0, 0.0, 1.0])},
            )
            for _ in range(40)
        ]
        study = _study(trials, ("minimize", "minimize", "maximize"))
        keyed = {t.number: (t.values[0], t.values[1], -t.values[2]) for t in feasible_trials(study)}
        expected = {n for n, k in keyed.items() if not any(_dominates(o, k) for o in keyed.values())}
        front = pareto_trials(study)
        assert {t.number for t in front} == expected
        assert [keyed[t.number][1:] for t in front] == sorted(keyed[t.number][1:] for t in front)


# --- rows and table ----------------------------------------------------------------------------------------


def test_front_rows(study: optuna.Study) -> None:
    rows = front_rows(study)
    assert [r["number"] for r in rows] == [0, 1, 7, 4]
    assert [r["label"] for r in rows] == [None, "bk", "koala", None]
    first = rows[0]
    assert (first["params"], first["macs"], first["latency_ms"], first["proxy_kd"]) == (1 * G, 100 * G, None, 0.5)
    assert first["n_removed"] == 3  # the folded range counts two layers
    assert first["removed"] == ", ".join(REMOVED)
    assert first["recipe"] is None


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_front_rows_take_costs_from_named_objectives_when_attributes_are_missing() -> None:
    study = _study([create_trial(values=[0.2, 7.0 * G], user_attrs={"label": "vega"})])
    study.set_metric_names(["proxy_kd", "macs"])
    (row,) = front_rows(study)
    assert (row["macs"], row["proxy_kd"], row["params"], row["n_removed"], row["removed"]) == (7 * G, 0.2, None, 0, "")


def _render(table: object) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_front_table_lists_the_front(study: optuna.Study) -> None:
    text = _render(front_table(study))
    assert "Pareto front of front-test: 4 of 6 feasible trials" in text
    assert "koala" in text and "ssd" not in text
    assert "MACs" in text and "latency" not in text  # no trial measured latency
    assert "d2.a0.t1-2, mid.a0" in text
    assert "My front" in _render(front_table(study, title="My front"))


# --- plot --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x", ["macs", "params"])
def test_plot_front_writes_a_png_atomically(study: optuna.Study, tmp_path: Path, x: str) -> None:
    path = plot_front(study, tmp_path / "plots" / "front.png", x=x)
    assert path == tmp_path / "plots" / "front.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in path.parent.iterdir()] == ["front.png"]  # no temporary file left behind


def test_plot_front_against_latency_and_a_wide_quality_spread(tmp_path: Path) -> None:
    study = _study([_trial(kd, m * G, latency=lat) for kd, m, lat in [(5.0, 1, 10.0), (0.01, 3, 30.0), (0.3, 2, 20.0)]])
    assert plot_front(study, tmp_path / "lat.png", x="latency_ms").read_bytes().startswith(PNG_MAGIC)


def test_plot_front_rejects_a_cost_it_cannot_plot(study: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(PrunerError, match="choose one of params, macs, latency_ms"):
        plot_front(study, tmp_path / "x.png", x="watts")
    with pytest.raises(PrunerError, match="no feasible trial recorded latency_ms"):
        plot_front(study, tmp_path / "x.png", x="latency_ms")
    with pytest.raises(PrunerError, match="no feasible trial finished"):
        plot_front(_study([]), tmp_path / "x.png")


# --- export ------------------------------------------------------------------------------------------------


def test_export_front_writes_recipes_found_and_plot(study: optuna.Study, tmp_path: Path) -> None:
    out = export_front(study, tmp_path, _recipe_of)
    assert out == {"found": tmp_path / "found.yaml", "front_dir": tmp_path / "front", "plot": tmp_path / "front.png"}
    assert sorted(p.name for p in out["front_dir"].iterdir()) == [f"trial-{n}.yaml" for n in (0, 1, 4, 7)]
    assert load_recipe(out["front_dir"] / "trial-7.yaml").name == "trial-7"
    found = load_recipe(out["found"])
    assert found.name == "trial-4" and found.plan.remove == REMOVED
    assert out["plot"].read_bytes().startswith(PNG_MAGIC)


def test_export_front_removes_recipes_an_earlier_export_left(study: optuna.Study, tmp_path: Path) -> None:
    export_front(study, tmp_path, _recipe_of)
    (tmp_path / "front" / "notes.yaml").write_text("kept: true\n")  # not a name export writes
    study.add_trial(_trial(0.45, 90 * G))  # dominates trial 0
    export_front(study, tmp_path, _recipe_of)
    names = sorted(p.name for p in (tmp_path / "front").iterdir())
    assert names == ["notes.yaml", "trial-1.yaml", "trial-10.yaml", "trial-4.yaml", "trial-7.yaml"]


def test_export_front_writes_nothing_when_a_recipe_fails(study: optuna.Study, tmp_path: Path) -> None:
    def failing(trial: FrozenTrial) -> Recipe:
        raise PrunerError("boom")

    with pytest.raises(PrunerError, match="boom"):
        export_front(study, tmp_path, failing)
    assert list(tmp_path.iterdir()) == []


def test_export_front_without_a_feasible_trial_says_what_to_do(tmp_path: Path) -> None:
    study = _study([_trial(0.1, G, constraints={"budget": 2.0}), create_trial(state=TrialState.PRUNED)])
    with pytest.raises(PrunerError, match=r"no feasible trial finished; raise trials= or loosen budget="):
        export_front(study, tmp_path, _recipe_of)
    assert list(tmp_path.iterdir()) == []
