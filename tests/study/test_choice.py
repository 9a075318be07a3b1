"""Which plan found.yaml names: a sampled plan over the sensitivity seed only when its lead is clear of the noise.

The rule on fixed scores (no training): the paired lead, the screen, the choice a study records, the found
trial and recipe that follow from it, and the front's ties.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace
from typing import Any, cast

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from pruner.recipe import Recipe
from pruner.study import choice
from pruner.study.choice import choose_found, paired_lead, screened_lead, tie_margin
from pruner.study.config import SearchConfig
from pruner.study.context import AFRESH, CONTINUED, SearchContext
from pruner.study.front import found_trial, front_recipes, front_rows, tied_trials
from pruner.study.heuristics import REFILLED, SENSITIVITY
from pruner.unet import Plan

FORKS = pytest.mark.skipif(sys.platform != "linux", reason="the background scorer forks: Linux only, as the search")

optuna.logging.set_verbosity(optuna.logging.WARNING)
SEED_PLAN = ["down_blocks.2.attentions.0.transformer_blocks.0-9"]
SAMPLED_PLAN = ["down_blocks.2.attentions.1.transformer_blocks.0-9"]


@pytest.fixture(autouse=True)
def _workers_as_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repeats run on as many processes as ``repeat_workers`` says (one: in this process, where the fixed
    scorers record what ran), none added as cores free (that growth: tests/test_runtime.py)."""
    monkeypatch.setattr(choice, "repeat_room", lambda _ctx: None)


def test_a_lead_within_twice_its_standard_error_is_not_clear() -> None:
    lead = paired_lead([0.00200, 0.00210, 0.00195], [0.00201, 0.00205, 0.00204])  # 1% ahead, 2% apart between orders
    assert lead.paired and lead.orders == 3 and lead.mean > 0 and not lead.clear


def test_a_lead_many_standard_errors_wide_is_clear() -> None:
    lead = paired_lead([0.00150, 0.00160, 0.00155], [0.00200, 0.00212, 0.00203])  # 30% ahead at every order
    assert lead.clear and lead.mean == pytest.approx(0.0005, rel=0.05)


def test_a_lead_whose_error_is_unmeasured_is_never_clear() -> None:
    assert not paired_lead([0.001], [0.002]).clear  # one order: no standard error
    assert not paired_lead([0.001, 0.001], [0.002, 0.002]).clear  # the repeats did not vary: no measure of noise
    assert not paired_lead([0.002, 0.003, 0.0025], [0.001, 0.002, 0.0015]).clear  # behind: never clear
    with pytest.raises(ValueError, match="same row orders"):
        paired_lead([0.001, 0.002], [0.002])


def test_the_screen_bounds_the_error_by_the_candidates_own_spread() -> None:
    assert screened_lead([0.0010, 0.00102, 0.00098], 0.0016).clear  # 60% ahead, 2% spread: clear at once
    close = screened_lead([0.0020, 0.0021, 0.0019], 0.00205)
    assert not close.paired and close.se == pytest.approx(2 * 0.0001) and not close.clear


def test_the_tie_margin_is_twice_the_spread_of_a_one_order_gap() -> None:
    assert tie_margin([0.002, 0.002]) is None  # nothing varied: no margin
    assert tie_margin([0.001]) is None
    unpaired = tie_margin([0.0019, 0.0020, 0.0021])
    assert unpaired == pytest.approx(2 * 2 * 0.0001 / 0.002)
    paired = tie_margin([0.0019, 0.0020, 0.0021], [0.00195, 0.00204, 0.00216])  # the orders move both alike
    assert paired is not None and unpaired is not None and paired < unpaired / 5


def _trial(kd: float, removed: list[str], label: str | None = None, macs: float = 100.0) -> optuna.trial.FrozenTrial:
    attrs = {"removed": removed, "ff_keep": {}, "proxy_kd": kd, "rung_kd": {"0": 3 * kd, "100": kd},
             "rung_steps": 100, "macs": macs, "params": 10, "label": label}  # fmt: skip
    return create_trial(state=TrialState.COMPLETE, values=[kd, macs], user_attrs=attrs)


def _study(seed_kd: float, sampled_kd: float) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trials([_trial(seed_kd, SEED_PLAN, "sensitivity", macs=90.0), _trial(0.01, [], "bk", macs=150.0),
                      _trial(sampled_kd, SAMPLED_PLAN)])  # fmt: skip
    return study


