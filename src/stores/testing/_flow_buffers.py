"""Conformance cases for the flow buffers (``debounce``, ``batch_events``): every store's
``buffer_events``, ``ready_buffers``, ``take_buffer``, ``next_buffer_ready`` and
``buffer_states`` against the rules of :mod:`durable_core.store` (``buffer_added``,
``buffer_rest``, ``take_accepted``). Mixed into :class:`stores.testing.StoreConformance`."""

from __future__ import annotations

import json
from typing import Any

from durable_core.store import (
    ALWAYS_DUE,
    BufferAdd,
    BufferState,
    BufferTake,
    CommitBatch,
    NewRun,
    Store,
    StoredEvent,
    buffer_added,
)

__all__ = ["FlowBufferConformance"]

_T0 = 1_700_000_000_000


def _append(store: Store, n: int, now: int, name: str = "buf/e", start: int = 0,
            pad: str = "") -> list[StoredEvent]:
    texts = [json.dumps({"name": name, "data": {"i": start + i, "pad": pad},
                         "id": f"be{start + i}", "ts": now}) for i in range(n)]
    return store.append_events(texts, now)


def _debounce(ev: StoredEvent, key: str = "k", fn: str = "fd") -> BufferAdd:
    return BufferAdd(fn, key, "debounce", ev, period_ms=10_000, timeout_ms=30_000)


def _batch(ev: StoredEvent, key: str = "k", fn: str = "fb", size: int = 3) -> BufferAdd:
    return BufferAdd(fn, key, "batch", ev, period_ms=5_000, max_size=size)


def _route(store: Store, adds: list[BufferAdd], now: int) -> int:
    """Buffer, then mark routed, as the engine's route() does."""
    n = store.buffer_events(adds, now)
    store.commit(CommitBatch(now=now, routed_events=tuple({a.event.seq for a in adds})))
    return n


def _take(store: Store, fn: str, key: str, events: Any, run_id: str, now: int) -> bool:
    evs = tuple(events)
    run = NewRun(id=run_id, function_id=fn, events=tuple(e.data for e in evs),
                 event_ids=tuple(e.id for e in evs), created_at=now)
    return store.take_buffer(BufferTake(fn, key, tuple(e.seq for e in evs), run), now)


