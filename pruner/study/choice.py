"""After the trials: the found plan's noise floor, and which plan ``found.yaml`` names.

The search names a sampled plan over its *anchor*, the one-shot seed a user gets for free (by default the
sensitivity seed's refill where that seed empties an attention module, else the sensitivity seed itself;
``anchor="sensitivity"`` keeps the sensitivity seed: :func:`anchor_label`,
``pruner.study.heuristics.refilled_plan``), only when its lead at the top rung is
clear: both plans are scored with the same few row orders (common random numbers, so each order gives one
paired difference) and the lead counts when its mean exceeds twice its standard error (:data:`LEAD_SE`) and a
fifth of the seed's score (:data:`MIN_LEAD`: a smaller lead at the proxy did not carry to full distillation).
Otherwise ``found.yaml`` names the seed (the anchor) and says why. The sensitivity seed itself is never named
over its own refill (:func:`refill_of`). Plans whose proxy scores differ by less than the same noise are ties
(``pruner.study.front.tied_trials``).

When the top rung's scores settle neither way (:func:`settled`: the lead is not clear and a fifth, yet its upper
bound reaches ``confirm_lead``, 8% by default), both plans are trained again under three fresh row orders,
``confirm_steps`` (the top rung's by default) in one cosine segment on ``confirm_calibration`` rows (384 by
default, four times the search's), and the same rule decides on those scores alone, a clear lead of
``confirm_lead`` naming the candidate: the search's own order, on which the candidate was picked (its luck
there is the winner's curse), is left out. Short KD's leads are biased per plan (how fast a pruned student
recovers), and more rows shrink that bias at 30% and 50% of the bundled teacher's parameters: on the eleven
searches of the benchmarks whose top-rung leads were unsettled, this confirmation named the four 50% plans
that ended 1.27-1.34x better than the seed after 1000 steps and turned down the two 30% plans, as 300 steps
did; at 20% and 40% it kept the seed where 300 steps named plans 0.5-5% better, and it never named a plan
behind the seed (``docs/benchmarks/search-oracle.md``, "The confirmation by default").

Where the rule names the seed, ``confirm_runners_up`` (0 by default) asks the same confirmation of the next
best sampled plans at the top rung, up to that many, each within a fifth of the seed's score there: the
clearest lead that carries names its plan. At 30% of the bundled teacher's parameters the plans that end
best score 2-4% behind the seed at the top rung, and a 1000-step confirmation on 384 rows read the two of
them a search had proposed +26% and +40% ahead, and five plans that end level or behind under the 8% lead; at
20% it named a plan that ends 1.11x better than the seed (``docs/benchmarks/search-oracle.md``, "The
distillation itself, shorter").

The seed's share of that work does not wait for the trials: on a CPU whose one-thread search leaves a core
idle, :class:`SeedAhead` scores the seed's repeats and confirmation there once its trial is done, so after
the trials only the candidate is trained (the quick start's search: 227 s with the confirmation, against
234 s before it).

A repeat trains the plan as a trial trained it (the top rung's steps in one segment, or through each rung
where rungs continue), on the training rows in another order. Where every training row fits one proxy batch,
another order is the same single batch, so a repeat also noises the training rows afresh
(``Calibration.renoised``): then the spread is real.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import optuna
import torch
from optuna.trial import FrozenTrial
from tqdm import tqdm

from pruner.runtime import forked_map, idle_cpu_room, idle_cpu_workers
from pruner.study.context import SearchContext
from pruner.study.front import best_quality_trial, feasible_trials
from pruner.study.heuristics import REFILLED, SENSITIVITY
from pruner.study.proxy import Calibration
from pruner.study.sampler import ranked_plans, scored_plan
from pruner.unet.plan import Plan

__all__ = [
    "LEAD_SE",
    "MIN_LEAD",
    "Lead",
    "SeedAhead",
    "SeedScores",
    "anchor_label",
    "carries",
    "choose_found",
    "confirm_context",
    "confirm_lead",
    "confirm_orders",
    "confirm_rows",
    "confirm_scores",
    "noise_floor",
    "paired_lead",
    "prescore_repeats",
    "recorded_choice",
    "recorded_noise_floor",
    "refill_of",
    "repeat_workers",
    "runners_up",
    "screened_lead",
    "seed_scores",
    "settled",
    "straight_kd",
    "tie_margin",
    "top_rung_kd",
]

LEAD_SE = 2.0
"""A lead counts when it exceeds this many standard errors (about 95% one-sided with many orders; with the
default three, a t-test's 2 degrees of freedom make it about 91%: erring toward the seed, which costs nothing)."""

MIN_LEAD = 0.2
"""...and at least this share of the seed's top-rung score. A clear lead at the proxy is not a lead after full
distillation when it is small: at 30% of the bundled teacher's parameters (``benchmarks/search_oracle.py``), a
default search's plan led the seed by 12.4% ± 4.7% over three row orders (2.6 standard errors) and ended 7%
behind it after 1000 steps, and the 100-step proxy ranked the oracle's nine distilled plans, 38% apart at the
proxy, at Kendall tau 0.17 against their final KD (-0.67 over the better half). Leads of 46% and more (the
50% budget's, the MACs budget's) did carry."""


@dataclass(frozen=True)
class Lead:
    """A sampled plan's lead over the seed in held-out KD (seed minus candidate: positive when the candidate
    is better), its standard error, and over how many row orders it was measured."""

    mean: float
    se: float
    orders: int
    paired: bool  # False: one order and an upper bound on its error (the screen)

    @property
    def clear(self) -> bool:
        """Whether the lead exceeds :data:`LEAD_SE` standard errors; a lead whose error is unmeasured (one
        order, or every order giving the same difference: the repeats did not vary) is never clear."""
        return self.se > 0 and math.isfinite(self.se) and self.mean > LEAD_SE * self.se


def paired_lead(candidate: Sequence[float], seed: Sequence[float]) -> Lead:
    """The candidate's lead over the seed from scores under the same row orders (``candidate[k]`` and
    ``seed[k]`` trained on order k): the mean paired difference and its standard error."""
    if len(candidate) != len(seed) or not candidate:
        raise ValueError("paired scores need the same row orders for both plans, at least one")
    diffs = [s - c for c, s in zip(candidate, seed, strict=True)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return Lead(statistics.fmean(diffs), se, len(diffs), paired=True)


def screened_lead(candidate: Sequence[float], seed_first: float) -> Lead:
    """The candidate's lead over the seed at the first row order, with an upper bound on its error measured
    from the candidate's own repeats alone: the difference of two scores has at most the sum of their standard
    deviations, taken as twice the candidate's (the seed's repeats, not run yet, are assumed no noisier).
    A lead that clears even this bound is clear without scoring the seed again."""
    sd = statistics.stdev(candidate) if len(candidate) > 1 else math.nan
    return Lead(seed_first - candidate[0], 2 * sd, 1, paired=False)


def tie_margin(candidate: Sequence[float], seed: Sequence[float] | None = None) -> float | None:
    """How far apart two plans' top-rung scores (one row order each, the same for both) must be, as a share of
    the better one's, for the lead to count: :data:`LEAD_SE` times the standard deviation of a one-order gap.
    That deviation is the paired differences' when the seed was scored under the same orders, else twice the
    candidate's own (the screen's bound). None when nothing varied or fewer than two orders were scored."""
    if seed is not None and len(seed) == len(candidate) > 1:
        sd = statistics.stdev([s - c for c, s in zip(candidate, seed, strict=True)])
    elif len(candidate) > 1:
        sd = 2 * statistics.stdev(candidate)
    else:
        return None
    return LEAD_SE * sd / statistics.fmean(candidate) if sd > 0 else None


# --- scoring repeats ---------------------------------------------------------------------------------------


def _order_calibration(ctx: SearchContext, seed: int) -> Calibration:
    """The calibration a repeat under ``seed`` trains on: the search's own, with training rows noised afresh
    when they all fit one batch (then the order alone changes nothing)."""
    if seed == ctx.cfg.seed or ctx.calib.n_train > ctx.proxy_batch:
        return ctx.calib
    return ctx.calib.renoised(ctx.teacher, seed)


def top_rung_kd(ctx: SearchContext, plan: Plan, seed: int, steps: int) -> float:
    """The plan's held-out KD at the rung of ``steps`` trained as a trial trains it, on the rows in the order
    ``seed`` gives (freshly noised when they all fit one batch): ``steps`` in one cosine segment, or, in a
    study whose rungs continue, through each rung up to ``steps``, a segment each."""
    if ctx.afresh:
        return straight_kd(ctx, plan, seed, steps)
    with ctx.proxy_run(plan, seed, _order_calibration(ctx, seed)) as run:
        kd = run.held_out()
        for rung in (r for r in ctx.cfg.rungs if 0 < r <= steps):
            kd = run.train_to(rung)
    return kd


def straight_kd(ctx: SearchContext, plan: Plan, seed: int, steps: int) -> float:
    """The plan's held-out KD after ``steps`` of KD in one cosine segment (no warm restart at a rung), on the
    rows in the order ``seed`` gives (freshly noised when they all fit one batch): the confirmation's score."""
    with ctx.proxy_run(plan, seed, _order_calibration(ctx, seed)) as run:
        return run.train_to(steps)


Repeats = dict[int, list[float]]  # trial number -> its top-rung scores (its own order first)
Job = tuple[Plan, int, int, bool]  # a plan, a row order's seed, the steps to train it, in one segment or by rungs


def _score(ctx: SearchContext, job: Job) -> float:
    plan, seed, steps, straight = job
    return (straight_kd if straight else top_rung_kd)(ctx, plan, seed, steps)


def repeat_workers(ctx: SearchContext, jobs: int) -> int:
    """How many processes score ``jobs`` repeats at once (:func:`pruner.runtime.idle_cpu_workers`). Each repeat
    is fixed by its plan and row order, so the scores equal one process's."""
    return idle_cpu_workers(ctx.calib.device, jobs)


def repeat_room(ctx: SearchContext) -> Callable[[], int] | None:
    """How many more processes the cores other work leaves idle could hold now, asked again as a batch of
    repeats runs (:func:`pruner.runtime.idle_cpu_room`); None where the repeats run in one process."""
    return idle_cpu_room(ctx.calib.device)


def _score_orders(ctx: SearchContext, jobs: list[Job], desc: str) -> list[float]:
    """Each job's score (``top_rung_kd`` or ``straight_kd``), with a bar; several at once where cores allow
    (:func:`repeat_workers`: forked processes that share the search's context and calibration), more as
    other work frees cores during the batch (a long confirmation that started beside a busy core)."""
    with tqdm(total=len(jobs), desc=desc, unit="order", disable=not ctx.cfg.progress, dynamic_ncols=True) as bar:
        workers = repeat_workers(ctx, len(jobs))
        return forked_map(lambda job: _score(ctx, job), jobs, workers, bar.update, repeat_room(ctx))


def _repeat_jobs(ctx: SearchContext, trial: FrozenTrial, steps: int) -> tuple[float | None, list[Job]]:
    """The trial's top-rung score on the search's own order (None when it stopped before ``steps``: then that
    order is a job too) and the jobs that score it under ``noise_seeds`` other orders."""
    plan = scored_plan(trial)
    assert plan is not None
    first = (trial.user_attrs.get("rung_kd") or {}).get(str(steps))
    seeds = [] if first is not None else [ctx.cfg.seed]
    seeds += list(range(ctx.cfg.seed + 1, ctx.cfg.seed + 1 + ctx.cfg.noise_seeds))
    return (None if first is None else float(first)), [(plan, seed, steps, False) for seed in seeds]


def _repeats(ctx: SearchContext, trial: FrozenTrial, steps: int, desc: str, scored: Repeats | None = None
             ) -> list[float]:  # fmt: skip
    """The trial's top-rung score (trained on the search's own order) and its scores under ``noise_seeds``
    other orders (taken from ``scored`` when :func:`prescore_repeats` scored them already)."""
    if scored and trial.number in scored:
        return list(scored[trial.number])
    first, jobs = _repeat_jobs(ctx, trial, steps)
    scores = _score_orders(ctx, jobs, desc)
    return [first, *scores] if first is not None else scores


def prescore_repeats(study: optuna.Study, ctx: SearchContext, seed: SeedScores | None = None) -> Repeats:
    """Where cores allow (:func:`repeat_workers`), the repeats :func:`noise_floor` and :func:`choose_found`
    may need, scored at once: the best plan's and the sensitivity seed's, side by side, so the found-plan rule
    costs the search no wall time over the noise floor alone. The seed's are scored even when the screen
    (:func:`screened_lead`) would settle the choice without them: on an idle core they cost nothing. ``seed``:
    the seed's, measured already during the trials (:class:`SeedAhead`), not scored again. Elsewhere only
    those (the two functions score what they need, one after another)."""
    target = _floor_target(study, ctx)
    if target is None:
        return {}
    best, steps = target
    given = {seed.trial: list(seed.repeats)} if seed is not None and seed.steps == steps else {}
    anchor = _anchor(study)
    trials = [] if recorded_noise_floor(study, best, ctx.cfg.noise_seeds) is not None else [best]
    if anchor is not None and anchor.number != best.number and recorded_choice(study, best) is None:
        trials.append(anchor)
    planned = {t.number: _repeat_jobs(ctx, t, steps) for t in trials if t.number not in given}
    jobs = [job for _, js in planned.values() for job in js]
    if repeat_workers(ctx, len(jobs)) < 2:
        return given
    names = " and ".join(f"trial {n}" for n in planned)
    scores = iter(_score_orders(ctx, jobs, f"noise floor and the seed: {names}, other row orders"))
    return given | {n: ([] if first is None else [first]) + [next(scores) for _ in js]
                    for n, (first, js) in planned.items()}  # fmt: skip


@dataclass(frozen=True)
class SeedScores:
    """The sensitivity seed's scores the rule may need after the trials, measured ahead: its top-rung score
    at ``steps`` under its own order and the repeats' (``repeats``), and the confirmation's scores after
    ``confirm_steps`` on the confirmation's rows, order by order (``confirm``; none when no confirmation)."""

    trial: int
    steps: int
    repeats: list[float]
    confirm_steps: int
    confirm: list[float]


def seed_scores(ctx: SearchContext, anchor: FrozenTrial, steps: int) -> SeedScores:
    """The seed's scores :func:`prescore_repeats` and :func:`choose_found` would measure (its repeats at the
    top rung, and its confirmation where the settings ask for one that the repeats are not already), one
    after another: each is fixed by the plan and the row order, so they equal those measured later."""
    first, jobs = _repeat_jobs(ctx, anchor, steps)
    repeats = ([] if first is None else [first]) + [_score(ctx, job) for job in jobs]
    again, confirm = _confirm_steps(ctx, steps), []
    plan = scored_plan(anchor)
    if again > 0 and plan is not None and not _confirm_is_repeats(ctx, again, steps):
        confirming = confirm_context(ctx)
        confirm = [_score(confirming, (plan, order, again, True)) for order in confirm_orders(confirming)]
    return SeedScores(anchor.number, steps, repeats, again, confirm)


def _score_seed_quietly(conn: Any, ctx: SearchContext, anchor: FrozenTrial, steps: int, threads: int) -> None:
    """The forked scorer's work: :func:`seed_scores`, sent back on ``conn`` (an error as its text). It prints
    nothing over the search's bar: its output goes to the null device."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(threads)
    try:
        conn.send(("scores", seed_scores(ctx, anchor, steps)))
    except Exception as exc:  # sent back: the parent measures again, where the error surfaces
        conn.send(("error", repr(exc)))


class SeedAhead:
    """The sensitivity seed's after-trials scores (:func:`seed_scores`), measured during the trials in a forked
    process on the core a one-thread CPU search leaves idle (:func:`repeat_workers`): an Optuna callback that
    starts once the seed's trial is done (its plan as scored is known then). After the trials the found-plan
    rule then trains only the candidate. Nowhere else (a GPU, one core, a core another job keeps busy, no noise
    floor) does it start: :meth:`scores` is None then, and the rule measures what it needs itself, which on a
    busy machine is less work than the seed's share scored ahead."""

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self._process: Any = None
        self._conn: Any = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._process is not None or scored_plan(trial) is None:
            return
        if trial.user_attrs.get("label") != anchor_label(study):
            return
        steps = self.ctx.cfg.rungs[-1]
        reached = str(steps) in (trial.user_attrs.get("rung_kd") or {})  # not a duplicate that stepped aside
        if not reached or self.ctx.cfg.noise_seeds <= 0 or repeat_workers(self.ctx, 2) < 2:
            return
        fork = multiprocessing.get_context("fork")
        self._conn, child = fork.Pipe(duplex=False)
        work = (child, self.ctx.quietly(), trial, steps, torch.get_num_threads())
        process = fork.Process(target=_score_seed_quietly, args=work, daemon=True)  # forked: nothing pickled
        try:
            process.start()
        except OSError:  # no memory or no process left for it: the rule measures the seed's scores itself
            self._conn = None
            return
        finally:
            child.close()
        self._process = process

    def scores(self, status: Callable[[str], None] = lambda _m: None) -> SeedScores | None:
        """The seed's scores (waiting for them if need be, saying so on ``status``), or None when none were
        measured, or measuring them failed or the process died (the rule then measures what it needs itself,
        and meets any error there)."""
        if self._process is None:
            return None
        try:
            if not self._conn.poll():
                status("the sensitivity seed's repeats and confirmation: waiting for the background scorer")
            while not self._conn.poll(0.5):
                if not self._process.is_alive() and not self._conn.poll():
                    return None  # killed (out of memory, a signal) before it sent anything
            kind, value = self._conn.recv()
            return cast(SeedScores, value) if kind == "scores" else None
        except (EOFError, OSError):
            return None
        finally:
            self.close()

    def close(self) -> None:
        """Stop the background scorer (a search interrupted or failed leaves none behind)."""
        if self._process is not None:
            self._process.terminate()
            self._process.join()
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- the noise floor and the choice ------------------------------------------------------------------------


def _floor_target(study: optuna.Study, ctx: SearchContext) -> tuple[FrozenTrial, int] | None:
    """The plan the noise floor scores again (the best by quality) and its top-rung steps; None when the
    search measures no noise floor (``noise_seeds`` 0) or no plan reached a proxy score."""
    best = best_quality_trial(study)
    if best is None or ctx.cfg.noise_seeds <= 0 or "proxy_kd" not in best.user_attrs:
        return None
    return best, int(best.user_attrs.get("rung_steps", ctx.cfg.rungs[-1]))


def recorded_noise_floor(study: optuna.Study, best: FrozenTrial, noise_seeds: int) -> dict[str, Any] | None:
    """The study's noise floor when it was measured on ``best`` with at least ``noise_seeds`` other row orders."""
    recorded = study.user_attrs.get("noise_floor")
    if recorded and recorded.get("trial") == best.number and len(recorded.get("kd", ())) >= 1 + noise_seeds:
        return dict(recorded)
    return None


def noise_floor(study: optuna.Study, ctx: SearchContext, scored: Repeats | None = None) -> dict[str, Any] | None:
    """Score the best plan again at the top rung with ``noise_seeds`` other row orders and store the spread as
    the study's ``noise_floor`` attribute: gaps between plans smaller than it are noise."""
    target = _floor_target(study, ctx)
    if target is None:
        return None
    best, steps = target
    recorded = recorded_noise_floor(study, best, ctx.cfg.noise_seeds)
    if recorded is not None:
        return recorded
    # a bar, not a silence after the trials' 100%
    kd = _repeats(ctx, best, steps, f"noise floor: trial {best.number} again, other row orders", scored)
    floor = {"trial": best.number, "steps": steps, "kd": kd, "mean": statistics.fmean(kd),
             "std": statistics.stdev(kd), "spread": max(kd) / min(kd) - 1}  # fmt: skip
    study.set_user_attr("noise_floor", floor)
    return floor


def anchor_label(study: optuna.Study) -> str:
    """The label of the seed found.yaml falls back to: the first seed the study enqueued (``sensitivity``, or
    ``sensitivity-refilled`` where asked for and the sensitivity seed empties an attention module,
    ``pruner.study.heuristics.seed_plans``), or ``sensitivity`` in a study that recorded none (made before)."""
    return str(study.user_attrs.get("anchor", SENSITIVITY))


def _anchor(study: optuna.Study) -> FrozenTrial | None:
    """The anchor's trial (the one that ran it, not a duplicate that stepped aside), if any."""
    label = anchor_label(study)
    return next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("label") == label
                 and scored_plan(t) is not None and "rung_kd" in t.user_attrs), None)  # fmt: skip


