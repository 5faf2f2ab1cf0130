"""Garbage-collector thresholds for processes that keep many runs alive."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: The thresholds :func:`tuned_gc` sets (``gc.set_threshold`` arguments).
TUNED_THRESHOLDS = (50_000, 50, 100)


@contextmanager
def tuned_gc() -> Iterator[None]:
    """Raise CPython's garbage-collection thresholds for the ``with`` block, then restore them.

    A driver that keeps many runs alive at once (a :class:`Worker`, or an embedder's own loop
    over :class:`RunMachine`) defeats the collector's generational guess: each run's objects
    live until its next step, so nearly everything survives a young collection, reaches the
    oldest generation and makes the collector rescan every live run every few thousand steps.
    With 1,000 runs of 1,000 steps that doubles to triples the core's cost per step (see
    ``docs/benchmarks.md``). The first threshold goes from 700 to 50,000 allocations; memory
    held by reference cycles is freed later, but still freed.

    It changes a process-wide setting (``Worker(tune_gc=True)`` and ``durable worker`` use
    it), so it is opt-in, and nesting it is harmless::

        with tuned_gc():
            drive_my_machines()
    """
    previous = gc.get_threshold()
    gc.set_threshold(*TUNED_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
