"""Engine glue for debounce and event batching: routing an event into its buffer, and
handing ready buffers off as runs (each take atomic in the store: the run is created and
its events leave the buffer in one transaction)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from durable_core.base._safelog import safe_logger
from durable_core.core._flow_buffers import buffer_route, buffered_run_id, take_events
from durable_core.engine._flow_concurrency import flow_runs
from durable_core.engine._flow_starts import start_limits
from durable_core.store import (
    Buffer,
    BufferAdd,
    BufferTake,
    NewRun,
    Store,
    StoredEvent,
    event_bytes,
)

if TYPE_CHECKING:
    from durable_core.core._function import App, Function


class Engine(Protocol):
    """What this module uses of :class:`~durable_core.engine._engine.Engine`."""

    app: App
    store: Store

__all__ = ["buffer_add", "buffered_functions", "flush_buffers", "next_buffer_ready"]

log = safe_logger("durable_core.flow")

FLUSH_LIMIT = 100
"""Ready buffers handed off per poll (more: the poll says so, and the next one goes on)."""


def buffered_functions(engine: Engine) -> tuple[str, ...]:
    """The ids of the engine's functions with ``debounce`` or ``batch_events`` (cached)."""
    ids: tuple[str, ...] | None = getattr(engine, "_buffered_ids", None)
    if ids is None:
        ids = tuple(f.id for f in engine.app.functions.values()
                    if f.flow.debounce is not None or f.flow.batch is not None)
        engine._buffered_ids = ids  # type: ignore[attr-defined]
    return ids


def buffer_add(func: Function[Any], ev: StoredEvent, raw: dict[str, Any]) -> BufferAdd | None:
    """The buffer add routing ``ev`` makes for ``func``, or None to start its run at once."""
    flow = func.flow
    if flow.debounce is None and flow.batch is None:
        return None
    where = buffer_route(flow, raw)
    if where is None:
        return None
    kind, key, problem = where
    if problem is not None:
        log.warning("event %s: the %s key of function %s fails on it (%s); it goes under "
                    "the empty key", ascii(ev.id), kind, func.id, problem[:300])
    if kind == "debounce":
        d = flow.debounce
        assert d is not None
        return BufferAdd(func.id, key, kind, ev, d.period_ms, d.timeout_ms)
    b = flow.batch
    assert b is not None
    return BufferAdd(func.id, key, kind, ev, b.timeout_ms, None, b.max_size)


def flush_buffers(engine: Engine, now: int, limit: int = FLUSH_LIMIT) -> int:
    """Hand off the ready buffers of the engine's functions: one run per take. Returns how
    many runs this engine created (a take another engine made first creates none)."""
    ids = buffered_functions(engine)
    if not ids:
        return 0
    store = engine.store
    created = taken = 0
    while taken < limit:  # again while takes succeed: a backlog may fill several batches
        bufs = store.ready_buffers(now, ids, limit - taken)
        n, made = _take_ready(engine, bufs, now)
        taken += n
        created += made
        if not made:
            break
    return created


def _take_ready(engine: Engine, bufs: list[Buffer], now: int) -> tuple[int, int]:
    """Hand off these ready buffers: (how many takes were tried, how many succeeded)."""
    store = engine.store
    tried = created = 0
    for buf in bufs:
        st = buf.state
        func = engine.app._functions.get(st.function_id)  # (app.functions copies)
        if func is None or not buf.events:
            continue
        n = take_events(st.kind, [event_bytes(e) for e in buf.events], st.max_size)
        events = buf.events[:n]
        first = events[0]
        idem = None
        limits = None
        if st.kind == "debounce":
            try:
                raw = json.loads(first.data)
                idem = func.idempotency_key(raw)
                limits = start_limits(func, raw)  # throttle, rate limit, singleton
            except Exception as exc:  # the run starts without a key, as routing would fail
                log.warning("function %s: idempotency key of event %s: %s", func.id,
                            ascii(first.id), exc)
        run = NewRun(
            id=buffered_run_id(st.function_id, st.key, first.seq, first.id, first.received_at),
            function_id=st.function_id, events=tuple(e.data for e in events),
            event_ids=tuple(e.id for e in events), created_at=now, idempotency_key=idem,
            limits=limits,
        )
        [run] = flow_runs(engine.app, (run,))  # concurrency slots, priority
        tried += 1
        if store.take_buffer(BufferTake(st.function_id, st.key,
                                        tuple(e.seq for e in events), run), now):
            created += 1
    return tried, created


def next_buffer_ready(engine: Engine) -> int | None:
    """When the engine's next buffer falls ready (ms), or None."""
    ids = buffered_functions(engine)
    return engine.store.next_buffer_ready(ids) if ids else None
