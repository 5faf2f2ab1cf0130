"""The in-memory store: the reference implementation of the store contract.

Nothing survives the process, so it is for tests, demos and benchmarks. Every operation takes
one lock, so it is safe to share between threads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import attrs

from durable_core.base._errors import RunNotFoundError
from durable_core.core._model import TERMINAL_STATUSES, JournalEntry, Signal
from durable_core.store import (
    DEDUPE_WINDOW_MS,
    Claim,
    CommitBatch,
    NewRun,
    RunRecord,
    StoredEvent,
    WaitRecord,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """A store that keeps everything in process memory (see the store contract)."""

    blocking = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._events: list[StoredEvent] = []
        self._events_by_id: dict[str, StoredEvent] = {}
        self._unrouted: dict[int, StoredEvent] = {}
        self._runs: dict[str, RunRecord] = {}
        self._run_order: list[str] = []
        self._journals: dict[str, list[JournalEntry]] = {}
        self._idem: dict[tuple[str, str], tuple[str, int]] = {}
        self._waits: dict[str, dict[tuple[str, int], WaitRecord]] = {}
        self._inbox: dict[str, list[tuple[int, Signal]]] = {}
        self._signal_seq = 0
        self._cron: dict[str, int] = {}

    # ------------------------------------------------------------------ events

    def append_events(self, events: Sequence[str], now: int) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.append_events`."""
        with self._lock:
            return [self._append_event(text, now) for text in events]

    def _append_event(self, text: str, now: int) -> StoredEvent:
        raw = json.loads(text)
        prev = self._events_by_id.get(raw["id"])
        dup = prev is not None and now - prev.ts < DEDUPE_WINDOW_MS and not prev.duplicate
        ev = StoredEvent(
            seq=len(self._events) + 1, id=raw["id"], name=raw["name"], data=text,
            ts=int(raw["ts"]), duplicate=dup,
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

    # ------------------------------------------------------------------ commit

    def commit(self, batch: CommitBatch) -> set[str]:
        """See :meth:`durable_core.Store.commit`."""
        with self._lock:
            fenced: set[str] = set()
            # Validate every write first so a rejected run leaves nothing half-applied. A
            # batch may hold several writes for one run (group commit): check them in order.
            length: dict[str, int] = {}
            for w in batch.writes:
                run = self._runs.get(w.run_id)
                if run is None or run.epoch != w.epoch or run.status in TERMINAL_STATUSES:
                    fenced.add(w.run_id)
                    continue
                expected = length.get(w.run_id, len(self._journals[w.run_id]))
                if any(e.seq != expected + i for i, e in enumerate(w.entries)):
                    fenced.add(w.run_id)  # entries must continue the journal densely
                length[w.run_id] = expected + len(w.entries)
            for text in batch.events:
                self._append_event(text, batch.now)
            for new in batch.runs:
                self._create_run(new)
            for w in batch.writes:
                if w.run_id in fenced:
                    continue
                self._journals[w.run_id].extend(w.entries)
                if w.status is None and not w.release and not w.consumed_signals:
                    continue  # journal only: the hot path
                run = self._runs[w.run_id]
                changes: dict[str, object] = {"updated_at": batch.now}
                if w.status is not None:
                    changes["status"] = w.status
                    changes["wake_at"] = w.wake_at
                    if w.status in TERMINAL_STATUSES:
                        changes["output"] = w.output
                        changes["error"] = w.error
                        changes["ended_at"] = batch.now
                        changes["wake_at"] = None
                if w.release or (w.status in TERMINAL_STATUSES):
                    changes["lease_owner"] = None
                    changes["lease_expires"] = None
                self._runs[w.run_id] = attrs.evolve(run, **changes)  # type: ignore[arg-type]
                if w.status in TERMINAL_STATUSES:
                    self._inbox.pop(w.run_id, None)  # never to be delivered
                elif w.consumed_signals:
                    box = self._inbox.get(w.run_id)
                    if box:
                        self._inbox[w.run_id] = [s for s in box if s[0] > w.consumed_signals]
            for wait in batch.waits_add:
                if wait.run_id not in fenced:
                    waits = self._waits.setdefault(wait.event, {})
                    wkey = (wait.run_id, wait.position)
                    if wkey not in waits:  # re-registering keeps the original after_seq
                        waits[wkey] = attrs.evolve(wait, after_seq=len(self._events))
            for run_id, pos in batch.waits_remove:
                if run_id in fenced:
                    continue
                for waits in self._waits.values():
                    waits.pop((run_id, pos), None)
            for run_id, signal in batch.signals:
                target = self._runs.get(run_id)
                if target is not None and target.status not in TERMINAL_STATUSES:
                    self._signal_seq += 1
                    self._inbox.setdefault(run_id, []).append((self._signal_seq, signal))
            for seq in batch.routed_events:
                self._unrouted.pop(seq, None)
            for key, tick in batch.cron:
                if tick > self._cron.get(key, -1):
                    self._cron[key] = tick
            return fenced

    def _create_run(self, new: NewRun) -> None:
        if new.id in self._runs:
            return
        if new.idempotency_key is not None:
            k = (new.function_id, new.idempotency_key)
            prev = self._idem.get(k)
            if prev is not None and new.created_at - prev[1] < DEDUPE_WINDOW_MS:
                return
            self._idem[k] = (new.id, new.created_at)
        self._runs[new.id] = RunRecord(
            id=new.id, function_id=new.function_id, status="queued", events=new.events,
            created_at=new.created_at, updated_at=new.created_at,
            parent_run_id=new.parent_run_id, idempotency_key=new.idempotency_key,
            event_ids=new.event_ids,
        )
        self._run_order.append(new.id)
        self._journals[new.id] = []

    # ------------------------------------------------------------------ claims

    def _claimable(self, run: RunRecord, now: int) -> bool:
        if run.status in TERMINAL_STATUSES:
            return False
        if run.lease_owner is not None and (run.lease_expires or 0) > now:
            return False
        return (
            run.status == "queued"
            or (run.wake_at is not None and run.wake_at <= now)
            or bool(self._inbox.get(run.id))
            or run.lease_owner is not None  # lease expired mid-work: the run needs a new owner
        )

    def _claim(self, run: RunRecord, owner: str, now: int, lease_ms: int) -> Claim:
        run = attrs.evolve(
            run, epoch=run.epoch + 1, lease_owner=owner, lease_expires=now + lease_ms
        )
        self._runs[run.id] = run
        return Claim(
            run=run,
            journal=tuple(self._journals[run.id]),
            signals=tuple(self._inbox.get(run.id, ())),
        )

    def claim_runs(self, owner: str, now: int, lease_ms: int, limit: int) -> list[Claim]:
        """See :meth:`durable_core.Store.claim_runs`."""
        with self._lock:
            out: list[Claim] = []
            if limit <= 0:
                return out
            for run_id in self._run_order:
                run = self._runs[run_id]
                if self._claimable(run, now):
                    out.append(self._claim(run, owner, now, lease_ms))
                    if len(out) >= limit:
                        break
            return out

    def claim_run(self, owner: str, run_id: str, now: int, lease_ms: int) -> Claim | None:
        """See :meth:`durable_core.Store.claim_run`."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.status in TERMINAL_STATUSES:
                return None
            if run.lease_owner is not None and (run.lease_expires or 0) > now:
                return None
            return self._claim(run, owner, now, lease_ms)

    def renew(self, owner: str, run_ids: Sequence[str], now: int, lease_ms: int) -> set[str]:
        """See :meth:`durable_core.Store.renew`."""
        with self._lock:
            lost = set()
            for run_id in run_ids:
                run = self._runs.get(run_id)
                if run is None or run.lease_owner != owner or run.status in TERMINAL_STATUSES:
                    lost.add(run_id)
                    continue
                self._runs[run_id] = attrs.evolve(run, lease_expires=now + lease_ms)
            return lost

    # ------------------------------------------------------------------ queries

    def find_waits(self, event_name: str, now: int) -> list[WaitRecord]:
        """See :meth:`durable_core.Store.find_waits`."""
        with self._lock:
            return [w for w in self._waits.get(event_name, {}).values() if w.expires_at > now]

    def cancel_requested(self, run_ids: Sequence[str]) -> set[str]:
        """See :meth:`durable_core.Store.cancel_requested`."""
        with self._lock:
            return {
                r for r in run_ids
                if any(sig.kind == "cancel" for _seq, sig in self._inbox.get(r, ()))
            }

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
    ) -> list[RunRecord]:
        """See :meth:`durable_core.Store.list_runs`."""
        with self._lock:
            out: list[RunRecord] = []
            if limit <= 0:
                return out
            for run_id in reversed(self._run_order):
                run = self._runs[run_id]
                if function_id is not None and run.function_id != function_id:
                    continue
                if status is not None and run.status != status:
                    continue
                if event_id is not None and event_id not in run.event_ids:
                    continue
                out.append(run)
                if len(out) >= limit:
                    break
            return out

    def close(self) -> None:
        """Nothing to release."""
