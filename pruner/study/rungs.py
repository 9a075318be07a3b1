"""The search's rung policy: at which fidelities a plan is scored, and which plans go on to the next.

Successive halving inside the trial, with ASHA's asynchronous rule: every plan is scored zero-shot, the
better half of the plans of similar cost (within ``PEER_MACS`` of its MACs) get ``proxy_steps`` of KD,
the best third of those get ``top_steps``, trained again from the pruned student in one cosine segment (the
top rung costs ``proxy_steps`` more than continuing would, and scores what one segment gives). A trial that
falls behind is stopped (PRUNED) with the scores it reached (user attribute ``rung_kd``: held-out KD by
steps), so completed trials are all at the top fidelity. Heuristic seeds always get past the zero-shot rung,
so every baseline gets a trained score, and the anchor (``ANCHORS``: the sensitivity seed, and its refill where
that is the anchor) reaches the top rung: it is the bar the found plan is held to there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna

from pruner.study.heuristics import ANCHORS
from pruner.study.proxy import ProxyRun

__all__ = ["KEEP", "PEER_MACS", "promote", "record_rung", "rung_steps", "score_in_rungs"]

KEEP = (1 / 2, 1 / 3)  # share of plans of similar cost promoted from rung 0 (zero-shot), then from each later rung
PEER_MACS = 0.15  # plans within this relative MACs distance compete for promotion


def rung_steps(proxy_steps: int, top_steps: int | None) -> tuple[int, ...]:
    """KD steps at each fidelity: 0 (zero-shot), ``proxy_steps``, ``top_steps`` (default 10/3 of
    ``proxy_steps``), dropping empty rungs."""
    top = round(proxy_steps * 10 / 3) if top_steps is None else top_steps
    return tuple(sorted({0, proxy_steps, max(proxy_steps, top)}))


def _rung_peers(trial: optuna.Trial, steps: int, macs: int) -> list[float]:
    """Held-out KD at ``steps`` of every other plan of similar cost that reached that rung."""
    key = str(steps)
    return [t.user_attrs["rung_kd"][key] for t in trial.study.get_trials(deepcopy=False)
            if t.number != trial.number and key in (t.user_attrs.get("rung_kd") or {})
            and not t.user_attrs.get("skipped")
            and abs(t.user_attrs.get("macs", 0) - macs) <= PEER_MACS * macs]  # fmt: skip


def record_rung(trial: optuna.Trial, steps: int, kd: float) -> None:
    """The held-out KD after ``steps``: added to ``rung_kd``, and the trial's score so far (``proxy_kd``)."""
    trial.set_user_attr("rung_kd", {**(trial.user_attrs.get("rung_kd") or {}), str(steps): kd})
    trial.set_user_attr("rung_steps", steps)
    trial.set_user_attr("proxy_kd", kd)


def promote(trial: optuna.Trial, rung: int, steps: int, kd: float, macs: int, seeded: bool) -> None:
    """Record the rung's score; stop the trial (PRUNED) unless it is among the best ``KEEP[rung]`` of the
    plans of similar cost scored at this rung so far (itself included). Seeds always go on from rung 0 (every
    baseline gets a trained score); higher, they compete like any plan."""
    record_rung(trial, steps, kd)
    if seeded and rung == 0:
        return
    peers = sorted([*_rung_peers(trial, steps, macs), kd])
    keep = math.ceil(len(peers) * KEEP[min(rung, len(KEEP) - 1)])
    if kd > peers[keep - 1]:
        trial.set_user_attr("stopped_at", steps)
        raise optuna.TrialPruned(f"held-out KD {kd:.4g} after {steps} steps is not in the best {keep} of {len(peers)}")


def score_in_rungs(trial: optuna.Trial, run: ProxyRun, rungs: Sequence[int], macs: int, afresh: bool = True
                   ) -> float:  # fmt: skip
    """Held-out KD of ``run``'s plan at each rung in turn, stopping (PRUNED) where the plan falls behind its
    peers; the run trains on the same rows in the same order for every plan (common random numbers). Each
    rung trains the freshly built student for its steps in one cosine segment (``afresh``), or continues the
    student of the rung below with a warm restart (how studies that recorded no schedule were scored)."""
    label = trial.user_attrs.get("label")
    with run:
        kd = run.held_out()
        trial.set_user_attr("zero_shot_kd", kd)
        for rung, steps in enumerate(rungs):
            if steps and afresh and run.steps:
                run.restart()
            kd = run.train_to(steps) if steps else kd
            if rung == len(rungs) - 1:
                break
            if label in ANCHORS:  # the bar to beat (and the one-shot seed) at the top rung: never stopped
                record_rung(trial, steps, kd)
            else:
                promote(trial, rung, steps, kd, macs, seeded=label is not None)
    record_rung(trial, rungs[-1], kd)
    return kd
