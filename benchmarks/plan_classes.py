"""How often a search's trials tried a class of plan: the oracle's best class at 50% (the mid block and one
ResNet of ``down_blocks.2`` removed, the attention mostly kept) by default.

The oracle's best plans at 50% of the bundled teacher are all of one class, and the first main job found one
of them; today's quick start did not. This reads the studies a search kept (journal files, gzipped or not,
opened read-only from a temporary copy) and prints, per study, how many trials removed the mid block and
exactly ``--resnets`` ResNets, all under ``--resnet-prefix``, with each such trial's origin and proxy KD. No
training: it reads what the searches recorded.

    python benchmarks/plan_classes.py benchmarks/results/search_oracle/default-*50%*.log.gz \\
        benchmarks/results/search_oracle_seeds/*50%*.log.gz benchmarks/results/long_confirmation/quickstart-50%.log.gz
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import optuna

from pruner.study.storage import open_storage


@dataclass
class Tried:
    """One trial of a study: its number, what it removed, where it came from and its proxy KD (None: stopped
    before any score, or failed)."""

    number: int
    removed: list[str]
    origin: str
    proxy_kd: float | None


def of_class(removed: Iterable[str], resnets: int, prefix: str) -> bool:
    """Whether a plan removes the mid block and exactly ``resnets`` ResNet layers, every one under ``prefix``."""
    removed = list(removed)
    layers = [u for u in removed if ".resnets." in u]
    return "mid_block" in removed and len(layers) == resnets and all(u.startswith(prefix) for u in layers)


def tried(trial: optuna.trial.FrozenTrial) -> Tried:
    """What a search recorded of one trial."""
    ua = trial.user_attrs
    origin = ua.get("label") or ua.get("origin") or "sampled"
    return Tried(trial.number, list(ua["removed"]), origin, ua.get("proxy_kd"))


def trials_of(journal: Path) -> dict[str, list[Tried]]:
    """Every study in a journal file (a ``.gz`` one is read from a decompressed copy), its trials in order."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / journal.name.removesuffix(".gz")
        with gzip.open(journal) if journal.suffix == ".gz" else journal.open("rb") as src, copy.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        storage = open_storage(f"journal:{copy}", repair=False)
        studies = {}
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            studies[summary.study_name] = [tried(t) for t in study.trials if t.user_attrs.get("removed") is not None]
    return studies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("journals", nargs="+", type=Path, help="journal files a search wrote (.log or .log.gz)")
    p.add_argument("--resnets", type=int, default=1, help="ResNet layers the class removes")
    p.add_argument("--resnet-prefix", default="down_blocks.2.resnets.", help="where those ResNet layers lie")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"class: the mid block and {args.resnets} ResNet layer(s) under {args.resnet_prefix} removed")
    print(f"{'journal':<36}{'study':<28}{'trials':>7}{'of the class':>14}  the first (trial, origin, proxy KD)")
    for journal in args.journals:
        for name, tried in trials_of(journal).items():
            hits = [t for t in tried if of_class(t.removed, args.resnets, args.resnet_prefix)]
            first = ", ".join(
                f"{t.number} ({t.origin[:32]}, {t.proxy_kd:.5f})" if t.proxy_kd is not None else f"{t.number}"
                for t in hits[:3]
            )
            print(f"{journal.name:<36}{name[:27]:<28}{len(tried):>7}{len(hits):>14}  {first}")


if __name__ == "__main__":
    main()
