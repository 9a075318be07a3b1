"""What the found-plan rule costs the quick start's search: its repeats scored side by side and the seed's share
measured during the trials (the default where the search leaves a core idle:
``pruner.study.choice.repeat_workers``, ``SeedAhead``) against one by one, without the confirmation of a lead
too close to call (``--confirm-steps 0``), the search without the rule's seed repeats at all (``noise_seeds``
repeats of the found plan only, as before the rule), the search whose top rung continues from the first (a
warm restart) instead of training the fresh student (as before December 2026), the search with the longer
confirmation (``--confirm-steps 300``: 300 steps on the default 384 rows), and the search that measures the
seed's share after the trials (no ``SeedAhead``).

Each mode runs ``pruner search --budget 50% --trials 12`` (the README's main job) in a fresh folder of its own, one
after another in one run (the machine is noisy: compare the ratios). Prints a table: the search's wall seconds,
the seconds of its after-trials scoring (noise floor and the seed), and the choice it made.

    python benchmarks/found_rule_cost.py [--budget 50%] [--trials 12] [--modes 0 1] [--markdown table.md]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {  # name: (code run before the CLI, extra arguments)
    "side by side (default)": ("", []),
    "no confirmation": ("", ["--confirm-steps", "0"]),
    "one by one": ("from pruner.study import choice; choice.repeat_workers = lambda ctx, jobs: 1\n", []),
    "no seed repeats (before the rule)": (
        "from pruner.study import choice, study\n"
        "choice.repeat_workers = lambda ctx, jobs: 1\n"
        "study.prescore_repeats = lambda s, ctx, seed=None: {}\n"
        "study.choose_found = lambda *a, **k: None\n",
        [],
    ),
    "rungs continued (before rungs trained afresh)": (
        "from pruner.study import study\nfrom pruner.study.context import CONTINUED\n"
        "study.proxy_schedule = lambda s: CONTINUED\n",
        [],
    ),
    "the longer confirmation (300 steps)": ("", ["--confirm-steps", "300"]),
    "the seed's share after the trials": (
        "from pruner.study import choice\nchoice.SeedAhead.__call__ = lambda self, study, trial: None\n",
        [],
    ),
}
BAR = re.compile(
    r"(noise floor[^:\r\n]*|the found plan against the seed|too close to call)[^\r\n]*?100%\|[^\r\n]*?\[(\d+):(\d+)<"
)


def run(mode: str, patch: str, extra: list[str], args: argparse.Namespace, work: Path) -> tuple[float, float, str]:
    """(wall seconds, after-trials scoring seconds, the found line) of one search in ``work``."""
    argv = ["pruner", "search", "--budget", args.budget, "--trials", str(args.trials), *extra]
    code = patch + f"import sys\nfrom pruner.cli import app\nsys.argv = {argv!r}\napp()\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode}: exit {done.returncode}\n{done.stderr[-2000:]}")
    bars: dict[str, float] = {}
    for m in BAR.finditer(done.stderr):
        bars[m.group(1)] = 60 * int(m.group(2)) + int(m.group(3))  # a bar's last 100% line per bar
    found = next((ln.strip() for ln in done.stderr.splitlines()[::-1] if ln.strip().startswith("found: trial")), "-")
    return wall, sum(bars.values()), found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="50%")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--modes", type=int, nargs="+", default=list(range(len(MODES))), help="which (0: " +
                   ", ".join(f"{i}: {m}" for i, m in enumerate(MODES))[3:] + "); the last is the base")  # fmt: skip
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    rows = []
    for mode, (patch, extra) in [list(MODES.items())[i] for i in args.modes]:
        with tempfile.TemporaryDirectory(prefix="rule-cost-") as work:
            wall, after, found = run(mode, patch, extra, args, Path(work))
        rows.append((mode, wall, after, found))
        print(f"{mode}: {wall:.0f} s, after the trials {after:.0f} s", flush=True)
    base = rows[-1][1]
    lines = [f"`pruner search --budget {args.budget} --trials {args.trials}`, {os.cpu_count()} cores", "",
             f"| mode | search s | vs {rows[-1][0]} | after-trials scoring s | found |",
             "|---|---:|---:|---:|---|"]  # fmt: skip
    for m, w, a, f in rows:
        lines.append(f"| {m} | {w:.0f} | {w / base:.2f}x | {a:.0f} | {f.removeprefix('found: ')[:160]} |")
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
