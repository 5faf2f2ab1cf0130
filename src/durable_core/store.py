"""The store contract: the records stores keep, the operations every store provides, and the
rules that decide what each operation does.

The engine talks to persistence only through :class:`Store`. Implementations live in the
``stores`` package (memory, SQLite, Postgres); ``stores.testing`` is the conformance suite a
store must pass. All times are integers of milliseconds since the epoch, passed in by the
caller (stores never read the clock for semantics). All payloads are JSON text.

**Each rule is decided once, here.** The docstrings of :class:`Store` state every rule; the
pure functions at the end of this module (:func:`event_is_duplicate`, :func:`new_runs_to_create`,
:func:`fold_writes`, :func:`write_accepted`, :func:`apply_change`, :func:`due_at`,
:func:`lease_held`, :func:`signal_accepted`, :func:`wait_changes`, :func:`wait_found`,
:func:`cron_advances`) decide them, and every store uses them: a store only persists.
Where a store needs SQL for atomicity (a fencing check inside the statement that writes, a
claim that selects and locks in one statement), its SQL states the same rule, and
``stores.testing`` checks it against the function on a table of cases for every store (its
``test_*_follow*_rule*`` tests).

The rules, in short (each is detailed where it is decided):

- **Time.** A commit happens at ``batch.now`` (``append_events`` at its ``now``): the store
  records that time as when it received an event (:attr:`StoredEvent.received_at`) and when
  it last changed a run (``updated_at``); it never reads a clock.
- **Event dedupe.** An event whose id the store *received* (as a non-duplicate) less than
  24 h before is kept, flagged ``duplicate``, and never routed; the 24 h run from the
  receipt of the original, not from any event's ``ts`` (:func:`event_is_duplicate`).
- **Idempotent run creation.** A new run is skipped if its id exists, or if a run of the same
  function holding the same idempotency key was created less than 24 h (``created_at``)
  before it; otherwise it is created ``queued`` and takes the key (:func:`new_runs_to_create`).
  A run skipped for its key is recorded as a :class:`SkippedTrigger` naming the run holding
  the key (once per skipped run id: recording the same id again keeps the first).
- **Run events.** ``CommitBatch.run_events`` (a run's system events) are appended only if
  their run's writes in the batch were accepted, after the batch's writes and waits
  (:func:`run_events_to_append`): a finalizer whose write is fenced emits nothing.
- **Fencing.** The writes of one batch to one run are accepted or rejected together: all of
  them must carry the run's current epoch, the run must exist (before the batch) and not have
  ended, and their entries, in order, must continue its journal densely
  (:func:`fold_writes`, :func:`write_accepted`). A rejected run's waits are not changed either.
- **Applying writes.** :func:`apply_change`: a status replaces status and ``wake_at``; a
  terminal status records ``output``/``error`` (its ``type``, ``message``
  and ``traceback``, kept whole) and ``ended_at``, clears ``wake_at`` and gives
  the lease up; ``release`` gives the lease up; any of these (or consuming signals) sets
  ``updated_at``; a journal-only write leaves the record as it is.
- **Signals.** A signal is kept for a run that exists and has not ended once the batch's
  writes are applied (:func:`signal_accepted`); each gets a ``seq`` greater than any before
  (never reused). A write consumes its run's signals up to ``consumed_signals``; a run that
  ends drops them all.
- **Claims.** A run is claimable once :func:`due_at` is ``<= now``: not ended, its lease free
  or expired, and queued, due by ``wake_at``, holding signals, or abandoned by an expired
  lease. ``claim_runs`` takes the oldest claimable runs first (creation order), only of the
  given functions, and bumps each one's epoch.
- **Leases.** Only a lease that is held, by that owner, and not yet expired, can be renewed
  (:func:`lease_held`); an expired lease is lost even if nobody claimed the run since.
- **Waits.** :func:`wait_changes`: a wait is registered once per ``(event, run, position)``
  (none for a run the batch was to create but skipped)
  (registering again keeps the first, ``after_seq`` included); ``after_seq`` is the last event
  ``seq`` when it was registered, after the batch's own events (or the one the registration
  gives, if > 0); a wait added and removed in one batch ends up removed.
- **Match keys.** A wait registered with keys is found for an event only if it shares one
  of the event's keys; a wait without keys is found for every event of its name
  (:func:`wait_found`). Keys are stored with the wait and removed with it.
- **Cron cursors** only move forward (:func:`cron_advances`).
- **Flow buffers** (``debounce``, ``batch_events``): an add applies only for an event not
  yet routed and not already buffered (:func:`buffer_added`); a take creates its run and
  removes its events in one transaction, only if the buffer holds every one of them
  (:func:`take_accepted`, :func:`buffer_rest`).
- **Start limits** (flow control: throttle, rate limit, singleton). A new run's
  :attr:`NewRun.limits` are decided in the commit that creates it, in batch order, against
  state the store keeps (:class:`StartLimiter`): a GCRA theoretical arrival time per
  throttle and rate-limit bucket, a slot (holder, waiting run) per singleton bucket. A run
  over its rate limit, or refused its singleton slot, is not created and is recorded as a
  :class:`SkippedTrigger` with that ``reason``; a throttled run is created ``queued`` with
  its slot as ``wake_at`` (:func:`due_at`); a run waiting for a singleton slot is never
  claimed; a slot passes on (:func:`slot_released`) in the commit that ends its holder
  (an accepted terminal write), never otherwise.
- **Concurrency and priority.** Claims take runs in :func:`claim_order` (creation time minus
  :attr:`NewRun.priority_ms`, then creation order). A slot key of a run
  (:attr:`NewRun.slots`) is held while the run's lease is live; runs with slots are claimed
  by :meth:`Store.claim_limited_runs`, only while each key has room (:func:`pick_limited`).
- **Atomicity and durability.** A commit is applied whole or not at all (a store that fails
  half way leaves nothing of the batch), and is durable when it returns: closing and
  opening a persistent store again finds everything committed.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import attrs

from durable_core.core._model import TERMINAL_STATUSES, ErrorInfo, JournalEntry, Signal

__all__ = [
    "ALL_SIGNALS",
    "ALWAYS_DUE",
    "BUFFER_KINDS",
    "DEDUPE_WINDOW_MS",
    "SKIP_REASONS",
    "Buffer",
    "BufferAdd",
    "BufferState",
    "BufferTake",
    "Claim",
    "CommitBatch",
    "NewRun",
    "RunChange",
    "RunRecord",
    "RunWrite",
    "SkippedTrigger",
    "StartLimiter",
    "StartLimits",
    "Store",
    "StoredEvent",
    "WaitRecord",
    "apply_change",
    "buffer_added",
    "buffer_rest",
    "claim_order",
    "cron_advances",
    "due_at",
    "event_bytes",
    "event_is_duplicate",
    "flag_duplicates",
    "fold_writes",
    "gcra_rate_limit",
    "gcra_throttle",
    "is_journal_only",
    "lease_held",
    "lone_memo",
    "new_runs_to_create",
    "notifies",
    "pick_limited",
    "record_changes",
    "routing_only",
    "run_events_to_append",
    "signal_accepted",
    "slot_has_room",
    "slot_released",
    "take_accepted",
    "wait_changes",
    "wait_found",
    "wait_records",
    "write_accepted",
]

DEDUPE_WINDOW_MS = 24 * 3600 * 1000
"""An event id, or a run idempotency key, is deduplicated for 24 hours."""


@attrs.frozen
class StoredEvent:
    """An event in the log. ``seq`` orders the log; ``received_at`` is when the store received
    it (the ``now`` of the append or commit; ``ts`` is the sender's); ``duplicate`` marks an
    event whose id the store received less than 24 h before: it is kept (and visible) but
    triggers nothing (see :func:`event_is_duplicate`)."""

    seq: int
    id: str
    name: str
    data: str  # the whole event as JSON text (name, data, id, ts)
    ts: int
    received_at: int
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
    rerun_of: str | None = None
    """The run this one reruns (``Client.rerun``), or None."""


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
    rerun_of: str | None = None
    """The run this one reruns, kept on the record (see :attr:`RunRecord.rerun_of`)."""
    limits: StartLimits | None = None
    """The start limits (throttle, rate limit, singleton) the run is created under, or None
    (see :class:`StartLimits` and :class:`StartLimiter`)."""
    slots: tuple[tuple[str, int], ...] = ()
    """Concurrency: ``(slot key, limit)`` pairs (at most 2). A run with slots is claimed
    only by :meth:`Store.claim_limited_runs`, and only while each of its slot keys is held
    by fewer than its limit of leased runs (:func:`pick_limited`)."""
    priority_ms: int = 0
    """Priority: claims take queued runs in ``created_at - priority_ms`` order (then
    creation order; see :func:`claim_order`)."""


@attrs.frozen
class SkippedTrigger:
    """A trigger that started no run because its function's idempotency key was held (or
    a start limit refused it: :attr:`reason`): the
    run it would have created (``id``) was folded into ``run_id``, the run holding ``key``.
    ``at`` is when it was skipped (the would-be run's ``created_at``). A store records one
    per ``id`` (recording the same id again keeps the first)."""

    id: str
    function_id: str
    key: str
    run_id: str
    event_id: str | None
    at: int
    reason: str = "idempotency"
    """Why it started no run (one of :data:`SKIP_REASONS`): ``"idempotency"`` (its key was
    held by ``run_id``), ``"rate_limit"`` (over its function's rate limit; ``run_id``: the
    last run the limit let start, ``""`` if none is known; ``key``: the rate-limit key
    value, ``""`` without a key) or ``"singleton"`` (another run held its singleton key:
    ``run_id``, the run holding or waiting for it; ``key``: the singleton key value)."""


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
    at that moment (after the batch's own events), unless the registration gives one (> 0:
    a run's cancel-on listeners count from its triggering event). Only later events can
    match the wait. Registering the same (run, position) again keeps the original value."""
    keys: tuple[str, ...] = ()
    """The match keys of the wait's condition (see :mod:`durable_core.base._match`): texts
    ``<path>=<value>`` (the path holds no ``=``). A wait with keys can only match an event
    whose own keys (its values at those paths) include one of them; a wait without keys
    may match any event of its name. See :meth:`Store.find_waits`."""


class RunWrite(NamedTuple):
    """Changes to one run, applied only if the run's lease epoch is still ``epoch``.

    ``entries`` are appended to the journal (their ``seq`` must continue it densely);
    ``status``/``wake_at`` replace the stored ones when ``status`` is given; ``output`` /
    ``error`` are set with a terminal status; the run's signals with ``seq <=
    consumed_signals`` are deleted (a terminal status deletes them all, and signals to an
    ended run, in a later batch or the same one, are dropped); ``release`` gives the lease
    up. See :func:`fold_writes`, :func:`write_accepted` and :func:`apply_change`.
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
    """Everything one group commit writes, atomically, in one transaction, at time ``now``.

    In order: ``events`` are appended (deduplicated at ``now``), ``runs`` created (see
    :func:`new_runs_to_create`), ``writes`` applied (fenced against the state *before* the
    batch, so a write to a run this batch creates is fenced), ``waits_add`` then
    ``waits_remove`` applied (see :func:`wait_changes`), ``run_events`` of accepted runs
    appended (deduplicated at ``now``; :func:`run_events_to_append`), ``signals`` delivered
    to runs that have not ended once the writes are applied, ``routed_events`` (event seqs)
    marked routed (unknown seqs and routing twice are harmless) and ``cron`` cursors moved
    forward.

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
    run_events: tuple[tuple[str, str], ...] = ()
    """``(run_id, event JSON)``: events appended only if that run's writes in this batch
    are accepted (a run's system events, emitted with its end), after the writes and the
    waits (so a wait registered by this batch may match them); see
    :func:`run_events_to_append`."""


def lone_memo(batch: CommitBatch) -> tuple[RunWrite, JournalEntry] | None:
    """The write and its entry if ``batch`` holds one memo and nothing else: one journal-only
    write of one entry (a lone run's step). Stores give this shape a fast path."""
    writes = batch.writes
    if len(writes) != 1 or batch != (batch.now, (), (), writes, (), (), (), (), (), ()):
        return None
    w = writes[0]
    if len(w.entries) != 1 or w.status is not None or w.release or w.consumed_signals:
        return None
    return w, w.entries[0]


def is_journal_only(w: RunWrite) -> bool:
    """Whether ``w`` only appends entries: it leaves the run record as it is (``updated_at``
    included). The hot path."""
    return w.status is None and not w.release and not w.consumed_signals


@attrs.frozen
class Claim:
    """A run claimed under a lease: its record (with the new ``epoch``), its journal and its
    signals as ``(seq, signal)``, in ``seq`` order."""

    run: RunRecord
    journal: tuple[JournalEntry, ...]
    signals: tuple[tuple[int, Signal], ...]


@runtime_checkable
class Store(Protocol):
    """The persistence contract. Every method is synchronous and thread-safe; drivers call
    blocking stores from worker threads. Every write is durable when the method returns.

    Optional: ``wait_for_notify(timeout_s) -> bool``, blocking until a commit in any process
    creates events, runs or signals or ends a run (:func:`notifies`; True, possibly
    spuriously) or until the timeout or ``close()`` (False); the first call starts
    listening. A worker then wakes at once instead of at its next poll, and a
    :class:`~durable_core.RunHandle` waiting for a result looks at its run only when one
    ended (see docs/stores.md; ``stores.testing`` checks it)."""

    blocking: bool
    """True if calls do I/O (the trio driver then calls them from a thread)."""

    def append_events(self, events: Sequence[str], now: int) -> list[StoredEvent]:
        """Durably append events (JSON texts with ``id``, ``name`` and ``ts`` set), in order,
        received at ``now``, with growing ``seq`` numbers (they need not start at 1 or be
        contiguous). An event whose id the store received less than 24 h before, as an
        original, is stored with ``duplicate=True`` (:func:`event_is_duplicate`; duplicates
        within one call count too). ``[]`` appends nothing."""
        ...

    def unrouted_events(self, limit: int) -> list[StoredEvent]:
        """The oldest events not yet marked routed, in log order (duplicates excluded);
        ``limit <= 0`` gives ``[]``."""
        ...

    def commit(self, batch: CommitBatch) -> set[str]:
        """Apply a batch atomically (see :class:`CommitBatch` for the order). Returns the
        ids of runs whose writes were rejected (fencing: :func:`write_accepted`); everything
        else is applied. A commit that raises has applied nothing."""
        ...

    def claim_runs(
        self, owner: str, now: int, lease_ms: int, limit: int,
        function_ids: Sequence[str] | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` claimable runs (:func:`due_at` ``<= now``, and not waiting
        for a singleton slot: :class:`StartLimiter`), oldest first
        (:func:`claim_order`: creation time minus priority, then creation order), to
        ``owner`` until ``now + lease_ms``; each claim bumps the run's
        epoch. With ``function_ids``, only runs of those functions are claimed (a worker
        claims only the functions it has; a run of another function stays queued for a
        worker that has it). ``limit <= 0`` or ``function_ids == []`` claims nothing."""
        ...

    def renew(self, owner: str, run_ids: Sequence[str], now: int, lease_ms: int) -> set[str]:
        """Extend to ``now + lease_ms`` the leases ``owner`` still holds (:func:`lease_held`:
        not expired at ``now``, run not ended); returns the ids whose lease was lost
        (unknown ids included). An expired lease cannot be renewed, even by its owner."""
        ...

    def find_waits(
        self, event_name: str, now: int, keys: Collection[str] | None = None
    ) -> list[WaitRecord]:
        """Unexpired waits (``expires_at > now``) for events named ``event_name``, each once,
        as registered (``keys`` included), in no promised order.

        With ``keys``, only the waits :func:`wait_found` for them: those without keys, and
        those with a key among ``keys``. This is the routing lookup: a store answers it from
        an index on (event name, match key) (one indexed query in the SQL stores), never by
        reading every wait of the name. ``keys=None`` gives every wait of the name."""
        ...

    def wait_key_paths(self, event_name: str) -> list[str]:
        """The distinct paths (the part before the first ``=``) of the keys of the waits
        registered for events named ``event_name`` (expired ones may be included), sorted.
        An event's keys for these paths are what :meth:`find_waits` is asked for; a path
        of a wait registered after this call belongs to a wait registered after every event
        already in the log, which cannot match them anyway."""
        ...

    def cancel_requested(self, run_ids: Sequence[str]) -> set[str]:
        """The runs among ``run_ids`` holding a cancel signal (a worker executing a run's
        steps back to back checks this, so a cancel need not wait for a release)."""
        ...

    def cancel_reasons(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The runs among ``run_ids`` holding a cancel signal, each with the ``payload`` (the
        reason) of its first one (lowest ``seq``): what a worker holding a busy run ends it
        with."""
        ...

    def next_wake_at(self) -> int | None:
        """The earliest ``wake_at`` of a run that has not ended, or None."""
        ...

    def cron_cursors(self) -> dict[str, int]:
        """Last scheduled tick (ms) per cron key (see :func:`cron_advances`)."""
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
        exclude_function_ids: Sequence[str] | None = None,
        since: int | None = None,
        until: int | None = None,
        before: str | None = None,
    ) -> list[RunRecord]:
        """Runs matching every filter given, newest first (creation order), at most
        ``limit`` (``<= 0``: none). ``event_id`` matches runs triggered by that event;
        ``exclude_function_ids`` keeps runs of other functions only (with an app's function
        ids and ``status="queued"``: the runs no worker of that app will ever claim).
        ``since``/``until`` keep runs created at ``since <= created_at < until``.
        ``before`` is the paging cursor: a run id (the last run of the previous page) whose
        elders, in creation order, are listed; an unknown id lists none."""
        ...

    def list_events(
        self,
        *,
        name: str | None = None,
        since: int | None = None,
        until: int | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events in the log, newest first (``seq`` order), duplicates included, at most
        ``limit`` (``<= 0``: none). ``name`` keeps the events of that name; ``since`` /
        ``until`` keep those received at ``since <= received_at < until``; ``before`` is
        the paging cursor: an event ``seq`` (the last event of the previous page), only
        events with a smaller ``seq`` are listed."""
        ...

    def get_event(self, event_id: str) -> StoredEvent | None:
        """The latest stored event with this id that is not a duplicate, if any."""
        ...

    def skipped_triggers(
        self,
        *,
        function_id: str | None = None,
        event_id: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[SkippedTrigger]:
        """Triggers that started no run (see :func:`new_runs_to_create`): skipped for a held
        idempotency key, or by a start limit (:attr:`SkippedTrigger.reason`), matching
        every filter given (``run_id``: the run they were folded into), newest first, at
        most ``limit`` (``<= 0``: none)."""
        ...

    def close(self) -> None:
        """Release connections and files. What was committed stays: opening the same
        (persistent) store again finds it."""
        ...

    # -- flow buffers (debounce, batch_events): see BufferAdd and the rules at the end.

    def buffer_events(self, adds: Sequence[BufferAdd], now: int) -> int:
        """Apply ``adds`` atomically, in order (:func:`buffer_added`): only those of events
        not yet marked routed and not already in their buffer (so routing an event twice
        buffers it once). The router then marks the events routed in its commit. Returns
        how many were applied."""
        ...

    def ready_buffers(
        self, now: int, function_ids: Sequence[str], limit: int
    ) -> list[Buffer]:
        """Up to ``limit`` buffers of these functions whose ``ready_at <= now``, the
        earliest ready first, each with its first events (in seq order, at most its
        ``max_size``) among those already marked routed (a buffer holding none of those
        is left out)."""
        ...

    def take_buffer(self, take: BufferTake, now: int) -> bool:
        """Atomically, if :func:`take_accepted`: remove the take's events from the buffer
        (its state becomes :func:`buffer_rest`) and create ``take.run`` (as
        :meth:`commit` creates runs: skipped if its id exists or its idempotency key is
        held), waking ``wait_for_notify`` listeners. Returns whether it was applied."""
        ...

    def next_buffer_ready(self, function_ids: Sequence[str]) -> int | None:
        """The earliest ``ready_at`` of a buffer of these functions, or None."""
        ...

    def buffer_states(self, function_id: str | None = None) -> list[BufferState]:
        """Every buffer (of ``function_id``), by function then key: what is pending."""

    def claim_limited_runs(
        self, owner: str, now: int, lease_ms: int, limit: int, function_ids: Sequence[str],
    ) -> list[Claim]:
        """Like :meth:`claim_runs` for runs of ``function_ids`` (functions with
        ``concurrency``), taking only runs whose slots have room: a slot key is held by
        the runs with that key whose lease is live (``lease_expires > now``), and a run is
        taken only if each of its keys is held by fewer than its limit, counting the runs
        this claim takes (:func:`pick_limited`, which also serves keys in turn). Claims of
        several workers are serialized so that no limit is exceeded between them."""
        ...

    def held_slots(self, now: int) -> dict[str, int]:
        """How many runs with a live lease (``lease_expires > now``, not ended) hold each
        slot key (:attr:`NewRun.slots`); keys held by none are left out. For tools and
        checks: claims count the same way."""
        ...


# --------------------------------------------------------------------------- the rules
# Each rule of the contract, decided once. Every store uses these functions; a store whose
# SQL states a rule (for atomicity) is checked against the function by ``stores.testing``.

ALWAYS_DUE = -(2**63)
"""The :func:`due_at` of a run that is claimable at any time (queued, or holding signals)."""

ALL_SIGNALS = 2**63 - 1
"""The :attr:`RunChange.consumed` mark of a run that ends: all its signals are deleted."""


def event_is_duplicate(received_before: int | None, now: int) -> bool:
    """Whether an event received at ``now`` is a duplicate: the store received an original
    (non-duplicate) event with the same id at ``received_before`` (None: never), less than
    24 h before. The window runs from the *receipt* of the original, never from an event's
    ``ts`` (which the sender sets: a back-dated event must not escape dedupe, nor a
    future-dated one block its id for days)."""
    return received_before is not None and now - received_before < DEDUPE_WINDOW_MS


def flag_duplicates(ids: Iterable[str], originals: dict[str, int], now: int) -> list[bool]:
    """The ``duplicate`` flags of events with these ids received together at ``now``, in
    order. ``originals`` maps an id to the receipt time of its latest original; it is updated
    with the originals among these events (a duplicate never restarts the window)."""
    out: list[bool] = []
    for event_id in ids:
        dup = event_is_duplicate(originals.get(event_id), now)
        if not dup:
            originals[event_id] = now
        out.append(dup)
    return out


def new_runs_to_create(
    runs: Iterable[NewRun], existing: set[str], keys: dict[tuple[str, str], tuple[int, str]],
    skipped: list[SkippedTrigger] | None = None, limiter: StartLimiter | None = None,
) -> list[NewRun]:
    """The runs of a batch to create, in order. A run is skipped if its id is in ``existing``
    (an existing run, one earlier in the batch, or a recorded :class:`SkippedTrigger`), or
    if ``keys`` says a run of the same function holding its idempotency key was created less
    than 24 h before its ``created_at`` (then, with ``skipped``, a :class:`SkippedTrigger`
    naming the holder is appended to it). ``existing`` and ``keys`` (``(function_id, key) ->
    (created_at, run id)`` of the run holding the key) are updated with the created runs: a
    created run takes its key. The 24 h run from the creation of the holder: a run skipped
    for the key does not extend them.

    With ``limiter``, a run that passes the id and key checks is then put to its start
    limits (:meth:`StartLimiter.admit`): one the limiter drops is skipped (the limiter
    records why) and takes no idempotency key."""
    out: list[NewRun] = []
    for new in runs:
        if new.id in existing:
            continue
        k = None
        if new.idempotency_key is not None:
            k = (new.function_id, new.idempotency_key)
            held = keys.get(k)
            if held is not None and new.created_at - held[0] < DEDUPE_WINDOW_MS:
                if skipped is not None:
                    skipped.append(SkippedTrigger(
                        id=new.id, function_id=new.function_id, key=new.idempotency_key,
                        run_id=held[1], event_id=new.event_ids[0] if new.event_ids else None,
                        at=new.created_at,
                    ))
                existing.add(new.id)
                continue
        if limiter is not None and new.limits is not None and not limiter.admit(new):
            existing.add(new.id)
            continue
        if k is not None:
            keys[k] = (new.created_at, new.id)
        existing.add(new.id)
        out.append(new)
    return out


def run_events_to_append(batch: CommitBatch, fenced: Collection[str]) -> list[str]:
    """The ``run_events`` of a batch a store appends (in order): those of runs whose writes
    were accepted (not ``fenced``) and that the batch writes to. A run's system events are
    emitted with its end, so a finalizer whose end is fenced (a stale lease, a run that
    already ended) emits nothing."""
    written = {w.run_id for w in batch.writes}
    return [text for run_id, text in batch.run_events
            if run_id in written and run_id not in fenced]


class RunChange:
    """The effect of one batch's writes to one run, folded in order (see :func:`fold_writes`).

    ``epoch`` is the epoch every write carries (None when they disagree, when a write's
    entries are not dense, or when a write follows one that ended the run: never accepted);
    ``first`` is the journal length the entries must continue (None: no entries);
    ``status``/``wake_at`` come from the last write with a status; ``ends`` if that status is
    terminal (then ``output``/``error`` are its outcome); ``release`` if any write releases or
    ends; ``consumed`` is the highest ``consumed_signals`` (:data:`ALL_SIGNALS` if the run
    ends); ``touch`` if any write changes the record (not only the journal)."""

    __slots__ = (
        "consumed", "ends", "entries", "epoch", "error", "first", "output", "release",
        "status", "touch", "wake_at",
    )

    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch
        self.first: int | None = None
        self.entries: list[JournalEntry] = []
        self.status: str | None = None
        self.wake_at: int | None = None
        self.ends = False
        self.output: str | None = None
        self.error: ErrorInfo | None = None
        self.release = False
        self.consumed = 0
        self.touch = False


def fold_writes(writes: Iterable[RunWrite]) -> dict[str, RunChange]:
    """Fold a batch's writes per run, in order (a later write's fields override an earlier
    one's, as if applied one after the other). The entries of all of a run's writes must
    form one dense run of ``seq`` numbers; a write after one that ends the run makes the
    whole change unacceptable (a run that ended takes no more writes)."""
    out: dict[str, RunChange] = {}
    for w in writes:
        c = out.get(w.run_id)
        if c is None:
            c = out[w.run_id] = RunChange(w.epoch)
        elif c.epoch != w.epoch or c.ends:
            c.epoch = None
        if w.entries:
            first = w.entries[0].seq
            if len(w.entries) > 1 and any(e.seq != first + i for i, e in enumerate(w.entries)):
                c.epoch = None
            expected = first - len(c.entries)
            if c.first is None:
                c.first = expected
            elif c.first != expected:
                c.epoch = None
            c.entries.extend(w.entries)
        if w.status is not None:
            c.status = w.status
            c.ends = w.status in TERMINAL_STATUSES
            c.wake_at = None if c.ends else w.wake_at
            if c.ends:
                c.output, c.error = w.output, w.error
                c.consumed = ALL_SIGNALS
        if w.release or c.ends:
            c.release = True
        if w.consumed_signals > c.consumed:
            c.consumed = w.consumed_signals
        if not c.touch and (w.status is not None or w.release or w.consumed_signals):
            c.touch = True  # not is_journal_only(w), inlined: this loop is on the hot path
    return out


def write_accepted(
    write_epoch: int | None, first: int | None, epoch: int, status: str, journal_length: int
) -> bool:
    """The fencing rule: a run's writes (epoch ``write_epoch``, entries continuing the
    journal at ``first``, None if none) are accepted iff the run (as stored before the batch:
    ``epoch``, ``status``, ``journal_length``) is under that epoch, has not ended, and the
    entries continue its journal. A run that does not exist rejects every write."""
    return (
        write_epoch == epoch
        and status not in TERMINAL_STATUSES
        and (first is None or first == journal_length)
    )


def record_changes(change: RunChange, now: int) -> dict[str, object]:
    """The run record's fields an accepted change sets (``{}`` for a journal-only change)."""
    if not change.touch:
        return {}
    out: dict[str, object] = {"updated_at": now}
    if change.status is not None:
        out["status"] = change.status
        out["wake_at"] = change.wake_at
    if change.ends:
        out["output"] = change.output
        out["error"] = change.error
        out["ended_at"] = now
    if change.release:
        out["lease_owner"] = None
        out["lease_expires"] = None
    return out


def apply_change(run: RunRecord, change: RunChange, now: int) -> RunRecord:
    """``run`` after an accepted change at ``now`` (see :func:`record_changes`)."""
    changes = record_changes(change, now)
    return attrs.evolve(run, **changes) if changes else run  # type: ignore[arg-type]


def signal_accepted(status: str | None) -> bool:
    """Whether a signal to a run whose status (once the batch's writes are applied) is
    ``status`` (None: no such run) is kept. Signals to unknown or ended runs are dropped:
    nobody would ever read them."""
    return status is not None and status not in TERMINAL_STATUSES


def due_at(
    status: str, lease_owner: str | None, lease_expires: int | None, wake_at: int | None,
    has_signals: bool,
) -> int | None:
    """When a run becomes claimable (``claim_runs`` takes it once ``due_at <= now``); None
    if it never will as it stands. A run that has ended: never. A leased run: when its lease
    expires (a run abandoned mid-work needs a new owner). Otherwise a run holding signals,
    or a queued run without a ``wake_at``: at once (:data:`ALWAYS_DUE`); any other run (a
    queued run with a ``wake_at`` is one its throttle delays: :class:`StartLimits`): at
    its ``wake_at``. (A run waiting for a singleton slot is not claimed either, whatever
    its ``due_at``: see :class:`StartLimiter`.)"""
    if status in TERMINAL_STATUSES:
        return None
    if lease_owner is not None:
        return lease_expires or 0
    if has_signals or (status == "queued" and wake_at is None):
        return ALWAYS_DUE
    return wake_at


def lease_held(
    lease_owner: str | None, lease_expires: int | None, status: str, owner: str, now: int
) -> bool:
    """Whether ``owner`` holds the run's lease at ``now`` (and so may renew it): it is the
    lease owner, the lease has not expired (``lease_expires > now``; from ``now`` on the run
    is claimable by anyone) and the run has not ended."""
    return (
        lease_owner == owner
        and lease_expires is not None
        and lease_expires > now
        and status not in TERMINAL_STATUSES
    )


def wait_changes(
    batch: CommitBatch, rejected: Iterable[str] = (), skipped_runs: Iterable[str] = ()
) -> tuple[list[WaitRecord], list[tuple[str, int]]]:
    """The waits a batch registers and removes: none of a run whose writes were rejected;
    no registration for a run the batch was to create but skipped (``skipped_runs``: its id
    existed or its idempotency key was held, see :func:`new_runs_to_create`), so a run
    created twice by racing routers leaves no listener of the run that never was;
    one registration per ``(event, run, position)`` (the first), none of a wait the batch
    also removes (adds apply first, so it ends up removed). A store keeps an existing
    registration as it is (``after_seq`` included) and sets ``after_seq`` of a new one to the
    last event ``seq`` in the log (duplicates count; 0 for an empty log), after the batch's
    own events, unless the registration gives one (``after_seq > 0``: kept as given)."""
    skip = set(rejected)
    removes = [(r, p) for r, p in batch.waits_remove if r not in skip]
    removed = set(removes)
    adds: dict[tuple[str, str, int], WaitRecord] = {}
    skip_adds = skip.union(skipped_runs)
    for wait in batch.waits_add:
        if wait.run_id not in skip_adds and (wait.run_id, wait.position) not in removed:
            adds.setdefault((wait.event, wait.run_id, wait.position), wait)
    return list(adds.values()), removes


def wait_records(rows: Iterable[Sequence[Any]]) -> list[WaitRecord]:
    """Wait rows of a SQL store (one per match key: ``run_id, position, event, if_,
    trigger_event, expires_at, after_seq, key, keys_json``) as records, each wait once (its
    first row). ``keys_json`` holds the wait's keys when it has several; else ``key`` is its
    one key, and ``""`` no key."""
    out: list[WaitRecord] = []
    seen: set[tuple[str, int]] = set()
    for run_id, position, event, if_, trigger, expires_at, after_seq, key, many in rows:
        if (run_id, position) in seen:
            continue  # a wait with several keys, or registered again under new keys
        seen.add((run_id, position))
        keys = tuple(json.loads(many)) if many is not None else (key,) if key else ()
        out.append(WaitRecord(run_id, position, event, if_, trigger, expires_at, after_seq,
                              keys))
    return out


def wait_found(wait_keys: Sequence[str], keys: Collection[str] | None) -> bool:
    """Whether ``find_waits(..., keys)`` returns a wait registered with ``wait_keys``: always
    without ``keys`` (None) or if the wait has none (its condition could not be indexed: it
    is tested against every event), else iff one of its keys is among ``keys``."""
    if keys is None or not wait_keys:
        return True
    return any(k in keys for k in wait_keys)


def notifies(batch: CommitBatch) -> bool:
    """Whether a commit of ``batch`` wakes ``wait_for_notify`` listeners: it creates events
    (``run_events`` included), runs or signals (work for workers), or a write gives a run a
    terminal status (a result for those waiting on it). Journal writes and status changes
    that do not end a run wake nobody. A store may wake listeners spuriously (for a write
    that was fenced, say)."""
    return bool(batch.events or batch.runs or batch.signals or batch.run_events) or any(
        w.status is not None and w.status in TERMINAL_STATUSES for w in batch.writes)


def routing_only(batch: CommitBatch) -> bool:
    """Whether ``batch`` is what routing commits: events marked routed, with the runs,
    signals and cancel-on waits routing them made, and nothing else (no run writes, no
    events appended, no cron cursors). Such a commit is a function of the durable event log
    and the state before it, and so is redoing it: a store may commit it without waiting
    for durability (if a server crash loses it, its events are unrouted again and routed
    again), provided it never loses it while keeping a later commit (a write-ahead log
    flushed in order does that: a later durable commit makes it durable too)."""
    return bool(batch.routed_events) and not (
        batch.writes or batch.events or batch.run_events or batch.cron or batch.waits_remove)


def cron_advances(cursors: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The highest tick per cron key among ``cursors`` (ticks below 0 are ignored). A store
    moves a stored cursor only forward: to a tick greater than the stored one."""
    out: dict[str, int] = {}
    for key, tick in cursors:
        if tick > out.get(key, -1):
            out[key] = tick
    return out


# --------------------------------------------------------------------------- flow buffers
# ``debounce`` and ``batch_events`` (issue 13): events routed into a per-(function, key)
# buffer instead of starting a run each; a buffer turns into one run when it is ready. The
# records and the rules every store applies to them.

BUFFER_KINDS = ("debounce", "batch")
"""The kinds of flow buffer: ``debounce`` keeps the last event, ``batch`` every event."""


@attrs.frozen
class BufferAdd:
    """An event routed into the buffer ``(function_id, key)`` of a function with
    ``debounce`` (``kind="debounce"``, ``period_ms`` the quiet period, ``timeout_ms`` the
    cap on the total delay from the first event, or None) or ``batch_events``
    (``kind="batch"``, ``period_ms`` the batch's timeout, ``max_size`` the events that fill
    it). ``event`` is the stored event (its seq, receipt time and JSON)."""

    function_id: str
    key: str
    kind: str
    event: StoredEvent
    period_ms: int
    timeout_ms: int | None = None
    max_size: int = 1


@attrs.frozen
class BufferState:
    """A buffer's summary, as stored: when its first event (of this quiet period or batch)
    was received (``first_at``), when it may turn into a run (``ready_at``;
    :data:`ALWAYS_DUE` for a full batch), how many events and bytes it holds, the highest
    event seq it took, and the options of the last add (see :class:`BufferAdd`)."""

    function_id: str
    key: str
    kind: str
    first_at: int
    ready_at: int
    count: int
    bytes: int
    last_seq: int
    period_ms: int
    timeout_ms: int | None
    max_size: int


@attrs.frozen
class Buffer:
    """A ready buffer (:meth:`Store.ready_buffers`): its state and its events, in seq order
    (only events already marked routed)."""

    state: BufferState
    events: tuple[StoredEvent, ...]


@attrs.frozen
class BufferTake:
    """Turn the events ``seqs`` of buffer ``(function_id, key)`` into ``run``, atomically
    (:meth:`Store.take_buffer`): only if the buffer still holds every one of them."""

    function_id: str
    key: str
    seqs: tuple[int, ...]
    run: NewRun


def event_bytes(event: StoredEvent) -> int:
    """An event's size as batches count it: its JSON text's UTF-8 bytes."""
    return len(event.data.encode("utf-8", "surrogatepass"))


def _ready_at(kind: str, first_at: int, last_at: int, count: int, size: int, period_ms: int,
              timeout_ms: int | None, max_size: int) -> int:
    if kind == "debounce":
        due = last_at + period_ms
        return due if timeout_ms is None else min(due, first_at + timeout_ms)
    from durable_core.core._flow import MAX_BATCH_BYTES

    if count >= max_size or size >= MAX_BATCH_BYTES:
        return ALWAYS_DUE
    return first_at + period_ms


def buffer_added(state: BufferState | None, add: BufferAdd) -> BufferState | None:
    """The buffer's state after ``add`` (None: the add changes nothing). A store applies
    an add only for an event not yet marked routed (so an event routed twice, by racing or
    retrying routers, is buffered once) and not already in the buffer.

    ``debounce``: an event with a seq above the buffer's last one *replaces* the buffered
    event (the run will get the last event) and pushes ``ready_at`` to its receipt plus
    the period, capped at ``first_at + timeout``; an older event changes nothing.
    ``batch``: the event is appended; the batch is ready at once when it holds
    ``max_size`` events or :data:`~durable_core.core._flow.MAX_BATCH_BYTES`, else at
    ``first_at + timeout``."""
    ev = add.event
    size = event_bytes(ev)
    if add.kind == "debounce":
        if state is not None and ev.seq <= state.last_seq:
            return None
        first = ev.received_at if state is None else state.first_at
        count, total = 1, size
    else:
        first = ev.received_at if state is None else min(state.first_at, ev.received_at)
        count = 1 if state is None else state.count + 1
        total = size if state is None else state.bytes + size
    last_seq = ev.seq if state is None else max(state.last_seq, ev.seq)
    ready = _ready_at(add.kind, first, ev.received_at, count, total, add.period_ms,
                      add.timeout_ms, add.max_size)
    return BufferState(add.function_id, add.key, add.kind, first, ready, count, total,
                       last_seq, add.period_ms, add.timeout_ms, add.max_size)


def buffer_rest(state: BufferState, take: BufferTake, count: int, first_at: int,
                last_at: int) -> BufferState | None:
    """The buffer's state once ``take`` removed its events: None (the buffer is dropped)
    if none are left (``count``); else a new quiet period or batch starting at the first
    of them (``first_at``/``last_at``: the earliest and latest receipt among those left),
    holding the bytes the take did not remove (the take's run holds the taken events'
    JSON)."""
    if count <= 0:
        return None
    total = max(0, state.bytes - sum(len(t.encode("utf-8", "surrogatepass"))
                                     for t in take.run.events))
    ready = _ready_at(state.kind, first_at, last_at, count, total, state.period_ms,
                      state.timeout_ms, state.max_size)
    return attrs.evolve(state, first_at=first_at, ready_at=ready, count=count, bytes=total)


def take_accepted(held: Collection[int], take: BufferTake) -> bool:
    """Whether a store applies ``take`` to a buffer holding the event seqs ``held``: only if
    it holds every one of the take's (so two engines handing one buffer off at once, or a
    take retried after an unknown outcome, create one run and lose no event)."""
    return bool(take.seqs) and all(s in held for s in take.seqs)


# --------------------------------------------------------------------------- flow control:
# run starts (throttle, rate_limit, singleton). The router gives each new run the start
# limits of its function (NewRun.limits); the store decides them in the commit that creates
# the run, against state it keeps (a GCRA "theoretical arrival time" per throttle and rate
# limit bucket, a slot per singleton key), so racing routers and workers agree.

SKIP_REASONS = ("idempotency", "rate_limit", "singleton")
"""Why a trigger started no run (:attr:`SkippedTrigger.reason`)."""


@attrs.frozen
class StartLimits:
    """The start limits of a run to create (:attr:`NewRun.limits`). Each ``bucket`` is a
    text naming the limit's state (the function and its key value): runs with the same
    bucket share it.

    ``throttle``: ``(bucket, period_ms, limit, burst)``: the run starts no earlier than its
    GCRA slot (:func:`gcra_throttle`); it is created ``queued`` with that time as its
    ``wake_at`` when it is later than the commit's ``now``. ``rate_limit``: ``(bucket,
    period_ms, limit)``: a run over the limit (:func:`gcra_rate_limit`) is not created.
    ``singleton``: ``(bucket, mode)``, ``mode`` ``"skip"`` or ``"cancel"``: see
    :class:`StartLimiter`. ``key``s are the key values (``""`` without a key), as the skips
    record them."""

    throttle: tuple[str, int, int, int] | None = None
    rate_limit: tuple[str, int, int] | None = None
    singleton: tuple[str, str] | None = None
    rate_limit_key: str = ""
    singleton_key: str = ""

    def gcra_buckets(self) -> list[str]:
        """The GCRA buckets (throttle, rate limit) this run reads and advances."""
        return [b[0] for b in (self.throttle, self.rate_limit) if b is not None]


def _interval(period_ms: int, limit: int) -> int:
    return max(1, -(-period_ms // limit))  # ceil: rounding never lets more through


def gcra_throttle(
    tat: int | None, now: int, period_ms: int, limit: int, burst: int
) -> tuple[int, int]:
    """Throttle (lossless GCRA): ``(start_at, new_tat)`` for a run arriving at ``now`` when
    the bucket's theoretical arrival time is ``tat`` (None: never used). The emission
    interval is ``T = ceil(period_ms / limit)``, the tolerance ``(burst - 1) * T``: up to
    ``burst`` runs start at once, then one every ``T``; a run over the limit starts at its
    slot (``start_at > now``) and the ones after it queue behind it (first in, first out)."""
    step = _interval(period_ms, limit)
    t = now if tat is None else tat
    start = max(now, t - (burst - 1) * step)
    return start, max(t, start) + step


def gcra_rate_limit(tat: int | None, now: int, period_ms: int, limit: int) -> int | None:
    """Rate limit (lossy GCRA): the bucket's new theoretical arrival time if a run arriving
    at ``now`` may start, None if it is over the limit. The emission interval is ``T =
    ceil(period_ms / limit)`` and the tolerance ``period_ms - T``: ``limit`` runs may start
    at once, then one every ``T`` (``limit=1`` is one run per period)."""
    step = _interval(period_ms, limit)
    t = now if tat is None else tat
    if now < t - (period_ms - step):
        return None
    return max(t, now) + step


def slot_released(next_run: str | None) -> tuple[str | None, None]:
    """A singleton slot ``(holder, next_run)`` once its holder ended (in the commit that
    ends it): the run waiting for it (if any) holds it, and none waits. A slot whose
    holder is None is free."""
    return next_run, None


class StartLimiter:
    """Decides the start limits of the runs of one commit, in order (see
    :func:`new_runs_to_create`), against the state before the commit: ``gcra`` maps a bucket
    to ``(tat, run_id)`` (its theoretical arrival time and the last run it let start),
    ``slots`` a singleton bucket to ``(holder, next_run)``. Both are updated in place; a
    store then persists ``gcra_changed`` and ``slots_changed`` (and the decisions below) in
    the same transaction.

    The rules, in order (a run dropped by one takes nothing from the next):

    - **rate limit**: over the limit (:func:`gcra_rate_limit`), the run is not created; a
      :class:`SkippedTrigger` (``reason="rate_limit"``) is recorded.
    - **singleton**: a free slot (holder None) is taken by the run. A held one: with
      ``mode="skip"``, the run is not created (``reason="singleton"``, naming the holder);
      with ``mode="cancel"``, the holder gets a cancel signal (``cancels``) and the run is
      created to wait for the slot (``next_run``; a run waiting is not claimable until the
      holder ends and hands it the slot: :func:`slot_released`). If a run already waits,
      the newcomer is not created (``reason="singleton"``, naming the waiting run): a burst
      of triggers starts the first of them.
    - **throttle**: the run gets its GCRA slot (:func:`gcra_throttle`); ``wake_at[run_id]``
      is set when it is later than ``now``.
    """

    def __init__(self, gcra: dict[str, tuple[int, str]],
                 slots: dict[str, tuple[str | None, str | None]], now: int) -> None:
        self.gcra = gcra
        self.slots = slots
        self.now = now
        self.gcra_changed: set[str] = set()
        self.slots_changed: set[str] = set()
        self.skipped: list[SkippedTrigger] = []
        self.wake_at: dict[str, int] = {}
        self.waiting: set[str] = set()
        self.cancels: list[tuple[str, str]] = []  # (run to cancel, the run replacing it)

    def _skip(self, new: NewRun, reason: str, key: str, run_id: str) -> bool:
        self.skipped.append(SkippedTrigger(
            id=new.id, function_id=new.function_id, key=key, run_id=run_id,
            event_id=new.event_ids[0] if new.event_ids else None, at=new.created_at,
            reason=reason))
        return False

    def admit(self, new: NewRun) -> bool:
        """Whether ``new`` is created (recording what its limits decide)."""
        lim = new.limits
        if lim is None:
            return True
        now = self.now
        if lim.rate_limit is not None:
            bucket, period, limit = lim.rate_limit
            held = self.gcra.get(bucket)
            tat = gcra_rate_limit(None if held is None else held[0], now, period, limit)
            if tat is None:
                return self._skip(new, "rate_limit", lim.rate_limit_key,
                                  "" if held is None else held[1])
            rate = (bucket, (tat, new.id))
        else:
            rate = None
        if lim.singleton is not None:
            bucket, mode = lim.singleton
            holder, waiting = self.slots.get(bucket, (None, None))
            if holder is None:
                self.slots[bucket] = (new.id, None)
            elif mode == "cancel" and waiting is None:
                self.slots[bucket] = (holder, new.id)
                self.waiting.add(new.id)
                self.cancels.append((holder, new.id))
            else:
                return self._skip(new, "singleton", lim.singleton_key, waiting or holder)
            self.slots_changed.add(bucket)
        if rate is not None:
            self.gcra[rate[0]] = rate[1]
            self.gcra_changed.add(rate[0])
        if lim.throttle is not None:
            bucket, period, limit, burst = lim.throttle
            held = self.gcra.get(bucket)
            start, tat = gcra_throttle(None if held is None else held[0], now, period, limit,
                                       burst)
            self.gcra[bucket] = (tat, new.id)
            self.gcra_changed.add(bucket)
            if start > now:
                self.wake_at[new.id] = start
        return True

    def signals(self) -> list[tuple[str, Signal]]:
        """The cancel signals of the holders replaced (``mode="cancel"``), to deliver in the
        same commit (:data:`~durable_core.core._lifecycle.CANCEL_REASONS` ``"singleton"``)."""
        from durable_core.core._lifecycle import singleton_reason
        from durable_core.core._model import SignalKind

        return [(holder, Signal(SignalKind.CANCEL, newcomer, singleton_reason(newcomer)))
                for holder, newcomer in self.cancels]


# --------------------------------------------------------------------------- concurrency
# (issue 13). A run of a function with ``concurrency`` carries its slots (NewRun.slots); a
# slot key is held by the runs with that key whose lease is live, i.e. while they execute
# step bodies (a run gives its lease up when it sleeps, waits or invokes). Priority orders
# claims.


def claim_order(created_at: int, priority_ms: int) -> int:
    """The time a run is claimed by (smaller first; ties in creation order): its creation
    time minus its priority (ms, within +-600 s). A run with priority ``n`` s goes ahead of
    runs created less than ``n`` s before it, never of older ones."""
    return created_at - priority_ms


def slot_has_room(
    slots: Sequence[tuple[str, int]], held: dict[str, int]
) -> bool:
    """Whether a run with ``slots`` may take them: each key is held by fewer than the
    run's limit for it (``held``: key -> runs holding it)."""
    return all(held.get(key, 0) < limit for key, limit in slots)


def pick_limited(
    candidates: Iterable[tuple[str, Sequence[tuple[str, int]]]], held: dict[str, int],
    limit: int,
) -> list[str]:
    """The runs a limited claim takes: ``candidates`` are ``(run id, slots)`` in claim order
    (:func:`claim_order`); ``held`` counts the live leases per slot key before the claim.
    Keys are served in turn (round-robin on a run's first slot key, in order of first
    appearance; in claim order within a key), so one busy key cannot starve the others; a
    run is taken only if :func:`slot_has_room`, counting the runs taken before it; at most
    ``limit`` runs (``<= 0``: none). ``held`` is not changed."""
    if limit <= 0:
        return []
    queues: dict[str, list[tuple[str, Sequence[tuple[str, int]]]]] = {}
    for run_id, slots in candidates:
        queues.setdefault(slots[0][0] if slots else "", []).append((run_id, slots))
    counts = dict(held)
    out: list[str] = []
    heads = dict.fromkeys(queues, 0)
    while heads and len(out) < limit:
        for key in list(heads):
            queue, i = queues[key], heads[key]
            while i < len(queue) and not slot_has_room(queue[i][1], counts):
                i += 1  # no room now; counts only grow during a claim
            if i >= len(queue):
                del heads[key]
                continue
            run_id, slots = queue[i]
            heads[key] = i + 1
            for k, _ in slots:
                counts[k] = counts.get(k, 0) + 1
            out.append(run_id)
            if len(out) >= limit:
                break
    return out