def _choose(study: optuna.Study, scores: dict[Any, float], monkeypatch: pytest.MonkeyPatch, **cfg: Any) -> Any:
    """Run the choice with the repeats' scores fixed: ``scores[plan, seed]`` at the top rung (plan 'seed' or
    'sampled') and ``scores[plan, seed, 'straight']`` for the confirmation; ``ran`` lists what was scored."""
    ran: list[tuple[Any, ...]] = []

    def fixed(key: Any) -> Any:
        def score(_ctx: SearchContext, plan: Plan, seed: int, steps: int) -> float:
            assert steps == 100
            which = "seed" if plan == Plan.removing(SEED_PLAN) else "sampled"
            ran.append((which, seed, *key))
            return scores[(which, seed, *key)]

        return score

    monkeypatch.setattr(choice, "top_rung_kd", fixed(()))
    monkeypatch.setattr(choice, "straight_kd", fixed(("straight",)))
    monkeypatch.setattr(choice, "repeat_workers", lambda _ctx, _jobs: 1)  # in this process: ``ran`` sees them
    floor = choice.noise_floor(study, _ctx(**cfg))
    return choose_found(study, _ctx(**cfg), floor), ran


def _ctx(afresh: bool = False, **cfg: Any) -> SearchContext:
    """A context whose rungs continue (as studies recorded before rungs trained afresh), unless ``afresh``."""
    calib = SimpleNamespace(device=torch.device("cpu"), n_train=96)
    config = SearchConfig(progress=False, noise_seeds=2, **cfg)

    def with_calibration(rows: int) -> SimpleNamespace:
        return SimpleNamespace(cfg=config, calib=SimpleNamespace(device=calib.device, n_train=rows), afresh=afresh)

    ctx = SimpleNamespace(cfg=config, calib=calib, afresh=afresh, with_calibration=with_calibration)
    ctx.quietly = lambda: ctx
    return cast(SearchContext, ctx)


def _made_side_by_side(study: optuna.Study, scores: dict[tuple[str, int], float], workers: int,
                       monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any] | None, choice.Repeats]:  # fmt: skip
    """The choice with the repeats scored up front, by ``workers`` processes (forked ones from two)."""

    def fixed(_ctx: SearchContext, plan: Plan, seed: int, steps: int) -> float:
        return scores["seed" if plan == Plan.removing(SEED_PLAN) else "sampled", seed]

    monkeypatch.setattr(choice, "top_rung_kd", fixed)
    monkeypatch.setattr(choice, "repeat_workers", lambda _ctx, jobs: min(workers, jobs))
    scored = choice.prescore_repeats(study, _ctx())
    floor = choice.noise_floor(study, _ctx(), scored)
    return choose_found(study, _ctx(), floor, scored=scored), scored


def test_repeats_scored_side_by_side_make_the_same_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where cores allow, the noise floor's repeats and the seed's are scored at once in forked processes
    (the found-plan rule then costs no wall time over the noise floor); the choice is the one made in order."""
    scores = {("sampled", 1): 0.00240, ("sampled", 2): 0.00205, ("seed", 1): 0.00255, ("seed", 2): 0.00218}
    forked, scored = _made_side_by_side(_study(seed_kd=0.00233, sampled_kd=0.00220), scores, 2, monkeypatch)
    assert scored == {2: [0.00220, 0.00240, 0.00205], 0: [0.00233, 0.00255, 0.00218]}  # each trial its own
    one_by_one, _ = _choose(_study(seed_kd=0.00233, sampled_kd=0.00220), scores, monkeypatch)
    assert forked == one_by_one and forked is not None and forked["chosen"] == 0 and forked["paired"]
    serial, nothing = _made_side_by_side(_study(seed_kd=0.00233, sampled_kd=0.00220), scores, 1, monkeypatch)
    assert nothing == {} and serial == one_by_one  # one core: nothing up front, each scored when needed


def test_the_study_names_the_seed_when_the_sampled_plans_lead_is_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(seed_kd=0.00201, sampled_kd=0.00200)  # the 30% benchmark's seed 0: 0.5% ahead
    scores = {("sampled", 1): 0.00212, ("sampled", 2): 0.00190, ("seed", 1): 0.00210, ("seed", 2): 0.00193}
    made, ran = _choose(study, scores, monkeypatch)
    assert sorted(ran) == [("sampled", 1), ("sampled", 2), ("seed", 1), ("seed", 2)]  # same orders for both
    assert made["candidate"] == 2 and made["seed"] == 0 and made["chosen"] == 0 and made["paired"]
    assert made["seed_kd"] == [0.00201, 0.00210, 0.00193] and "names the seed" in made["reason"]
    assert study.user_attrs["found_choice"] == made
    assert found_trial(study).number == 0  # type: ignore[union-attr]
    found, front = front_recipes(study, _recipe)
    assert found.provenance.trial == 0 and found.provenance.choice == made["reason"]
    assert list(front) == [0, 2] and front[0].provenance.ties == [2] and front[2].provenance.ties == [0]
    assert [r["ties"] for r in front_rows(study)] == [[2], [0]]  # 0.5% apart: within the noise, a tie
    assert tied_trials(study, study.trials[1:]) == {1: [], 2: []}  # the BK plan is 5x worse: no tie
    assert choice.recorded_choice(study, study.trials[2]) == made  # a rerun finds it made


def _refilled_study(refilled_kd: float, sensitivity_kd: float, sampled_kd: float) -> optuna.Study:
    """A study that enqueued the refilled sensitivity seed first (its anchor), then the sensitivity seed."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_user_attr("anchor", REFILLED)
    study.add_trials([_trial(refilled_kd, SEED_PLAN, REFILLED), _trial(sensitivity_kd, ["mid_block"], SENSITIVITY),
                      _trial(0.01, [], "bk", macs=150.0), _trial(sampled_kd, SAMPLED_PLAN)])  # fmt: skip
    return study


