"""Reading ahead keeps the order, hands the reader's error to the consumer and stops when the consumer does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pruner.data.prefetch import decode_threads, ordered_map, prefetched


def test_values_come_in_order_and_an_error_reaches_the_consumer() -> None:
    def values() -> Iterator[int]:
        yield from range(50)
        raise OSError("a damaged disk")

    seen = []
    with pytest.raises(OSError, match="a damaged disk"):
        for value in prefetched(values(), depth=4):
            seen.append(value)
    assert seen == list(range(50))


def test_a_consumer_that_stops_stops_the_reader_and_closes_its_source() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # joins the reader thread
    assert closed.is_set() and not any(t.name == "pruner-prefetch" for t in threading.enumerate())


def test_several_decoding_threads_keep_the_order() -> None:
    def slow_square(n: int) -> int:
        time.sleep(0.002 * (n % 3))  # later values finish first
        return n * n

    assert list(ordered_map(slow_square, range(20), threads=4)) == [(n, n * n) for n in range(20)]
    assert list(ordered_map(slow_square, range(5), threads=1)) == [(n, n * n) for n in range(5)]
    assert 1 <= decode_threads(processes_here=64) <= decode_threads()
