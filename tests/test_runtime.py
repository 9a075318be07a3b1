"""pruner.runtime: forked_map gives the same list as one process, whatever happens to its workers, and forks
only as many workers as other jobs leave cores idle."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pruner import runtime
from pruner.runtime import count_idle, forked_map, idle_cpu_workers, idle_cpus, parse_cpu_times, threads

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="forked workers are used on Linux only")

PARENT = os.getpid()


def _square_in_a_worker(x: int) -> tuple[int, bool]:
    return x * x, os.getpid() != PARENT


def test_forked_workers_answer_each_item_in_order_and_call_done_once_per_item() -> None:
    calls: list[None] = []
    out = forked_map(_square_in_a_worker, list(range(7)), workers=2, done=lambda: calls.append(None))
    assert [v for v, _ in out] == [x * x for x in range(7)]
    assert all(in_worker for _, in_worker in out) and len(calls) == 7


def test_a_worker_killed_before_it_answers_leaves_its_items_to_the_caller() -> None:
    """Out of memory, a worker dies without a word: the caller measures what is missing itself, and does not
    hang (a multiprocessing.Pool waits forever for a task its dead worker took)."""

    def dies_on_three(x: int) -> tuple[int, bool]:
        if x == 3 and os.getpid() != PARENT:
            os._exit(9)
        return _square_in_a_worker(x)

    calls: list[None] = []
    out = forked_map(dies_on_three, list(range(6)), workers=2, done=lambda: calls.append(None))
    assert [v for v, _ in out] == [x * x for x in range(6)]
    assert out[3] == (9, False) and len(calls) == 6  # item 3 measured here, each item counted once


def test_an_error_in_a_worker_reaches_the_caller() -> None:
    def fails(x: int) -> int:
        if x == 2:
            raise ValueError("bad item 2")
        return x

    with pytest.raises(ValueError, match="bad item 2"):
        forked_map(fails, list(range(4)), workers=2)


def test_one_worker_maps_in_this_process() -> None:
    assert forked_map(_square_in_a_worker, [1, 2], workers=1) == [(1, False), (4, False)]


STAT_BEFORE = """cpu  300 0 30 500 10 0 0 0 0 0
cpu0 100 0 10 200 5 0 0 0 0 0
cpu1 200 0 20 300 5 0 0 0 0 0
intr 1 2 3
"""
STAT_AFTER = """cpu  420 100 34 520 10 0 0 0 0 0
cpu0 110 0 12 218 5 0 0 0 0 0
cpu1 210 100 22 302 5 0 0 0 0 0
intr 1 2 3
"""  # cpu0: 18 idle of 30 ticks; cpu1: 2 idle of 114, 100 of them a niced job's


def test_a_cpu_another_job_keeps_busy_is_not_counted_idle() -> None:
    before, after = parse_cpu_times(STAT_BEFORE), parse_cpu_times(STAT_AFTER)
    assert before == {0: (315, 205, 0), 1: (525, 305, 0)}  # the all-CPU line is not a CPU
    assert count_idle(before, after, {0, 1}) == 1
    assert count_idle(before, after, {1}) == 0
    assert count_idle(before, after, {1}, nice_yields=True) == 1  # the niced job yields to this one
    assert count_idle(before, after, {0, 1, 7}) == 2  # a CPU the readings lack counts as idle
    assert count_idle(before, before, {0, 1}) == 2  # no tick: idle


def test_forked_workers_are_only_as_many_as_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """One torch thread on two cores forks a second worker only where no other job keeps a core busy."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)  # whatever container runs the tests
    with threads(1):
        monkeypatch.setattr(runtime, "idle_cpus", lambda cpus: len(cpus))
        assert idle_cpu_workers("cpu", 3) == 2 and idle_cpu_workers("cpu", 1) == 1
        monkeypatch.setattr(runtime, "idle_cpus", lambda _cpus: 1)
        assert idle_cpu_workers("cpu", 3) == 1
    with threads(2):  # two threads on two cores: no core left for a second worker, nothing sampled
        monkeypatch.setattr(runtime, "idle_cpus", lambda _cpus: pytest.fail("sampled"))
        assert idle_cpu_workers("cpu", 3) == 1


