"""The simulator's invariants for debounce and event batching (see
:meth:`~durable_core.testing.Simulation.check`): no buffered event is lost or repeated."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from durable_core.core._flow_buffers import buffer_route
from durable_core.core._function import App
from durable_core.store import Store

__all__ = ["check_buffers"]


def check_buffers(app: App, store: Store, event_ids: Iterable[str],
                  fail: Callable[[str], None]) -> None:
    """For every function with ``debounce`` or ``batch_events``, over the acknowledged
    events ``event_ids``: no event is in two of its runs (or in a run and still in a buffer);
    a debounced run has one event; each event the function buffered is in a run or still
    buffered, except a debounced event superseded by a later one of its key (which is)."""
    buffered = [f for f in app.functions.values()
                if f.flow.debounce is not None or f.flow.batch is not None]
    if not buffered:
        return
    events = []
    for eid in event_ids:
        ev = store.get_event(eid)
        if ev is not None:
            events.append((ev, json.loads(ev.data)))
    events.sort(key=lambda p: p[0].seq)
    for func in buffered:
        seen: dict[str, str] = {}
        for run in store.list_runs(function_id=func.id, limit=1_000_000):
            if func.flow.debounce is not None and len(run.event_ids) != 1:
                fail(f"debounced run {run.id} of {func.id!r} has {len(run.event_ids)} events")
            for eid in run.event_ids:
                if eid in seen:
                    fail(f"event {eid} is in two runs of {func.id!r}: {seen[eid]} and {run.id}")
                seen[eid] = run.id
        pending = {s.key: s for s in store.buffer_states(func.id)}
        # The last event per key (debounce): only it must be in a run or buffered.
        last: dict[str, Any] = {}
        for ev, raw in events:
            if func not in app.triggered_by(raw):
                continue
            where = buffer_route(func.flow, raw)
            if where is None:
                if ev.id not in seen:
                    fail(f"event {ev.id} (unbatched) started no run of {func.id!r}")
                continue
            _kind, key, _problem = where
            if func.flow.debounce is not None:
                last[key] = ev
            elif ev.id not in seen and key not in pending:
                fail(f"batched event {ev.id} of {func.id!r} (key {key!r}) was lost: in no "
                     "run and no buffer")
        for key, ev in last.items():
            if ev.id not in seen and key not in pending:
                fail(f"the last debounced event {ev.id} of {func.id!r} (key {key!r}) "
                     "started no run and is not pending")