def recorded_choice(study: optuna.Study, best: FrozenTrial) -> dict[str, Any] | None:
    """The study's ``found_choice`` when it was made for ``best`` (a later trial may have changed the best)."""
    recorded = study.user_attrs.get("found_choice")
    return dict(recorded) if recorded and recorded.get("candidate") == best.number else None


def _percent(lead: Lead, base: float) -> str:
    error = "" if not math.isfinite(lead.se) else f" ± {100 * lead.se / base:.1f}%"
    return f"{100 * lead.mean / base:+.1f}%{error}"


def carries(lead: Lead, base: float, min_lead: float = MIN_LEAD) -> bool:
    """Whether a lead over a seed scoring ``base`` names the candidate: clear, and at least ``min_lead`` of it."""
    return lead.clear and lead.mean >= min_lead * base


def settled(lead: Lead, base: float, confirm_share: float = MIN_LEAD) -> bool:
    """Whether a lead over a seed scoring ``base`` decides the choice: it names the candidate (clear, and
    :data:`MIN_LEAD`), or falls short of what a confirmation would have to show (``confirm_share`` of the
    seed's score) even at :data:`LEAD_SE` standard errors above its mean (the seed). In between, the scores are
    too noisy to tell, and the rule trains both plans again in one segment (``_confirm``)."""
    reach = lead.mean + LEAD_SE * lead.se
    return carries(lead, base) or (math.isfinite(lead.se) and reach < confirm_share * base)