def test_the_anchor_is_the_seed_the_study_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A study that enqueued the refilled sensitivity seed first records it as its anchor: the bar, and what
    found.yaml falls back to; a study that recorded no anchor (made before) falls back to the sensitivity seed."""
    study = _refilled_study(refilled_kd=0.00201, sensitivity_kd=0.00230, sampled_kd=0.00200)
    assert choice.anchor_label(study) == REFILLED
    scores = {("sampled", 1): 0.00212, ("sampled", 2): 0.00190, ("seed", 1): 0.00210, ("seed", 2): 0.00193}
    made, _ = _choose(study, scores, monkeypatch)
    assert made["candidate"] == 3 and made["seed"] == 0 and made["chosen"] == 0  # the refilled seed: noise
    assert f"leads the {REFILLED} seed (trial 0)" in made["reason"] and "names the seed" in made["reason"]
    assert found_trial(study).number == 0  # type: ignore[union-attr]
    assert choice.anchor_label(_study(seed_kd=0.00201, sampled_kd=0.00200)) == SENSITIVITY


def test_the_sensitivity_seed_is_never_named_over_its_own_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short KD reads the returned layer as a loss (30% of the bundled teacher: the sensitivity seed led its
    refill by +26% at the top rung at one search seed, and ended 1.11x behind it distilled in full), so a lead of
    the sensitivity seed over the refilled anchor, however clear, names the anchor without scoring anything."""
    study = _refilled_study(refilled_kd=0.00277, sensitivity_kd=0.00150, sampled_kd=0.00290)  # 46% ahead
    scores = {("sampled", 1): 0.00151, ("sampled", 2): 0.00152}  # the sensitivity seed's repeats: the floor
    made, ran = _choose(study, scores, monkeypatch)
    assert ran == [("sampled", 1), ("sampled", 2)]  # the noise floor only: the anchor is not scored again
    assert made["candidate"] == 1 and made["chosen"] == 0 and "where full distillation read a gain" in made["reason"]
    assert found_trial(study).number == 0  # type: ignore[union-attr]
    assert choice.refill_of(study.trials[1], study.trials[0]) and not choice.refill_of(study.trials[3], study.trials[0])
    assert [t.number for t in choice.runners_up(study, study.trials[0], 100, set(), 3)] == [3]  # nor a runner-up


def test_the_study_names_the_sampled_plan_when_its_lead_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(seed_kd=0.00143, sampled_kd=0.00089)  # the 50% benchmark's seed 0: 60% ahead
    scores = {("sampled", 1): 0.00091, ("sampled", 2): 0.00090}
    made, ran = _choose(study, scores, monkeypatch)
    assert ran == [("sampled", 1), ("sampled", 2)]  # clear against the screen's bound: the seed is not run again
    assert made["chosen"] == 2 and not made["paired"] and "names trial 2" in made["reason"]
    assert found_trial(study).number == 2  # type: ignore[union-attr]
    assert front_recipes(study, _recipe)[0].provenance.trial == 2


def test_a_clear_but_small_lead_names_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lead that holds at every order but is under MIN_LEAD of the seed's score is the proxy's error: the
    oracle benchmark's 30% plan that led by 12.4% ± 4.7% ended 7% behind the seed after 1000 steps."""
    study = _study(seed_kd=0.00233, sampled_kd=0.00220)  # the 30% benchmark's seed 1: 6% ahead, within the screen
    scores = {("sampled", 1): 0.00240, ("sampled", 2): 0.00205, ("seed", 1): 0.00255, ("seed", 2): 0.00218}
    made, _ran = _choose(study, scores, monkeypatch)
    assert made["paired"] and made["lead"] == pytest.approx(0.00013, rel=0.1) and made["se"] < made["lead"] / 2
    assert made["chosen"] == 0 and "clear, but under 20% of the seed's score" in made["reason"], made["reason"]
    assert not math.isnan(made["tie_margin"])


