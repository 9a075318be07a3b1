"""Runtime policy: CPU threads for torch on small machines, and what a GPU's out-of-memory error says.

Library calls never change global state by themselves; the CLI and the benchmarks call
:func:`configure_threads` once at start-up, and a Python caller asks for the same with
``with pruner.threads("auto"): ...`` (:func:`threads`), which restores its own setting afterwards.
torch is imported on first use, so that the CLI starts at once.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal, TypeVar

from pruner.errors import OutOfDeviceMemory, PrunerError

__all__ = [
    "auto_threads",
    "cgroup_cpu_limit",
    "cgroup_mounts",
    "configure_threads",
    "count_idle",
    "cpu_slots",
    "default_threads",
    "forked_map",
    "idle_cpu_room",
    "idle_cpu_workers",
    "idle_cpus",
    "out_of_memory_advice",
    "parse_cpu_times",
    "threads",
    "usable_cpus",
]

T = TypeVar("T")
R = TypeVar("R")


CGROUP = Path("/sys/fs/cgroup")  # where a container sees its own control group


def default_threads() -> int:
    """One thread where this process has two cores or fewer (:func:`usable_cpus`): measured there, thread
    wake-ups made a tiny UNet's call 50-85x slower than one thread did. Elsewhere torch's own default, at most
    the usable cores (torch counts a container's host, not its CPU limit)."""
    import torch

    cores = usable_cpus()
    return 1 if cores <= 2 else min(torch.get_num_threads(), cores)


def usable_cpus() -> int:
    """How many cores this process can keep busy: those its CPU affinity allows, at most a container's CPU
    limit (docker ``--cpus``, a Kubernetes limit; :func:`cgroup_cpu_limit`), which neither the affinity nor
    ``os.cpu_count()`` shows: threads or workers past it only queue for the same CPU time."""
    return _capped(_affinity())


def _capped(cpus: set[int]) -> int:
    """How many of ``cpus`` (this process's affinity) the cgroup CPU limit lets it keep busy."""
    limit = cgroup_cpu_limit()
    return max(1, min(len(cpus), math.floor(limit))) if limit is not None else len(cpus)


def cgroup_cpu_limit(root: Path = CGROUP, membership: str | None = None, mountinfo: str | None = None
                     ) -> float | None:  # fmt: skip
    """The CPU time this process may use, in cores: the tightest cgroup limit (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``) on the way from its own group up to the top of each cgroup
    file system that holds it, and at ``root`` itself (what a container sees of its own group); None where no
    limit is set or none can be read. ``membership`` and ``mountinfo``: the texts of ``/proc/self/cgroup`` and
    ``/proc/self/mountinfo``, read where not given; the mounts find a group wherever its file system is mounted
    (``root`` is only where it usually is)."""
    if membership is None:
        membership = _read_text(Path("/proc/self/cgroup"))
    if mountinfo is None:
        mountinfo = _read_text(Path("/proc/self/mountinfo"))
    folders = _cgroup_folders(root, membership, cgroup_mounts(mountinfo))
    limits = [_folder_cpu_limit(folder) for folder in folders]
    return min((limit for limit in limits if limit is not None), default=None)


def cgroup_mounts(mountinfo: str) -> list[tuple[str, Path, str]]:
    """The cgroup file systems ``mountinfo`` (the text of ``/proc/self/mountinfo``) shows that can limit CPU
    time: each as ``(kind, mount point, the group mounted there)``, kind ``""`` for the v2 tree (as
    ``/proc/self/cgroup`` names it) and ``"cpu"`` for a v1 tree with the ``cpu`` controller."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        fs_type, options = fields[dash + 1], (fields[dash + 3] if len(fields) > dash + 3 else "").split(",")
        if fs_type == "cgroup2" or (fs_type == "cgroup" and "cpu" in options):
            kind = "" if fs_type == "cgroup2" else "cpu"
            mounts.append((kind, Path(_unescape(fields[4])), _unescape(fields[3])))
    return mounts


def _unescape(field: str) -> str:
    """A mountinfo path with its octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup_folders(root: Path, membership: str, mounts: Sequence[tuple[str, Path, str]] = ()) -> list[Path]:
    """The folders whose CPU limit applies: this process's group in the v2 tree and the v1 ``cpu`` one, each
    parent, under ``root`` and under each mount of that tree (:func:`cgroup_mounts`), and the roots (a
    container's own group, mounted there)."""
    folders = []
    for line in membership.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers and "cpu" not in controllers.split(","):
            continue
        group = "/" + path.strip().strip("/")
        bases = [(root / controllers if controllers else root, "/")]
        bases += [(point, mounted) for kind, point, mounted in mounts if kind == ("cpu" if controllers else "")]
        for base, mounted in bases:
            inside = _relative_group(group, mounted)
            if inside is not None:
                folders += [base / part for part in (inside, *inside.parents)]
    return list(dict.fromkeys([*folders, root, root / "cpu", root / "cpu,cpuacct"]))  # each read once


def _relative_group(group: str, mounted: str) -> Path | None:
    """Where ``group`` lies below the group ``mounted`` at a mount point (None: not below it)."""
    top = "/" + mounted.strip("/")
    if top == "/":
        return Path(group.lstrip("/"))
    if group == top or group.startswith(top + "/"):
        return Path(group[len(top) :].lstrip("/"))
    return None


def _folder_cpu_limit(folder: Path) -> float | None:
    """One cgroup folder's CPU limit in cores; None where it sets none or cannot be read."""
    try:
        if (v2 := folder / "cpu.max").is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (v1 := folder / "cpu.cfs_quota_us").is_file():
            quota_us = int(v1.read_text())
            return None if quota_us < 0 else quota_us / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def auto_threads() -> int:
    """What the CLI picks: ``$PRUNER_THREADS`` when it is a positive integer, else :func:`default_threads`."""
    env = os.environ.get("PRUNER_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else default_threads()


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: ``threads``, else :func:`auto_threads`."""
    import torch

    n = threads or auto_threads()
    torch.set_num_threads(n)
    return n


def idle_cpu_workers(device: Any, jobs: int) -> int:
    """How many processes can run ``jobs`` independent jobs at once on ``device``: on a CPU whose torch threads
    leave cores idle (one thread on two cores: thread wake-ups cost a tiny UNet more than a second core gives),
    one per core that other work leaves idle (:func:`idle_cpu_room`: a second process on a core another job
    keeps busy only slows both); else one (a GPU, another platform, a single job)."""
    room = idle_cpu_room(device) if jobs >= 2 else None
    return 1 if room is None else max(1, min(jobs, room()))


def idle_cpu_room(device: Any) -> Callable[[], int] | None:
    """Where processes can share ``device``'s cores (a CPU on Linux whose torch threads fill at most half of
    them), a function that says how many more workers the cores other work leaves idle could hold now
    (:func:`idle_cpus`, over torch's thread count); None elsewhere. :func:`forked_map` asks it again as a
    long batch runs, so a batch that started on one core takes the second once another job frees it."""
    import torch

    threads, cpus, cores = _threads_and_cpus()
    if torch.device(device).type != "cpu" or sys.platform != "linux" or cores // threads < 2:
        return None
    return lambda: min(idle_cpus(cpus), cores) // threads


def cpu_slots() -> int:
    """How many processes of torch's thread count this process's cores hold side by side."""
    threads, _cpus, cores = _threads_and_cpus()
    return max(1, cores // threads)


def _threads_and_cpus() -> tuple[int, set[int], int]:
    """Torch's CPU thread count, the cores this process may run on, and how many of them it can keep busy."""
    import torch

    cpus = _affinity()
    return max(1, torch.get_num_threads()), cpus, _capped(cpus)


def _affinity() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def idle_cpus(cpus: set[int], window: float = 0.2) -> int:
    """How many of ``cpus`` were idle at least half of the next ``window`` seconds (``/proc/stat``), the caller
    waiting meanwhile: what other processes leave free. Time spent on niced processes counts as idle when this
    one is not niced (they yield to it). All of them where the counters cannot be read."""
    before = _cpu_times()
    time.sleep(window)
    after = _cpu_times()
    return count_idle(before, after, cpus, nice_yields=os.nice(0) == 0) if before and after else len(cpus)


def _cpu_times() -> dict[int, tuple[int, int, int]]:
    """:func:`parse_cpu_times` of ``/proc/stat``; empty where it cannot be read."""
    try:
        return parse_cpu_times(Path("/proc/stat").read_text())
    except OSError:
        return {}


def parse_cpu_times(text: str) -> dict[int, tuple[int, int, int]]:
    """``/proc/stat``'s per-CPU lines as {cpu: (total, idle + iowait, nice) jiffies since boot}."""
    times = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 5:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (sum(ticks), ticks[3] + ticks[4], ticks[1])
    return times


def count_idle(
    before: dict[int, tuple[int, int, int]], after: dict[int, tuple[int, int, int]], cpus: set[int],
    nice_yields: bool = False,
) -> int:  # fmt: skip
    """How many of ``cpus`` were idle (or, with ``nice_yields``, running niced processes) at least half the time
    between two :func:`parse_cpu_times` readings; a CPU the readings lack, or that did not tick, counts as idle."""
    idle = 0
    for cpu in cpus:
        total0, idle0, nice0 = before.get(cpu, (0, 0, 0))
        total1, idle1, nice1 = after.get(cpu, (0, 0, 0))
        free = idle1 - idle0 + (nice1 - nice0 if nice_yields else 0)
        idle += total1 - total0 <= 0 or free * 2 >= total1 - total0
    return idle


_FORKED: tuple[Callable[[Any], Any], Sequence[Any]] | None = None  # a forked worker's function and items


def _run_forked(i: int) -> tuple[int, Any]:
    assert _FORKED is not None
    fn, items = _FORKED
    return i, fn(items[i])


def forked_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int, done: Callable[[], object] = lambda: None,
    grow: Callable[[], int] | None = None,
) -> list[R]:  # fmt: skip
    """``[fn(x) for x in items]``, on ``workers`` forked processes where more than one is asked: each shares the
    caller's memory as it was at the fork (the teacher, the calibration), so nothing is pickled but an index
    and a result, and each runs torch with the caller's thread count. ``done`` is called as each item
    finishes (a progress bar). ``grow`` (say :func:`idle_cpu_room`'s) is asked, as items finish and every
    :data:`GROW_POLL_S` seconds meanwhile, how many more workers the idle cores could hold now: a long batch
    that started on one core (another job held the other) takes the second once it frees; it is not asked
    while the workers fill the cores. A result depends only on its item, so the list equals one process's. A worker
    killed before it answers (out of memory) leaves its items to this process, which measures them itself.
    A daemonic process (a ``multiprocessing.Pool`` worker) may not fork workers: it maps in itself."""
    out: list[Any] = [_MISSING] * len(items)
    if (workers > 1 or grow is not None) and len(items) > 1 and not multiprocessing.current_process().daemon:
        _map_in_forks(fn, items, max(1, min(workers, len(items))), out, done, grow)
    for i, item in enumerate(items):
        if out[i] is _MISSING:
            out[i] = fn(item)
            done()
    return out


_MISSING = object()  # an item no worker answered
GROW_POLL_S = 10.0  # how often a growing forked_map looks for idle cores while all its workers are busy


def _map_in_forks(
    fn: Callable[[T], R], items: Sequence[T], workers: int, out: list[Any], done: Callable[[], object],
    grow: Callable[[], int] | None = None,
) -> None:  # fmt: skip
    """Fill ``out`` with what forked workers answer, ``workers`` at once (as many as ``grow`` allows, at least
    one, where it is given); stop at the first dead worker (the rest stays missing)."""
    global _FORKED
    import torch

    _FORKED = (fn, items)
    fork = multiprocessing.get_context("fork")
    most = workers if grow is None else min(len(items), max(workers, cpu_slots()))  # forks all at the start
    pool = ProcessPoolExecutor(most, fork, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),))
    waiting = list(range(len(items)))[::-1]
    running: set[Future[tuple[int, Any]]] = set()
    try:  # a worker forks at a submit below, while _FORKED holds this call's work
        for _ in range(workers):
            running.add(pool.submit(_run_forked, waiting.pop()))
        while running:
            room = grow is not None and len(running) < most  # only then can idle cores take more
            finished, running = wait(running, timeout=GROW_POLL_S if room and waiting else None,
                                     return_when=FIRST_COMPLETED)  # fmt: skip
            for future in finished:
                i, out[i] = future.result()
                done()
            for _ in range(min(len(waiting), len(finished))):  # each freed worker takes the next item
                running.add(pool.submit(_run_forked, waiting.pop()))
            if grow is not None and waiting and len(running) < most:
                for _ in range(min(len(waiting), most - len(running), grow())):
                    running.add(pool.submit(_run_forked, waiting.pop()))
    except BrokenProcessPool:
        pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _FORKED = None