def _screen_settles(lead: Lead, base: float, confirming: bool) -> bool:
    """Whether the screen's lead (one order, its error bounded) decides without the seed's repeats: when it is
    clear, unless it falls short of :data:`MIN_LEAD` where a confirmation could still name the candidate (then
    the paired lead says whether to run it)."""
    return carries(lead, base) if confirming else lead.clear


def confirm_lead(ctx: SearchContext) -> float:
    """The lead, as a share of the seed's score, that the confirmation's scores must show to name the
    candidate: ``confirm_lead``, else :data:`MIN_LEAD`."""
    return MIN_LEAD if ctx.cfg.confirm_lead is None else ctx.cfg.confirm_lead


def _confirm_steps(ctx: SearchContext, top: int) -> int:
    """The confirmation's steps in one segment: ``confirm_steps`` (0: none); by default the top rung's ``top``,
    except where neither the confirmation's rows nor its lead are given and the rungs train afresh (it would
    only train the top rung again on the same rows: its top-rung scores are one segment's already)."""
    if ctx.cfg.confirm_steps is not None:
        return ctx.cfg.confirm_steps
    asked = ctx.cfg.confirm_calibration is not None or ctx.cfg.confirm_lead is not None
    return top if asked or not ctx.afresh else 0


def _confirm_is_repeats(ctx: SearchContext, again: int, top: int) -> bool:
    """Whether the confirmation's scores under its first orders are the top rung's repeats already: rungs
    trained afresh, the same steps, the search's own rows."""
    return ctx.afresh and again == top and ctx.cfg.confirm_calibration is None