def test_a_clear_lead_of_a_fifth_or_more_at_every_order_names_the_sampled_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = _study(seed_kd=0.00233, sampled_kd=0.00180)  # 23% ahead at the search's order, within the screen
    scores = {("sampled", 1): 0.00230, ("sampled", 2): 0.00150, ("seed", 1): 0.00290, ("seed", 2): 0.00195}
    made, _ran = _choose(study, scores, monkeypatch)
    assert made["paired"] and made["lead"] >= choice.MIN_LEAD * (0.00233 + 0.00290 + 0.00195) / 3
    assert made["chosen"] == 2 and "names trial 2" in made["reason"], made["reason"]


# The 50% oracle benchmark's default search at seed 0: its trial 12 (a plan of the class that ended 1.34-1.45x
# better than the seed after 1000 steps) led at the search's row order by 42%, and another order scored it
# more than twice as far from the teacher: +7.1% ± 26.9% over three orders, too noisy to settle either way.
NOISY = {("sampled", 1): 0.00104, ("sampled", 2): 0.00177, ("seed", 1): 0.00134, ("seed", 2): 0.00119}


def test_settled_means_clear_and_a_fifth_or_surely_under_a_fifth() -> None:
    base = 0.001
    assert choice.settled(choice.Lead(0.0003, 0.00005, 3, True), base)  # clear, 30%: the candidate
    assert choice.settled(choice.Lead(0.00002, 0.00003, 3, True), base)  # at most 8% at 2 SE: the seed
    assert choice.settled(choice.Lead(-0.0001, 0.00002, 3, True), base)  # behind: the seed
    assert not choice.settled(choice.Lead(0.00007, 0.00027, 3, True), base)  # +7% ± 27%: could be either
    assert not choice.settled(choice.Lead(0.00015, 0.00004, 3, True), base)  # clear, 15%, could reach 23%
    assert not choice.settled(choice.Lead(0.0001, math.nan, 1, False), base)  # error unmeasured


def test_a_lead_too_noisy_to_call_is_decided_by_a_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both plans are trained again (one cosine segment) under three orders other than the one the candidate
    was picked on, and the rule decides on those scores."""
    longer = {("sampled", k, "straight"): kd for k, kd in ((1, 0.00100), (2, 0.00098), (3, 0.00106))}
    longer |= {("seed", k, "straight"): kd for k, kd in ((1, 0.00140), (2, 0.00135), (3, 0.00146))}
    study = _study(seed_kd=0.00131, sampled_kd=0.00076)
    made, ran = _choose(study, NOISY | longer, monkeypatch)
    assert sorted(k for k in ran if len(k) == 3) == sorted(longer)  # fresh orders 1-3, never the search's 0
    assert made["confirm"]["steps"] == 100 and made["confirm"]["seed_kd"] == [0.00140, 0.00135, 0.00146]
    assert made["confirm"]["lead"] == pytest.approx(0.00039, rel=0.01)
    assert "after 100 steps in one segment" in made["reason"] and "names trial 2" in made["reason"]
    assert made["chosen"] == 2, made["reason"]
    assert made["lead"] == pytest.approx(0.00009, rel=0.01)  # the top rung's lead stays on record
    assert found_trial(study).number == 2  # type: ignore[union-attr]


def test_a_confirmation_that_still_cannot_tell_names_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    longer = {("sampled", k, "straight"): kd for k, kd in ((1, 0.00120), (2, 0.00150), (3, 0.00110))}
    longer |= {("seed", k, "straight"): kd for k, kd in ((1, 0.00140), (2, 0.00135), (3, 0.00146))}
    made, _ran = _choose(_study(seed_kd=0.00131, sampled_kd=0.00076), NOISY | longer, monkeypatch)
    assert made["chosen"] == 0 and "in one segment" in made["reason"] and "names the seed" in made["reason"]


def test_without_confirm_steps_a_noisy_lead_names_the_seed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    made, ran = _choose(_study(seed_kd=0.00131, sampled_kd=0.00076), NOISY, monkeypatch, confirm_steps=0)
    assert all(len(k) == 2 for k in ran) and "confirm" not in made and made["chosen"] == 0


def test_where_rungs_train_afresh_a_confirmation_on_the_searchs_rows_runs_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new study's top-rung scores are one segment's already: with neither the confirmation's rows nor its
    lead (None), a lead they cannot call names the seed at once; ``confirm_steps`` still asks for a
    confirmation, which reuses the repeats it would repeat."""
    longer = {("sampled", k, "straight"): kd for k, kd in ((1, 0.00100), (2, 0.00098), (3, 0.00106))}
    longer |= {("seed", k, "straight"): kd for k, kd in ((1, 0.00140), (2, 0.00135), (3, 0.00146))}
    own = {"afresh": True, "confirm_calibration": None, "confirm_lead": None}
    made, ran = _choose(_study(seed_kd=0.00131, sampled_kd=0.00076), NOISY | longer, monkeypatch, **own)
    assert all(len(k) == 2 for k in ran) and "confirm" not in made and made["chosen"] == 0
    made, ran = _choose(_study(seed_kd=0.00131, sampled_kd=0.00076), NOISY | longer, monkeypatch, **own,
                        confirm_steps=100)  # fmt: skip
    # orders 1 and 2 trained the same way already (the repeats): only the third order is trained for it
    assert sorted(k for k in ran if len(k) == 3) == [("sampled", 3, "straight"), ("seed", 3, "straight")]
    assert made["confirm"]["seed_kd"] == [NOISY["seed", 1], NOISY["seed", 2], 0.00146]
    assert made["confirm"]["lead"] == pytest.approx((0.0003 - 0.00058 + 0.0004) / 3, rel=0.01)
    assert made["chosen"] == 0 and "after 100 steps in one segment" in made["reason"]  # order 2 still disagrees


