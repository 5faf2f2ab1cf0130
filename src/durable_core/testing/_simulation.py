"""Deterministic simulation with fault injection: crash-test the engine and your functions.

A :class:`Simulation` runs an app on a virtual clock, with a seeded scheduler that picks
which pending step body runs next, and a :class:`FaultPlan` that crashes the engine at
command boundaries (before or after a store commit), makes store writes fail cleanly or with
an unknown outcome, delivers step results, timer fires and signals twice, jumps the clock,
and makes step bodies raise or hang. A crash throws away everything in memory and rebuilds
the engine from the store alone. After every commit and at the end, the simulation checks
the engine's invariants and raises :class:`InvariantViolation` naming the broken one, the
run and step, and the plan that reproduces it.

:func:`crash_test` explores fault plans for a user's own function with Hypothesis.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from durable_core.base._durations import parse_duration, parse_instant, to_ms
from durable_core.base._errors import DeterminismError, StoreError, UsageError
from durable_core.base._events import Event, Sent
from durable_core.core._function import App, Function
from durable_core.core._journal import JournalFold
from durable_core.core._lifecycle import (
    CANCELLED_EVENT,
    FAILED_EVENT,
    FINISHED_EVENT,
    cancel_cause,
    system_event_id,
)
from durable_core.core._machine import RunMachine
from durable_core.core._model import (
    TERMINAL_STATUSES,
    CancelRun,
    CompleteRun,
    EmitEvents,
    ExecuteStep,
    FailRun,
    JournalEntry,
    JournalOp,
    RunStarted,
    SendSignal,
    StartRun,
    StepKind,
    TimerFired,
)
from durable_core.drivers._sandbox import install as install_sandbox
from durable_core.engine._engine import Engine, Plan
from durable_core.store import DEDUPE_WINDOW_MS, CommitBatch, Store
from durable_core.testing._bodies import body_runner
from durable_core.testing._flow_buffers import check_buffers

__all__ = ["CrashTestReport", "FaultPlan", "InvariantViolation", "Simulation", "crash_test"]


class InvariantViolation(AssertionError):
    """An engine invariant did not hold. The message names the invariant, where it broke
    and the fault plan (with its seed) that reproduces it."""


class _Crash(BaseException):
    """The simulated process died (a BaseException so that nothing catches it by mistake)."""


@attrs.frozen
class FaultPlan:
    """What goes wrong, and when. Commit and execution indices count from 0 in the order the
    simulation performs them; the same plan and seed replay the same history exactly."""

    seed: int = 0
    """Seeds the scheduler: which pending step body runs next, when claims interleave."""
    crash_before_commit: frozenset[int] = frozenset()
    """Crash the engine just before these commits (the commit is not applied)."""
    crash_after_commit: frozenset[int] = frozenset()
    """Crash just after these commits are applied, before the engine learns of it."""
    failed_writes: frozenset[int] = frozenset()
    """These commits fail cleanly: nothing is applied and the store raises."""
    unknown_writes: frozenset[int] = frozenset()
    """These commits are applied, then the store raises: the outcome looks unknown."""
    duplicate_results: frozenset[int] = frozenset()
    """These step executions have their result delivered twice."""
    step_errors: frozenset[int] = frozenset()
    """These step executions raise an injected error instead of running (never on a step's
    last allowed attempt, so outcomes stay comparable)."""
    hung_steps: frozenset[int] = frozenset()
    """These step executions hang past their lease: their worker is declared dead (crash)."""
    duplicate_events: bool = False
    """Every event sent to the simulation is delivered twice (same id)."""
    duplicate_timers: bool = False
    """Every timer fire is delivered twice."""
    duplicate_signals: bool = False
    """Every signal (wait match, invoke result) is delivered twice."""
    clock_jumps: tuple[tuple[int, int], ...] = ()
    """``(commit index, ms)``: after that commit the clock jumps forward by ms."""

    @property
    def faults(self) -> int:
        """How many faults the plan injects (at most; some indices may never be reached)."""
        return (
            len(self.crash_before_commit) + len(self.crash_after_commit)
            + len(self.failed_writes) + len(self.unknown_writes) + len(self.duplicate_results)
            + len(self.step_errors) + len(self.hung_steps) + len(self.clock_jumps)
            + self.duplicate_events + self.duplicate_timers + self.duplicate_signals
        )

    def reproduce(self) -> str:
        """Python source that rebuilds this plan."""
        fields = []
        for a in attrs.fields(FaultPlan):
            value = getattr(self, a.name)
            if value != a.default:
                if isinstance(value, frozenset):
                    value = "frozenset({" + ", ".join(str(v) for v in sorted(value)) + "})"
                else:
                    value = repr(value)
                fields.append(f"{a.name}={value}")
        return "FaultPlan(" + ", ".join(fields) + ")"


class _FaultyStore:
    """A store proxy that injects the plan's write faults into ``commit``."""

    def __init__(self, inner: Store, sim: Simulation) -> None:
        self.inner = inner
        self.sim = sim
        self.blocking = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def buffer_events(self, adds: Any, now: int) -> int:
        # Routing into debounce/batch buffers: a write, with the plan's write faults; a
        # duplicate delivery (duplicate_signals) applies it again, which must change nothing.
        n: int = self._write(lambda: self.inner.buffer_events(adds, now))
        if self.sim.plan.duplicate_signals and self.inner.buffer_events(adds, now):
            self.sim._fail("a buffer add applied twice")
        return n

    def take_buffer(self, take: Any, now: int) -> bool:
        # A buffer's hand-off as a run: a write, with the plan's write faults; a duplicate
        # delivery (duplicate_signals) must be refused.
        ok: bool = self._write(lambda: self.inner.take_buffer(take, now))
        if self.sim.plan.duplicate_signals and self.inner.take_buffer(take, now):
            self.sim._fail("a buffer take applied twice")
        return ok

    def _before_write(self) -> int:
        """Count a write and raise the faults planned before it; returns its number."""
        sim = self.sim
        k = sim.stats["commits"]
        sim.stats["commits"] += 1
        plan = sim.plan
        if k in plan.crash_before_commit:
            sim.stats["crashes"] += 1
            raise _Crash()
        if k in plan.failed_writes:
            sim.stats["failed_writes"] += 1
            raise StoreError("injected fault: the write failed cleanly")
        return k

    def _write(self, apply: Callable[[], Any]) -> Any:
        sim = self.sim
        plan = sim.plan
        k = self._before_write()
        out = apply()
        if k in plan.unknown_writes:
            sim.stats["unknown_writes"] += 1
            raise StoreError("injected fault: the write was applied but the outcome is unknown")
        if k in plan.crash_after_commit:
            sim.stats["crashes"] += 1
            raise _Crash()
        return out

    def commit(self, batch: CommitBatch) -> set[str]:
        sim = self.sim
        plan = sim.plan
        k = self._before_write()
        if sim.planted_bug == "lose_acknowledged_writes":
            lock = getattr(self.inner, "_lock", None)
            memo = {} if lock is None else {id(lock): threading.RLock()}
            sim.snapshot = copy.deepcopy(self.inner, memo)
        fenced = self.inner.commit(batch)
        if plan.duplicate_signals and batch.signals:
            self.inner.commit(CommitBatch(now=batch.now, signals=batch.signals))
            sim.stats["duplicate_signals"] += len(batch.signals)
        if k in plan.unknown_writes:
            sim.stats["unknown_writes"] += 1
            sim.observe(batch)
            raise StoreError("injected fault: the write was applied but the outcome is unknown")
        if k in plan.crash_after_commit:
            sim.stats["crashes"] += 1
            sim.observe(batch)
            raise _Crash()
        for after, jump in plan.clock_jumps:
            if after == k:
                sim.now += jump
                sim.stats["clock_jumps"] += 1
        sim.observe(batch, acknowledged=True)
        return fenced