class FlowBufferConformance:
    """The flow-buffer cases (collected through :class:`~stores.testing.StoreConformance`)."""

    def test_debounce_keeps_the_last_event_and_pushes_ready_at(self, store: Store) -> None:
        """A debounce buffer holds only its newest event; its ``ready_at`` follows
        :func:`buffer_added` (the last receipt plus the period, capped by the timeout)."""
        a = _append(store, 1, _T0)
        b = _append(store, 1, _T0 + 4_000, start=1)
        c = _append(store, 1, _T0 + 25_000, start=2)
        assert _route(store, [_debounce(a[0])], _T0) == 1
        assert _route(store, [_debounce(b[0])], _T0 + 4_000) == 1
        [st] = store.buffer_states("fd")
        assert (st.first_at, st.ready_at, st.count, st.last_seq) == (
            _T0, _T0 + 14_000, 1, b[0].seq)
        assert store.ready_buffers(_T0 + 13_999, ["fd"], 10) == []
        assert store.next_buffer_ready(["fd"]) == _T0 + 14_000
        [buf] = store.ready_buffers(_T0 + 14_000, ["fd"], 10)
        assert buf.events == (b[0],)
        _route(store, [_debounce(c[0])], _T0 + 25_000)
        [st] = store.buffer_states("fd")
        assert st.ready_at == _T0 + 30_000  # capped: first event + timeout
        assert st == buffer_added(BufferState("fd", "k", "debounce", _T0, _T0 + 14_000, 1,
                                              st.bytes, b[0].seq, 10_000, 30_000, 1),
                                  _debounce(c[0]))

    def test_an_older_or_routed_event_changes_no_buffer(self, store: Store) -> None:
        """An add for an event already routed (a racing router's), or already buffered, or
        older than a debounce buffer's event, is not applied."""
        a, b = _append(store, 2, _T0)
        assert _route(store, [_debounce(b)], _T0) == 1
        assert store.buffer_events([_debounce(a)], _T0) == 0  # routed already
        c = _append(store, 1, _T0, start=5)[0]
        assert store.buffer_events([_batch(c), _batch(c)], _T0) == 1
        assert store.buffer_events([_batch(c)], _T0) == 0
        [st] = store.buffer_states("fd")
        assert st.last_seq == b.seq
        assert [s.count for s in store.buffer_states("fb")] == [1]

    def test_batch_fills_and_a_take_hands_it_off_once(self, store: Store) -> None:
        """A full batch is ready at once (:data:`ALWAYS_DUE`) and shows its first
        ``max_size`` events; its take creates the run and
        removes exactly its events; the same take again, or one overlapping it, does
        nothing; the rest starts a new batch."""
        evs = _append(store, 4, _T0)
        assert _route(store, [_batch(e) for e in evs], _T0) == 4
        [st] = store.buffer_states("fb")
        assert (st.count, st.ready_at) == (4, ALWAYS_DUE)
        [buf] = store.ready_buffers(_T0, ["fb", "other"], 10)
        assert [e.seq for e in buf.events] == [e.seq for e in evs[:3]]  # its max_size first
        assert _take(store, "fb", "k", evs[:3], "r_b1", _T0 + 1)
        assert not _take(store, "fb", "k", evs[:3], "r_b1", _T0 + 1)
        assert not _take(store, "fb", "k", evs[2:], "r_b2", _T0 + 1)
        run = store.get_run("r_b1")
        assert run.events == tuple(e.data for e in evs[:3]) and run.status == "queued"
        [st] = store.buffer_states("fb")
        assert (st.count, st.first_at, st.ready_at) == (1, _T0, _T0 + 5_000)
        assert store.ready_buffers(_T0 + 4_999, ["fb"], 10) == []
        assert _take(store, "fb", "k", evs[3:], "r_b2", _T0 + 5_000)
        assert store.buffer_states() == []
        assert store.next_buffer_ready(["fb"]) is None

    def test_ready_buffers_show_only_routed_events(self, store: Store) -> None:
        """Events buffered but not yet marked routed are left out of ``ready_buffers``
        (a router that died between the two is routed again, and buffers nothing twice)."""
        evs = _append(store, 3, _T0)
        assert store.buffer_events([_batch(e) for e in evs], _T0) == 3
        assert store.ready_buffers(_T0, ["fb"], 10) == []
        assert store.buffer_events([_batch(e) for e in evs], _T0) == 0
        store.commit(CommitBatch(now=_T0, routed_events=tuple(e.seq for e in evs)))
        [buf] = store.ready_buffers(_T0, ["fb"], 10)
        assert len(buf.events) == 3

    def test_batches_are_per_function_and_key(self, store: Store) -> None:
        """Each (function, key) is its own buffer; a take of one leaves the others."""
        evs = _append(store, 4, _T0)
        _route(store, [_batch(evs[0], "a"), _batch(evs[1], "b"),
                       _batch(evs[2], "a", fn="fb2"), _batch(evs[3], "a")], _T0)
        assert [(s.function_id, s.key, s.count) for s in store.buffer_states()] == [
            ("fb", "a", 2), ("fb", "b", 1), ("fb2", "a", 1)]
        assert store.ready_buffers(_T0 + 5_000, ["fb"], 1)[0].state.key in ("a", "b")
        assert len(store.ready_buffers(_T0 + 5_000, ["fb", "fb2"], 10)) == 3
        assert _take(store, "fb", "a", [evs[0], evs[3]], "r_a", _T0 + 5_000)
        assert [(s.function_id, s.key) for s in store.buffer_states()] == [
            ("fb", "b"), ("fb2", "a")]

    def test_a_batch_reaching_the_byte_limit_is_ready(self, store: Store) -> None:
        """A batch whose events reach 10 MiB is ready at once, whatever its count."""
        evs = _append(store, 2, _T0, pad="x" * (5 * 1024 * 1024 + 10))
        _route(store, [_batch(e, size=100) for e in evs], _T0)
        [st] = store.buffer_states("fb")
        assert st.ready_at == ALWAYS_DUE and st.count == 2

    def test_a_take_whose_run_exists_still_empties_the_buffer(self, store: Store) -> None:
        """The run of a take is created as ``commit`` creates runs: an id that exists is
        skipped, but the take is applied (its events are handed off once)."""
        evs = _append(store, 3, _T0)
        _route(store, [_batch(e) for e in evs], _T0)
        store.commit(CommitBatch(now=_T0, runs=(NewRun("r_x", "fb", (evs[0].data,),
                                                       (evs[0].id,), _T0),)))
        assert _take(store, "fb", "k", evs, "r_x", _T0)
        assert store.get_run("r_x").events == (evs[0].data,)
        assert store.buffer_states() == []