def test_a_lower_confirmation_lead_widens_what_is_too_close_to_call() -> None:
    """A lead surely under a fifth is settled (the seed) by the top rung's threshold, but not where a
    confirmation would name the candidate at 8%: +5.8% ± 2.2% may still reach 8%."""
    base, lead = 0.002, choice.Lead(0.000117, 0.000044, 3, True)
    assert choice.settled(lead, base) and not choice.settled(lead, base, confirm_share=0.08)
    assert choice.settled(choice.Lead(0.00002, 0.00001, 3, True), base, confirm_share=0.08)  # at most 2%: the seed


# A clear lead under a fifth: the search's order and the screen put the sampled plan 5% ahead; paired over three
# orders, +5.8% ± 2.2%, surely under a fifth but possibly 8% (the seed's scores at orders 1 and 2 below).
SMALL = {("sampled", 1): 0.00190, ("sampled", 2): 0.00189, ("seed", 1): 0.00210, ("seed", 2): 0.00194}


def _confirm_on_more_rows(study: optuna.Study, longer: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch,
                          **cfg: Any) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:  # fmt: skip
    """The choice in a study whose rungs train afresh, its repeats scored from ``SMALL`` and the confirmation's
    from ``longer`` (by plan, orders 1-3), recording each confirmation job's plan, order and calibration rows."""
    confirmed: list[tuple[str, int, int]] = []

    def repeat(_ctx: SearchContext, plan: Plan, seed: int, _steps: int) -> float:
        return SMALL["seed" if plan == Plan.removing(SEED_PLAN) else "sampled", seed]

    def straight(ctx: SearchContext, plan: Plan, seed: int, steps: int) -> float:
        which = "seed" if plan == Plan.removing(SEED_PLAN) else "sampled"
        confirmed.append((which, seed, ctx.calib.n_train))
        return longer[which][seed - 1]

    monkeypatch.setattr(choice, "top_rung_kd", repeat)
    monkeypatch.setattr(choice, "straight_kd", straight)
    monkeypatch.setattr(choice, "repeat_workers", lambda _ctx, _jobs: 1)
    ctx = _ctx(afresh=True, **cfg)
    floor = choice.noise_floor(study, ctx)
    made = choose_found(study, ctx, floor)
    assert made is not None
    return made, confirmed


def test_a_confirmation_on_more_rows_decides_at_its_own_lead(monkeypatch: pytest.MonkeyPatch) -> None:
    """``confirm_calibration`` and ``confirm_lead`` (384 and 8%: the defaults) ask for a confirmation where
    rungs train afresh: both plans trained again on that many rows under three fresh orders (none reused:
    other rows, other scores), and a clear lead of ``confirm_lead`` or more names the sampled plan."""
    cfg = {"confirm_calibration": 384, "confirm_lead": 0.08}
    ahead = {"sampled": [0.00180, 0.00178, 0.00183], "seed": [0.00200, 0.00199, 0.00201]}  # +10% at each order
    made, confirmed = _confirm_on_more_rows(_study(seed_kd=0.00200, sampled_kd=0.00190), ahead, monkeypatch, **cfg)
    assert sorted(confirmed) == [(p, k, 384) for p in ("sampled", "seed") for k in (1, 2, 3)]
    assert made["paired"] and made["seed_kd"] == [0.00200, 0.00210, 0.00194]  # the screen did not settle it
    assert made["confirm"]["rows"] == 384 and made["confirm"]["min_lead"] == 0.08
    assert made["chosen"] == 2 and "on 384 calibration rows" in made["reason"], made["reason"]
    level = {"sampled": [0.00190, 0.00188, 0.00193], "seed": [0.00200, 0.00199, 0.00201]}  # +5%: under 8%
    made, _ = _confirm_on_more_rows(_study(seed_kd=0.00200, sampled_kd=0.00190), level, monkeypatch, **cfg)
    assert made["chosen"] == 0 and "under 8% of the seed's score" in made["reason"], made["reason"]