class Simulation:
    """The whole engine on a virtual clock, with a seeded scheduler and injected faults.

    ``store`` defaults to a fresh :class:`stores.MemoryStore`; any store works (a crash
    rebuilds the engine from it). ``lease_ms`` is how long a dead engine's leases last (a
    crash advances the clock past them). ``mocks`` replaces step bodies by step id, as in
    :class:`~durable_core.testing.TestEngine`. ``planted_bug`` is for testing the simulator
    itself: ``"lose_acknowledged_writes"`` makes a crash roll back the last acknowledged commit.
    """

    def __init__(
        self,
        app: App,
        *,
        faults: FaultPlan | None = None,
        store: Store | None = None,
        start: str | dt.datetime = "2026-01-01T00:00:00Z",
        lease_ms: int = 60_000,
        mocks: dict[str, Any] | None = None,
        planted_bug: str | None = None,
    ) -> None:
        if store is None:
            from durable_core.drivers._loading import import_stores

            store = import_stores().MemoryStore()
        install_sandbox(app)  # guards for orchestration code (docs/determinism.md)
        self.app = app
        self.plan = faults or FaultPlan()
        self.rng = random.Random(self.plan.seed)
        self.inner: Store = store
        self.store = _FaultyStore(store, self)
        self.now = to_ms(parse_instant(start, field="Simulation(start)"))
        self.lease_ms = lease_ms
        self.mocks = dict(mocks or {})
        self._run_async = body_runner(app)  # async bodies on the library the app names
        self.planted_bug = planted_bug
        self.max_iterations = 20_000
        """Loop iterations of :meth:`run` before it reports that the runs are stuck."""
        self.snapshot: Store | None = None
        self.stats: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._generation = 0
        self.engine = self._new_engine()
        self.pending: list[ExecuteStep] = []
        self._lease_free_at: int | None = None
        self.events: list[str] = []  # acknowledged event ids
        # Acknowledged journal entries by (run, seq): they must never change or vanish.
        self._acked: dict[tuple[str, int], JournalEntry] = {}
        # Side-effect accounting per step key: successful executions, and the fault counter
        # when the first one started and when the memo was first seen committed.
        self._successes: Counter[tuple[str, str]] = Counter()
        self._faults_at_first: dict[tuple[str, str], int] = {}
        self._faults_at_commit: dict[tuple[str, str], int] = {}
        self._violation: InvariantViolation | None = None
        self._limited = any(f.flow.concurrency for f in app.functions.values())

    # ------------------------------------------------------------------ plumbing

    def _new_engine(self) -> Engine:
        self._generation += 1
        return Engine(
            self.app, self.store, owner=f"sim-{self._generation}",
            entropy=lambda n: next(self._ids).to_bytes(n, "big"), lease_ms=self.lease_ms,
        )

    def _fault_count(self) -> int:
        s = self.stats
        return s["crashes"] + s["failed_writes"] + s["unknown_writes"]

    def _crash(self) -> None:
        """Throw away everything in memory; rebuild the engine from the store alone."""
        self.pending.clear()
        self.engine = self._new_engine()
        self._lease_free_at = self.now + self.lease_ms
        if self.planted_bug == "lose_acknowledged_writes" and self.snapshot is not None:
            self.inner = self.snapshot
            self.store.inner = self.snapshot
            self.snapshot = None

    def _fail(self, message: str, run_id: str | None = None, step: str | None = None) -> None:
        where = "" if run_id is None else f" (run {run_id}" + (
            f", step {step!r})" if step else ")")
        raise InvariantViolation(
            f"{message}{where}\nreproduce with: Simulation(app, faults={self.plan.reproduce()})"
        )

    def observe(self, batch: CommitBatch, *, acknowledged: bool = False) -> None:
        """After a commit: check acknowledged entries of the touched runs, and record new ones
        (only writes the store acknowledged count as acknowledged). Called from inside the
        store, where the engine would turn an exception into a store error: a violation is
        kept and raised by the simulation once the engine call returns."""
        try:
            self._observe(batch, acknowledged)
        except InvariantViolation as exc:
            if self._violation is None:
                self._violation = exc

    def _raise_pending(self) -> None:
        if self._violation is not None:
            raise self._violation

    def _observe(self, batch: CommitBatch, acknowledged: bool) -> None:
        for w in batch.writes:
            journal = self.inner.load_journal(w.run_id)
            self._check_journal(w.run_id, journal)
            for e in journal:
                if e.op == JournalOp.COMPLETED:
                    key = (w.run_id, e.step_id)
                    self._faults_at_commit.setdefault(key, self._fault_count())
            if acknowledged:
                for e in journal:
                    self._acked.setdefault((w.run_id, e.seq), e)

    def _check_journal(self, run_id: str, journal: Sequence[JournalEntry]) -> None:
        by_seq = {e.seq: e for e in journal}
        for (rid, seq), entry in self._acked.items():
            if rid == run_id and by_seq.get(seq) != entry:
                self._fail(f"an acknowledged journal entry changed or vanished: {entry}", run_id,
                           entry.step_id)
        if [e.seq for e in journal] != list(range(len(journal))):
            self._fail("journal sequence numbers are not dense", run_id)
        if sum(e.op == JournalOp.RUN_ENDED for e in journal) > 1:
            self._fail("the run ended twice", run_id)
        ts = [e.ts for e in journal]
        if ts != sorted(ts):
            self._fail("journal timestamps go backwards", run_id)
        memos: dict[int, JournalEntry] = {}
        for e in journal:
            if e.op == JournalOp.COMPLETED:
                if e.position in memos:
                    self._fail("a step was recorded twice", run_id, e.step_id)
                memos[e.position] = e

    def _commit(self, plans: Sequence[Plan]) -> list[ExecuteStep]:
        try:
            return self._dispatched(self.engine.commit(plans))
        except _Crash:
            self._crash()
        except StoreError:
            self._lease_free_at = self.now + self.lease_ms
        finally:
            self._raise_pending()
        return []

    def _dispatched(self, steps: list[ExecuteStep]) -> list[ExecuteStep]:
        # A step's window opens when it is dispatched: a fault between dispatch and the
        # commit of its memo may legitimately make its body run again.
        for st in steps:
            self._faults_at_first.setdefault((st.run_id, st.step_id), self._fault_count())
        return steps

    # ------------------------------------------------------------------ driving

    def send(self, events: Event | Sequence[Event]) -> Sent:
        """Durably accept events (twice each with ``duplicate_events``); returns their ids,
        in order (a :class:`~durable_core.Sent`, as ``Client.send`` does)."""
        batch = [events] if isinstance(events, Event) else list(events)
        texts = self.engine.prepare_events(batch, self.now)
        if self.plan.duplicate_events:
            texts = [t for text in texts for t in (text, text)]
            self.stats["duplicate_events"] += len(batch)
        stored = self.inner.append_events(texts, self.now)
        sent = Sent.of((e.id, e.duplicate) for e in stored)
        ids = list(dict.fromkeys(sent))
        self.events += ids
        return Sent(ids, sent.duplicates)

    def _tick(self) -> bool:
        """One poll of the engine's loop (cron, routing, claims); returns whether anything
        happened. The simulation's own part: the faults, and the accounting of dispatches."""
        engine = self.engine
        try:
            work = engine.poll(self.now)
        except _Crash:
            self._crash()
            return True
        except StoreError:
            self._lease_free_at = self.now + self.lease_ms
            return True
        finally:
            self._raise_pending()
        self.pending += self._dispatched(work.steps)
        if self.plan.duplicate_timers:
            self._duplicate_timers(work.claimed)
        return not work.idle

    def _duplicate_timers(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            plan = self.engine.feed(run_id, TimerFired(self.now), self.now)
            if plan is None:
                continue
            self.stats["duplicate_timers"] += 1
            self.pending += self._commit([plan])

    def _execute(self, step: ExecuteStep) -> None:
        from durable_core.testing._engine import execute_body

        if not self.engine.is_current(step):
            self.stats["stale_dispatches"] += 1  # the run was rebuilt since its dispatch
            return
        k = self.stats["executions"]
        self.stats["executions"] += 1
        plan = self.plan
        if k in plan.hung_steps:
            self.stats["hung_steps"] += 1
            self.stats["crashes"] += 1
            self._crash()
            return
        key = (step.run_id, step.step_id)
        if self._limited:
            self._check_slots(step)
        memo = JournalFold(self.inner.load_journal(step.run_id)).steps.get(step.position)
        if memo is not None and memo.done:
            self._fail("a step whose memo was committed ran again", step.run_id, step.step_id)
        if memo is not None and memo.retry_at is not None and memo.retry_at > self.now:
            self._fail("a step was retried before its backoff elapsed", step.run_id,
                       step.step_id)
        live = self.engine.live.get(step.run_id)
        retries = live.machine.function.retries if live is not None else 0
        value: Any
        error: BaseException | None
        if k in plan.step_errors and step.attempt < retries:
            self.stats["step_errors"] += 1
            value, error = None, RuntimeError("injected step failure")
        else:
            value, error = execute_body(step, self.mocks, self._run_async)
            if error is None:
                self._successes[key] += 1
        self.stats["steps_executed"] += 1
        result = self.engine.step_finished(step, value, error, self.now)
        self.pending += self._commit([result])
        if k in plan.duplicate_results:
            self.stats["duplicate_results"] += 1
            again = self.engine.step_finished(step, value, error, self.now)
            if any(w.entries for w in again.batch.writes) or again.steps:
                self._fail("a duplicated step result changed the run", step.run_id,
                           step.step_id)

    def _check_slots(self, step: ExecuteStep) -> None:
        """Concurrency (issue 13): as a step body starts, no slot key is held by more runs
        than its limit."""
        from durable_core.engine._flow_concurrency import slots_over_limit

        over = slots_over_limit(self.app, self.inner, self.now)
        if over:
            self._fail(f"concurrency limits exceeded (key: (held, limit)): {over}",
                       step.run_id, step.step_id)

    def run(self, until: str | float | dt.timedelta = "366d") -> None:
        """Process everything, advancing the clock from deadline to deadline, until every
        run has ended or ``until`` has passed."""
        limit = self.now + int(parse_duration(until, field="run(until)", maximum=None)
                               .total_seconds() * 1000)
        for _ in range(self.max_iterations):
            progressed = self._tick()
            while self.pending:
                step = self.pending.pop(self.rng.randrange(len(self.pending)))
                self._execute(step)
                if self.pending and self.rng.random() < 0.25:
                    self._tick()  # interleave routing and claims with step results
                progressed = True
            if progressed:
                continue
            wakes = [w for w in (self.engine.next_deadline(self.now), self._lease_free_at)
                     if w is not None and w > self.now]
            # Runs held by a dead engine's lease become claimable when the lease expires.
            wakes += [r.lease_expires for r in self.inner.list_runs(limit=1_000_000)
                      if r.lease_expires is not None and r.lease_expires > self.now
                      and r.status not in TERMINAL_STATUSES]
            if not wakes:
                return
            nxt = min(wakes)
            if nxt > limit:
                return
            self.now = nxt
            if self._lease_free_at is not None and self._lease_free_at <= self.now:
                self._lease_free_at = None
        self._fail(f"no progress after {self.max_iterations} iterations: the runs are stuck "
                   f"in a loop (statuses {sorted(r.status for r in self.inner.list_runs())})")

    # ------------------------------------------------------------------ results

    def outcomes(self) -> list[tuple[str, str, Any]]:
        """Every run as ``(function_id, status, output or error type)``, sorted."""
        out = []
        for r in self.inner.list_runs(limit=1_000_000):
            result = json.loads(r.output) if r.output is not None else (
                r.error.type if r.error is not None else None)
            out.append((r.function_id, r.status, result))
        return sorted(out, key=lambda t: json.dumps(t, sort_keys=True, default=str))

    def check(self, expected: list[tuple[str, str, Any]] | None = None) -> None:
        """Check every invariant over the final state (and, if given, that the outcomes
        equal those of the fault-free execution). Raises InvariantViolation."""
        runs = self.inner.list_runs(limit=1_000_000)
        run_ids = {r.id for r in runs}
        for eid in self.events:
            if self.inner.get_event(eid) is None:
                self._fail(f"acknowledged event {eid} was lost")
        for (run_id, _seq), entry in self._acked.items():
            if run_id not in run_ids:
                self._fail("a memo exists for an unknown run", run_id, entry.step_id)
        for run in runs:
            journal = self.inner.load_journal(run.id)
            self._check_journal(run.id, journal)
            self._check_timers(run.id, journal)
            self._check_cancels(run, journal)
            if run.status in TERMINAL_STATUSES:
                positions = sorted({e.position for e in journal if e.position >= 0})
                if positions != list(range(len(positions))):
                    self._fail(f"step positions are not dense: {positions}", run.id)
                self._check_replay(run.id)
        self._check_lifecycle(runs)
        check_buffers(self.app, self.inner, self.events, self._fail)  # debounce, batches
        if self._limited and all(r.status in TERMINAL_STATUSES for r in runs):
            leaked = self.inner.held_slots(self.now)
            if leaked:  # every run ended: no slot may still be held (issue 13)
                self._fail(f"concurrency slots leaked after every run ended: {leaked}")
        for key, n in self._successes.items():
            window = self._faults_at_commit.get(key, self._fault_count()) - \
                self._faults_at_first.get(key, 0)
            if n > 1 + window:
                self._fail(f"the step's side effect ran {n} times with only {window} faults in "
                           "its window", key[0], key[1])
        if expected is not None:
            got = self.outcomes()
            if got != expected:
                self._fail(f"outcomes differ from the fault-free execution:\n  expected "
                           f"{expected}\n  got      {got}")

    def _check_lifecycle(self, runs: Sequence[Any]) -> None:
        """Every ended run emitted its system events once, saying how it really ended; each
        event started at most one run of each function (a failure handler runs at most once
        per failed run); no idempotency key was held by two runs within 24 h."""
        by_id = {r.id: r for r in runs}
        for run in runs:
            if run.status not in TERMINAL_STATUSES:
                continue
            expected = {FINISHED_EVENT}
            if run.status == "failed":
                expected.add(FAILED_EVENT)
            elif run.status == "cancelled":
                expected.add(CANCELLED_EVENT)
            for name in (FINISHED_EVENT, FAILED_EVENT, CANCELLED_EVENT):
                ev = self.inner.get_event(system_event_id(name, run.id))
                if (ev is not None) != (name in expected):
                    self._fail(f"system event {name} {'missing' if ev is None else 'emitted'} "
                               f"for a run that ended {run.status}", run.id)
                if ev is None:
                    continue
                data = json.loads(ev.data)["data"]
                if data.get("status") != run.status or data.get("run_id") != run.id:
                    self._fail(f"system event {name} says the run ended {data.get('status')}, "
                               f"but it ended {run.status}", run.id)
                started = Counter(r.function_id for r in
                                  self.inner.list_runs(event_id=ev.id, limit=1_000_000))
                for function_id, n in started.items():
                    if n > 1:
                        self._fail(f"system event {name} started {n} runs of {function_id!r}"
                                   " (a failure handler ran more than once?)", run.id)
        held: dict[tuple[str, str], list[int]] = {}
        for run in by_id.values():
            if run.idempotency_key is not None:
                held.setdefault((run.function_id, run.idempotency_key), []).append(
                    run.created_at)
        for (function_id, key), times in held.items():
            times.sort()
            if any(b - a < DEDUPE_WINDOW_MS for a, b in itertools.pairwise(times)):
                self._fail(f"idempotency key {key!r} of {function_id!r} held by two runs "
                           "within 24 h")

    def _check_timers(self, run_id: str, journal: Sequence[JournalEntry]) -> None:
        for memo in JournalFold(journal).steps.values():
            if not memo.done or memo.sched is None or memo.done_ts >= memo.sched["until"]:
                continue
            if memo.kind == StepKind.SLEEP:
                self._fail("a timer fired early", run_id, memo.step_id)
            elif memo.kind == StepKind.WAIT_FOR_EVENT and memo.output == "null":
                self._fail("a wait timed out early", run_id, memo.step_id)

    def _check_cancels(self, run: Any, journal: Sequence[JournalEntry]) -> None:
        """Cancel-on events and timeouts hold: a run cancelled by an event was cancelled by
        a stored event its function listens for; a run started within ``timeouts.start``
        of its creation or was cancelled for it, and ended within ``timeouts.finish`` of its
        first attempt or was cancelled for it (and not before)."""
        function = self.app.functions.get(run.function_id)
        if function is None:
            return
        ended = next((e for e in journal if e.op == JournalOp.RUN_ENDED), None)
        cause = (cancel_cause(run.error.message)
                 if run.status == "cancelled" and run.error is not None else None)
        if cause is not None and cause["by"] == "event":
            listens = [c.event for c in function.cancel_on]
            stored = self.inner.get_event(cause["event_id"])
            if stored is None or stored.name not in listens:
                self._fail(f"the run was cancelled by event {cause['event_id']}, which is not "
                           f"a stored event it listens for ({listens})", run.id)
        timeouts = function.timeouts
        if timeouts is None:
            if cause is not None and cause["by"] == "timeout":
                self._fail("a run without timeouts was cancelled by one", run.id)
            return
        started = JournalFold(journal).started
        if timeouts.start_ms is not None:
            start_by = run.created_at + timeouts.start_ms
            if started is not None and started > start_by:
                self._fail(f"the run started at {started}, after its start timeout "
                           f"({start_by})", run.id)
            if cause == {"by": "timeout", "timeout": "start"} and (
                    started is not None or ended is None or ended.ts <= start_by):
                self._fail("the run was cancelled by its start timeout before it expired",
                           run.id)
        if timeouts.finish_ms is not None and started is not None and ended is not None:
            finish_by = started + timeouts.finish_ms
            if run.status in ("completed", "failed") and ended.ts > finish_by:
                self._fail(f"the run ended at {ended.ts}, after its finish timeout "
                           f"({finish_by})", run.id)
            if cause == {"by": "timeout", "timeout": "finish"} and ended.ts <= finish_by:
                self._fail("the run was cancelled by its finish timeout before it expired",
                           run.id)

    def _check_replay(self, run_id: str) -> None:
        """Replaying an ended run performs no side effects and writes nothing."""
        run = self.inner.get_run(run_id)
        journal = self.inner.load_journal(run_id)
        function = self.app.get(run.function_id)
        calls: list[str] = []
        machine = RunMachine(function, run.id, [Event.from_json(t) for t in run.events],
                             run.created_at, journal, parent_run_id=run.parent_run_id)
        cmds = machine.handle(RunStarted(self.now))
        for c in cmds:
            if isinstance(c, ExecuteStep | EmitEvents | StartRun | SendSignal):
                calls.append(type(c).__name__)
        if machine.entries != list(journal):
            self._fail("replay wrote to the journal", run_id)
        if calls:
            self._fail(f"replay performed side effects: {calls}", run_id)
        ended = [c for c in cmds if isinstance(c, CompleteRun | FailRun | CancelRun)]
        if run.status == "completed" and not (
            ended and isinstance(ended[0], CompleteRun) and ended[0].output == run.output
        ):
            self._fail("replay did not reach the recorded output", run_id)


# --------------------------------------------------------------------------- crash_test


@attrs.frozen
class CrashTestReport:
    """What :func:`crash_test` explored."""

    examples: int
    faults_injected: Counter[str]
    outcomes: list[tuple[str, str, Any]]

    def __str__(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults_injected.items()))
        return f"crash_test: {self.examples} examples, faults injected: {faults or 'none'}"


