"""Search throughput with 1 and 2 workers on one study, per storage: trials per minute and the time each trial
spends in storage calls. Prints one table.

    python benchmarks/workers.py                                  # bundled teacher, CPU, one thread a worker
    python benchmarks/workers.py --storages postgresql --workers 1,2,4 --trials 16
    CUDA_VISIBLE_DEVICES=... : on a GPU machine pass --gpus 0,1 to give worker k the GPU k (one per GPU)

Each worker is ``pruner search`` in its own process, with every public method of Optuna's RDB and journal
storages timed (the main thread's calls: the time a trial waits on the storage; the heartbeat thread
beats beside the work). Trials per minute are counted trials over the time from the first trial's start to
the last one's end, so loading the teacher and building the calibration (which every worker does) are left out.
PostgreSQL runs as a throwaway local server (``initdb``/``pg_ctl``; see pruner/study/pgtemp.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _timed(method: Callable[..., Any], totals: dict[str, float], depth: threading.local) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread() or getattr(depth, "n", 0):
            return method(*args, **kwargs)
        depth.n, start = 1, time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            depth.n = 0
            totals["seconds"] += time.perf_counter() - start
            totals["calls"] += 1

    return wrapper


def worker(report: Path, argv: list[str]) -> None:
    """Run ``pruner search`` in this process with the storages' public methods timed; write the totals."""
    import atexit

    from optuna.storages import JournalStorage, RDBStorage

    totals, depth = {"seconds": 0.0, "calls": 0}, threading.local()
    for cls in (RDBStorage, JournalStorage):
        for name, method in list(vars(cls).items()):
            if callable(method) and not name.startswith("_"):
                setattr(cls, name, _timed(method, totals, depth))
    atexit.register(lambda: report.write_text(json.dumps(totals)))
    import runpy

    sys.argv = ["pruner", *argv]
    runpy.run_module("pruner", run_name="__main__")  # `python -m pruner search ...`, as a user runs it


def _storage_url(kind: str, folder: Path, postgres: str | None, name: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / (name + '.db')}"
    if kind == "journal":
        return f"journal:{folder / (name + '.log')}"
    assert postgres is not None
    return postgres


def run(kind: str, n: int, args: argparse.Namespace, folder: Path, postgres: str | None) -> dict[str, Any]:
    """``n`` workers on a new study in ``kind``; returns trials per minute and storage ms per trial."""
    import optuna

    from pruner.study.storage import storage_of
    from pruner.study.workers import counted

    name = f"bench-{kind}-{n}"
    url = _storage_url(kind, folder, postgres, name)
    base = ["search", "--trials", str(args.trials), "--proxy-steps", str(args.proxy_steps), "--storage", url,
            "--study", name, "--budget", args.budget, "--calibration", str(args.calibration), "--held-out",
            str(args.held_out), *(["--data", args.data] if args.data else [])]  # fmt: skip
    procs, reports = [], []
    for k in range(n):
        env = {**os.environ, "PRUNER_THREADS": "1", "OMP_NUM_THREADS": "1"}
        if args.gpus:
            env["CUDA_VISIBLE_DEVICES"] = args.gpus.split(",")[k % len(args.gpus.split(","))]
        reports.append(folder / f"{name}-{k}.json")
        cmd = [sys.executable, __file__, "--worker", str(reports[-1]), *base, "--out", str(folder / f"{name}-{k}")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, stderr = p.communicate()
        assert p.returncode == 0, stderr[-3000:]
    trials = optuna.load_study(study_name=name, storage=storage_of(url)).trials
    ran = [t for t in trials if t.datetime_complete is not None and t.datetime_start is not None]
    span = (max(t.datetime_complete for t in ran) - min(t.datetime_start for t in ran)).total_seconds()
    storage_s = sum(json.loads(r.read_text())["seconds"] for r in reports)
    done = sum(counted(t) for t in trials)
    return {"storage": kind, "workers": n, "trials": done, "per_min": 60 * done / span,
            "storage_ms": 1000 * storage_s / max(1, len(ran)), "span_s": span}  # fmt: skip


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storages", default="sqlite,journal,postgresql")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, each on a new study")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--proxy-steps", type=int, default=10)
    parser.add_argument("--budget", default="50%")
    parser.add_argument("--calibration", type=int, default=96, help="calibration rows (pruner search's default)")
    parser.add_argument("--held-out", type=int, default=128, help="held-out rows (pruner search's default)")
    parser.add_argument("--data", default=None, help="latent cache; default the bundled teacher's set")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU ids; worker k gets GPU k modulo their count")
    args = parser.parse_args()
    kinds = args.storages.split(",")
    if args.data is None:  # built once here: workers starting together would each build it
        from pruner.data.bundled import tiny_sdxl_cache
        from pruner.teacher import Teacher

        args.data = str(tiny_sdxl_cache(Teacher.resolve("tiny-sdxl")))
    rows = []
    with tempfile.TemporaryDirectory(prefix="pruner-workers-") as tmp:
        postgres = None
        if "postgresql" in kinds:
            from pruner.study.pgtemp import TempPostgres

            postgres = TempPostgres().start()
        try:
            for kind in kinds:
                for n in map(int, args.workers.split(",")):
                    rows.append(run(kind, n, args, Path(tmp), postgres.url() if postgres else None))
        finally:
            if postgres is not None:
                postgres.stop()
    print(f"{'storage':<11} {'workers':>7} {'trials':>6} {'trials/min':>10} {'storage ms/trial':>16} {'span s':>7}")
    for r in rows:
        print(f"{r['storage']:<11} {r['workers']:>7} {r['trials']:>6} {r['per_min']:>10.1f} "
              f"{r['storage_ms']:>16.1f} {r['span_s']:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