def test_without_confirmation_settings_a_clear_small_screened_lead_names_the_seed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With neither the confirmation's rows nor its lead (None) where rungs train afresh: the screen's clear
    lead under a fifth names the seed without scoring the seed again, and nothing is confirmed. (By default
    the same lead is confirmed: ``test_a_confirmation_on_more_rows_decides_at_its_own_lead``.)"""
    study = _study(seed_kd=0.00200, sampled_kd=0.00190)
    made, confirmed = _confirm_on_more_rows(study, {}, monkeypatch, confirm_calibration=None, confirm_lead=None)
    assert confirmed == [] and not made["paired"] and "confirm" not in made and made["chosen"] == 0


TEN_PERCENT = {"sampled": [0.00180, 0.00178, 0.00183], "seed": [0.00200, 0.00199, 0.00201]}  # +10% at each order


def _fixed_scores(monkeypatch: pytest.MonkeyPatch, longer: dict[str, list[float]], workers: int = 1) -> list[str]:
    """The repeats scored from ``SMALL`` and the confirmations from ``longer``; returns the list each scored
    plan is appended to (in this process)."""
    trained: list[str] = []

    def repeat(_ctx: SearchContext, plan: Plan, seed: int, _steps: int) -> float:
        trained.append(which := "seed" if plan == Plan.removing(SEED_PLAN) else "sampled")
        return SMALL[which, seed]

    def straight(_ctx: SearchContext, plan: Plan, seed: int, _steps: int) -> float:
        trained.append(which := "seed" if plan == Plan.removing(SEED_PLAN) else "sampled")
        return longer[which][seed - 1]

    monkeypatch.setattr(choice, "top_rung_kd", repeat)
    monkeypatch.setattr(choice, "straight_kd", straight)
    monkeypatch.setattr(choice, "repeat_workers", lambda _ctx, jobs: min(workers, jobs))
    return trained


def test_the_seeds_scores_measured_ahead_make_the_same_choice_and_are_not_trained_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The seed's repeats and confirmation measured during the trials (``seed_scores``, what the background
    scorer runs) give the choice made without them, and after the trials only the candidate is trained."""
    trained = _fixed_scores(monkeypatch, TEN_PERCENT)
    ctx = _ctx(afresh=True)  # the defaults: a confirmation of the top rung's steps on 384 rows, an 8% lead
    study = _study(seed_kd=0.00200, sampled_kd=0.00190)
    without = choose_found(study, ctx, choice.noise_floor(study, ctx))
    assert without is not None and without["chosen"] == 2 and without["confirm"]["rows"] == 384
    assert trained.count("seed") == 2 + 3  # its repeats, then its confirmation
    study = _study(seed_kd=0.00200, sampled_kd=0.00190)
    seed = choice.seed_scores(ctx, study.trials[0], 100)
    assert seed.repeats == [0.00200, SMALL["seed", 1], SMALL["seed", 2]] and seed.confirm == TEN_PERCENT["seed"]
    trained.clear()
    scored = choice.prescore_repeats(study, ctx, seed)
    made = choose_found(study, ctx, choice.noise_floor(study, ctx, scored), scored=scored, seed=seed)
    assert made == without and "seed" not in trained and trained.count("sampled") == 2 + 3
    study, trained[:] = _study(seed_kd=0.00200, sampled_kd=0.00190), []
    other = choice.SeedScores(seed.trial, seed.steps, seed.repeats, 300, [0.001] * 3)  # another confirmation's
    again = choose_found(study, ctx, choice.noise_floor(study, ctx, scored), scored=scored, seed=other)
    assert again == without and trained.count("seed") == 3  # not this confirmation's scores: trained afresh


@FORKS
def test_the_seed_is_scored_ahead_in_a_forked_process_once_its_trial_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """The background scorer starts on the seed's trial, not another's, only where a core is idle, and
    returns what the same scoring gives in this process."""

    _fixed_scores(monkeypatch, TEN_PERCENT, workers=2)
    ctx, study = _ctx(afresh=True), _study(seed_kd=0.00200, sampled_kd=0.00190)
    ahead = choice.SeedAhead(ctx)
    ahead(study, study.trials[2])  # a sampled plan's trial: nothing starts
    assert ahead.scores() is None
    ahead(study, study.trials[0])
    assert ahead.scores() == choice.seed_scores(ctx, study.trials[0], 100)
    monkeypatch.setattr(choice, "repeat_workers", lambda _ctx, _jobs: 1)  # no idle core: nothing ahead
    busy = choice.SeedAhead(ctx)
    busy(study, study.trials[0])
    assert busy.scores() is None


