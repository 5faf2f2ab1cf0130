"""Debounce and event batching (``debounce=``, ``batch_events=``): the pure decisions.

Routing sends an event of a debounced or batched function into that function's buffer for
the event's key instead of starting a run (:func:`buffer_route`); a ready buffer turns into
one run (:func:`take_events`, :func:`buffered_run_id`). The buffers themselves are stored
(see the flow-buffer rules at the end of :mod:`durable_core.store`), so every worker sees
the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from durable_core.base._errors import InvalidExpressionError
from durable_core.core._flow import MAX_BATCH_BYTES, FlowControl, flow_key
from durable_core.core._model import derive_id

__all__ = ["NO_KEY", "buffer_route", "buffered_run_id", "take_events"]

NO_KEY = ""
"""The buffer key of a function without a ``key`` (and of an event whose key expression
fails or gives null)."""


def buffer_route(flow: FlowControl, event: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """Where routing puts ``event`` (dict form) for a function with these options:
    ``(kind, key, problem)`` to buffer it (``kind`` ``"debounce"`` or ``"batch"``;
    ``problem`` says why the key expression could not be used, to log: the event then goes
    under :data:`NO_KEY`), or None to start a run for it alone, as usual: the function has
    neither option, or ``batch_events.if_`` is not true for it (false, not a bool, or it
    fails: Inngest runs such an event unbatched, at once)."""
    if flow.debounce is not None:
        kind, expr = "debounce", flow.debounce.key_expression
    elif flow.batch is not None:
        cond = flow.batch.if_expression
        if cond is not None:
            try:
                if cond.evaluate({"event": event}) is not True:
                    return None
            except (InvalidExpressionError, RecursionError, ValueError, TypeError):
                return None
        kind, expr = "batch", flow.batch.key_expression
    else:
        return None
    try:
        key = flow_key(expr, event)
    except (InvalidExpressionError, RecursionError, ValueError, TypeError) as exc:
        return kind, NO_KEY, f"{type(exc).__name__}: {exc}"
    return kind, NO_KEY if key is None else key, None


def take_events(kind: str, sizes: Sequence[int], max_size: int) -> int:
    """How many of a ready buffer's events (their sizes in bytes, in seq order) its run
    takes: a debounce run its one event; a batch up to ``max_size``, stopping after the
    event that brings the batch to :data:`MAX_BATCH_BYTES` (at least one)."""
    if kind == "debounce":
        return min(1, len(sizes))
    total = 0
    for i, size in enumerate(sizes[:max_size]):
        total += size
        if total >= MAX_BATCH_BYTES:
            return i + 1
    return min(len(sizes), max_size)


def buffered_run_id(function_id: str, key: str, seq: int, event_id: str,
                    received_at: int) -> str:
    """The id of the run a buffer's take creates, from its first event (seq, id, receipt
    time): the same for every engine handing the same events off (so a race, or a take
    retried after an unknown outcome, creates it once), time-sortable like routed runs."""
    digest = derive_id("", "buffer", function_id, key, seq, event_id, received_at)
    return f"r_{received_at:012x}{digest[:16]}"
