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
    "DEDUPE_WINDOW_MS",
    "Claim",
    "CommitBatch",
    "NewRun",
    "RunChange",
    "RunRecord",
    "RunWrite",
    "SkippedTrigger",
    "Store",
    "StoredEvent",
    "WaitRecord",
    "apply_change",
    "cron_advances",
    "due_at",
    "event_is_duplicate",
    "flag_duplicates",
    "fold_writes",
    "is_journal_only",
    "lease_held",
    "lone_memo",
    "new_runs_to_create",
    "notifies",
    "record_changes",
    "routing_only",
    "run_events_to_append",
    "signal_accepted",
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


@attrs.frozen
class SkippedTrigger:
    """A trigger that started no run because its function's idempotency key was held: the
    run it would have created (``id``) was folded into ``run_id``, the run holding ``key``.
    ``at`` is when it was skipped (the would-be run's ``created_at``). A store records one
    per ``id`` (recording the same id again keeps the first)."""

    id: str
    function_id: str
    key: str
    run_id: str
    event_id: str | None
    at: int


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
        """Lease up to ``limit`` claimable runs (:func:`due_at` ``<= now``), oldest first
        (creation order), to ``owner`` until ``now + lease_ms``; each claim bumps the run's
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
        """Triggers skipped for a held idempotency key (see :func:`new_runs_to_create`)
        matching every filter given (``run_id``: the run they were folded into), newest
        first, at most ``limit`` (``<= 0``: none)."""
        ...

    def close(self) -> None:
        """Release connections and files. What was committed stays: opening the same
        (persistent) store again finds it."""
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
    skipped: list[SkippedTrigger] | None = None,
) -> list[NewRun]:
    """The runs of a batch to create, in order. A run is skipped if its id is in ``existing``
    (an existing run, one earlier in the batch, or a recorded :class:`SkippedTrigger`), or
    if ``keys`` says a run of the same function holding its idempotency key was created less
    than 24 h before its ``created_at`` (then, with ``skipped``, a :class:`SkippedTrigger`
    naming the holder is appended to it). ``existing`` and ``keys`` (``(function_id, key) ->
    (created_at, run id)`` of the run holding the key) are updated with the created runs: a
    created run takes its key. The 24 h run from the creation of the holder: a run skipped
    for the key does not extend them."""
    out: list[NewRun] = []
    for new in runs:
        if new.id in existing:
            continue
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
    expires (a run abandoned mid-work needs a new owner). Otherwise a queued run, or one
    holding signals: at once (:data:`ALWAYS_DUE`); any other run: at its ``wake_at``."""
    if status in TERMINAL_STATUSES:
        return None
    if lease_owner is not None:
        return lease_expires or 0
    if status == "queued" or has_signals:
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