@FORKS
def test_waiting_for_the_background_scorer_is_said_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials over before the seed's scores are: the search says what it waits for, then gets them."""
    import time

    _fixed_scores(monkeypatch, TEN_PERCENT, workers=2)
    ctx, study = _ctx(afresh=True), _study(seed_kd=0.00200, sampled_kd=0.00190)
    expected = choice.seed_scores(ctx, study.trials[0], 100)

    def slowly(*_args: Any) -> choice.SeedScores:
        time.sleep(1.5)
        return expected

    monkeypatch.setattr(choice, "seed_scores", slowly)
    said: list[str] = []
    ahead = choice.SeedAhead(ctx)
    ahead(study, study.trials[0])
    assert ahead.scores(said.append) == expected
    assert len(said) == 1 and "waiting for the background scorer" in said[0]


@FORKS
@pytest.mark.parametrize("ends", ["killed", "raises"])
def test_a_background_scorer_that_dies_or_fails_leaves_the_seed_to_the_rule(
    ends: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background scorer killed before it answers (out of memory), or whose scoring raises, gives no scores,
    without hanging the search: the rule then scores the seed itself."""
    import os

    _fixed_scores(monkeypatch, TEN_PERCENT, workers=2)

    def dies(*_args: Any) -> choice.SeedScores:
        if ends == "killed":
            os._exit(9)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(choice, "seed_scores", dies)
    ctx, study = _ctx(afresh=True), _study(seed_kd=0.00200, sampled_kd=0.00190)
    ahead = choice.SeedAhead(ctx)
    ahead(study, study.trials[0])
    assert ahead.scores() is None


@pytest.mark.parametrize("schedule", [AFRESH, CONTINUED])
def test_a_repeat_trains_as_a_trial_and_a_confirmation_in_one_segment(schedule: str) -> None:
    """A repeat at the top rung trains as the study's trials do: its steps in one segment where rungs train
    afresh, through each rung where they continue; a confirmation trains its steps in one segment."""
    segments: list[int] = []

    class Run:
        def __enter__(self) -> Run:
            return self

        def __exit__(self, *_exc: object) -> None:
            return None

        def held_out(self) -> float:
            return 1.0

        def train_to(self, steps: int) -> float:
            segments.append(steps)
            return 1.0 / steps

    ctx = cast(SearchContext, SimpleNamespace(cfg=SearchConfig(proxy_steps=30), calib=None, afresh=schedule == AFRESH,
                                              proxy_run=lambda _plan, _seed, _calib: Run()))  # fmt: skip
    assert choice.top_rung_kd(ctx, Plan(), 0, 100) == pytest.approx(0.01)
    assert segments == ([100] if schedule == AFRESH else [30, 100])
    segments.clear()
    assert choice.straight_kd(ctx, Plan(), 0, 70) == pytest.approx(1 / 70) and segments == [70]


def _recipe(trial: optuna.trial.FrozenTrial) -> Recipe:
    return Recipe.model_validate({"schema_version": 1, "name": f"trial-{trial.number}",
                                  "teacher": {"model": "tiny-sdxl"}, "plan": {"remove": trial.user_attrs["removed"]},
                                  "distill": {"stages": [{"steps": 10, "learning_rate": 1e-4}]},
                                  "provenance": {"source": "search", "trial": trial.number}})  # fmt: skip


RUNNER_A = ["down_blocks.1.attentions.0.transformer_blocks.0"]
RUNNER_B = ["down_blocks.1.attentions.1.transformer_blocks.0"]
FAR = ["up_blocks.0.attentions.0.transformer_blocks.0"]


def _seed_best_study() -> optuna.Study:
    """The seed scores best at the top rung; two sampled plans within a fifth of it (A 2.6% behind, B 5.3%) and
    one far behind (50%)."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trials([_trial(0.00190, SEED_PLAN, "sensitivity"), _trial(0.00195, RUNNER_A), _trial(0.00200, RUNNER_B),
                      _trial(0.00285, FAR)])  # fmt: skip
    return study