def test_idle_cpus_counts_at_most_the_cpus_asked() -> None:
    cpus = os.sched_getaffinity(0)
    assert 0 <= idle_cpus(cpus, window=0.05) <= len(cpus)


def _span_of_a_nap(x: int) -> tuple[int, float, float]:
    import time

    start = time.monotonic()  # one clock for every process on Linux
    time.sleep(0.3)
    return x, start, time.monotonic()


def _most_at_once(spans: list[tuple[int, float, float]]) -> int:
    return max(sum(s <= start < e for _, s, e in spans) for _, start, _ in spans)


def test_a_batch_started_on_one_worker_takes_more_as_cores_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long batch that began beside another job (one worker) runs a second item at once as soon as a core
    is idle, and the results are still each item's own, in order."""
    monkeypatch.setattr(runtime, "GROW_POLL_S", 0.05)
    monkeypatch.setattr(runtime, "cpu_slots", lambda: 2)  # two cores of one thread each, whatever this machine has
    looks: list[int] = []

    def a_core_frees_at_the_second_look() -> int:  # then both are ours: busy at every later look
        looks.append(1)
        return int(len(looks) == 2)

    out = forked_map(_span_of_a_nap, list(range(6)), workers=1, grow=a_core_frees_at_the_second_look)
    assert [x for x, _, _ in out] == list(range(6))
    assert _most_at_once(out) == 2


def test_a_batch_whose_cores_stay_busy_runs_one_item_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "GROW_POLL_S", 0.05)
    out = forked_map(_span_of_a_nap, list(range(3)), workers=1, grow=lambda: 0)
    assert [x for x, _, _ in out] == [0, 1, 2]
    assert _most_at_once(out) == 1  # no idle core: never a second at once
    assert _most_at_once(forked_map(_span_of_a_nap, list(range(3)), workers=2)) == 2  # the measure can see two


def test_the_room_for_more_workers_is_asked_only_where_processes_can_share_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(runtime, "idle_cpus", lambda _cpus: 1)
    with threads(1):
        room = runtime.idle_cpu_room("cpu")
        assert room is not None and room() == 1
        assert runtime.idle_cpu_room("meta") is None  # not a CPU
    with threads(2):
        assert runtime.idle_cpu_room("cpu") is None  # two threads fill both cores


def _map_in_a_daemon(conn: object) -> None:
    out = forked_map(_square_in_a_worker, [1, 2, 3], workers=2, grow=lambda: 1)
    conn.send(out)  # type: ignore[attr-defined]