def confirm_context(ctx: SearchContext) -> SearchContext:
    """The context the confirmation trains in: on ``confirm_calibration`` rows where given."""
    rows = ctx.cfg.confirm_calibration
    return ctx if rows is None else ctx.with_calibration(rows)


def confirm_rows(ctx: SearchContext) -> int | None:
    """The calibration rows the confirmation trains on, where ``confirm_calibration`` asks for its own (fewer than
    asked in a small cache); None where it trains on the search's."""
    return None if ctx.cfg.confirm_calibration is None else confirm_context(ctx).calib.n_train


def confirm_orders(ctx: SearchContext) -> range:
    """The confirmation's row orders: ``noise_seeds`` + 1 orders other than the search's own."""
    return range(ctx.cfg.seed + 1, ctx.cfg.seed + 2 + ctx.cfg.noise_seeds)


def confirm_scores(ctx: SearchContext, trials: Sequence[FrozenTrial], steps: int, known: Sequence[Sequence[float]]
             ) -> list[list[float]]:  # fmt: skip
    """Each of ``trials`` (the candidates and the seed) trained ``steps`` in one cosine segment (``straight_kd``)
    under ``noise_seeds`` + 1 row orders other than the search's own, the one the candidate was picked on (its
    luck there is the winner's curse, so those scores are left out), on ``confirm_calibration`` rows where given:
    each trial's scores, order by order. ``known[i]``: trial i's scores under the first of those orders,
    already measured the same way (the top rung's repeats where rungs train afresh), so not trained again. All
    the runs are scored together, several at once where cores allow."""
    ctx = confirm_context(ctx)
    orders = confirm_orders(ctx)
    plans = [p for t in trials if (p := scored_plan(t)) is not None]
    assert len(plans) == len(trials), "the plans confirmed reached the top rung, so they have a scored plan"
    jobs = [(p, order, steps, True) for p, have in zip(plans, known, strict=True) for order in orders[len(have) :]]
    rows = f" on {ctx.calib.n_train} rows" if ctx.cfg.confirm_calibration is not None else ""
    names = ", ".join(str(t.number) for t in trials[:-1]) + f" and {trials[-1].number}"
    scores = iter(_score_orders(ctx, jobs, f"too close to call: trials {names}, {steps} steps straight{rows}"))
    return [[*have, *(next(scores) for _ in orders[len(have) :])] for have in known]


