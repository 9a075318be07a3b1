"""Trial bookkeeping for one study shared by any number of workers: no plan scored twice, exactly ``--trials``.

Every worker runs the same loop (:func:`run_worker`). A trial first *claims a slot* (the ``slot`` user
attribute), then reads the study: when the finished counted trials plus the other claimants already
fill ``--trials`` it steps aside. After repair it *claims its plan* (``plan_key``, a digest of the repaired
plan, the one actually scored) and steps aside when any other trial holds or held the same key. Claiming
before reading means that of two racing trials at least the later reader sees the other; when both see
each other both step aside and the loop samples again, so a plan is never scored twice and the study
never overshoots. A trial that steps aside is PRUNED with a ``skipped`` reason and does not count.

Each worker's sampler gets its own seed (:func:`worker_seed`), so workers do not sample alike, and the
settings a study was created with are recorded once and checked by every later run (:func:`check_settings`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pruner.errors import PrunerError
from pruner.study.storage import fail_stale, heartbeat, heartbeat_interval, retry_trial, with_retries
from pruner.unet.plan import Plan

__all__ = [
    "CHECKED_SETTINGS",
    "check_settings",
    "claim_plan",
    "claim_slot",
    "counted",
    "plan_key",
    "retry_failed",
    "run_worker",
    "worker_seed",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# a rerun or a joining worker that differs in these is refused (calibration, held_out and seed fix the rows
# every plan is scored on: workers that differ there would score plans that cannot be compared)
CHECKED_SETTINGS = ("teacher", "budget", "space", "objectives", "rungs", "calibration", "held_out", "seed")
MAX_SKIPS = 200  # consecutive duplicate plans after which a worker concludes the space is exhausted


def plan_key(plan: Plan) -> str:
    """A short digest naming a plan: its removed units and feed-forward widths, order-free."""
    canonical = json.dumps({"removed": sorted(plan.removed), "ff_keep": sorted(plan.ff_keep)})
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]


def counted(trial: FrozenTrial) -> bool:
    """A finished trial that counts toward ``--trials`` (not one that stepped aside)."""
    skipped = trial.user_attrs.get("skipped") or trial.user_attrs.get("duplicate_of") is not None
    return trial.state in FINISHED and not skipped


def _live_claim(trial: FrozenTrial, attr: str) -> bool:
    return trial.state == TrialState.RUNNING and attr in trial.user_attrs and not trial.user_attrs.get("skipped")


def _step_aside(trial: optuna.Trial, reason: str, message: str, **attrs: Any) -> None:
    trial.set_user_attr("skipped", reason)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    raise optuna.TrialPruned(message)


def claim_slot(trial: optuna.Trial, total: int) -> None:
    """Step aside (PRUNED, ``skipped: surplus``) when finished and running trials already fill ``total``."""
    trial.set_user_attr("slot", True)
    others = [t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number]
    taken = sum(counted(t) or _live_claim(t, "slot") for t in others)
    if taken >= total:
        _step_aside(trial, "surplus", f"the study already holds or runs {taken} of {total} trials")


def claim_plan(trial: optuna.Trial, key: str) -> None:
    """Step aside (PRUNED, ``skipped: duplicate``) when another trial scores or scored the same plan."""
    trial.set_user_attr("plan_key", key)
    same = [t.number for t in trial.study.get_trials(deepcopy=False)
            if t.number != trial.number and t.user_attrs.get("plan_key") == key
            and (counted(t) or _live_claim(t, "plan_key"))]  # fmt: skip
    if same:
        _step_aside(trial, "duplicate", f"plan already scored by trial {min(same)}", duplicate_of=min(same))


def worker_seed(study: optuna.Study, base: int) -> int:
    """``base`` plus this worker's index among the workers that joined the study, so no two workers
    sample alike; a lone first worker keeps ``base`` (reproducible). Each worker records itself as a
    ``worker:...`` user attribute with its start time before reading the others."""
    me = f"worker:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    study.set_user_attr(me, time.time())
    joined = sorted((v, k) for k, v in study.user_attrs.items() if k.startswith("worker:"))
    return base + [k for _, k in joined].index(me)


def check_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    """Refuse, in one line, a run whose teacher, budget, space, objectives, rungs or calibration rows differ
    from the ones the study was created with (a rerun that silently continues would label its recipes
    wrongly, or rank plans scored on other rows)."""
    recorded = study.user_attrs.get("search") or {}
    for key in CHECKED_SETTINGS:
        if key in recorded and _same(recorded[key]) != _same(settings[key]):
            raise PrunerError(
                f"study {study.study_name!r} was created with {key} {_shown(recorded[key])}, not "
                f"{_shown(settings[key])}; rerun with the study's {key} or pass another study="
            )


def _same(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else repr(value)


def retry_failed(study: optuna.Study) -> int:
    """Enqueue again the plans of failed trials nobody retried (a Ctrl-C, a storage outage, a worker of an
    earlier run killed where no heartbeat noticed); returns how many."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.user_attrs.get("retry_history", [])}
    failed = [t for t in trials if t.state == TrialState.FAIL and "slot" in t.user_attrs and t.number not in retried]
    return sum(retry_trial(study, t) for t in failed)


def _progress(study: optuna.Study) -> tuple[int, int]:
    """(counted finished trials, running claimants) of the study now."""
    trials = study.get_trials(deepcopy=False)
    return sum(counted(t) for t in trials), sum(_live_claim(t, "slot") for t in trials)


def run_worker(study: optuna.Study, storage: Any, objective: Callable[[optuna.Trial], Sequence[float]], total: int,
               callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:  # fmt: skip
    """Run trials until the study holds ``total`` counted finished trials. While the others' running trials
    fill the rest, wait for them (a dead worker's trial fails after its heartbeat goes stale, and its plan
    is enqueued again for whoever is waiting)."""
    url = getattr(storage, "url", "")  # an RDB storage's URL: names the file of a full disk (the journal names its own)
    with_retries(lambda: fail_stale(study, storage), "checking for dead workers", url=url)
    with_retries(lambda: retry_failed(study), "re-enqueueing failed trials", url=url)
    mine: list[int] = []

    def run(trial: optuna.Trial) -> Sequence[float]:
        mine.append(trial.number)
        with heartbeat(trial, storage):
            return objective(trial)

    skips, poll = 0, min(2.0, heartbeat_interval() / 2)
    while skips < MAX_SKIPS:
        done, running = with_retries(lambda: _progress(study), "reading the study", url=url)
        if done >= total:
            return
        if done + running >= total:  # the rest is running elsewhere: wait, in case a worker dies
            with_retries(lambda: fail_stale(study, storage), "checking for dead workers", url=url)
            time.sleep(poll)
            continue
        with_retries(lambda: study.optimize(run, n_trials=1, callbacks=list(callbacks), catch=()), "running a trial",
                     url=url)  # fmt: skip
        skips = skips + 1 if _skipped_as_duplicate(study, mine[-1]) else 0
    print(f"stopping: the last {MAX_SKIPS} plans sampled were all scored already (the space holds few new plans)",
          file=sys.stderr)  # fmt: skip


def _skipped_as_duplicate(study: optuna.Study, number: int) -> bool:
    trial = study.get_trials(deepcopy=False)[number]
    return trial.user_attrs.get("skipped") == "duplicate"
