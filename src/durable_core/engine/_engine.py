"""The engine loop shared by every driver: routes events, claims runs, feeds machines and
turns their commands into store commits.

It is synchronous and single-threaded, does no I/O of its own (it calls the store it was
given) and reads no clock: every method takes ``now`` (ms). Every driver (the trio
:class:`Worker`, the virtual-clock :class:`~durable_core.testing.TestEngine`, the crash
:class:`~durable_core.testing.Simulation`, and embedders' own loops) runs the same loop::

    work = engine.poll(now)                # cron, routing, claims: committed
    for step in work.steps:                # each chain of steps of one run, in turn:
        if engine.is_current(step):
            value, error = run the body
            next_steps = engine.finish_step(step, value, error, now)   # committed
    sleep until engine.next_deadline(now) (or new events), then poll again

A driver keeps only its I/O: how it waits, where bodies run, how commits are grouped.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from durable_core.base._cel import compile_expression
from durable_core.base._cron import CronSchedule
from durable_core.base._durations import from_ms, to_ms
from durable_core.base._errors import (
    DurableError,
    InvalidEventError,
    InvalidExpressionError,
    SerializationError,
    StoreError,
    UnknownFunctionError,
    ValidationError,
)
from durable_core.base._events import Event, Sent
from durable_core.base._match import condition_keys, event_keys
from durable_core.base._safelog import safe_logger
from durable_core.base._serde import check_text
from durable_core.core._function import App, Function
from durable_core.core._lifecycle import (
    CANCEL_BY_REQUEST,
    SYSTEM_EVENTS,
    cancel_cause,
    cancel_index,
    cancel_position,
    event_reason,
    starts_nothing,
    system_events,
)
from durable_core.core._machine import RunMachine
from durable_core.core._model import (
    TERMINAL_STATUSES,
    AppendJournal,
    CancelRequested,
    CancelRun,
    ClearWait,
    Command,
    CompleteRun,
    EmitEvents,
    ErrorInfo,
    ExecuteStep,
    FailRun,
    Input,
    RegisterWait,
    RunStarted,
    RunStatus,
    SendSignal,
    SetRunState,
    Signal,
    SignalKind,
    SignalReceived,
    StartRun,
    StepFailed,
    TimerFired,
    derive_id,
)
from durable_core.engine import _observe
from durable_core.engine._flow_buffers import buffer_add, flush_buffers, next_buffer_ready
from durable_core.engine._flow_concurrency import (
    check_store,
    claim_split,
    flow_runs,
    limited_function_ids,
)
from durable_core.engine._flow_starts import start_limits
from durable_core.store import (
    BufferAdd,
    Claim,
    CommitBatch,
    NewRun,
    RunWrite,
    Store,
    StoredEvent,
    WaitRecord,
)

__all__ = [
    "CRON_EVENT", "MAX_COMMIT_FAILURES", "Engine", "Plan", "Work", "is_data_error", "wait_matches",
]

CRON_EVENT = "durable/scheduled.timer"
MAX_COMMIT_FAILURES = 3
"""A run whose writes the store refuses this many times in a row with a data error (not a
lost connection) is failed instead of being retried for ever."""

log = safe_logger("durable_core.engine")

_tuple_new = tuple.__new__
_ROUTE_BATCH = 500  # events routed per commit


class _Live:
    """A run this engine holds: its machine, lease epoch and consumed signal position."""

    __slots__ = ("epoch", "lease_until", "leased", "machine", "signals")

    def __init__(self, machine: RunMachine, epoch: int) -> None:
        self.machine = machine
        self.epoch = epoch
        self.signals = 0
        self.leased = True
        self.lease_until = 0  # ms: the lease is ours at least until then (claim or renewal)


class Plan:
    """The outcome of feeding inputs: a batch to commit, then steps to execute.

    Commit ``batch`` first (through :meth:`Engine.commit`); only the steps of runs whose
    writes were accepted may then run.
    """

    __slots__ = ("batch", "notes", "parts", "steps")

    def __init__(
        self, batch: CommitBatch, steps: list[ExecuteStep], parts: list[Plan] | None = None,
        notes: list[_observe.Note] | None = None,
    ) -> None:
        self.batch = batch
        self.steps = steps
        self.parts = parts  # the per-run plans merged into this one, if several
        self.notes = notes  # what to report once the batch is committed (log lines, spans)


class Work:
    """What one :meth:`Engine.poll` did, and the step bodies it found to run.

    Everything the poll decided is already committed: ``steps`` may start at once (check
    :meth:`Engine.is_current` right before each, if its start may have been delayed).
    """

    __slots__ = ("claimed", "created", "more", "routed", "steps")

    def __init__(self, steps: list[ExecuteStep], claimed: tuple[str, ...], created: int,
                 routed: int, more: bool) -> None:
        self.steps = steps
        """Step bodies to run now, in order (several may belong to different runs)."""
        self.claimed = claimed
        """The runs this poll claimed (and fed their due inputs)."""
        self.created = created
        """Runs created by cron ticks that fell due."""
        self.routed = routed
        """Events routed (runs started, waits resolved)."""
        self.more = more
        """Whether more work may be waiting right now (a full batch of events or claims, or
        work created that this poll did not start): poll again without waiting."""

    @property
    def idle(self) -> bool:
        """Whether the poll found nothing at all to do (no cron tick, event or claim)."""
        return not (self.steps or self.claimed or self.created or self.routed)

    def __repr__(self) -> str:
        return (f"Work(steps={len(self.steps)}, claimed={len(self.claimed)}, "
                f"created={self.created}, routed={self.routed}, more={self.more})")


CRON_GRACE_MS = 60_000
"""A cron tick at most this late (ms) is on time, not missed (``catch_up="skip"`` runs it)."""

CRON_CATCH_UP_LIMIT = 1_000
"""``catch_up="all"`` starts runs for at most this many missed ticks (the most recent)."""

_cron_log = safe_logger("durable_core.cron")

_EVICT_SLACK = 64
"""How much the machine cache may grow past a fruitless eviction scan before the next."""


def due_cron_ticks(
    schedule: CronSchedule, catch_up: str, cursor: int, now: int
) -> tuple[list[int], int, int]:
    """The ticks (ms) of ``schedule`` after ``cursor`` and at or before ``now`` to start runs
    for, the new cursor (the last due tick) and how many due ticks are skipped, following
    ``catch_up`` (see :func:`~durable_core.on_cron`). Pure: a function of its arguments."""
    latest = schedule.latest_at_or_before(from_ms(now))
    if latest is None or to_ms(latest) <= cursor:
        return [], cursor, 0
    last = to_ms(latest)
    if catch_up == "all":
        ticks, cut = schedule.ticks_between(from_ms(cursor), latest, CRON_CATCH_UP_LIMIT)
        return [to_ms(t) for t in ticks], last, _count_ticks(
            schedule, cursor, to_ms(ticks[0]) - 1) if cut else 0
    due = _count_ticks(schedule, cursor, last)
    if catch_up == "skip" and now - last > CRON_GRACE_MS:
        return [], last, due
    return [last], last, due - 1


def _count_ticks(schedule: CronSchedule, after: int, until: int, cap: int = 1_001) -> int:
    """How many ticks fall in ``(after, until]``, counted up to ``cap`` (for the log line
    only: a long outage of a dense schedule is not walked tick by tick)."""
    n = 0
    tick = to_ms(schedule.next_after(from_ms(after)))
    while tick <= until and n < cap:
        n += 1
        tick = to_ms(schedule.next_after(from_ms(tick)))
    return n


class Engine:
    """Drives :class:`RunMachine` instances against a :class:`Store`.

    ``owner`` names this engine in leases; ``entropy(n)`` returns n random bytes for new run
    and event ids (the only entropy the engine uses, and never for replayed values).
    ``cache_size`` bounds the parked machines kept in memory between claims.
    """

    def __init__(
        self,
        app: App,
        store: Store,
        *,
        owner: str,
        entropy: Callable[[int], bytes],
        lease_ms: int = 30_000,
        cache_size: int = 10_000,
    ) -> None:
        check_store(app, store)  # concurrency needs claim_limited_runs (issue 13)
        self.app = app
        self.cache_size = cache_size
        self._evict_floor = 0  # after a fruitless scan, _evict scans only above this size
        self.store = store
        self.owner = owner
        self.lease_ms = lease_ms
        self._lease_margin = min(lease_ms // 10, 1_000)  # see lease_held
        self._entropy = entropy
        self.live: dict[str, _Live] = {}
        self._cron: list[tuple[str, Function, Any]] = [
            (f"{f.id}|{t.cron}", f, t) for f in app.functions.values() for t in f.cron_triggers
        ]
        self._cron_cursors: dict[str, int] | None = None
        self._renewed_at = -(2**62)  # when leases were last renewed (ms)
        self.stale_writes = 0
        """Writes the store rejected because this engine's lease epoch was stale."""
        self.discarded_results = 0
        """Step results dropped because the run's lease was lost before they arrived."""
        self.failed_commits = 0
        """Commits that raised (their runs were dropped from memory and will be rebuilt)."""
        self.unroutable_events = 0
        """Events that could not be routed (their reason was logged); they start nothing."""
        self.poisoned_runs = 0
        """Runs failed because the store refused their writes or they could not be loaded."""
        self._commit_failures: dict[str, int] = {}

    @property
    def function_ids(self) -> tuple[str, ...]:
        """The ids of the app's functions: the only runs this engine claims (a run of a
        function the app does not have waits, queued, for a worker that has it)."""
        return tuple(self.app.functions)

    # ------------------------------------------------------------------ ids

    def new_id(self, prefix: str, now: int) -> str:
        """A new, time-sortable id: ``prefix`` + 12 hex digits of ms + 16 random hex digits."""
        return f"{prefix}{now:012x}{self._entropy(8).hex()}"

    # ------------------------------------------------------------------ events

    def prepare_events(self, events: Iterable[Event], now: int) -> list[str]:
        """Events as JSON texts with ``id`` and ``ts`` filled in."""
        texts = []
        for e in events:
            if not isinstance(e, Event):
                raise InvalidEventError(
                    f"send: expected Event objects, got a {type(e).__name__}; build events "
                    "with Event(name, data)",
                    field="event",
                )
            if e.name in SYSTEM_EVENTS:
                raise InvalidEventError(
                    f"send: {e.name!r} is a system event, emitted only by the engine when a "
                    "run ends; send your own event name (see docs/lifecycle.md)",
                    field="event.name",
                )
            if e.id is None or e.ts is None:
                e = Event(e.name, e.data, id=e.id or self.new_id("e_", now), ts=e.ts or now)
            texts.append(e.to_json() if _observe.tracing is None
                         else _observe.with_trace(e.to_json()))
        return texts

    def send(self, events: Iterable[Event], now: int, *, route: bool = False) -> Sent:
        """Durably accept events; returns their ids (and which were duplicates).

        ``route``: then route every event waiting to be (these and any before them) before
        returning, so the runs they start exist and the waits they match are resumed.
        Routing is idempotent: another engine routing the same events at the same time
        starts no run twice."""
        stored = self.store.append_events(self.prepare_events(events, now), now)
        sent = Sent.of((e.id, e.duplicate) for e in stored)
        if route and len(sent) > len(sent.duplicates):
            while self.route(now) == _ROUTE_BATCH:
                pass
        return sent

    def start_run(
        self, function_id: str, data: Any, now: int, *, id: str | None = None
    ) -> str:
        """Start one run of ``function_id`` directly, as ``ctx.step.invoke`` starts a child:
        with a ``durable/function.invoked`` event holding ``data`` (a dict), stored with the
        run only, so no other function and no wait sees it. Returns the run id.

        ``id`` makes the start idempotent: the run and event ids are derived from it, so a
        second start with the same ``id`` (a client retrying after an unknown outcome) finds
        the run of the first and creates nothing."""
        from durable_core.core._steps._invoke import INVOKED_EVENT

        if not isinstance(function_id, str) or not function_id:
            raise ValidationError(
                f"start_run: function_id must be a non-empty str, got {function_id!r}",
                field="function_id")
        check_text(function_id, what="start_run: function_id", error=ValidationError, nul=True)
        if id is not None:
            if not isinstance(id, str) or not id:
                raise ValidationError(
                    f"start_run: id must be a non-empty str or None, got {id!r}", field="id")
            check_text(id, what="start_run: id", error=ValidationError, nul=True)
            run_id = derive_id("r_", "start", function_id, id)
            event_id = derive_id("e_", "start", function_id, id)
        else:
            run_id, event_id = self.new_id("r_", now), self.new_id("e_", now)
        event = Event(INVOKED_EVENT, {} if data is None else data, id=event_id, ts=now)
        new = NewRun(id=run_id, function_id=function_id,
                     events=(_observe.with_trace(event.to_json()),),
                     event_ids=(event_id,), created_at=now)
        self.store.commit(CommitBatch(now=now, runs=flow_runs(self.app, (new,)),
                                      waits_add=tuple(self._cancel_on_waits(new))))
        return run_id

    def route(self, now: int, limit: int = _ROUTE_BATCH) -> int:
        """Start runs and resolve waits for events not yet routed. Returns how many events
        were routed."""
        events = self.store.unrouted_events(limit)
        if not events:
            return 0
        runs: list[NewRun] = []
        signals: list[tuple[str, Signal]] = []
        parsed: list[tuple[StoredEvent, dict[str, Any] | None]] = []
        for ev in events:
            try:
                raw = json.loads(ev.data)
                if not isinstance(raw, dict):
                    raise TypeError(f"an event must be a JSON object, not {type(raw).__name__}")
            except Exception as exc:
                # A poison event (it cannot be parsed or matched): it starts nothing and is
                # marked routed, so neither the worker nor the rest of the batch stops on it.
                self._unroutable(ev, exc)
                raw = None
            parsed.append((ev, raw))
        waits = self._candidate_waits(parsed, now)
        # Cancel-on listeners of the runs this batch creates: registered with the runs, and
        # matched here against the batch's later events (the store's index does not hold
        # them yet).
        fresh: dict[str, list[WaitRecord]] = {}
        waits_add: list[WaitRecord] = []
        parts: list[tuple[StoredEvent, list[NewRun], list[tuple[str, Signal]],
                          list[WaitRecord]]] = []
        adds: list[BufferAdd] = []  # debounce / batch_events (engine/_flow_buffers.py)
        for ev, raw in parsed:
            ev_runs: list[NewRun] = []
            ev_signals: list[tuple[str, Signal]] = []
            ev_waits: list[WaitRecord] = []
            if raw is not None:
                try:
                    ev_runs, ev_signals = self._route_one(
                        ev, raw, now, waits[ev.name], fresh.get(ev.name, ()), adds)
                    for run in ev_runs:
                        ev_waits += self._cancel_on_waits(run, ev.seq)
                except StoreError:
                    raise
                except Exception as exc:
                    self._unroutable(ev, exc)
                    ev_runs, ev_signals, ev_waits = [], [], []
            for w in ev_waits:
                fresh.setdefault(w.event, []).append(w)
            runs += ev_runs
            signals += ev_signals
            waits_add += ev_waits
            parts.append((ev, ev_runs, ev_signals, ev_waits))
        if adds:  # buffered first: the commit below marks their events routed
            self.store.buffer_events(adds, now)
        batch = CommitBatch(
            now=now, runs=flow_runs(self.app, runs), signals=tuple(signals),
            waits_add=tuple(waits_add), routed_events=tuple(e.seq for e in events),
        )
        try:
            self.store.commit(batch)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            # The store refused the data of some event: route them one by one, so only the
            # poison one is left out.
            for ev, ev_runs, ev_signals, ev_waits in parts:
                self._route_alone(ev, ev_runs, ev_signals, ev_waits, now)
        return len(events)

    def _cancel_on_waits(self, run: NewRun, after_seq: int = 0) -> list[WaitRecord]:
        """The cancel-on listeners of a run being created (none if its function is not in
        this engine's app: then the run registers them when it first starts). ``after_seq``:
        the seq of its triggering event (only later events cancel it); 0 for a run without
        one in the log (the store then takes the last seq at the commit)."""
        func = self.app._functions.get(run.function_id)  # (app.functions copies)
        if func is None or not func.cancel_on:
            return []
        trigger = run.events[0]
        out = []
        for c in func.cancel_on:
            keys = condition_keys(c.if_, incoming="async", known="event", known_value=trigger)
            out.append(WaitRecord(run.id, cancel_position(c.index), c.event, c.if_, trigger,
                                  run.created_at + c.timeout_ms, after_seq, keys))
        return out

    def _candidate_waits(
        self, parsed: list[tuple[StoredEvent, dict[str, Any] | None]], now: int
    ) -> dict[str, _Candidates]:
        """The waits each event of the batch may resume, by event name: per name, the
        store's key paths, then one lookup of the waits under the keys of all the batch's
        events of that name (and those without keys)."""
        by_name: dict[str, list[tuple[StoredEvent, dict[str, Any]]]] = {}
        for ev, raw in parsed:
            if raw is not None:
                by_name.setdefault(ev.name, []).append((ev, raw))
        out: dict[str, _Candidates] = {}
        for name, evs in by_name.items():
            paths = self.store.wait_key_paths(name)
            per_event: dict[int, list[str]] = {}
            wanted: dict[str, None] = {}
            if paths:
                for ev, raw in evs:
                    keys = per_event[ev.seq] = event_keys(raw, paths)
                    wanted.update(dict.fromkeys(keys))
            out[name] = _Candidates(self.store.find_waits(name, now, wanted), per_event)
        return out

    def _route_one(
        self, ev: StoredEvent, raw: dict[str, Any], now: int, waits: _Candidates,
        fresh: Iterable[WaitRecord] = (),
        adds: list[BufferAdd] | None = None,
    ) -> tuple[list[NewRun], list[tuple[str, Signal]]]:
        runs: list[NewRun] = []
        signals: list[tuple[str, Signal]] = []
        # The run id derives from the stored event, so engines routing the same event at
        # once create its runs once; the idempotency key is the function's own (if any).
        for func in () if starts_nothing(raw) else self.app.triggered_by(raw):
            if adds is not None and (add := buffer_add(func, ev, raw)) is not None:
                adds.append(add)  # debounced or batched: into its buffer, no run yet
                continue
            runs.append(
                NewRun(
                    id=routed_run_id(func.id, ev), function_id=func.id, events=(ev.data,),
                    event_ids=(ev.id,), created_at=now, idempotency_key=func.idempotency_key(raw),
                    limits=start_limits(func, raw),
                )
            )
        for w in (*waits.of(ev.seq), *fresh):
            # No lookback: only events appended after the wait was registered match.
            if ev.seq > w.after_seq and wait_matches(w, raw):
                index = cancel_index(w.position)
                if index is None:
                    signals.append(
                        (w.run_id, Signal(SignalKind.EVENT, key=ev.id, payload=ev.data,
                                          position=w.position))
                    )
                else:  # a cancel-on listener: the run is cancelled
                    signals.append((w.run_id, Signal(
                        SignalKind.CANCEL, key=ev.id,
                        payload=event_reason(index, ev.name, ev.id))))
        return runs, signals

    def _route_alone(
        self, ev: StoredEvent, runs: list[NewRun], signals: list[tuple[str, Signal]],
        waits: list[WaitRecord], now: int
    ) -> None:
        try:
            self.store.commit(
                CommitBatch(now=now, runs=flow_runs(self.app, runs), signals=tuple(signals),
                            waits_add=tuple(waits), routed_events=(ev.seq,))
            )
        except Exception as exc:
            if not is_data_error(exc):
                raise
            self._unroutable(ev, exc)
            self.store.commit(CommitBatch(now=now, routed_events=(ev.seq,)))

    def _unroutable(self, ev: StoredEvent, exc: BaseException) -> None:
        self.unroutable_events += 1
        log.warning(
            "event %s (seq %d, name %s) cannot be routed and starts nothing: %s: %s",
            ascii(ev.id), ev.seq, ascii(ev.name)[:200], type(exc).__name__, _short(exc),
        )

    # ------------------------------------------------------------------ cron

    def next_cron_tick(self, now: int) -> int | None:
        """When the next cron tick falls due (ms), or None without cron triggers."""
        if not self._cron:
            return None
        cursors = self._cursors(now)
        return min(
            to_ms(t.schedule.next_after(from_ms(cursors[key]))) for key, _f, t in self._cron
        )

    def _cursors(self, now: int) -> dict[str, int]:
        if self._cron_cursors is None:
            stored = self.store.cron_cursors()
            # A schedule seen for the first time starts now: no backfill before it existed.
            self._cron_cursors = {key: stored.get(key, now) for key, _f, _t in self._cron}
        return self._cron_cursors

    def schedule_cron(self, now: int) -> int:
        """Create one run per cron tick that has fallen due (each tick at most once, even
        across restarts and several workers), following each trigger's ``catch_up`` for
        the ticks missed meanwhile (:func:`due_cron_ticks`). Returns how many runs were
        created."""
        if not self._cron:
            return 0
        cursors = self._cursors(now)
        runs: list[NewRun] = []
        moved: list[tuple[str, int]] = []
        for key, func, trig in self._cron:
            cursor = cursors[key]
            assert trig.schedule is not None
            if to_ms(trig.schedule.next_after(from_ms(cursor))) > now:
                continue  # the common case: nothing due
            ticks, last, skipped = due_cron_ticks(trig.schedule, trig.catch_up, cursor, now)
            if skipped:
                _cron_log.info(
                    "cron %s of function %s: %s missed tick(s) skipped (catch_up=%r)",
                    trig.cron, func.id, "1000+" if skipped >= 1_000 else skipped,
                    trig.catch_up,
                )
            for tick in ticks:
                at = from_ms(tick).isoformat().replace("+00:00", "Z")
                eid = f"cron:{func.id}:{trig.cron}:{tick}"
                ev = Event(CRON_EVENT, {"cron": trig.cron, "scheduledAt": at}, id=eid, ts=tick)
                runs.append(
                    NewRun(
                        id=f"r_{tick:012x}{derive_id('', 'cron', eid)[:16]}",
                        function_id=func.id,
                        events=(ev.to_json(),), event_ids=(eid,), created_at=now,
                        idempotency_key=func.idempotency_key(ev.to_dict()),
                        limits=start_limits(func, ev.to_dict()),
                    )
                )
            cursors[key] = last
            moved.append((key, last))
        if moved:
            waits = tuple(w for r in runs for w in self._cancel_on_waits(r))
            self.store.commit(CommitBatch(now=now, runs=flow_runs(self.app, runs),
                                          cron=tuple(moved), waits_add=waits))
        return len(runs)

    # ------------------------------------------------------------------ runs

    def claim(self, now: int, limit: int = 100) -> Plan | None:
        """Claim runs that need work and feed them; returns the plan, or None if idle."""
        claims = claim_split(self.store, self.owner, now, self.lease_ms, limit,
                             *limited_function_ids(self.app))
        if not claims:
            return None
        return self.feed_claims(claims, now)

    def poll(self, now: int, *, limit: int = 500, claim_limit: int = 100) -> Work:
        """One pass of the loop every driver shares: create the runs of cron ticks that fell
        due, route up to ``limit`` new events (start runs, resolve waits), then claim up to
        ``claim_limit`` runs that need work (0: claim none, e.g. while the driver is at
        capacity), feed them their due inputs and commit the outcome.

        Returns the :class:`Work` found: the committed steps to run, and whether to poll
        again at once. Raises :class:`~durable_core.StoreError` if the store fails (nothing
        the engine holds is then ahead of the store: poll again later)."""
        created = self.schedule_cron(now)
        routed = self.route(now, limit)
        created += flush_buffers(self, now)  # debounce / batch_events runs that fell due
        more = routed >= limit
        steps: list[ExecuteStep] = []
        claimed: tuple[str, ...] = ()
        if claim_limit > 0:
            claims = claim_split(self.store, self.owner, now, self.lease_ms, claim_limit,
                                 *limited_function_ids(self.app))
            if claims:
                claimed = tuple(c.run.id for c in claims)
                more = more or len(claims) >= claim_limit
                plan = self.feed_claims(claims, now)
                steps = self.commit([plan])
                b = plan.batch
                if not steps and (b.runs or b.signals or b.events):
                    created += 1
        # Work was created (runs, signals) that this pass did not start: look again at once.
        more = more or bool((created or routed) and not steps)
        return Work(steps, claimed, created, routed, more)

    def next_deadline(self, now: int) -> int | None:
        """When (ms) something next falls due without any new input: a run's timer (sleep,
        wait timeout, retry backoff) or a cron tick; None if nothing ever will. A driver with
        nothing to do sleeps until then (or until it is told of new events), then polls."""
        wakes = [w for w in (self.store.next_wake_at(), self.next_cron_tick(now),
                             next_buffer_ready(self)) if w is not None]
        return min(wakes, default=None)

    def feed_claims(self, claims: Sequence[Claim], now: int) -> Plan:
        """Feed claimed runs their due inputs (start/replay, timers, signals).

        A run that cannot be loaded or fed (a stored event that is not valid any more, a
        machine that raised) is failed with a typed error; the other claims go on."""
        parts: list[Plan] = []
        for claim in claims:
            try:
                item = self._feed(claim, now)
            except (StoreError, UnknownFunctionError):
                raise
            except Exception as exc:
                self.forget((claim.run.id,))
                parts.append(self._poisoned(claim, exc, now))
                continue
            parts.append(self._plan([item], now, force=True))
        if len(parts) == 1:
            return parts[0]
        notes = [n for p in parts if p.notes for n in p.notes]
        return Plan(
            merge_batches([p.batch for p in parts], now), [s for p in parts for s in p.steps],
            parts, notes or None,
        )

    def _feed(self, claim: Claim, now: int) -> tuple[_Live, list[Command]]:
        live = self._adopt(claim)
        live.lease_until = now + self.lease_ms
        t = _observe.tracing
        if t is not None:
            _trace_claim(t, live, claim)
        cmds: list[Command] = []
        m = live.machine
        if any(s.kind == SignalKind.CANCEL for _, s in claim.signals):
            cancel = next(s for _, s in claim.signals if s.kind == SignalKind.CANCEL)
            cmds += m.handle(CancelRequested(cancel.payload, now))
        else:
            if not claim.journal and m.status == RunStatus.QUEUED:
                _observe.run_started(m.run_id, m.function.id)  # before its code runs
            cmds += m.handle(RunStarted(now))
            deadline = m.next_deadline()
            if deadline is not None and deadline <= now:
                cmds += m.handle(TimerFired(now))
            for _seq, signal in claim.signals:
                cmds += m.handle(SignalReceived(signal, now))
        if claim.signals:
            live.signals = max(seq for seq, _ in claim.signals)
        return live, cmds

    def _poisoned(self, claim: Claim, exc: BaseException, now: int) -> Plan:
        """A plan failing a claimed run that cannot be loaded or fed."""
        run = claim.run
        if not isinstance(exc, DurableError):
            exc = SerializationError(
                f"run {run.id} cannot be loaded: {type(exc).__name__}: {_short(exc)}",
                field="run",
            )
        self.poisoned_runs += 1
        log.error("run %s fails: it cannot be loaded: %s: %s", run.id, type(exc).__name__,
                  _short(exc), extra={"run_id": run.id, "function_id": run.function_id,
                                      "action": "run.failed"})
        consumed = max((seq for seq, _ in claim.signals), default=0)
        info = ErrorInfo.from_exception(exc)
        write = RunWrite(run_id=run.id, epoch=run.epoch, status="failed", error=info,
                         consumed_signals=consumed)
        signals: tuple[tuple[str, Signal], ...] = ()
        if run.parent_run_id is not None:
            # As the machine does when a child fails: the parent's invoke gets the error.
            payload = json.dumps({"error": info.to_dict()}, separators=(",", ":"))
            signals = ((run.parent_run_id, Signal("invoke", run.id, payload)),)
        ended = self.end_events(run.id, run.function_id, run.events, RunStatus.FAILED, now,
                                error=info)
        return Plan(CommitBatch(now=now, writes=(write,), signals=signals,
                                run_events=tuple(ended)), [])

    def _adopt(self, claim: Claim) -> _Live:
        run = claim.run
        live = self.live.get(run.id)
        if live is not None and len(live.machine.entries) == len(claim.journal):
            live.epoch = run.epoch
            live.leased = True
            return live
        func = self.app.get(run.function_id)
        machine = RunMachine(
            func,
            run.id,
            [Event.from_json(t) for t in run.events],
            run.created_at,
            claim.journal,
            parent_run_id=run.parent_run_id,
        )
        live = self.live[run.id] = _Live(machine, run.epoch)
        return live

    def step_finished(
        self, step: ExecuteStep, value: Any, error: BaseException | None, now: int
    ) -> Plan:
        """A step body returned ``value`` (or raised ``error``): the plan to commit (with
        others', for a group commit) before the steps it holds may run."""
        live = self.live.get(step.run_id)
        if live is None or not live.machine.is_current(step):
            # The lease was lost (another worker owns the run), or the run's machine was
            # rebuilt since this body was dispatched: the result belongs to nobody.
            self.discarded_results += 1
            return Plan(CommitBatch(now=now), [])
        pre = self._boundary_cancel(live, now) if live.machine.function.cancel_on else None
        if error is None:
            cmds = live.machine.step_completed(step.position, step.attempt, value, now)
        else:
            cmds = live.machine.handle(StepFailed(step.position, step.attempt, error, now))
        if pre:
            cmds = pre + cmds
        batch = _memo_batch(live, cmds, now)
        if batch is not None:
            # (A step that failed for good, its error caught by the code, takes this path.)
            return Plan(batch, [cmds[1]], None,  # type: ignore[list-item]
                        None if error is None else _failed_notes(live, cmds, now))
        return self._plan([(live, cmds)], now)

    def finish_step(
        self, step: ExecuteStep, value: Any, error: BaseException | None, now: int
    ) -> list[ExecuteStep]:
        """A step body returned ``value`` (or raised ``error``): commit what follows and
        return the steps that may run next (usually the same run's next step). The same as
        ``commit([step_finished(...)])``, with less overhead per step; drivers that group
        results from many runs into one transaction use those two instead."""
        live = self.live.get(step.run_id)
        if live is None or not live.machine.is_current(step):
            self.discarded_results += 1  # see step_finished
            return []
        pre = self._boundary_cancel(live, now) if live.machine.function.cancel_on else None
        if error is None:
            cmds = live.machine.step_completed(step.position, step.attempt, value, now)
        else:
            cmds = live.machine.handle(StepFailed(step.position, step.attempt, error, now))
        if pre:
            cmds = pre + cmds
        batch = _memo_batch(live, cmds, now)
        if batch is None:
            return self.commit([self._plan([(live, cmds)], now)])
        # The hot path: a memo, then the same run's next step (its machine is not done).
        try:
            fenced = self.store.commit(batch)
        except Exception as exc:
            return self._commit_raised([Plan(batch, cmds[1:])], batch, exc)  # type: ignore[arg-type]
        if fenced:
            self.stale_writes += 1
            self.live.pop(step.run_id, None)
            return []
        if self._commit_failures:
            self._commit_failures.pop(step.run_id, None)  # its journal moved on (_committed)
        if error is not None:  # a step that failed for good, its error caught by the code
            notes = _failed_notes(live, cmds, now)
            if notes:
                _observe.publish(notes)
        return cmds[1:]  # type: ignore[return-value]

    def _boundary_cancel(self, live: _Live, now: int) -> list[Command]:
        """A run with cancel-on events, at a step boundary (a body's result arriving): a
        cancel already stored for it (a matching event was routed while the body ran) ends
        it here, once the result is recorded, whoever routed the event. One read per step
        of such runs only; other runs learn of cancels at lease renewal."""
        reason = self.store.cancel_reasons([live.machine.run_id]).get(live.machine.run_id)
        if reason is None:
            return []
        return live.machine.handle(CancelRequested(reason, now, boundary=True))

    def feed(self, run_id: str, inp: Input, now: int) -> Plan | None:
        """Feed one input to a run this engine holds (None if it holds no such run); commit
        the returned plan. The loop feeds every input itself: this is for drivers that learn
        of an input out of band (and for the simulator, which delivers inputs twice)."""
        live = self.live.get(run_id)
        if live is None:
            return None
        return self._plan([(live, live.machine.handle(inp))], now)

    def _plan(self, items: Sequence[tuple[_Live, list[Command]]], now: int, *,
              force: bool = False) -> Plan:
        runs: list[NewRun] = []
        events: list[str] = []
        writes: list[RunWrite] = []
        waits_add: list[WaitRecord] = []
        waits_remove: list[tuple[str, int]] = []
        signals: list[tuple[str, Signal]] = []
        steps: list[ExecuteStep] = []
        run_events: list[tuple[str, str]] = []
        notes: list[_observe.Note] = []
        for live, cmds in items:
            m = live.machine
            entries: tuple[Any, ...] = ()
            status: str | None = None
            wake_at: int | None = None
            output = None
            error = None
            reason: str | None = None
            for c in cmds:
                t = type(c)
                if t is AppendJournal:
                    entries += c.entries  # type: ignore[union-attr]
                elif t is ExecuteStep:
                    steps.append(c)  # type: ignore[arg-type]
                elif t is SetRunState:
                    status, wake_at = c.status, c.wake_at  # type: ignore[union-attr]
                elif t is CompleteRun:
                    status, output = RunStatus.COMPLETED, c.output  # type: ignore[union-attr]
                elif t is FailRun:
                    status, error = RunStatus.FAILED, c.error  # type: ignore[union-attr]
                elif t is CancelRun:
                    status, error = RunStatus.CANCELLED, c.error  # type: ignore[union-attr]
                    reason = c.reason  # type: ignore[union-attr]
                elif t is RegisterWait:
                    assert isinstance(c, RegisterWait)
                    waits_add.append(wait_record(c))
                elif t is ClearWait:
                    waits_remove.append((c.run_id, c.position))  # type: ignore[union-attr]
                elif t is EmitEvents:
                    events.extend(c.events)  # type: ignore[union-attr]
                elif t is StartRun:
                    assert isinstance(c, StartRun)
                    eid = json.loads(c.event)["id"]
                    new = NewRun(id=c.run_id, function_id=c.function_id, events=(c.event,),
                                 event_ids=(eid,), created_at=now,
                                 parent_run_id=c.parent_run_id)
                    runs.append(new)
                    waits_add += self._cancel_on_waits(new)
                elif t is SendSignal:
                    signals.append((c.run_id, c.signal))  # type: ignore[union-attr]
            release = not m.done and not m.running_steps()
            if release and status is None:
                status, wake_at = m.status, m.next_deadline()
            if status is not None and status in _ENDED:
                run_events += self.end_events(
                    m.run_id, m.function.id, [e.to_json() for e in m.events], status, now,
                    output=output, error=error, reason=reason,
                )
            if entries or status is not None or release or force or live.signals:
                writes.append(
                    RunWrite(
                        run_id=m.run_id, epoch=live.epoch, entries=entries, status=status,
                        wake_at=wake_at, output=output, error=error,
                        consumed_signals=live.signals, release=release,
                    )
                )
                live.signals = 0
            if m.done:
                steps = [s for s in steps if s.run_id != m.run_id]
            if entries or m.done or release:
                notes += _observe.notes_for(
                    m.run_id, m.function.id, m.run_attempt, m.started_at, entries,
                    (m.status.value, error.to_dict() if error is not None else None)
                    if m.done and status is not None else None,
                    str(status or m.status) if release else None, now)
            live.leased = not release and not m.done
            if release:
                self._evict_floor = 0  # a parked machine may be evicted: scan again
        batch = CommitBatch(
            now=now, runs=flow_runs(self.app, runs) if runs else (), events=tuple(events),
            writes=tuple(writes),
            waits_add=tuple(waits_add), waits_remove=tuple(waits_remove),
            signals=tuple(signals), run_events=tuple(run_events),
        )
        return Plan(batch, steps, None, notes or None)

    def commit(self, plans: Sequence[Plan]) -> list[ExecuteStep]:
        """Commit the batches of several plans in one store transaction (group commit);
        returns the steps that may now run. Runs whose writes were fenced are dropped."""
        if len(plans) == 1:
            batch = plans[0].batch
        elif plans:
            batch = merge_batches([p.batch for p in plans])
        else:
            return []
        try:
            fenced = self.store.commit(batch)
        except Exception as exc:
            return self._commit_raised(plans, batch, exc)
        return self._committed(plans, batch, fenced)

    def _committed(
        self, plans: Sequence[Plan], batch: CommitBatch, fenced: Collection[str]
    ) -> list[ExecuteStep]:
        if self._commit_failures:
            # A run's count restarts once its journal moves on (a claim alone does not).
            for w in batch.writes:
                if w.entries:
                    self._commit_failures.pop(w.run_id, None)
        steps = plans[0].steps if len(plans) == 1 else [s for p in plans for s in p.steps]
        for p in plans:
            if p.notes:
                _observe.publish(p.notes, fenced)
        if fenced:
            self.stale_writes += len(fenced)
            for run_id in fenced:
                self.live.pop(run_id, None)
            steps = [s for s in steps if s.run_id not in fenced]
        for w in batch.writes:
            live = self.live.get(w.run_id)
            if live is not None and live.machine.done:
                del self.live[w.run_id]
        if len(self.live) > self.cache_size:
            self._evict()
        return steps

    def _commit_raised(
        self, plans: Sequence[Plan], batch: CommitBatch, exc: Exception
    ) -> list[ExecuteStep]:
        """The commit of ``plans`` (as ``batch``) raised ``exc``. Refused for its data (nothing
        was applied): commit the runs apart (see _commit_apart). Else the outcome is unknown
        (applied or not): the machines of its runs may be ahead of the store, so drop them
        (they are rebuilt from the store when claimed again) and raise a StoreError."""
        self.failed_commits += 1
        if is_data_error(exc):
            # Refused for its data, not lost (nothing was applied): find the run at
            # fault and count it; the others go on with their machines.
            return self._commit_apart(plans, exc)
        self.forget(w.run_id for w in batch.writes)
        if isinstance(exc, StoreError):
            raise exc
        raise StoreError(f"store commit failed: {type(exc).__name__}: {exc}") from exc

    def _commit_apart(self, plans: Sequence[Plan], error: Exception) -> list[ExecuteStep]:
        """A commit was refused for its data: commit its runs' plans one by one, so that
        healthy runs proceed, and count the refusals of the others. A run refused
        ``MAX_COMMIT_FAILURES`` times in a row is failed."""
        parts = [q for p in plans for q in (p.parts or (p,))]
        steps: list[ExecuteStep] = []
        for index, part in enumerate(parts):
            exc: Exception = error
            if len(parts) > 1:
                try:
                    fenced = self.store.commit(part.batch)
                except Exception as again:
                    if not is_data_error(again):
                        self.forget(w.run_id for p in parts[index:] for w in p.batch.writes)
                        if isinstance(again, StoreError):
                            raise
                        raise StoreError(
                            f"store commit failed: {type(again).__name__}: {again}"
                        ) from again
                    exc = again
                else:
                    steps += self._committed([part], part.batch, fenced)
                    continue
            now = part.batch.now
            for w in part.batch.writes:
                self.live.pop(w.run_id, None)
                n = self._commit_failures[w.run_id] = self._commit_failures.get(w.run_id, 0) + 1
                if n < MAX_COMMIT_FAILURES:
                    log.warning(
                        "run %s: the store refused its writes (%d of %d times): %s: %s; the "
                        "run will be retried from the store",
                        w.run_id, n, MAX_COMMIT_FAILURES, type(exc).__name__, _short(exc),
                        extra={"run_id": w.run_id},
                    )
                    continue
                self._fail_refused(w, exc, n, now)
        return steps

    def _fail_refused(self, w: RunWrite, exc: Exception, n: int, now: int) -> None:
        cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ else exc
        err = StoreError(
            f"run {w.run_id}: the store refused its writes {n} times in a row "
            f"({type(cause).__name__}: {_short(cause)}); the run is failed instead of being "
            "retried for ever. Check the step ids, event names and values it records"
        )
        log.error("%s", err, extra={"run_id": w.run_id, "action": "run.failed"})
        info = ErrorInfo.from_exception(err)
        try:
            run = self.store.get_run(w.run_id)
            ended = self.end_events(run.id, run.function_id, run.events, RunStatus.FAILED,
                                    now, error=info)
            self.store.commit(CommitBatch(now=now, writes=(
                RunWrite(run_id=w.run_id, epoch=w.epoch, status="failed", error=info),
            ), run_events=tuple(ended)))
        except Exception as again:
            log.warning("run %s: recording its failure failed too: %s", w.run_id, again,
                        extra={"run_id": w.run_id})
            return
        self._commit_failures.pop(w.run_id, None)
        self.poisoned_runs += 1

    def _evict(self) -> None:
        """Drop the oldest parked machines beyond ``cache_size`` (they are rebuilt by replay
        when their run is claimed again). Leased machines stay: when too many are leased to
        get back under the size, the scan is not repeated on every commit, only once the
        cache has grown by ``_EVICT_SLACK`` more (amortised O(1) per commit)."""
        size = len(self.live)
        if size <= self._evict_floor:
            return  # too many machines were leased last time: wait for the cache to grow
        excess = size - self.cache_size
        victims: list[str] = []
        for run_id, live in self.live.items():
            if not live.leased:
                victims.append(run_id)
                if len(victims) >= excess:
                    break
        for run_id in victims:
            del self.live[run_id]
        self._evict_floor = len(self.live) + _EVICT_SLACK if len(victims) < excess else 0

    def cancel_run(self, run_id: str, now: int, *, reason: str = CANCEL_BY_REQUEST) -> None:
        """Durably put a cancel signal for a run; whoever holds (or next claims) the
        run ends it as ``cancelled``. Raises RunNotFoundError for an unknown run, and
        ValidationError for a ``reason`` a store cannot hold (a lone surrogate, a NUL)."""
        if not isinstance(reason, str):
            raise ValidationError(
                f"cancel_run(reason): must be a string, got {type(reason).__name__}",
                field="reason",
            )
        check_text(reason, what="cancel_run(reason)", error=ValidationError, nul=True)
        run = self.store.get_run(run_id)
        if run.status in TERMINAL_STATUSES:
            raise ValidationError(
                f"cancel_run: run {run_id} already ended ({run.status}); only a run that has "
                "not ended can be cancelled (nothing was changed)",
                field="run_id",
            )
        # (A run that ends before this commit drops the signal: nothing changes then.)
        self.store.commit(
            CommitBatch(now=now, signals=((run_id, Signal(SignalKind.CANCEL, run_id, reason)),))
        )

    def end_events(
        self, run_id: str, function_id: str, events: Sequence[str], status: str, now: int, *,
        output: str | None = None, error: ErrorInfo | None = None, reason: str | None = None,
    ) -> list[tuple[str, str]]:
        """The system events of a run that ends with ``status`` at ``now``, as
        ``CommitBatch.run_events`` (commit them in the batch holding the run's end: a store
        appends them only if that end is accepted). ``events`` are the run's triggering
        events (JSON texts); ``output``/``error`` its outcome; ``reason`` why it was
        cancelled (``"request"``, ``"cancel_on"``, ``"timeout"``). Every way a run ends goes
        through here (see :mod:`durable_core.core._lifecycle`). A cancel's reason, when not
        given, is read from its error (:func:`~durable_core.core._lifecycle.cancel_cause`)."""
        if status == RunStatus.CANCELLED and reason in (None, "request") and error is not None:
            by = cancel_cause(error.message)["by"]
            reason = {"event": "cancel_on", "timeout": "timeout", "parent": "parent",
                      "singleton": "singleton"}.get(by, "request")
        return [(run_id, text) for text in system_events(
            function_id, run_id, events, status, now, output=output, error=error,
            reason=reason,
        )]

    def cancel_runs(
        self, now: int, *, function_id: str | None = None, since: int | None = None,
        until: int | None = None, if_: str | None = None, reason: str = CANCEL_BY_REQUEST,
    ) -> list[str]:
        """Cancel every run that has not ended and matches all the filters given: of
        ``function_id``, created in ``[since, until)`` (ms), whose triggering event makes the
        CEL expression ``if_`` (over ``event``) true. At least ``function_id`` or ``if_`` is
        required. Returns the ids of the runs it sent a cancel to, oldest first (one that
        ended meanwhile keeps its end). Bad filters raise before anything changes."""
        if not isinstance(reason, str):
            raise ValidationError(
                f"cancel_runs(reason): must be a string, got {type(reason).__name__}",
                field="reason")
        check_text(reason, what="cancel_runs(reason)", error=ValidationError, nul=True)
        if function_id is None and if_ is None:
            raise ValidationError(
                "cancel_runs: give function_id, if_ or both (cancelling every run of every "
                "function is not a bulk cancel this API makes easy)", field="function_id")
        if function_id is not None and (not isinstance(function_id, str) or not function_id):
            raise ValidationError(f"cancel_runs: function_id must be a non-empty str, got "
                                  f"{function_id!r}", field="function_id")
        for name, value in (("since", since), ("until", until)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValidationError(f"cancel_runs: {name} must be ms since the epoch, got "
                                      f"{value!r}", field=name)
        if since is not None and until is not None and until < since:
            raise ValidationError(f"cancel_runs: until ({until}) is before since ({since})",
                                  field="until")
        expr = None
        if if_ is not None:
            if not isinstance(if_, str):
                raise ValidationError(f"cancel_runs: if_ must be a CEL expression string, "
                                      f"got {if_!r}", field="if_")
            expr = compile_expression(if_, field="cancel_runs.if_", variables=("event",))
        picked: list[tuple[int, int, int, str]] = []
        for s_index, status in enumerate((RunStatus.QUEUED, RunStatus.RUNNING,
                                          RunStatus.SLEEPING, RunStatus.WAITING)):
            # Newest first (creation order): ``-rank`` sorts one status's runs oldest first
            # even when they share a creation time (run ids need not grow with it).
            for rank, run in enumerate(self.store.list_runs(
                    function_id=function_id, status=status, limit=2**31 - 1)):
                if since is not None and run.created_at < since:
                    continue
                if until is not None and run.created_at >= until:
                    continue
                if expr is not None:
                    try:
                        if not expr.matches({"event": json.loads(run.events[0])}):
                            continue
                    except (InvalidExpressionError, RecursionError, ValueError):
                        continue
                picked.append((run.created_at, s_index, -rank, run.id))
        picked.sort()
        ids = [p[-1] for p in picked]
        if ids:
            self.store.commit(CommitBatch(now=now, signals=tuple(
                (run_id, Signal(SignalKind.CANCEL, run_id, reason)) for run_id in ids)))
        return ids

    def rerun(self, run_id: str, now: int) -> str:
        """Start a new run of an ended run's function with the same triggering events,
        linked to it (:attr:`RunView.rerun_of`). Returns the new run's id. Raises
        RunNotFoundError for an unknown run and ValidationError for one that has not ended
        (nothing is created then)."""
        run = self.store.get_run(run_id)
        if run.status not in TERMINAL_STATUSES:
            raise ValidationError(
                f"rerun: run {run_id} has not ended ({run.status}); wait for it or cancel "
                "it first (nothing was created)", field="run_id")
        new_id = self.new_id("r_", now)
        new = NewRun(id=new_id, function_id=run.function_id, events=run.events,
                     event_ids=run.event_ids, created_at=now, rerun_of=run_id)
        self.store.commit(CommitBatch(now=now, runs=flow_runs(self.app, (new,)),
                                      waits_add=tuple(self._cancel_on_waits(new))))
        return new_id

    def cancel_live(self, run_ids: Iterable[str] | dict[str, str], now: int) -> Plan:
        """Cancel runs this engine holds (a cancel arrived while they were executing):
        ``run_ids`` as a dict maps each to its reason (see :meth:`Store.cancel_reasons`).
        A run whose step body is running ends once the body's result is recorded."""
        reasons = run_ids if isinstance(run_ids, dict) else dict.fromkeys(run_ids,
                                                                          CANCEL_BY_REQUEST)
        items = []
        for run_id, reason in reasons.items():
            live = self.live.get(run_id)
            if live is not None and not live.machine.done:
                items.append((live, live.machine.handle(CancelRequested(reason, now))))
        return self._plan(items, now)

    def step_started(self, step: ExecuteStep) -> Any:
        """Tracing is on (``_observe.tracing``) and the body of ``step`` is about to run:
        open its span (current while the body runs, in the run's span) and return it for
        :meth:`step_ended`; None if tracing is off or fails."""
        t = _observe.tracing
        if t is None:
            return None
        live = self.live.get(step.run_id)
        function_id = live.machine.function.id if live is not None else ""
        try:
            return t.step_started(step.run_id, function_id, step.step_id, step.attempt)
        except Exception:  # tracing must never stop a run
            log.debug("tracing: could not open the span of a step", exc_info=True)
            return None

    def step_ended(self, span: Any, error: BaseException | None) -> None:
        """The body whose span :meth:`step_started` opened returned (``error`` None) or
        raised: end the span."""
        t = _observe.tracing
        if t is not None and span is not None:
            try:
                t.step_ended(span, error)
            except Exception:
                log.debug("tracing: could not end the span of a step", exc_info=True)

    def is_current(self, step: ExecuteStep) -> bool:
        """Whether a dispatched step should still run: its run is held by this engine and its
        machine still waits for exactly this dispatch. Check it right before running a body
        whose start may have been delayed."""
        live = self.live.get(step.run_id)
        return live is not None and live.machine.is_current(step)

    def release_all(self, now: int) -> int:
        """Give up every lease this engine holds (graceful stop). Runs with step bodies that
        were not executed are left due at once, so another worker picks them up. Returns
        how many runs were released."""
        writes = []
        for run_id, live in self.live.items():
            if not live.leased or live.machine.done:
                continue
            m = live.machine
            wake = now if m.running_steps() else m.next_deadline()
            writes.append(
                RunWrite(run_id=run_id, epoch=live.epoch, status=m.status, wake_at=wake,
                         release=True)
            )
        if writes:
            self.store.commit(CommitBatch(now=now, writes=tuple(writes)))
        self.forget(list(self.live))
        return len(writes)

    def leased_runs(self) -> list[str]:
        """Runs whose lease this engine holds (they have step bodies in flight)."""
        return [run_id for run_id, live in self.live.items() if live.leased]

    def forget(self, run_ids: Iterable[str]) -> None:
        """Drop cached machines (e.g. after their lease was lost)."""
        t = _observe.tracing
        for run_id in run_ids:
            if self.live.pop(run_id, None) is not None and t is not None:
                with contextlib.suppress(Exception):  # tracing must never stop a run
                    t.run_left(run_id, "released", None)

    def renew_leases(self, now: int) -> set[str]:
        """Keep the runs this engine holds (their step bodies in flight) from being taken
        over, and act on cancels sent to them. Call it often (every second or so) while
        bodies run: leases are renewed every third of ``lease_ms`` (a store write per run);
        cancels are looked for on every call (a read), so they reach busy runs quickly.

        Returns the runs whose lease was found lost (another engine took them over): they
        are dropped from memory, and results of their bodies will be discarded."""
        run_ids = self.leased_runs()
        if not run_ids:
            return set()
        held, lost = run_ids, set()
        if now - self._renewed_at >= self.lease_ms // 3:
            lost = self.store.renew(self.owner, run_ids, now, self.lease_ms)
            self._renewed_at = now
            if lost:
                self.forget(lost)
                held = [r for r in run_ids if r not in lost]
            self.renewed(held, now)
        cancels = self.store.cancel_reasons(held) if held else {}
        if cancels:
            self.commit([self.cancel_live(cancels, now)])
        return lost

    def renewed(self, run_ids: Iterable[str], now: int) -> None:
        """The leases of ``run_ids`` were renewed by a call made at ``now``."""
        until = now + self.lease_ms
        for run_id in run_ids:
            live = self.live.get(run_id)
            if live is not None:
                live.lease_until = until

    def lease_held(self, run_id: str, now: int) -> bool:
        """Whether this engine surely still holds ``run_id``'s lease at ``now``: claimed or
        renewed less than a lease (minus a safety margin) ago.

        Check it right before a step body starts: a worker held up for longer than its lease
        (overloaded, paused) may have lost the run to another worker that already committed
        the step, and its body must then not run. A body that already started when the lease
        ran out may still finish; the store fences its result."""
        live = self.live.get(run_id)
        return live is not None and now + self._lease_margin < live.lease_until


def _trace_claim(t: _observe.Tracing, live: _Live, claim: Claim) -> None:
    """Open the span of a run an engine begins driving (tracing on), as a child of the
    trace context its triggering event carries."""
    try:
        raw = json.loads(claim.run.events[0]) if claim.run.events else {}
        parent = raw.get("traceparent") if isinstance(raw, dict) else None
        m = live.machine
        t.run_resumed(m.run_id, m.function.id, m.run_attempt,
                      parent if isinstance(parent, str) else None)
    except Exception:  # tracing must never stop a run
        log.debug("tracing: could not open the span of run %s", claim.run.id, exc_info=True)


def _failed_notes(live: _Live, cmds: list[Command], now: int) -> list[_observe.Note] | None:
    """The notes of a memo batch (``_memo_batch``) that records a failed step."""
    m = live.machine
    notes = _observe.notes_for(m.run_id, m.function.id, m.run_attempt, m.started_at,
                               cmds[0].entries, None, None, now)  # type: ignore[union-attr]
    return notes or None


def _memo_batch(live: _Live, cmds: list[Command], now: int) -> CommitBatch | None:
    """The batch of the hot path, if ``cmds`` are a memo then the same run's next step (and
    the run has no signals to mark consumed); else None (see Engine._plan).

    The records are built field by field, in declaration order (tests/test_layering.py pins
    the field order), saving the keyword handling of their constructors."""
    if (len(cmds) == 2 and type(cmds[1]) is ExecuteStep
            and type(cmds[0]) is AppendJournal and not live.signals):
        write = _tuple_new(RunWrite, (
            live.machine.run_id, live.epoch, cmds[0].entries, None, None, None, None, 0, False,
        ))
        return _tuple_new(CommitBatch, (now, (), (), (write,), (), (), (), (), (), ()))
    return None


def merge_batches(batches: Sequence[CommitBatch], now: int | None = None) -> CommitBatch:
    """One batch holding all of ``batches``, in order."""
    return CommitBatch(
        now=max(b.now for b in batches) if now is None else now,
        runs=tuple(x for b in batches for x in b.runs),
        events=tuple(x for b in batches for x in b.events),
        writes=tuple(x for b in batches for x in b.writes),
        waits_add=tuple(x for b in batches for x in b.waits_add),
        waits_remove=tuple(x for b in batches for x in b.waits_remove),
        signals=tuple(x for b in batches for x in b.signals),
        routed_events=tuple(x for b in batches for x in b.routed_events),
        cron=tuple(x for b in batches for x in b.cron),
        run_events=tuple(x for b in batches for x in b.run_events),
    )


class _Candidates:
    """The waits a routing batch found for one event name, and the keys of each of its
    events: :meth:`of` gives an event the waits without keys and those under its keys, in
    the order the store returned them."""

    __slots__ = ("by_key", "keys", "unkeyed")

    def __init__(self, waits: list[WaitRecord], keys: dict[int, list[str]]) -> None:
        self.keys = keys
        self.unkeyed: list[tuple[int, WaitRecord]] = []
        self.by_key: dict[str, list[tuple[int, WaitRecord]]] = {}
        for i, w in enumerate(waits):
            if not w.keys:
                self.unkeyed.append((i, w))
            for key in w.keys:
                self.by_key.setdefault(key, []).append((i, w))

    def of(self, seq: int) -> list[WaitRecord]:
        """The candidate waits of the event with this seq."""
        by_key = self.by_key
        picks = self.unkeyed
        if by_key:
            picks = list(picks)
            for key in self.keys.get(seq, ()):
                hit = by_key.get(key)
                if hit:
                    picks += hit
            picks.sort(key=lambda p: p[0])
        out: list[WaitRecord] = []
        last = -1
        for i, w in picks:
            if i != last:  # a wait under two of the event's keys is taken once
                out.append(w)
                last = i
        return out


def wait_record(c: RegisterWait) -> WaitRecord:
    """The stored form of a wait, with the match keys of its condition (its ``async.<path>
    == ...`` parts, resolved against the run's triggering event; see
    :mod:`durable_core.base._match`)."""
    keys = condition_keys(c.if_, incoming="async", known="event", known_value=c.trigger_event)
    return WaitRecord(c.run_id, c.position, c.event, c.if_, c.trigger_event, c.expires_at,
                      0, keys)


def wait_matches(wait: WaitRecord, event: dict[str, Any]) -> bool:
    """Whether an event (dict form) satisfies a registered wait's name and CEL condition."""
    if event["name"] != wait.event:
        return False
    if wait.if_ is None:
        return True
    try:
        expr = compile_expression(
            wait.if_, field="wait_for_event.if_", variables=("event", "async")
        )
        return expr.matches({"event": json.loads(wait.trigger_event), "async": event})
    except (InvalidExpressionError, RecursionError, ValueError) as exc:
        # The wait does not resume on this event; it still times out as usual.
        log.warning("run %s: wait at position %d does not match event %s: %s", wait.run_id,
                    wait.position, ascii(event.get("id")), _short(exc),
                    extra={"run_id": wait.run_id})
        return False


_ENDED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


def routed_run_id(function_id: str, event: StoredEvent) -> str:
    """The id of the run of ``function_id`` that routing the stored ``event`` creates: the
    same for every engine routing it (so a race creates it once), time-sortable like
    :meth:`Engine.new_id` (the event's receipt time, then a hash)."""
    digest = derive_id("", "route", function_id, event.seq, event.id, event.received_at)
    return f"r_{event.received_at:012x}{digest[:16]}"


_DATA_SQLSTATES = ("22", "23", "54")  # data exception, integrity violation, program limit


def is_data_error(exc: BaseException) -> bool:
    """Whether a store error was caused by the data written (it would fail again the same
    way: text a database cannot store, a value over a database limit), as opposed to a
    transient failure (a lost connection, a locked database, a timeout) worth retrying."""
    seen = 0
    error: BaseException | None = exc
    while error is not None and seen < 10:
        seen += 1
        if isinstance(error, ValueError | TypeError) and not isinstance(error, DurableError):
            return True  # UnicodeEncodeError (lone surrogates) and the like
        if type(error).__name__ in ("DataError", "IntegrityError"):
            return True
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _DATA_SQLSTATES:
            return True
        error = error.__cause__ or error.__context__
    return False


def _short(exc: BaseException, limit: int = 300) -> str:
    text = ascii(str(exc))[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."
