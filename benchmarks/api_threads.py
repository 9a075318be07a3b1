"""The README's Python API block with torch's default threads, with ``pruner.threads("auto")``, and as the CLI.

The library leaves torch's thread count alone (a caller's setting is the caller's), while the CLI picks one
thread on machines with two cores or fewer, where thread wake-ups cost a tiny UNet more than they give. This
runs the block's search and distill (``pruner.search("tiny-sdxl", budget="50%", trials=4, proxy_steps=6,
calibration=32, held_out=32)`` then ``pruner.distill(result.found, output=..., steps=10)``) three ways in one
run and prints seconds and the ratio to the first row. The default-threads row runs first, so it also pays
what a first run pays (reading the bundled teacher and data from disk): the ratios are not flattered.

    python benchmarks/api_threads.py                 # a few minutes on a 2-core machine
    python benchmarks/api_threads.py --no-cli --trials 2
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import pruner
from pruner.runtime import auto_threads


def api_block(out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds of the block's search and of its distill, through the Python API."""
    start = time.perf_counter()
    result = pruner.search("tiny-sdxl", budget=args.budget, trials=args.trials, proxy_steps=args.proxy_steps,
                           calibration=args.rows, held_out=args.rows)  # fmt: skip
    searched = time.perf_counter()
    pruner.distill(result.found, output=out / "student", steps=args.steps)
    return searched - start, time.perf_counter() - searched


def cli_block(out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds of the same search and distill as two ``pruner`` commands (start-up included)."""
    search = ["search", "--budget", args.budget, "--trials", str(args.trials), "--proxy-steps", str(args.proxy_steps),
              "--calibration", str(args.rows), "--held-out", str(args.rows), "--out", str(out / "recipes"),
              "--storage", f"sqlite:///{out / 'study.db'}"]  # fmt: skip
    found = str(out / "recipes" / "found.yaml")
    distill = ["distill", found, "--output", str(out / "student"), "--steps", str(args.steps)]
    times = []
    for argv in (search, distill):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pruner", *argv], cwd=out, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


@contextlib.contextmanager
def caller_default() -> Iterator[int]:
    """torch's own setting, as a Python caller who did not ask for any gets it."""
    yield torch.get_num_threads()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="50%")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--proxy-steps", type=int, default=6)
    p.add_argument("--rows", type=int, default=32, help="calibration= and held_out= rows")
    p.add_argument("--steps", type=int, default=10, help="distill steps")
    p.add_argument("--no-cli", action="store_true", help="skip the CLI row")
    args = p.parse_args()
    variants: list[tuple[str, contextlib.AbstractContextManager[int]]] = [
        ("API, torch's default threads", caller_default()),
        ('API, with pruner.threads("auto")', pruner.threads("auto")),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pruner-api-threads-") as tmp:
        for i, (label, threads) in enumerate(variants):
            with threads as n:
                rows.append((label, n, *api_block(Path(tmp) / str(i), args)))
        if not args.no_cli:
            (Path(tmp) / "cli").mkdir()
            rows.append(("CLI (pruner search, pruner distill)", auto_threads(),
                         *cli_block(Path(tmp) / "cli", args)))  # fmt: skip
    base = rows[0][2] + rows[0][3]
    print(f"{'variant':38} {'threads':>7} {'search s':>9} {'distill s':>9} {'total s':>8} {'speed-up':>8}")
    for label, n, search_s, distill_s in rows:
        total = search_s + distill_s
        print(f"{label:38} {n:>7} {search_s:>9.1f} {distill_s:>9.1f} {total:>8.1f} {base / total:>7.2f}x")


if __name__ == "__main__":
    main()
