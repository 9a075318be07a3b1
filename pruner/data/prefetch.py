"""Read ahead in a background thread, so that reading and decoding pictures overlaps with encoding them.

Why: ``pruner cache`` spends its time in the VAE and text encoders; PIL decodes and resizes with Python's
lock released, so a reader thread keeps the next batch ready on a spare core instead of the encoders
waiting for it (:func:`prefetched`), and on a machine with cores to spare several threads decode at once
(:func:`ordered_map`: a GPU encodes 1024 px pictures faster than one core decodes them). Order is kept,
errors reach the consumer, and a consumer that stops early stops the threads.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from pruner.runtime import usable_cpus

__all__ = ["decode_threads", "ordered_map", "prefetched"]

T = TypeVar("T")
R = TypeVar("R")
MAX_DECODE_THREADS = 8
_POLL_S = 0.1  # how often a blocked reader checks whether the consumer has gone


class _Done:
    """Marks the end of the values, or carries the reader's error."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _put(box: queue.Queue[object], value: object, stop: threading.Event) -> bool:
    """Put ``value`` when there is room; False when the consumer stopped first."""
    while not stop.is_set():
        try:
            box.put(value, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(values: Iterator[T], box: queue.Queue[object], stop: threading.Event) -> None:
    """Run ``values`` to its end (or until the consumer stops), then close it here, in the thread that ran it
    (a source's open files are released at once)."""
    try:
        for value in values:
            if not _put(box, value, stop):
                return
    except BaseException as exc:  # handed to the consumer, which raises it where it reads
        _put(box, _Done(exc), stop)
        return
    finally:
        if isinstance(values, Generator):
            values.close()
    _put(box, _Done(), stop)


def prefetched(values: Iterator[T], depth: int) -> Generator[T, None, None]:
    """``values`` in order, computed up to ``depth`` ahead in a daemon thread; its error is raised here. When
    the consumer stops (an error, a break), the thread stops at its next value and is joined."""
    box: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(values, box, stop), name="pruner-prefetch", daemon=True)
    thread.start()
    try:
        while not isinstance(value := box.get(), _Done):
            yield value  # type: ignore[misc]
        if value.error is not None:
            raise value.error
    finally:
        stop.set()
        thread.join()


def decode_threads(processes_here: int = 1) -> int:
    """Threads a process decodes pictures with: its share of the cores it can use less the one its encoders
    use, at most ``MAX_DECODE_THREADS``; one (decoding beside the encoders, in the read-ahead thread) on a
    machine of two cores."""
    share = usable_cpus() // max(1, processes_here)
    return max(1, min(MAX_DECODE_THREADS, share - 1))


def ordered_map(function: Callable[[T], R], values: Iterable[T], threads: int) -> Iterator[tuple[T, R]]:
    """``(value, function(value))`` for each value in order, ``threads`` calls running at once (up to
    ``2 * threads`` values ahead); with one thread, each call in turn in the caller's thread."""
    if threads <= 1:
        yield from ((value, function(value)) for value in values)
        return
    window: collections.deque[tuple[T, Future[R]]] = collections.deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="pruner-decode") as pool:
        try:
            for value in values:
                window.append((value, pool.submit(function, value)))
                if len(window) >= 2 * threads:
                    done, future = window.popleft()
                    yield done, future.result()
            while window:
                done, future = window.popleft()
                yield done, future.result()
        finally:
            for _, future in window:
                future.cancel()
