"""pruner.runtime.forked_map: the same list as one process, whatever happens to its workers."""

from __future__ import annotations

import os
import sys

import pytest

from pruner.runtime import forked_map

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