def _seed_confirm(seed: SeedScores | None, anchor: int, steps: int) -> list[float]:
    """The seed's confirmation scores measured ahead, when they are this seed's after these steps."""
    return list(seed.confirm) if seed is not None and (seed.trial, seed.confirm_steps) == (anchor, steps) else []


def refill_of(candidate: FrozenTrial, anchor: FrozenTrial) -> bool:
    """Whether ``anchor`` is ``candidate``'s own refill (``anchor="sensitivity-refilled"``): the sensitivity seed
    against the refilled seed. Short KD reads the returned layer as a loss (the plans that end best at 30% of
    the bundled teacher's parameters start slowly: there the sensitivity seed led its refill by +26% at the top
    rung and ends 1.11x behind it), while distilled in full the refill ended better at five budgets on one
    search seed's sensitivities (1.03-1.58x, ``benchmarks/seed_variants.py``). So where the refill is the
    anchor, the sensitivity seed is never named over it."""
    return candidate.user_attrs.get("label") == SENSITIVITY and anchor.user_attrs.get("label") == REFILLED


def _decide(best: FrozenTrial, anchor: FrozenTrial, lead: Lead, seed_kd: Sequence[float], steps: int | None = None,
            rows: int | None = None, min_lead: float = MIN_LEAD) -> tuple[int, str]:  # fmt: skip
    """The chosen trial and the line that says why (``steps``, ``rows``: the confirmation's training the lead
    was measured after; ``min_lead``: the share of the seed's score a clear lead must reach)."""
    base = statistics.fmean(seed_kd)
    how = f"over {lead.orders} row orders (paired)" if lead.paired else "at one row order (its error bounded)"
    how += f" after {steps} steps in one segment" if steps is not None else ""
    how += f" on {rows} calibration rows" if rows is not None else ""
    seed = f"the {anchor.user_attrs.get('label', SENSITIVITY)} seed (trial {anchor.number})"
    said = f"trial {best.number} leads {seed} by {_percent(lead, base)} {how}"
    if carries(lead, base, min_lead):
        return best.number, f"{said}: more than {LEAD_SE:g} standard errors, so found.yaml names trial {best.number}"
    if lead.clear:
        return anchor.number, (f"{said}: clear, but under {100 * min_lead:.0f}% of the seed's score, less than "
                               "the proxy's error against full distillation, so found.yaml names the seed")  # fmt: skip
    return anchor.number, f"{said}: within {LEAD_SE:g} standard errors (noise), so found.yaml names the seed"


