"""The in-memory store: the reference implementation of the store contract.

Nothing survives the process, so it is for tests, demos and benchmarks. Every operation takes
one lock, so it is safe to share between threads.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections.abc import Collection, Sequence

import attrs

from durable_core.base._errors import RunNotFoundError
from durable_core.base._match import key_path
from durable_core.core._model import TERMINAL_STATUSES, JournalEntry, Signal
from durable_core.store import (
    Buffer,
    BufferAdd,
    BufferState,
    BufferTake,
    Claim,
    CommitBatch,
    RunRecord,
    SkippedTrigger,
    StartLimiter,
    StoredEvent,
    WaitRecord,
    apply_change,
    buffer_added,
    buffer_rest,
    claim_order,
    cron_advances,
    due_at,
    event_is_duplicate,
    fold_writes,
    lease_held,
    lone_memo,
    new_runs_to_create,
    notifies,
    pick_limited,
    run_events_to_append,
    signal_accepted,
    slot_released,
    take_accepted,
    wait_changes,
    write_accepted,
)

__all__ = ["MemoryStore"]


def _parse_event(text: str) -> tuple[str, str, int, str]:
    raw = json.loads(text)
    return str(raw["id"]), str(raw["name"]), int(raw["ts"]), text


class MemoryStore:
    """A store that keeps everything in process memory (see the store contract: every rule
    is one of its functions, applied to plain dicts here)."""

    blocking = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._events: list[StoredEvent] = []
        self._events_by_id: dict[str, StoredEvent] = {}  # the latest original per id
        self._unrouted: dict[int, StoredEvent] = {}
        self._runs: dict[str, RunRecord] = {}
        self._run_order: list[str] = []
        self._open: dict[str, int] = {}  # runs that have not ended -> creation index
        # When each open run becomes claimable (its due_at; absent: never, as it stands),
        # and a heap of (due, creation index, run) entries, stale ones skipped when popped:
        # a claim reads only the runs that are due, not every open run.
        self._due: dict[str, int] = {}
        self._due_heap: list[tuple[int, int, str]] = []
        self._journals: dict[str, list[JournalEntry]] = {}
        # (function, key) -> created_at and id of the run holding the key
        self._idempotency: dict[tuple[str, str], tuple[int, str]] = {}
        self._skipped: dict[str, SkippedTrigger] = {}  # by the skipped run's id, in order
        # Start limits (StartLimiter): GCRA buckets -> (tat, last run), singleton buckets ->
        # (holder, waiting run), the bucket of each holder, and the runs waiting for a slot
        # (never claimable until they hold it).
        self._gcra: dict[str, tuple[int, str]] = {}
        self._slots: dict[str, tuple[str | None, str | None]] = {}
        self._slot_of: dict[str, str] = {}
        self._slot_waiting: set[str] = set()
        # Waits by event name, then (run, position): all of them, in registration order.
        self._waits: dict[str, dict[tuple[str, int], WaitRecord]] = {}
        # The match-key index: waits without keys, and waits by key (one record, or a list
        # when several waits share the key: per-run keys cost no container), and how many
        # registered keys use each path (for wait_key_paths).
        self._unkeyed: dict[str, dict[tuple[str, int], WaitRecord]] = {}
        self._by_key: dict[str, dict[str, WaitRecord | list[WaitRecord]]] = {}
        self._paths: dict[str, dict[str, int]] = {}
        self._signals: dict[str, list[tuple[int, Signal]]] = {}
        self._signal_seq = 0
        self._cron: dict[str, int] = {}
        # Concurrency slots and priorities of the open runs that have them.
        self._run_slots: dict[str, tuple[tuple[str, int], ...]] = {}
        self._priority: dict[str, int] = {}
        self._wake = threading.Condition()  # wait_for_notify: commits counted
        self._commits = 0
        self._seen: int | None = None
        self._closed = False
        # Flow buffers (debounce, batch_events): state and events by (function, key).
        self._buffers: dict[tuple[str, str], BufferState] = {}
        self._buffered: dict[tuple[str, str], dict[int, StoredEvent]] = {}

    # ------------------------------------------------------------------ events

    def append_events(self, events: Sequence[str], now: int) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.append_events`."""
        parsed = [_parse_event(text) for text in events]  # all or nothing
        with self._lock:
            stored = [self._append_event(p, now) for p in parsed]
        if stored:
            self._notify()
        return stored

    def _append_event(self, parsed: tuple[str, str, int, str], now: int) -> StoredEvent:
        event_id, name, ts, text = parsed
        prev = self._events_by_id.get(event_id)
        dup = event_is_duplicate(None if prev is None else prev.received_at, now)
        ev = StoredEvent(
            seq=len(self._events) + 1, id=event_id, name=name, data=text, ts=ts,
            received_at=now, duplicate=dup,
        )
        self._events.append(ev)
        if not dup:
            self._events_by_id[ev.id] = ev
            self._unrouted[ev.seq] = ev
        return ev

    def unrouted_events(self, limit: int) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.unrouted_events`."""
        with self._lock:
            out: list[StoredEvent] = []
            if limit <= 0:
                return out
            for ev in self._unrouted.values():
                out.append(ev)
                if len(out) >= limit:
                    break
            return out

    def get_event(self, event_id: str) -> StoredEvent | None:
        """See :meth:`durable_core.Store.get_event`."""
        with self._lock:
            return self._events_by_id.get(event_id)

    def list_events(
        self,
        *,
        name: str | None = None,
        since: int | None = None,
        until: int | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.list_events`."""
        with self._lock:
            out: list[StoredEvent] = []
            if limit <= 0:
                return out
            for ev in reversed(self._events):
                if before is not None and ev.seq >= before:
                    continue
                if name is not None and ev.name != name:
                    continue
                if since is not None and ev.received_at < since:
                    continue
                if until is not None and ev.received_at >= until:
                    continue
                out.append(ev)
                if len(out) >= limit:
                    break
            return out

    # ------------------------------------------------------------------ commit

    def commit(self, batch: CommitBatch) -> set[str]:
        """See :meth:`durable_core.Store.commit`."""
        fenced = self._commit(batch)
        if notifies(batch):
            self._notify()
        return fenced

    def _commit(self, batch: CommitBatch) -> set[str]:
        with self._lock:
            lone = lone_memo(batch)
            if lone is not None:  # the hot path: one step's memo
                w, e = lone
                run = self._runs.get(w.run_id)
                if run is not None:
                    journal = self._journals[w.run_id]
                    if write_accepted(w.epoch, e.seq, run.epoch, run.status, len(journal)):
                        journal.append(e)
                        return set()
                return {w.run_id}
            # Decide everything first, against the state before the batch: a rejected run
            # leaves nothing half-applied, and a batch that cannot be applied (an event that
            # is not valid JSON) raises before anything changed.
            events = [_parse_event(text) for text in batch.events]
            changes = fold_writes(batch.writes)
            fenced: set[str] = set()
            for run_id, c in changes.items():
                run = self._runs.get(run_id)
                if run is None or not write_accepted(
                    c.epoch, c.first, run.epoch, run.status, len(self._journals[run_id])
                ):
                    fenced.add(run_id)
            # Parsed first: a run event that is not valid JSON raises before anything changed.
            run_events = [_parse_event(text) for text in run_events_to_append(batch, fenced)]
            for parsed in events:
                self._append_event(parsed, batch.now)
            skipped_ids: set[str] = set()
            if batch.runs:
                existing = {n.id for n in batch.runs
                            if n.id in self._runs or n.id in self._skipped}
                skipped: list[SkippedTrigger] = []
                limiter = StartLimiter(self._gcra, self._slots, batch.now)
                create = new_runs_to_create(batch.runs, existing, self._idempotency, skipped,
                                            limiter)
                skipped += limiter.skipped
                skipped_ids = {n.id for n in batch.runs} - {n.id for n in create}
                self._slot_waiting |= limiter.waiting
                for b in limiter.slots_changed:
                    holder = self._slots[b][0]
                    if holder is not None:
                        self._slot_of[holder] = b
                if limiter.cancels:
                    batch = batch._replace(signals=(*batch.signals, *limiter.signals()))
                for new in create:
                    self._runs[new.id] = RunRecord(
                        id=new.id, function_id=new.function_id, status="queued",
                        events=new.events, created_at=new.created_at,
                        updated_at=new.created_at, parent_run_id=new.parent_run_id,
                        idempotency_key=new.idempotency_key, event_ids=new.event_ids,
                        rerun_of=new.rerun_of, wake_at=limiter.wake_at.get(new.id),
                    )
                    self._run_order.append(new.id)
                    self._open[new.id] = len(self._run_order)
                    self._journals[new.id] = []
                    if new.slots:
                        self._run_slots[new.id] = new.slots
                    if new.priority_ms:
                        self._priority[new.id] = new.priority_ms
                    self._refresh_due(new.id)
                for skip in skipped:
                    self._skipped.setdefault(skip.id, skip)
            for run_id, c in changes.items():
                if run_id in fenced:
                    continue
                self._journals[run_id].extend(c.entries)
                if not c.touch:
                    continue  # journal only: the run record stays as it is
                self._runs[run_id] = apply_change(self._runs[run_id], c, batch.now)
                if c.consumed:
                    box = self._signals.get(run_id)
                    if box:
                        kept = [s for s in box if s[0] > c.consumed]
                        if kept:
                            self._signals[run_id] = kept
                        else:
                            del self._signals[run_id]
                self._refresh_due(run_id)
                if c.ends:
                    del self._open[run_id]
                    if run_id in self._slot_of:
                        self._release_slot(run_id)
                    self._run_slots.pop(run_id, None)
                    self._priority.pop(run_id, None)
            adds, removes = wait_changes(batch, fenced, skipped_ids)
            for wait in adds:
                waits = self._waits.setdefault(wait.event, {})
                wkey = (wait.run_id, wait.position)
                if wkey not in waits:
                    after = wait.after_seq or len(self._events)
                    waits[wkey] = wait = attrs.evolve(wait, after_seq=after)
                    self._index_wait(wkey, wait)
            for wkey in removes:
                for waits in self._waits.values():
                    removed = waits.pop(wkey, None)
                    if removed is not None:
                        self._unindex_wait(wkey, removed)
            for parsed in run_events:
                self._append_event(parsed, batch.now)
            for run_id, signal in batch.signals:
                target = self._runs.get(run_id)
                if signal_accepted(None if target is None else target.status):
                    self._signal_seq += 1
                    self._signals.setdefault(run_id, []).append((self._signal_seq, signal))
                    self._refresh_due(run_id)
            for seq in batch.routed_events:
                self._unrouted.pop(seq, None)
            for key, tick in cron_advances(batch.cron).items():
                if tick > self._cron.get(key, -1):
                    self._cron[key] = tick
            return fenced

    # ------------------------------------------------------------------ claims

    def claim_runs(
        self, owner: str, now: int, lease_ms: int, limit: int,
        function_ids: Sequence[str] | None = None,
    ) -> list[Claim]:
        """See :meth:`durable_core.Store.claim_runs`."""
        with self._lock:
            out: list[Claim] = []
            if limit <= 0:
                return out
            only = None if function_ids is None else set(function_ids)
            for item in self._due_now(now):
                run_id = item[2]
                if len(out) >= limit or (
                        only is not None and self._runs[run_id].function_id not in only):
                    heapq.heappush(self._due_heap, item)  # still due: left for a later claim
                    continue
                out.append(self._lease(run_id, owner, now, lease_ms))
            return out

    def _due_now(self, now: int) -> list[tuple[int, int, str]]:
        """Pop the heap entries of every run due by now, in claim order (claim_order, then
        creation); the caller pushes back those it leaves."""
        heap, current = self._due_heap, self._due
        due_runs: list[tuple[int, int, str]] = []
        seen: set[str] = set()
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if current.get(item[2]) == item[0] and item[2] not in seen:
                seen.add(item[2])  # (an entry pushed again after its due went and came)
                run = self._runs[item[2]]
                # The rule decides, from the record as it is (the heap only finds candidates).
                due = due_at(run.status, run.lease_owner, run.lease_expires, run.wake_at,
                             item[2] in self._signals)
                if due is not None and due <= now:
                    due_runs.append(item)
        prio, runs = self._priority, self._runs
        due_runs.sort(key=lambda item: (
            claim_order(runs[item[2]].created_at, prio.get(item[2], 0)), item[1]))
        return due_runs

    def _lease(self, run_id: str, owner: str, now: int, lease_ms: int) -> Claim:
        run = self._runs[run_id]
        run = attrs.evolve(
            run, epoch=run.epoch + 1, lease_owner=owner, lease_expires=now + lease_ms
        )
        self._runs[run_id] = run
        del self._due[run_id]
        self._refresh_due(run_id)
        return Claim(run, tuple(self._journals[run_id]), tuple(self._signals.get(run_id, ())))

    def _release_slot(self, run_id: str) -> None:
        """The singleton slot ``run_id`` held passes to the run waiting for it, if any
        (:func:`slot_released`), in the commit that ends ``run_id``."""
        b = self._slot_of.pop(run_id)
        holder, waiting = slot_released(self._slots[b][1])
        self._slots[b] = (holder, waiting)
        if holder is not None:
            self._slot_of[holder] = b
            self._slot_waiting.discard(holder)
            self._refresh_due(holder)

    def _refresh_due(self, run_id: str) -> None:
        """Record when ``run_id`` becomes claimable (:func:`due_at`) after it changed."""
        run = self._runs[run_id]
        due = due_at(run.status, run.lease_owner, run.lease_expires, run.wake_at,
                     run_id in self._signals)
        if run_id in self._slot_waiting:
            due = None  # waiting for its singleton slot: not claimable until it holds it
        if due == self._due.get(run_id):
            return
        if due is None:
            del self._due[run_id]
            return
        self._due[run_id] = due
        heapq.heappush(self._due_heap, (due, self._open[run_id], run_id))

    def renew(self, owner: str, run_ids: Sequence[str], now: int, lease_ms: int) -> set[str]:
        """See :meth:`durable_core.Store.renew`."""
        with self._lock:
            lost = set()
            for run_id in run_ids:
                run = self._runs.get(run_id)
                if run is None or not lease_held(
                    run.lease_owner, run.lease_expires, run.status, owner, now
                ):
                    lost.add(run_id)
                    continue
                self._runs[run_id] = attrs.evolve(run, lease_expires=now + lease_ms)
                self._refresh_due(run_id)
            return lost

    # ------------------------------------------------------------------ queries

    def _index_wait(self, wkey: tuple[str, int], wait: WaitRecord) -> None:
        if not wait.keys:
            self._unkeyed.setdefault(wait.event, {})[wkey] = wait
            return
        by_key = self._by_key.setdefault(wait.event, {})
        paths = self._paths.setdefault(wait.event, {})
        for key in wait.keys:
            held = by_key.get(key)
            if held is None:
                by_key[key] = wait
            elif type(held) is list:
                held.append(wait)
            else:
                by_key[key] = [held, wait]  # type: ignore[list-item]
            path = key_path(key)
            paths[path] = paths.get(path, 0) + 1

    def _unindex_wait(self, wkey: tuple[str, int], wait: WaitRecord) -> None:
        if not wait.keys:
            self._unkeyed[wait.event].pop(wkey, None)
            return
        by_key = self._by_key[wait.event]
        paths = self._paths[wait.event]
        for key in wait.keys:
            held = by_key.get(key)
            if type(held) is list:
                held[:] = [w for w in held if (w.run_id, w.position) != wkey]
                if len(held) == 1:
                    by_key[key] = held[0]
            elif held is not None:
                del by_key[key]
            path = key_path(key)
            paths[path] -= 1
            if not paths[path]:
                del paths[path]

    def find_waits(
        self, event_name: str, now: int, keys: Collection[str] | None = None
    ) -> list[WaitRecord]:
        """See :meth:`durable_core.Store.find_waits`: with ``keys``, read from the index
        (the waits without keys, then those under each key), never from all the waits."""
        with self._lock:
            if keys is None:
                return [w for w in self._waits.get(event_name, {}).values() if w.expires_at > now]
            out = [w for w in self._unkeyed.get(event_name, {}).values() if w.expires_at > now]
            by_key = self._by_key.get(event_name)
            if by_key:
                seen: set[tuple[str, int]] = set()
                for key in keys:
                    held = by_key.get(key)
                    if held is None:
                        continue
                    for w in held if type(held) is list else (held,):
                        assert isinstance(w, WaitRecord)
                        if w.expires_at > now and (w.run_id, w.position) not in seen:
                            seen.add((w.run_id, w.position))
                            out.append(w)
            return out

    def wait_key_paths(self, event_name: str) -> list[str]:
        """See :meth:`durable_core.Store.wait_key_paths`."""
        with self._lock:
            return sorted(self._paths.get(event_name, ()))

    def cancel_requested(self, run_ids: Sequence[str]) -> set[str]:
        """See :meth:`durable_core.Store.cancel_requested`."""
        with self._lock:
            return {
                r for r in run_ids
                if any(sig.kind == "cancel" for _seq, sig in self._signals.get(r, ()))
            }

    def cancel_reasons(self, run_ids: Sequence[str]) -> dict[str, str]:
        """See :meth:`durable_core.Store.cancel_reasons`."""
        out: dict[str, str] = {}
        with self._lock:
            for r in run_ids:
                for _seq, sig in self._signals.get(r, ()):
                    if sig.kind == "cancel":
                        out[r] = sig.payload
                        break
        return out

    def next_wake_at(self) -> int | None:
        """See :meth:`durable_core.Store.next_wake_at`."""
        with self._lock:
            wakes = [
                r.wake_at for r in self._runs.values()
                if r.wake_at is not None and r.status not in TERMINAL_STATUSES
            ]
            return min(wakes, default=None)

    def cron_cursors(self) -> dict[str, int]:
        """See :meth:`durable_core.Store.cron_cursors`."""
        with self._lock:
            return dict(self._cron)

    def get_run(self, run_id: str) -> RunRecord:
        """See :meth:`durable_core.Store.get_run`."""
        with self._lock:
            try:
                return self._runs[run_id]
            except KeyError:
                raise RunNotFoundError(f"no run with id {run_id!r}") from None

    def load_journal(self, run_id: str) -> list[JournalEntry]:
        """See :meth:`durable_core.Store.load_journal`."""
        with self._lock:
            return list(self._journals.get(run_id, ()))

    def list_runs(
        self,
        *,
        function_id: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
        exclude_function_ids: Sequence[str] | None = None,
        since: int | None = None,
        until: int | None = None,
        before: str | None = None,
    ) -> list[RunRecord]:
        """See :meth:`durable_core.Store.list_runs`."""
        with self._lock:
            out: list[RunRecord] = []
            if limit <= 0:
                return out
            exclude = set(exclude_function_ids or ())
            order = self._run_order
            if before is not None:
                if before not in self._runs:
                    return out
                order = order[:order.index(before)]
            for run_id in reversed(order):
                run = self._runs[run_id]
                if since is not None and run.created_at < since:
                    continue
                if until is not None and run.created_at >= until:
                    continue
                if function_id is not None and run.function_id != function_id:
                    continue
                if run.function_id in exclude:
                    continue
                if status is not None and run.status != status:
                    continue
                if event_id is not None and event_id not in run.event_ids:
                    continue
                out.append(run)
                if len(out) >= limit:
                    break
            return out

    # ------------------------------------------------------------------ notifications

    def __getstate__(self) -> dict[str, object]:
        # A copy (the simulator snapshots a store) gets a wake-up condition of its own.
        state = self.__dict__.copy()
        del state["_wake"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._wake = threading.Condition()

    def _notify(self) -> None:
        with self._wake:
            self._commits += 1
            self._wake.notify_all()

    def wait_for_notify(self, timeout_s: float) -> bool:
        """Block until a commit created events, runs or signals or ended a run
        (:func:`durable_core.store.notifies`), or until ``timeout_s`` seconds passed; True
        if woken, False on timeout or once the store is closed. Listening starts on the
        first call (commits before it are not heard); from then on none is missed."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._wake:
            if self._seen is None:
                self._seen = self._commits  # listening starts now
            while self._commits == self._seen and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.wait(remaining)
            if self._closed:
                return False
            self._seen = self._commits
            return True
    def skipped_triggers(
        self,
        *,
        function_id: str | None = None,
        event_id: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[SkippedTrigger]:
        """See :meth:`durable_core.Store.skipped_triggers`."""
        with self._lock:
            out: list[SkippedTrigger] = []
            if limit <= 0:
                return out
            for skip in reversed(self._skipped.values()):
                if function_id is not None and skip.function_id != function_id:
                    continue
                if event_id is not None and skip.event_id != event_id:
                    continue
                if run_id is not None and skip.run_id != run_id:
                    continue
                out.append(skip)
                if len(out) >= limit:
                    break
            return out

    def close(self) -> None:
        """Nothing to release; wakes a blocked :meth:`wait_for_notify` (which returns False
        from then on)."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()

    # ------------------------------------------------------------------ flow buffers

    def buffer_events(self, adds: Sequence[BufferAdd], now: int) -> int:
        """See :meth:`durable_core.Store.buffer_events`."""
        applied = 0
        with self._lock:
            for add in adds:
                seq = add.event.seq
                if seq not in self._unrouted:
                    continue  # routed already (by a racing or earlier router)
                bkey = (add.function_id, add.key)
                events = self._buffered.setdefault(bkey, {})
                if seq in events:
                    continue
                state = buffer_added(self._buffers.get(bkey), add)
                if state is None:
                    continue
                if add.kind == "debounce":
                    events.clear()
                events[seq] = add.event
                self._buffers[bkey] = state
                applied += 1
        return applied

    def ready_buffers(
        self, now: int, function_ids: Sequence[str], limit: int
    ) -> list[Buffer]:
        """See :meth:`durable_core.Store.ready_buffers`."""
        with self._lock:
            only = set(function_ids)
            ready = sorted(
                (st for st in self._buffers.values()
                 if st.ready_at <= now and st.function_id in only),
                key=lambda st: (st.ready_at, st.function_id, st.key))
            out: list[Buffer] = []
            for st in ready:
                if len(out) >= max(limit, 0):
                    break
                held = self._buffered[(st.function_id, st.key)]
                events = tuple(held[seq] for seq in sorted(held)
                               if seq not in self._unrouted)[:st.max_size]
                if events:
                    out.append(Buffer(st, events))
            return out

    def take_buffer(self, take: BufferTake, now: int) -> bool:
        """See :meth:`durable_core.Store.take_buffer`."""
        with self._lock:
            bkey = (take.function_id, take.key)
            state = self._buffers.get(bkey)
            events = self._buffered.get(bkey, {})
            if state is None or not take_accepted(events.keys(), take):
                return False
            self._commit(CommitBatch(now=now, runs=(take.run,)))  # raises before changes
            for seq in take.seqs:
                del events[seq]
            left = events.values()
            rest = buffer_rest(state, take, len(events),
                               min((e.received_at for e in left), default=0),
                               max((e.received_at for e in left), default=0))
            if rest is None:
                del self._buffers[bkey]
                self._buffered.pop(bkey, None)
            else:
                self._buffers[bkey] = rest
        self._notify()
        return True

    def next_buffer_ready(self, function_ids: Sequence[str]) -> int | None:
        """See :meth:`durable_core.Store.next_buffer_ready`."""
        with self._lock:
            only = set(function_ids)
            return min((st.ready_at for st in self._buffers.values()
                        if st.function_id in only), default=None)

    def buffer_states(self, function_id: str | None = None) -> list[BufferState]:
        """See :meth:`durable_core.Store.buffer_states`."""
        with self._lock:
            return sorted((st for st in self._buffers.values()
                           if function_id is None or st.function_id == function_id),
                          key=lambda st: (st.function_id, st.key))

    # ------------------------------------------------------------------ concurrency

    def claim_limited_runs(
        self, owner: str, now: int, lease_ms: int, limit: int, function_ids: Sequence[str],
    ) -> list[Claim]:
        """See :meth:`durable_core.Store.claim_limited_runs`."""
        with self._lock:
            if limit <= 0 or not function_ids:
                return []
            only = set(function_ids)
            due = self._due_now(now)
            candidates = [(item[2], self._run_slots.get(item[2], ())) for item in due
                          if self._runs[item[2]].function_id in only]
            picked = pick_limited(candidates, self._held(now), limit)
            taken = set(picked)
            for item in due:
                if item[2] not in taken:
                    heapq.heappush(self._due_heap, item)
            return [self._lease(run_id, owner, now, lease_ms) for run_id in picked]

    def _held(self, now: int) -> dict[str, int]:
        held: dict[str, int] = {}
        for run_id, slots in self._run_slots.items():
            run = self._runs[run_id]
            if run.lease_owner is not None and (run.lease_expires or 0) > now:
                for key, _ in slots:
                    held[key] = held.get(key, 0) + 1
        return held

    def held_slots(self, now: int) -> dict[str, int]:
        """See :meth:`durable_core.Store.held_slots`."""
        with self._lock:
            return self._held(now)
