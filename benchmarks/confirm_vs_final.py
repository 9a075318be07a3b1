"""How well the found-plan rule's long confirmation predicts the plans' final KD: every confirmed plan whose
distillation was measured beside the seed's, its confirmation lead against its final lead.

The confirmation (``--confirm-steps``, ``pruner.study.choice``) trains a plan and the sensitivity seed again
under three fresh row orders and names the plan on a clear lead. This reads what the decisions already stored
(``found_rule.py``'s ``decided-*.json`` and ``--trials`` output ``runners-up-*.json``), maps each trial to its
plan through the search's journal, and sets its lead beside its final lead over the seed on the means of the
distillation seeds (``final_noise.py``'s ``noise-*.json``). Nothing is trained; it prints a table, the rank
correlation, and where a lead threshold would have named only plans that ended ahead.

    python benchmarks/confirm_vs_final.py benchmarks/results/long_confirmation/confirm1000
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
from search_vs_heuristics import kendall_tau

RESULTS = Path(__file__).parent / "results"
# where the searches' journals and the distilled plans' means are kept, by budget
JOURNALS = ["long_confirmation", "search_oracle", "search_oracle_seeds"]
MEANS = {
    "20%": ["long_confirmation/noise-20%.json", "runners_up_20/noise-20%.json"],
    "30%": [
        "search_oracle/noise-30%.json",
        "search_oracle_seeds/noise-30%.json",
        "moves_runners_up/noise-30%.json",
        "runners_up_30/noise-30%.json",
        "moves_runners_up_34/noise-30%.json",
    ],
    "40%": ["long_confirmation/noise-40%.json", "runners_up_40/noise-40%.json", "moves_runners_up_40/noise-40%.json"],
    "50%": ["search_oracle/noise-50%.json", "search_oracle_seeds/noise-50%.json"],
}
# journals named apart from their searches' decisions (and their study, where it is not the journal's name)
STUDIES = {"40%-seed": ("s40-seed", "tiny-sdxl-40-default"), "40%-refill-seed": ("s40-refill-seed", None)}


@dataclass(frozen=True)
class Confirmed:
    """One plan's confirmation against the seed, and (where both were distilled) its final lead."""

    search: str
    budget: str
    trial: int
    key: str
    lead: float  # the confirmation's, a share of the seed's mean there
    se: float
    final: float | None  # the final KD's lead over the seed on the means, a share of the seed's


def study_of(search: str) -> optuna.Study:
    """The search's study, read from a copy of its kept journal."""
    journal, name = search, search
    for part, (file_part, study_name) in STUDIES.items():
        if part in search:
            journal = search.replace(part, file_part)
            name = study_name or journal
    found = [RESULTS / d / f"{journal}.log.gz" for d in JOURNALS if (RESULTS / d / f"{journal}.log.gz").exists()]
    if not found:
        raise SystemExit(f"no journal kept for {search} under {RESULTS}")
    copy = Path(tempfile.mkdtemp()) / "study.log"
    copy.write_bytes(gzip.decompress(found[0].read_bytes()))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(copy)))
    return optuna.load_study(study_name=name, storage=storage)


def final_lead(budget: str, key: str, seed_key: str) -> float | None:
    """``key``'s final lead over ``seed_key`` from the first means that hold both."""
    for file in MEANS.get(budget, []):
        mean = json.loads((RESULTS / file).read_text())["mean"]
        if key in mean and seed_key in mean:
            return (mean[seed_key] - mean[key]) / mean[seed_key]
    return None


def confirmed_in(path: Path) -> list[Confirmed]:
    """The confirmations one stored decision (or ``--trials`` reading) holds."""
    stored = json.loads(path.read_text())
    search = path.stem.removeprefix("decided-").removeprefix("runners-up-")
    budget = next(part for part in search.replace("seed", "").split("-") if part.endswith("%"))
    study = study_of(search)
    keys = {t.number: t.user_attrs.get("plan_key") for t in study.trials}
    choice = stored.get("found_choice", stored)
    seed = int(choice.get("seed", 0))
    rows: list[tuple[int, float, float]] = []  # trial, lead and its SE as shares of the seed's mean
    if "confirm" in choice:
        c = choice["confirm"]
        rows.append((int(choice["candidate"]), *_shares(c["lead"], c["se"], c["seed_kd"])))
    for t in (choice.get("runners_up") or {}).get("trials", []):
        rows.append((t["trial"], *_shares(t["lead"], t["se"], choice["runners_up"]["seed_kd"])))
    for number, t in (stored.get("trials") or {}).items():  # --trials readings: shares already
        rows.append((int(number), t["lead"], t["se"] or 0.0))
    seed_key = str(keys[seed])
    return [Confirmed(search, budget, trial, str(keys[trial]), lead, se, final_lead(budget, str(keys[trial]), seed_key))
            for trial, lead, se in rows]  # fmt: skip


def _shares(lead: float, se: float | None, seed_kd: list[float]) -> tuple[float, float]:
    base = statistics.fmean(seed_kd)
    return lead / base, (se or 0.0) / base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of decided-*.json / runners-up-*.json")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seen: dict[tuple[str, str, float], Confirmed] = {}
    for folder in args.folders:
        for path in sorted(folder.glob("*.json")):
            for c in confirmed_in(path):  # a plan read twice under the same orders (one search seed): once
                seen.setdefault((c.budget, c.key, round(c.lead, 6)), c)
    rows = sorted(seen.values(), key=lambda c: -c.lead)
    print("| search | trial | plan | confirmation lead | final lead over the seed |")
    print("|---|---:|---|---:|---:|")
    for c in rows:
        final = "not distilled" if c.final is None else f"{100 * c.final:+.1f}%"
        print(f"| {c.search} | {c.trial} | {c.key[:8]} | {100 * c.lead:+.1f}% ± {100 * c.se:.1f}% | {final} |")
    both = [c for c in rows if c.final is not None]
    print(
        f"\n{len(both)} of {len(rows)} confirmed plans distilled beside the seed; Kendall tau of the confirmation's "
        f"lead against the final lead: {kendall_tau([c.lead for c in both], [c.final for c in both]):.2f}"
    )
    worst = max((c for c in both if c.final < 0), key=lambda c: c.lead, default=None)  # type: ignore[operator]
    if worst is not None:
        print(
            f"the largest lead of a plan that ends behind the seed: {100 * worst.lead:+.2f}% ({worst.key[:8]}, "
            f"{worst.search}; ends {100 * worst.final:+.1f}%)"
        )  # type: ignore[operator]
    for threshold in (0.08, 0.10, 0.12, 0.15, 0.20):
        named = [c for c in both if c.lead >= threshold and c.lead > 2 * c.se]
        behind = [c for c in named if c.final < -0.02]  # type: ignore[operator]
        missed = [c for c in both if c not in named and c.final > 0.02]  # type: ignore[operator]
        print(
            f"lead >= {threshold:.0%} and 2 SE: names {len(named)}, {len(behind)} of them ending over 2% behind "
            f"the seed; leaves {len(missed)} that end over 2% ahead of it"
        )


if __name__ == "__main__":
    main()