def runners_up(study: optuna.Study, anchor: FrozenTrial, steps: int, skip: set[int], n: int) -> list[FrozenTrial]:
    """Up to ``n`` sampled plans within budget that reached the top rung of ``steps``, best first, each within a
    fifth (:data:`MIN_LEAD`) of the seed's score there; none in ``skip`` (confirmed already)."""
    seed_first = (anchor.user_attrs.get("rung_kd") or {}).get(str(steps))
    if seed_first is None or n <= 0:
        return []
    near = [t for _, t in ranked_plans(feasible_trials(study))
            if t.number != anchor.number and t.number not in skip and not refill_of(t, anchor)
            and t.user_attrs.get("rung_steps") == steps
            and float(t.user_attrs["proxy_kd"]) <= (1 + MIN_LEAD) * float(seed_first)]  # fmt: skip
    return near[:n]


def _confirm_runners_up(study: optuna.Study, ctx: SearchContext, anchor: FrozenTrial, choice: dict[str, Any],
                        status: Callable[[str], None], seed: SeedScores | None) -> None:  # fmt: skip
    """Where ``choice`` names the seed, the confirmation of its runners-up (``confirm_runners_up``): each trained
    as the confirmation trains, against the seed's confirmation scores (trained once); the clearest lead that
    carries names its plan. Records each in ``choice['runners_up']``."""
    steps = int(choice["steps"])
    again = _confirm_steps(ctx, steps)
    if choice["chosen"] != anchor.number or again <= 0:
        return
    confirmed = choice.get("confirm")
    skip = {int(choice["candidate"])} if confirmed else set()
    runners = runners_up(study, anchor, steps, skip, ctx.cfg.confirm_runners_up)
    if not runners:
        return
    status(f"found: the seed, so its {len(runners)} runners-up at the top rung are trained {again} steps too")
    seed_long = list(confirmed["seed_kd"]) if confirmed else _seed_confirm(seed, anchor.number, again)
    rows = confirm_rows(ctx)
    *longer, seed_long = confirm_scores(ctx, [*runners, anchor], again, [*([] for _ in runners), seed_long])
    needed, made, named = confirm_lead(ctx), [], []
    for trial, cand_long in zip(runners, longer, strict=True):
        lead = paired_lead(cand_long, seed_long)
        chosen, why = _decide(trial, anchor, lead, seed_long, again, rows, needed)
        made.append({"trial": trial.number, "candidate_kd": cand_long, "lead": lead.mean,
                     "se": lead.se if math.isfinite(lead.se) else None, "named": chosen == trial.number})  # fmt: skip
        if chosen == trial.number:
            named.append((lead.mean, trial.number, why))
    choice["runners_up"] = {"steps": again, "rows": rows, "min_lead": needed, "seed_kd": seed_long, "trials": made}
    if named:
        _, number, why = max(named)
        choice |= {"chosen": number, "reason": why}
    else:
        choice["reason"] += f"; none of its {len(runners)} runners-up leads it clearly after {again} steps either"