def test_a_daemonic_process_maps_in_itself() -> None:
    """A daemonic process (say a multiprocessing.Pool worker running a search) may not start children: the
    map runs in that process instead of failing."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    here, there = fork.Pipe(duplex=False)
    daemon = fork.Process(target=_map_in_a_daemon, args=(there,), daemon=True)
    daemon.start()
    assert here.poll(60), "the daemon answered nothing"
    got = here.recv()
    daemon.join(10)
    assert [v for v, _ in got] == [1, 4, 9] and daemon.exitcode == 0


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: docker --cpus=1.5
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbled\n"}, None),
        ({}, None),  # no cgroup files: not in a container, or another platform
    ],
)
def test_cgroup_cpu_limit_reads_a_containers_quota_in_cores(
    tmp_path: Path, files: dict[str, str], limit: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runtime.cgroup_cpu_limit(tmp_path, membership="0::/\n", mountinfo="") == limit


@pytest.mark.parametrize(
    ("membership", "files", "limit"),
    [  # a Kubernetes pod's limit on its parent group, none on the container's own
        (
            "0::/kubepods/pod1/c1\n",
            {"kubepods/pod1/cpu.max": "200000 100000", "kubepods/pod1/c1/cpu.max": "max 1"},
            2.0,
        ),
        ("0::/a/b\n", {"a/cpu.max": "400000 100000", "a/b/cpu.max": "150000 100000"}, 1.5),  # the tightest
        (
            "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
            {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"},
            3.0,
        ),
        ("0::/system.slice/x.service\n", {"cpu.max": "100000 100000"}, 1.0),  # a container's own group at the root
        ("garbled\n", {}, None),
    ],
)
def test_cgroup_cpu_limit_follows_the_processs_own_group_and_its_parents(
    tmp_path: Path, membership: str, files: dict[str, str], limit: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runtime.cgroup_cpu_limit(tmp_path, membership, mountinfo="") == limit


def test_cgroup_mounts_reads_where_each_cpu_tree_is_mounted() -> None:
    mountinfo = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 /docker/abc /mnt/my\\040groups rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
        "garbled line\n"
    )
    assert runtime.cgroup_mounts(mountinfo) == [
        ("cpu", Path("/sys/fs/cgroup/cpu,cpuacct"), "/"),
        ("", Path("/mnt/my groups"), "/docker/abc"),
    ]


@pytest.mark.parametrize(
    ("membership", "mounted", "files", "limit"),
    [  # a v2 tree mounted elsewhere than /sys/fs/cgroup: the process's group and its parents there
        ("0::/kubepods/pod1/c1\n", "/", {"v2/kubepods/pod1/cpu.max": "200000 100000"}, 2.0),
        # a container without its own cgroup namespace: the host's path to its group, mounted at the top
        ("0::/docker/abc\n", "/docker/abc", {"v2/cpu.max": "150000 100000"}, 1.5),
        ("0::/docker/abc/sub\n", "/docker/abc", {"v2/sub/cpu.max": "50000 100000", "v2/cpu.max": "max 1"}, 0.5),
        ("0::/elsewhere\n", "/docker/abc", {"v2/cpu.max": "150000 100000"}, None),  # not below the mounted group
        (
            "1:cpu,cpuacct:/batch\n",
            "/",
            {"v1/batch/cpu.cfs_quota_us": "300000", "v1/batch/cpu.cfs_period_us": "100000"},
            3.0,
        ),
    ],
)
def test_cgroup_cpu_limit_finds_a_group_wherever_its_tree_is_mounted(
    tmp_path: Path, membership: str, mounted: str, files: dict[str, str], limit: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    mountinfo = (
        f"40 1 0:38 {mounted} {tmp_path / 'v2'} rw - cgroup2 cgroup2 rw\n"
        f"41 1 0:39 {mounted} {tmp_path / 'v1'} rw - cgroup cgroup rw,cpu,cpuacct\n"
    )
    assert runtime.cgroup_cpu_limit(tmp_path / "usual", membership, mountinfo) == limit
    assert runtime.cgroup_cpu_limit(tmp_path / "usual", membership, mountinfo="") is None  # the usual place only


def test_a_container_limit_caps_threads_and_workers_below_the_cores_it_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container limited to 2 CPUs on a 16-core host sees all 16 in its affinity and os.cpu_count(): one
    torch thread and at most two workers, as on a 2-core machine, not sixteen that queue for the same time."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    monkeypatch.setattr(runtime, "idle_cpus", lambda cpus: len(cpus))  # the host's cores all idle
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 2.5)
    assert runtime.usable_cpus() == 2 and runtime.default_threads() == 1
    with threads(1):
        assert runtime.cpu_slots() == 2 and idle_cpu_workers("cpu", 8) == 2
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 0.5)
    assert runtime.usable_cpus() == 1
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert runtime.usable_cpus() == 16
    with threads(1):
        assert runtime.cpu_slots() == 16 and idle_cpu_workers("cpu", 8) == 8
