"""Keep the scorer busy: read the next inputs and write the previous outputs in background threads.

The caller scores one item at a time in its own thread (the accelerator's); one reader thread
decodes the items ahead of it, in order, and one writer thread writes finished outputs behind it.
At most ``limit`` items are *in flight*, from the start of their reading to the end of their
writing (or until the caller releases them), which bounds memory to ``limit`` volumes and their
outputs. ``limit=1`` is the plain loop: read, score, write, one item at a time.

One reader, one writer: reading and writing never run concurrently with themselves, so helpers
that are not thread-safe among themselves (nibabel's header messages are collected through
process-wide logging and warning hooks) stay correct.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


class Overlap(Generic[T, R]):
    """``for item, value, error in overlap: ...`` yields each item with ``read(item)`` or the
    exception it raised; the caller then either calls :meth:`write` once (which frees the item's
    place when the write ends) or :meth:`release`. Use as a context manager: leaving it stops
    reading and waits for the writes already handed over."""

    def __init__(self, items: Iterable[T], read: Callable[[T], R], limit: int) -> None:
        if limit < 1:
            raise ValueError(f"at least one item must be in flight, got {limit}")
        self._items, self._read = items, read
        self._slots = threading.Semaphore(limit)
        self._ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="mood-write")
        # A daemon thread: an interrupted run must not wait for reads nobody will score.
        self._reader = threading.Thread(target=self._read_all, name="mood-read", daemon=True)

    def __enter__(self) -> "Overlap[T, R]":
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._slots.release()  # wakes the reader if it waits for a place
        self._writer.shutdown(wait=True)

    def _read_all(self) -> None:
        try:
            for item in self._items:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                try:
                    self._ready.put((item, self._read(item), None))
                except Exception as exc:  # the caller reports it against its item
                    self._ready.put((item, None, exc))
        finally:
            self._ready.put(_DONE)

    def __iter__(self) -> Iterator[tuple[T, R | None, Exception | None]]:
        while (entry := self._ready.get()) is not _DONE:
            yield entry

    def write(self, task: Callable[[], None]) -> Future:
        """Run ``task`` in the writer thread; the item's place is freed when it ends. The future
        holds the task's exception, if any."""
        future = self._writer.submit(task)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def release(self) -> None:
        """Free the place of an item that will not be written (it failed, or had nothing to write)."""
        self._slots.release()