def choose_found(study: optuna.Study, ctx: SearchContext, floor: dict[str, Any] | None,
                 status: Callable[[str], None] = lambda _m: None, scored: Repeats | None = None,
                 seed: SeedScores | None = None) -> dict[str, Any] | None:  # fmt: skip
    """Decide which plan ``found.yaml`` names and store why as the study's ``found_choice``: the best sampled
    plan when its lead over the sensitivity seed is clear (first against a bound from its noise floor alone,
    then, if that does not settle it, paired with the seed's scores under the same orders), else the seed.
    ``scored``: repeats measured already (:func:`prescore_repeats`); ``seed``: the seed's confirmation scores
    measured during the trials (:class:`SeedAhead`)."""
    best = best_quality_trial(study)
    if best is None or floor is None or floor.get("trial") != best.number:
        return None
    recorded = recorded_choice(study, best)
    if recorded is not None:
        return recorded
    anchor, steps, kd = _anchor(study), int(floor["steps"]), list(floor["kd"])[: 1 + ctx.cfg.noise_seeds]
    choice: dict[str, Any] = {"candidate": best.number, "steps": steps, "candidate_kd": kd,
                              "rule": f"lead > {LEAD_SE:g} SE"}  # fmt: skip
    if anchor is None or anchor.number == best.number:
        label = anchor_label(study)
        why = f"the {label} seed scored best" if anchor else f"the study has no {label} seed to compare with"
        choice |= {"chosen": best.number, "reason": why}
    elif refill_of(best, anchor):
        why = (f"trial {best.number}, the {SENSITIVITY} seed, scored best, but the anchor is its refill (the "
               f"{REFILLED} seed, trial {anchor.number}), whose returned layer short KD reads as a loss where full "
               f"distillation read a gain, so found.yaml names the {REFILLED} seed")  # fmt: skip
        choice |= {"seed": anchor.number, "chosen": anchor.number, "reason": why}
    else:
        first = (anchor.user_attrs.get("rung_kd") or {}).get(str(steps))
        again, needed = _confirm_steps(ctx, steps), confirm_lead(ctx)
        lead = screened_lead(kd, first) if first is not None else None
        seed_kd = [float(first)] if first is not None else []
        if lead is None or not _screen_settles(lead, seed_kd[0], again > 0):
            seed_kd = _repeats(ctx, anchor, steps, f"the found plan against the seed: trial {anchor.number}", scored)
            lead = paired_lead(kd, seed_kd)
        chosen, why = _decide(best, anchor, lead, seed_kd)
        se = lead.se if math.isfinite(lead.se) else None  # JSON has no NaN
        choice |= {"seed": anchor.number, "seed_kd": seed_kd, "lead": lead.mean, "se": se,
                   "paired": lead.paired, "chosen": chosen, "reason": why}  # fmt: skip
        if lead.paired and not settled(lead, statistics.fmean(seed_kd), needed) and again > 0:
            status(f"found: {why.split(':')[0]}: too close to call, both trained {again} steps again")
            ahead = _seed_confirm(seed, anchor.number, again)
            known = (kd[1:], seed_kd[1:]) if _confirm_is_repeats(ctx, again, steps) else ((), ahead)
            cand_long, seed_long = confirm_scores(ctx, [best, anchor], again, known)
            longer = paired_lead(cand_long, seed_long)
            rows = confirm_rows(ctx)
            chosen, why = _decide(best, anchor, longer, seed_long, again, rows, needed)
            confirm = {"steps": again, "rows": rows, "min_lead": needed, "candidate_kd": cand_long,
                       "seed_kd": seed_long, "lead": longer.mean,
                       "se": longer.se if math.isfinite(longer.se) else None}  # fmt: skip
            choice |= {"chosen": chosen, "reason": why, "confirm": confirm}
    if anchor is not None and ctx.cfg.confirm_runners_up > 0:
        _confirm_runners_up(study, ctx, anchor, choice, status, seed)
    choice["tie_margin"] = tie_margin(kd, choice.get("seed_kd") if choice.get("paired") else None)
    study.set_user_attr("found_choice", choice)
    status(f"found: {choice['reason']}")
    return choice