_FAULT_KEYS = ("crashes", "failed_writes", "unknown_writes", "duplicate_results", "step_errors",
               "hung_steps", "duplicate_events", "duplicate_timers", "duplicate_signals",
               "clock_jumps")


def fault_plans(max_commit: int = 40, max_execution: int = 40) -> Any:
    """A Hypothesis strategy of :class:`FaultPlan` over the given index ranges."""
    from hypothesis import strategies as st

    commits = st.frozensets(st.integers(0, max_commit), max_size=3)
    execs = st.frozensets(st.integers(0, max_execution), max_size=3)
    return st.builds(
        FaultPlan,
        seed=st.integers(0, 2**32 - 1),
        crash_before_commit=commits,
        crash_after_commit=commits,
        failed_writes=st.frozensets(st.integers(0, max_commit), max_size=2),
        unknown_writes=st.frozensets(st.integers(0, max_commit), max_size=2),
        duplicate_results=execs,
        step_errors=st.frozensets(st.integers(0, max_execution), max_size=2),
        hung_steps=st.frozensets(st.integers(0, max_execution), max_size=1),
        duplicate_events=st.booleans(),
        duplicate_timers=st.booleans(),
        duplicate_signals=st.booleans(),
        clock_jumps=st.lists(
            st.tuples(st.integers(0, max_commit), st.integers(1, 6 * 3600 * 1000)), max_size=2
        ).map(tuple),
    )