def _runners_confirmed(study: optuna.Study, longer: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch,
                       **cfg: Any) -> tuple[dict[str, Any], list[tuple[str, int]]]:  # fmt: skip
    """The choice with the top rung's repeats fixed (the seed's and the sampled plan's, from ``SMALL``) and
    each confirmation's scores from ``longer`` (by plan name, orders 1-3); returns it and what was confirmed."""
    names = {Plan.removing(SEED_PLAN): "seed", Plan.removing(SAMPLED_PLAN): "sampled", Plan.removing(RUNNER_A): "A",
             Plan.removing(RUNNER_B): "B", Plan.removing(FAR): "far"}  # fmt: skip
    confirmed: list[tuple[str, int]] = []

    def repeat(_ctx: SearchContext, plan: Plan, seed: int, _steps: int) -> float:
        return SMALL[names[plan], seed]

    def straight(_ctx: SearchContext, plan: Plan, seed: int, _steps: int) -> float:
        confirmed.append((names[plan], seed))
        return longer[names[plan]][seed - 1]

    monkeypatch.setattr(choice, "top_rung_kd", repeat)
    monkeypatch.setattr(choice, "straight_kd", straight)
    monkeypatch.setattr(choice, "repeat_workers", lambda _ctx, _jobs: 1)
    ctx = _ctx(afresh=True, confirm_calibration=384, confirm_lead=0.08, **cfg)
    made = choose_found(study, ctx, choice.noise_floor(study, ctx))
    assert made is not None
    return made, confirmed


def test_where_the_seed_scores_best_its_runners_up_are_confirmed_and_a_clear_lead_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``confirm_runners_up``: the next best plans at the top rung within a fifth of the seed's score (not the
    one 50% behind), each trained as the confirmation trains, the seed once; a clear lead of 8% names it."""
    longer = {"seed": [0.00200, 0.00199, 0.00201], "A": [0.00150, 0.00152, 0.00149], "B": [0.00196, 0.00197, 0.00195]}
    made, confirmed = _runners_confirmed(_seed_best_study(), longer, monkeypatch, confirm_runners_up=3)
    assert sorted(confirmed) == sorted((p, k) for p in ("seed", "A", "B") for k in (1, 2, 3))
    assert [r["trial"] for r in made["runners_up"]["trials"]] == [1, 2]  # best first; trial 3 is too far behind
    assert [r["named"] for r in made["runners_up"]["trials"]] == [True, False]  # B: +2%, under 8%
    assert made["runners_up"]["seed_kd"] == longer["seed"] and made["runners_up"]["steps"] == 100
    assert made["chosen"] == 1 and "names trial 1" in made["reason"], made["reason"]
    assert made["candidate"] == 0  # the choice was made for the best at the top rung, the seed: it stays valid
    assert found_trial(_with_choice(_seed_best_study(), made)).number == 1  # type: ignore[union-attr]


def _with_choice(study: optuna.Study, made: dict[str, Any]) -> optuna.Study:
    study.set_user_attr("found_choice", made)
    return study


def test_runners_up_that_cannot_show_the_lead_leave_the_seed_and_none_are_trained_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    level = {"seed": [0.00200, 0.00199, 0.00201], "A": [0.00190, 0.00192, 0.00189], "B": [0.00196, 0.00197, 0.00195]}
    made, confirmed = _runners_confirmed(_seed_best_study(), level, monkeypatch, confirm_runners_up=1)
    assert sorted(confirmed) == sorted((p, k) for p in ("seed", "A") for k in (1, 2, 3))  # one runner-up asked
    assert made["chosen"] == 0 and "none of its 1 runners-up leads it clearly after 100 steps" in made["reason"]
    made, confirmed = _runners_confirmed(_seed_best_study(), level, monkeypatch)  # the default: 0
    assert confirmed == [] and "runners_up" not in made and made["chosen"] == 0


def test_runners_up_after_a_candidate_turned_down_reuse_the_seeds_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the best sampled plan was confirmed and turned down, its runners-up (not it again) are trained
    against the seed's confirmation scores, which are not trained again."""
    study = _study(seed_kd=0.00200, sampled_kd=0.00190)
    study.add_trials([_trial(0.00210, RUNNER_A)])
    longer = {"seed": [0.00200, 0.00199, 0.00201], "sampled": [0.00190, 0.00188, 0.00193],  # +5%: turned down
              "A": [0.00150, 0.00152, 0.00149]}  # fmt: skip
    made, confirmed = _runners_confirmed(study, longer, monkeypatch, confirm_runners_up=2)
    assert sorted(confirmed) == sorted((p, k) for p in ("seed", "sampled", "A") for k in (1, 2, 3))
    assert made["confirm"]["seed_kd"] == made["runners_up"]["seed_kd"] == longer["seed"]
    assert [r["trial"] for r in made["runners_up"]["trials"]] == [3] and made["chosen"] == 3, made["reason"]