@contextlib.contextmanager
def threads(n: int | Literal["auto"]) -> Iterator[int]:
    """Run the block with ``n`` CPU threads for torch, then restore the caller's setting.

    ``"auto"`` is what the CLI picks (:func:`auto_threads`): one thread on machines with two cores or
    fewer, where torch's default made the README's search and distill 4-7x slower. Yields the number set::

        with pruner.threads("auto"):
            result = pruner.search("tiny-sdxl", budget="50%", trials=4)
    """
    if n != "auto" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise PrunerError(f"threads must be an integer >= 1 or 'auto', got {n!r}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(auto_threads() if n == "auto" else n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _asked(exc: BaseException) -> str:
    """The part of torch's out-of-memory message that says how much was asked of how much (its first
    line holds a dozen sentences of allocator advice that does not help here)."""
    sentences = str(exc).splitlines()[0].split(". ") if str(exc) else []
    kept = [x.rstrip(".") for x in sentences if x.startswith(("Tried to allocate", "GPU "))]
    return "; ".join(kept) or (sentences[0].rstrip(".") if sentences else "no detail")


@contextlib.contextmanager
def out_of_memory_advice(doing: str, fix: str) -> Iterator[None]:
    """Turn torch's out-of-memory error into one line: what was running, what was asked, and ``fix``."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfDeviceMemory(f"out of GPU memory while {doing} ({_asked(exc)}): {fix}") from exc