def _raise_code_bugs(sim: Simulation) -> None:
    """A run of the fault-free execution that failed with a ``DeterminismError`` or a
    ``UsageError`` has a bug in its code (the sandbox caught a call that breaks replay, a
    step never awaited...), not a fault to explore: raise it, naming the call."""
    for r in sim.inner.list_runs(limit=1_000_000):
        if r.error is not None and r.error.type in ("DeterminismError", "UsageError"):
            error = DeterminismError if r.error.type == "DeterminismError" else UsageError
            raise error(
                f"crash_test: function {r.function_id!r} failed in the fault-free run, before "
                f"any fault was injected: {r.error.message}"
            )


def crash_test(
    target: Function | App,
    events: Event | Sequence[Event],
    *,
    max_examples: int = 100,
    until: str = "366d",
    mocks: dict[str, Any] | None = None,
    store_factory: Any = None,
    planted_bug: str | None = None,
    verbose: bool = True,
) -> CrashTestReport:
    """Crash-test a function (or a whole app) with Hypothesis.

    Runs ``events`` once without faults to learn the expected outcome, then explores fault
    plans (crashes before/after commits, failed and unknown-outcome writes, duplicated
    results, events, timers and signals, clock jumps, failing and hanging step bodies) and
    checks every invariant after each commit and at the end. The first broken invariant is
    raised as :class:`InvariantViolation` with the shrunk plan that reproduces it. A run that
    fails in the fault-free execution with a ``DeterminismError`` (the sandbox caught a call
    that breaks replay, such as ``random.random()``) or a ``UsageError`` is raised at once,
    before any example, with the call named. Step bodies
    run many times: mock the ones with outside effects (``mocks={"charge": ...}``).
    """
    from hypothesis import HealthCheck, given, settings

    app = target.app if isinstance(target, Function) else target
    batch = [events] if isinstance(events, Event) else list(events)

    def make(plan: FaultPlan | None) -> Simulation:
        store = store_factory() if store_factory is not None else None
        return Simulation(app, faults=plan, store=store, mocks=mocks, planted_bug=planted_bug)

    baseline = make(None)
    baseline.send(batch)
    baseline.run(until)
    baseline.check()
    _raise_code_bugs(baseline)
    expected = baseline.outcomes()
    n_commits = max(baseline.stats["commits"], 1)
    n_execs = max(baseline.stats["executions"], 1)
    totals: Counter[str] = Counter()
    examples = 0

    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(plan=fault_plans(n_commits + n_commits // 2, n_execs + n_execs // 2))
    def explore(plan: FaultPlan) -> None:
        nonlocal examples
        examples += 1
        sim = make(plan)
        sim.send(batch)
        sim.run(until)
        sim.check(expected)
        for k in _FAULT_KEYS:
            totals[k] += sim.stats[k]

    explore()
    report = CrashTestReport(examples=examples, faults_injected=totals, outcomes=expected)
    if verbose:
        print(report)
    return report
