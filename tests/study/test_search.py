"""The search on a tiny SDXL pipeline: a short study, its front as recipes, resume, and bad budgets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from typer.testing import CliRunner

from pruner import defaults
from pruner.cli import app
from pruner.cost import CostModel
from pruner.recipe import load_recipe
from pruner.student import resolve_recipe
from pruner.study.choice import MIN_LEAD, Lead, settled
from pruner.study.context import AFRESH
from pruner.study.heuristics import ANCHORS, seed_plans
from pruner.study.repair import repair_to_budget
from pruner.study.space import SearchSpace, decode, genome_of
from pruner.study.workers import counted
from pruner.unet import Plan, architecture_config, check_expressible, meta_unet, topology_of, unit_kinds

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

    from pruner.study.proxy import Calibration
    from pruner.unet.topology import Topology

runner = CliRunner()


def test_repair_reaches_the_budget_and_stays_expressible() -> None:
    config = architecture_config("tiny-sdxl")
    topo = topology_of(meta_unet(config))
    cost = CostModel(config)
    total = cost.params(Plan())
    sens = {n: float(k) for k, n in enumerate(unit_kinds(topo))}
    for fraction in (0.9, 0.6, 0.4):
        plan = repair_to_budget(Plan(), topo, lambda p: cost.params(p), fraction * total, sens)
        assert plan is not None
        check_expressible(plan, topo)
        assert cost.params(plan) <= fraction * total
        assert cost.params(plan) > 0.8 * fraction * total  # at or just under, not far below


def test_genomes_round_trip_through_plans() -> None:
    topo = topology_of(meta_unet(architecture_config("tiny-sdxl")))
    space = SearchSpace(select="first")
    plan = Plan.removing(
        ["mid_block.attentions.0", "down_blocks.2.attentions.1.transformer_blocks.3-5", "down_blocks.1.resnets.1"]
    )
    assert decode(genome_of(plan, space, topo), space, topo, {}) == plan


def test_seed_plans_meet_the_budget_in_their_own_styles() -> None:
    config = architecture_config("tiny-sdxl")
    topo = topology_of(meta_unet(config))
    cost = CostModel(config)
    limit = 0.5 * cost.params(Plan())
    seeds = seed_plans(topo, lambda p: cost.params(p), limit, {}, lambda _n: True)
    assert {"bk", "ssd", "vega"} <= set(seeds)
    assert all(cost.params(p) <= limit for p in seeds.values())
    assert "mid_block.attentions.0" in seeds["ssd"].removed or "mid_block" in seeds["ssd"].removed


@pytest.mark.slow
def test_a_short_search_writes_its_front_and_resumes(
    tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        "search",
        "--teacher",
        tiny_sdxl_pipeline,
        "--data",
        str(tiny_cache),
        "--budget",
        "50%",
        "--trials",
        "4",
        "--proxy-steps",
        "2",
        "--calibration",
        "16",
        "--storage",
        storage,
        "--study",
        "t",
        "--out",
        str(tmp_path / "r"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "noise floor: trial" in result.output  # a bar after the trials' 100%, not a silence
    said = result.output
    assert f"pruner front {storage};" in said and "pip install 'pruner[dashboard]'" in said, said[-600:]
    monkeypatch.chdir(tmp_path)  # where the default plot goes: not into the checkout
    by_url = runner.invoke(app, ["front", storage])  # the URL the search printed is enough
    assert by_url.exit_code == 0 and "Pareto front of t" in by_url.stdout, by_url.output
    assert (tmp_path / "search" / "runs" / "t-front.png").is_file()  # the default plot, beside the user's runs
    assert max(len(line) for line in by_url.stdout.splitlines()) <= 120
    found = load_recipe(tmp_path / "r" / "found.yaml")
    resolved = resolve_recipe(found, "found.yaml")
    assert found.provenance.source == "search" and found.distill.data == str(tiny_cache)
    assert found.student is not None and found.student.params is not None
    assert found.student.params <= 0.5 * 10_140_868
    assert list((tmp_path / "r" / "front").glob("*.yaml")) and (tmp_path / "r" / "front.png").is_file()
    assert resolved.plan == found.plan_obj()
    study = optuna.load_study(study_name="t", storage=storage)
    finished = [t for t in study.trials if counted(t)]  # a repeated plan steps aside and does not count
    assert len(finished) == 4
    labelled = [t for t in study.trials if t.user_attrs.get("label")]
    assert labelled and all(
        {"params", "macs", "removed"} <= set(t.user_attrs) for t in study.trials if t.state.name == "COMPLETE"
    )
    shown = runner.invoke(app, ["front", "t", "--storage", storage, "--export", str(tmp_path / "again")])
    assert shown.exit_code == 0, shown.output
    assert "Pareto front of t" in shown.stdout and (tmp_path / "again" / "found.yaml").is_file()
    assert load_recipe(tmp_path / "again" / "found.yaml").plan_obj() == found.plan_obj()
    dashboard = {"params", "macs", "proxy_kd", "zero_shot_kd", "removed"}
    assert all(dashboard <= set(t.user_attrs) for t in finished if t.state.name == "COMPLETE")
    other_rows = runner.invoke(app, [*args[:12], "8", *args[13:]])  # --calibration 8: plans scored on other rows
    assert other_rows.exit_code == 2 and "created with calibration 16, not 8" in " ".join(other_rows.output.split())

    def no_sensitivity(*_a: object, **_k: object) -> None:
        raise AssertionError("the study's recorded sensitivities were measured again")

    with monkeypatch.context() as m:  # a resumed (or joining) run takes the study's unit sensitivities
        m.setattr("pruner.study.context.unit_sensitivity", no_sensitivity)
        again = runner.invoke(app, [*args[:8], "6", *args[9:]])  # --trials 6: two more
    assert again.exit_code == 0, again.output
    assert sum(counted(t) for t in optuna.load_study(study_name="t", storage=storage).trials) == 6

    def no_compute(*_a: object, **_k: object) -> None:
        raise AssertionError("a finished study was computed again")

    monkeypatch.setattr("pruner.study.study.build_context", no_compute)
    six = load_recipe(tmp_path / "r" / "found.yaml").plan_obj()
    (tmp_path / "r" / "found.yaml").unlink()
    rerun = runner.invoke(app, [*args[:8], "6", *args[9:]])  # the same command once more: nothing left to do
    assert rerun.exit_code == 0, rerun.output
    assert "nothing to compute" in " ".join(rerun.output.split())
    assert load_recipe(tmp_path / "r" / "found.yaml").plan_obj() == six  # written again, from the study alone


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ("100%", "nothing to remove"),
        ("0.1%", "smallest student"),
        ("12X", "budget"),
        ("latency=100%", "nothing to remove"),
        ("latency=0.01ms", "ms, "),
    ],
)
def test_unreachable_or_bad_budgets_get_one_line(
    tiny_sdxl_pipeline: str, tiny_cache: Path, budget: str, message: str, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "search",
            "--teacher",
            tiny_sdxl_pipeline,
            "--data",
            str(tiny_cache),
            "--budget",
            budget,
            "--storage",
            f"sqlite:///{tmp_path / 's.db'}",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("timing the teacher")]
    assert len(lines) == 1 and message in lines[0]  # one line (after the status of a latency budget's timing)


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(
    tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path
) -> None:
    import collections
    import os
    import subprocess
    import sys

    storage = f"journal:{tmp_path / 'study.log'}"
    cmd = [sys.executable, "-m", "pruner", "search", "--teacher", tiny_sdxl_pipeline, "--data", str(tiny_cache),
           "--budget", "50%", "--trials", "8", "--proxy-steps", "1", "--calibration", "12", "--storage", storage,
           "--study", "shared"]  # fmt: skip
    env = {**os.environ, "PRUNER_THREADS": "1"}
    workers = [subprocess.Popen([*cmd, "--out", str(tmp_path / f"out{k}")], env=env, stderr=subprocess.PIPE, text=True)
               for k in range(2)]  # fmt: skip
    for w in workers:
        assert w.wait(timeout=600) == 0, w.stderr.read()[-2000:] if w.stderr else ""
    from pruner.study.study import storage_of

    study = optuna.load_study(study_name="shared", storage=storage_of(storage))
    assert sum(counted(t) for t in study.trials) == 8  # exactly: a trial beyond the count steps aside
    keys = collections.Counter(t.user_attrs["plan_key"] for t in study.trials if t.state.name == "COMPLETE")
    assert keys and max(keys.values()) == 1  # no plan scored twice
    labels = collections.Counter(t.user_attrs.get("label") for t in study.trials if t.user_attrs.get("label"))
    assert labels and max(labels.values()) == 1


def test_width_genes_decode_into_plan_widths_and_back() -> None:
    topo = topology_of(meta_unet(architecture_config("tiny-sdxl")))
    space = SearchSpace(select="first", width=True)
    plan = Plan.removing(["down_blocks.2.attentions.1.transformer_blocks.3-5"], {1: 0.5, 2: 0.25})
    genome = genome_of(plan, space, topo)
    assert genome["width:1"] == 0.5 and genome["width:2"] == 0.25
    assert decode(genome, space, topo, {}) == plan
    assert "width:1" not in genome_of(plan, SearchSpace(), topo)  # off by default


def test_repair_keeps_the_widths_it_was_given() -> None:
    config = architecture_config("tiny-sdxl")
    topo = topology_of(meta_unet(config))
    cost = CostModel(config)
    narrow = Plan(ff_keep=((1, 0.25), (2, 0.25)))
    limit = 0.5 * cost.params(Plan())
    plan = repair_to_budget(narrow, topo, lambda p: cost.params(p), limit, {})
    assert plan is not None and plan.ff_keep == narrow.ff_keep and cost.params(plan) <= limit
    depth_only = repair_to_budget(Plan(), topo, lambda p: cost.params(p), limit, {})
    assert depth_only is not None and len(plan.removed) < len(depth_only.removed)  # narrower keeps more layers


@pytest.mark.slow
def test_a_depth_width_search_writes_width_recipes(tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path) -> None:
    args = ["search", "--teacher", tiny_sdxl_pipeline, "--data", str(tiny_cache), "--budget", "40%",
            "--trials", "8", "--proxy-steps", "1", "--calibration", "16", "--space", "depth-width",
            "--sampler", "nsga2", "--storage", f"sqlite:///{tmp_path / 'w.db'}", "--study", "w",
            "--out", str(tmp_path / "r")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'w.db'}")
    done = [t for t in study.trials if counted(t)]  # complete, or stopped at a rung: each scored its plan
    assert any(t.user_attrs["ff_keep"] for t in done), "some trial should narrow a level"
    assert all(t.params.keys() >= {"width:1", "width:2"} for t in study.trials)
    assert all(t.user_attrs["params"] <= 0.4 * 10_140_868 for t in done)
    for path in (tmp_path / "r" / "front").glob("*.yaml"):
        recipe = load_recipe(path)
        resolved = resolve_recipe(recipe, str(path))
        assert resolved.plan == recipe.plan_obj()
        assert bool(recipe.plan.width) == bool(resolved.plan.ff_keep)
        assert recipe.student is not None and recipe.student.params == CostModel(resolved.teacher_config).params(
            resolved.plan
        )


def test_a_seed_plan_enqueued_by_two_workers_runs_once() -> None:
    from pruner.study.study import _skip_duplicate_seed

    study = optuna.create_study()
    for _ in range(2):  # what two workers starting together can leave behind
        study.enqueue_trial({"x": 0.0}, user_attrs={"label": "vega"})

    def objective(trial: optuna.Trial) -> float:
        _skip_duplicate_seed(trial)
        return trial.suggest_float("x", 0.0, 1.0)

    study.optimize(objective, n_trials=3)
    assert [t.user_attrs.get("label") for t in study.trials] == ["vega", None, None]
    assert [t.state for t in study.trials[:2]] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert study.trials[1].user_attrs["duplicate_of"] == 0


@pytest.mark.slow
def test_a_latency_budget_keeps_every_trial_under_its_estimate(
    tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'lat.db'}"
    result = runner.invoke(app, ["search", "--teacher", tiny_sdxl_pipeline, "--data", str(tiny_cache), "--budget",
                                 "latency=60%", "--trials", "3", "--proxy-steps", "1", "--calibration", "8",
                                 "--storage", storage, "--study", "lat", "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="lat", storage=storage)
    settings = study.user_attrs["search"]
    assert settings["budget"] == "60% of the teacher's latency"
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.user_attrs["latency_ms"] > 0 for t in done)
    estimates = [t.user_attrs["latency_estimate_ms"] for t in done]
    from pruner.study.front import constraint_values

    assert all(len(constraint_values(t)) == 1 and constraint_values(t)[0] <= 0 for t in done)  # within the estimate
    found = load_recipe(tmp_path / "r" / "found.yaml")
    assert found.provenance.costs is not None and found.provenance.costs["latency_ms"] > 0 and min(estimates) > 0


def _rung_trial(study: optuna.Study, kd: dict[str, float], macs: int = 100) -> None:
    study.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"rung_kd": kd, "macs": macs})
    )


def test_a_plan_goes_on_only_among_the_best_of_its_rung() -> None:
    from pruner.study.rungs import promote

    study = optuna.create_study(directions=["minimize", "minimize"])
    for kd in (0.1, 0.2, 0.3, 0.4, 0.5):
        _rung_trial(study, {"0": kd})
    _rung_trial(study, {"0": 0.0001}, macs=1000)  # far cheaper or dearer plans do not compete
    good, bad, seed = study.ask(), study.ask(), study.ask()
    for trial in (good, bad, seed):
        trial.set_user_attr("macs", 100)
    promote(good, 0, 0, 0.25, 100, seeded=False)  # 3rd of 6: the better half goes on
    with pytest.raises(optuna.TrialPruned):
        promote(bad, 0, 0, 0.45, 100, seeded=False)  # 5th of 6
    promote(seed, 0, 0, 0.9, 100, seeded=True)  # a labelled seed always gets a trained score
    assert bad.study.get_trials()[bad.number].user_attrs["stopped_at"] == 0
    for kd in (0.01, 0.02):
        _rung_trial(study, {"0": 0.1, "30": kd})
    with pytest.raises(optuna.TrialPruned):
        promote(good, 1, 30, 0.015, 100, seeded=False)  # 2nd of 3 at rung 1: only the best third goes on


@pytest.mark.slow
def test_rungs_score_every_plan_zero_shot_and_the_best_longer(
    tiny_sdxl_pipeline: str, tiny_cache: Path, tmp_path: Path
) -> None:
    import pruner
    from pruner.study.front import best_quality_trial

    # 10 training rows, 16 a step: every row order is the same single batch, so the repeats noise the training
    # rows afresh (Calibration.renoised), and the noise floor and the found plan's choice see a real spread
    # anchored on the sensitivity seed's refill (an option): both one-shot seeds reach the top rung
    result = pruner.search(tiny_sdxl_pipeline, "50%", data=tiny_cache, trials=10, proxy_steps=2, top_steps=4,
                           calibration=12, held_out=16, anchor="sensitivity-refilled")  # fmt: skip
    study = result.study
    finished = [t for t in study.trials if counted(t)]
    assert len(finished) == 10
    for t in finished:
        scores = t.user_attrs["rung_kd"]
        assert "0" in scores
        if t.state.name == "COMPLETE":
            assert sorted(scores, key=int) == ["0", "2", "4"] and t.user_attrs["proxy_kd"] == scores["4"]
        else:
            assert t.user_attrs["stopped_at"] == int(max(scores, key=int))
    reached = [sum(str(s) in t.user_attrs["rung_kd"] for t in finished) for s in (0, 2, 4)]
    assert reached[0] == 10 and reached[0] >= reached[1] >= reached[2] >= 1
    seeds = [t for t in finished if t.user_attrs.get("label")]
    assert all("2" in t.user_attrs["rung_kd"] for t in seeds)  # every baseline gets a trained score
    anchor = study.user_attrs["anchor"]  # the refilled sensitivity seed where the sensitivity seed empties a module
    labels = [t.user_attrs["label"] for t in seeds]
    assert anchor == ANCHORS[0] and labels[:2] == list(ANCHORS)  # the refill first (the bar to beat), then its seed
    one_shot = [t for t in seeds if t.user_attrs["label"] in ANCHORS]  # the anchor and the sensitivity seed
    assert one_shot and all(t.state.name == "COMPLETE" for t in one_shot)  # both reach the top rung
    best = best_quality_trial(study)
    assert best is not None
    floor = study.user_attrs["noise_floor"]
    assert floor["trial"] == best.number and len(floor["kd"]) == 3 and floor["steps"] == 4
    assert floor["kd"][0] == best.user_attrs["proxy_kd"]
    assert len(set(floor["kd"])) == 3  # other row orders, other scores: the spread is real
    assert study.user_attrs["search"]["schedule"] == AFRESH  # a new study: each rung from the fresh student
    made = study.user_attrs["found_choice"]  # which plan found.yaml names, and why
    assert made["candidate"] == best.number and made["candidate_kd"] == floor["kd"]
    assert made["chosen"] in (best.number, seeds[0].number) and result.found.provenance.trial == made["chosen"]
    assert result.found.provenance.choice == made["reason"]
    if best.number != seeds[0].number and made["paired"]:
        assert len(made["seed_kd"]) == 3 and made["seed_kd"][0] == seeds[0].user_attrs["proxy_kd"]
        decided = made.get("confirm", made)  # a lead too close to call is decided by the confirmation's scores
        needed = decided.get("min_lead", MIN_LEAD)  # a clear lead must also be a fifth, 8% after a confirmation
        big = decided["lead"] >= needed * sum(decided["seed_kd"]) / 3
        assert (made["chosen"] == best.number) == (decided["lead"] > 2 * decided["se"] and big)
        lead, base = Lead(made["lead"], made["se"], 3, True), sum(made["seed_kd"]) / 3
        assert ("confirm" in made) == (not settled(lead, base, confirm_share=defaults.CONFIRM_LEAD))


def _tiny_calibration(pipeline: str, cache: Path) -> tuple[UNet2DConditionModel, Topology, Calibration]:
    """The tiny teacher, its topology and a calibration set of 8 + 8 rows from the tiny cache."""
    from pruner.data.cache import LatentCache
    from pruner.diffusion import sdxl_scheduler
    from pruner.study.proxy import build_calibration
    from pruner.unet.load import load_unet

    teacher = load_unet(pipeline)
    topo = topology_of(teacher)
    calib = build_calibration(teacher, LatentCache(cache), topo, n_train=8, n_held_out=8, level="sub_block",
                              scheduler=sdxl_scheduler())  # fmt: skip
    return teacher, topo, calib


def test_proxy_scores_use_common_random_numbers(tiny_sdxl_pipeline: str, tiny_cache: Path) -> None:
    import torch

    from pruner.study.proxy import ProxyRun

    teacher, topo, calib = _tiny_calibration(tiny_sdxl_pipeline, tiny_cache)
    plan = Plan.removing(["mid_block.attentions.0"])

    def score(seed: int) -> float:
        with ProxyRun(teacher, plan, topo, calib, batch=4, seed=seed) as run:
            return run.train_to(3)

    assert score(0) == score(0)  # the same plan scores the same: rows, order, noise and init are fixed
    assert score(0) != score(1)  # another row order moves it: what the noise floor measures

    def one_batch(seed: int, on: Calibration) -> float:  # all 8 training rows in each step of 16
        with ProxyRun(teacher, plan, topo, on, batch=16, seed=seed) as run:
            return run.train_to(3)

    assert one_batch(1, calib) == pytest.approx(one_batch(0, calib), rel=1e-5)  # another order: the same batch
    fresh = calib.renoised(teacher, 1)
    assert torch.equal(fresh.teacher_pred[fresh.held_out], calib.teacher_pred[calib.held_out])  # scored alike
    assert not torch.equal(fresh.inputs.noise[:8], calib.inputs.noise[:8])
    assert one_batch(1, fresh) != pytest.approx(one_batch(0, calib), rel=1e-3)  # the training rows noised afresh


def test_a_restarted_run_trains_the_fresh_student(tiny_sdxl_pipeline: str, tiny_cache: Path) -> None:
    """After a restart the run is the freshly built student again: the top rung, trained afresh, scores what
    one cosine segment over its steps gives; continuing from the first rung (a warm restart) scores otherwise."""
    from pruner.study.proxy import ProxyRun

    teacher, topo, calib = _tiny_calibration(tiny_sdxl_pipeline, tiny_cache)
    plan = Plan.removing(["mid_block.attentions.0"])

    def score(restart: bool) -> float:
        with ProxyRun(teacher, plan, topo, calib, batch=4) as run:
            run.train_to(2)
            if restart:
                run.restart()
                assert run.steps == 0 and run.held_out() == pytest.approx(zero_shot, rel=1e-5)
            return run.train_to(6)

    with ProxyRun(teacher, plan, topo, calib, batch=4) as run:
        zero_shot = run.held_out()
        straight = run.train_to(6)
    assert score(restart=True) == pytest.approx(straight, rel=1e-5)  # the first rung left no trace
    assert score(restart=False) != pytest.approx(straight, rel=1e-3)  # continued: the warm restart shows


def test_a_study_keeps_the_rung_schedule_it_was_scored_with() -> None:
    """A new study trains each rung afresh; a study that recorded no schedule (made before) goes on
    continuing each rung from the one below, so its old and new trials compare."""
    from pruner.study.context import CONTINUED
    from pruner.study.study import proxy_schedule

    study = optuna.create_study()
    assert proxy_schedule(study) == AFRESH
    study.set_user_attr("search", {"rungs": [0, 30, 100]})
    assert proxy_schedule(study) == CONTINUED
    study.set_user_attr("search", {"rungs": [0, 30, 100], "schedule": AFRESH})
    assert proxy_schedule(study) == AFRESH


def test_with_no_device_flag_the_search_runs_on_the_gpu_when_there_is_one(
    tiny_sdxl_pipeline: str, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`pruner search` with no --device on a machine with a GPU puts the teacher and calibration there (the GPU
    is faked: this machine has none, so the search stops where it would start loading); a caller's model is
    searched where it lives, and a missing GPU that is named is one line."""
    import torch

    from pruner.errors import PrunerError
    from pruner.study import study as study_mod
    from pruner.teacher import Teacher
    from pruner.unet.load import load_unet

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.zeros(8, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: None)
    where: list[torch.device] = []

    def stop_at_the_load(cfg: study_mod.SearchConfig, teacher: Teacher, *_args: object, **_kw: object) -> None:
        where.append(study_mod.search_device(cfg, teacher))
        raise PrunerError("stopped before loading the teacher")

    monkeypatch.setattr(study_mod, "build_context", stop_at_the_load)
    args = ["search", "--teacher", tiny_sdxl_pipeline, "--data", str(tiny_cache), "--budget", "50%", "--trials", "2"]
    result = runner.invoke(app, [*args, "--storage", f"sqlite:///{tmp_path / 'a.db'}"])
    assert result.exit_code == 2 and "stopped before loading" in result.output, result.output
    assert where == [torch.device("cuda")]

    model = load_unet(tiny_sdxl_pipeline)
    assert study_mod.search_device(study_mod.SearchConfig(), Teacher.resolve(model)) == torch.device("cpu")
    result = runner.invoke(app, [*args, "--device", "cuda:1", "--storage", f"sqlite:///{tmp_path / 'b.db'}"])
    assert result.exit_code == 2 and "device cuda:1 is not available" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_confirmation_calibration_draws_more_training_rows_from_the_same_data(
    tiny_sdxl_pipeline: str, tiny_cache: Path
) -> None:
    """``with_calibration`` builds (once) the calibration a confirmation on more rows trains on: more training
    rows from the search's own data (noised from its seed), as many held-out rows, the teacher's features on
    each training row."""
    from pruner.budget import parse_budget
    from pruner.study.config import SearchConfig
    from pruner.study.context import build_context
    from pruner.teacher import Teacher

    cfg = SearchConfig(budget="50%", data=str(tiny_cache), calibration=8, held_out=8, progress=False, out=None)
    ctx = build_context(cfg, Teacher.resolve(tiny_sdxl_pipeline), parse_budget("50%"))
    assert ctx.with_calibration(8) is ctx  # the search's own rows: nothing built
    more = ctx.with_calibration(14)
    assert more.calib.n_train == 14 and len(more.calib.held_out) == 8 and ctx.calib.n_train == 8
    assert all(len(f) == 14 for f in more.calib.teacher_features.values())
    assert ctx.with_calibration(14).calib is more.calib  # built once
    assert more.teacher is ctx.teacher and more.sens == ctx.sens  # nothing else rebuilt
