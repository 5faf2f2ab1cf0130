"""The store contract: the records stores keep and the operations every store provides.

The engine talks to persistence only through :class:`Store`. Implementations live in the
``stores`` package (memory, SQLite, Postgres); ``stores.testing`` is the conformance suite a
store must pass. All times are integers of milliseconds since the epoch, passed in by the
caller (stores never read the clock for semantics). All payloads are JSON text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import attrs

from durable_core.core._model import ErrorInfo, JournalEntry, Signal

__all__ = [
    "DEDUPE_WINDOW_MS",
    "Claim",
    "CommitBatch",
    "NewRun",
    "RunRecord",
    "RunWrite",
    "Store",
    "StoredEvent",
    "WaitRecord",
    "lone_memo",
]

DEDUPE_WINDOW_MS = 24 * 3600 * 1000
"""An event id, or a run idempotency key, is deduplicated for 24 hours."""


@attrs.frozen
class StoredEvent:
    """An event in the log. ``seq`` orders the log; ``duplicate`` marks an event whose id was
    already seen within 24 h: it is kept (and visible) but triggers nothing."""

    seq: int
    id: str
    name: str
    data: str  # the whole event as JSON text (name, data, id, ts)
    ts: int
    duplicate: bool = False


@attrs.frozen
class RunRecord:
    """A run as stored."""

    id: str
    function_id: str
    status: str
    events: tuple[str, ...]  # triggering events, JSON texts
    created_at: int
    updated_at: int
    wake_at: int | None = None
    output: str | None = None
    error: ErrorInfo | None = None
    parent_run_id: str | None = None
    idempotency_key: str | None = None
    ended_at: int | None = None
    epoch: int = 0
    lease_owner: str | None = None
    lease_expires: int | None = None
    event_ids: tuple[str, ...] = ()


@attrs.frozen
class NewRun:
    """A run to create. Creation is skipped when ``id`` exists, or when another run of the
    same function has the same ``idempotency_key`` and was created within 24 h."""

    id: str
    function_id: str
    events: tuple[str, ...]
    event_ids: tuple[str, ...]
    created_at: int
    idempotency_key: str | None = None
    parent_run_id: str | None = None


@attrs.frozen
class WaitRecord:
    """A registered ``wait_for_event``: route events named ``event`` to the run."""

    run_id: str
    position: int
    event: str
    if_: str | None
    trigger_event: str
    expires_at: int
    after_seq: int = 0
    """Set by the store when the wait is first registered: the last event ``seq`` in the log
    at that moment (after the batch's own events). Only later events can match the wait.
    Registering the same (run, position) again keeps the original value."""


class RunWrite(NamedTuple):
    """Changes to one run, applied only if the run's lease epoch is still ``epoch``.

    ``entries`` are appended to the journal (their ``seq`` must continue it densely);
    ``status``/``wake_at`` replace the stored ones when ``status`` is given; ``output`` /
    ``error`` are set with a terminal status; signals with ``seq <= consumed_signals`` are
    deleted from the inbox (a terminal status deletes them all, and signals to an ended run,
    in a later batch or the same one, are dropped); ``release`` gives the lease up.
    """

    run_id: str
    epoch: int
    entries: tuple[JournalEntry, ...] = ()
    status: str | None = None
    wake_at: int | None = None
    output: str | None = None
    error: ErrorInfo | None = None
    consumed_signals: int = 0
    release: bool = False


class CommitBatch(NamedTuple):
    """Everything one group commit writes, atomically, in one transaction.

    ``RunWrite`` and ``CommitBatch`` are built once per step on the hot path, so they are
    ``NamedTuple``s (cheaper to build than frozen attrs classes, and as immutable)."""

    now: int
    runs: tuple[NewRun, ...] = ()
    events: tuple[str, ...] = ()
    writes: tuple[RunWrite, ...] = ()
    waits_add: tuple[WaitRecord, ...] = ()
    waits_remove: tuple[tuple[str, int], ...] = ()
    signals: tuple[tuple[str, Signal], ...] = ()
    routed_events: tuple[int, ...] = ()
    cron: tuple[tuple[str, int], ...] = ()  # (cron key, last scheduled tick) cursors


def lone_memo(batch: CommitBatch) -> tuple[RunWrite, JournalEntry] | None:
    """The write and its entry if ``batch`` holds one memo and nothing else: one journal-only
    write of one entry (a lone run's step). Stores give this shape a fast path."""
    writes = batch.writes
    if len(writes) != 1 or batch != (batch.now, (), (), writes, (), (), (), (), ()):
        return None
    w = writes[0]
    if len(w.entries) != 1 or w.status is not None or w.release or w.consumed_signals:
        return None
    return w, w.entries[0]


@attrs.frozen
class Claim:
    """A run claimed under a lease: its record (with the new ``epoch``), its journal and the
    signals waiting in its inbox as ``(seq, signal)``."""

    run: RunRecord
    journal: tuple[JournalEntry, ...]
    signals: tuple[tuple[int, Signal], ...]


@runtime_checkable
class Store(Protocol):
    """The persistence contract. Every method is synchronous and thread-safe; drivers call
    blocking stores from worker threads. Every write is durable when the method returns."""

    blocking: bool
    """True if calls do I/O (the trio driver then calls them from a thread)."""

    def append_events(self, events: Sequence[str], now: int) -> list[StoredEvent]:
        """Durably append events (JSON texts with ``id`` and ``ts`` set), in order. An
        event whose id was appended within 24 h is stored with ``duplicate=True``."""
        ...

    def unrouted_events(self, limit: int) -> list[StoredEvent]:
        """The oldest events not yet marked routed, in log order (duplicates excluded)."""
        ...

    def commit(self, batch: CommitBatch) -> set[str]:
        """Apply a batch atomically. Returns the ids of runs whose writes were rejected
        because their lease epoch was stale (fencing); everything else is applied."""
        ...

    def claim_runs(self, owner: str, now: int, lease_ms: int, limit: int) -> list[Claim]:
        """Lease up to ``limit`` runs that need work: not terminal, lease free or expired,
        and queued, due (``wake_at <= now``) or with signals in their inbox. Each claim
        bumps the run's epoch."""
        ...

    def claim_run(self, owner: str, run_id: str, now: int, lease_ms: int) -> Claim | None:
        """Lease one given run if it is not terminal and its lease is free or expired."""
        ...

    def renew(self, owner: str, run_ids: Sequence[str], now: int, lease_ms: int) -> set[str]:
        """Extend leases still held by ``owner``; returns the ids whose lease was lost."""
        ...

    def find_waits(self, event_name: str, now: int) -> list[WaitRecord]:
        """Unexpired waits for events named ``event_name``."""
        ...

    def cancel_requested(self, run_ids: Sequence[str]) -> set[str]:
        """The runs among ``run_ids`` with a cancel signal in their inbox (a worker executing
        a run's steps back to back checks this, so a cancel need not wait for a release)."""
        ...

    def next_wake_at(self) -> int | None:
        """The earliest ``wake_at`` of a non-terminal run, or None."""
        ...

    def cron_cursors(self) -> dict[str, int]:
        """Last scheduled tick (ms) per cron key."""
        ...

    def get_run(self, run_id: str) -> RunRecord:
        """One run; raises :class:`~durable_core.RunNotFoundError`."""
        ...

    def load_journal(self, run_id: str) -> list[JournalEntry]:
        """A run's journal in ``seq`` order."""
        ...

    def list_runs(
        self,
        *,
        function_id: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs matching the filters, newest first."""
        ...

    def get_event(self, event_id: str) -> StoredEvent | None:
        """The latest stored event with this id, if any."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
