"""TestEngine: the whole engine on a virtual clock; replay and export helpers."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

from durable_core.base._durations import from_ms, parse_duration, parse_instant, to_ms
from durable_core.base._errors import DeterminismError, ValidationError
from durable_core.base._events import Event, Sent
from durable_core.core._function import App, Function
from durable_core.core._journal import entry_from_dict, entry_to_dict
from durable_core.core._lifecycle import CANCEL_BY_REQUEST
from durable_core.core._machine import RunMachine
from durable_core.core._model import ErrorInfo, ExecuteStep, JournalEntry, JournalOp
from durable_core.drivers._loading import import_stores
from durable_core.drivers._sandbox import install as install_sandbox
from durable_core.engine import _observe
from durable_core.engine._engine import Engine
from durable_core.engine._views import RunView, StepView, run_view
from durable_core.protocol import run_step_body
from durable_core.store import SkippedTrigger, Store
from durable_core.testing._bodies import BodyRunner, body_runner, run_on_mock_clock

JOURNAL_FORMAT = "durable-core-journal/1"

__all__ = ["RunHandle", "SentRuns", "TestEngine", "export_run", "replay", "replay_folder"]


class RunHandle:
    """A live handle on one run: every attribute reads the run's current stored state."""

    __slots__ = ("_engine", "id")

    def __init__(self, engine: TestEngine, run_id: str) -> None:
        self._engine = engine
        self.id = run_id

    def view(self) -> RunView:
        """A snapshot of the run."""
        store = self._engine.store
        return run_view(store.get_run(self.id), store.load_journal(self.id))

    @property
    def function_id(self) -> str:
        """The function this run executes."""
        return self._engine.store.get_run(self.id).function_id

    @property
    def status(self) -> str:
        """queued, running, sleeping, waiting, completed, failed or cancelled."""
        return self._engine.store.get_run(self.id).status

    @property
    def output(self) -> Any:
        """The run's return value (JSON-decoded), or None."""
        return self.view().output

    @property
    def error(self) -> ErrorInfo | None:
        """None, or the failure (``type``, ``message`` and ``traceback``)."""
        return self._engine.store.get_run(self.id).error

    @property
    def steps(self) -> tuple[StepView, ...]:
        """The run's steps in order (``id``, ``kind``, ``status``, ``attempts``, ``output``)."""
        return self.view().steps

    def __repr__(self) -> str:
        return f"<RunHandle {self.id} {self.function_id} {self.status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class SentRuns(Sent):
    """What :meth:`TestEngine.send` returns: a :class:`~durable_core.Sent` (the ids of the
    events, in order, as every ``send`` returns) that also holds ``runs``, the handles of the
    runs the events started, in start order (``[run] = engine.send(event).runs``).
    """

    __slots__ = ("runs",)

    def __init__(self, sent: Sent, runs: list[RunHandle]) -> None:
        super().__init__(sent, sent.duplicates)
        self.runs = runs

    def __repr__(self) -> str:
        return f"SentRuns({list(self)!r}, runs={self.runs!r})"


class TestEngine:
    """The whole engine on a virtual clock, for unit-testing durable functions.

    ``start`` is the initial virtual time (an aware datetime or ISO-8601 string with an
    offset). ``store`` defaults to a fresh :class:`stores.MemoryStore`; pass another store to
    test against it. ``mocks`` maps step ids to replacement bodies (callables taking the same
    arguments) or, for non-callables, to the value the step returns.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: App,
        start: str | dt.datetime = "2026-01-01T00:00:00Z",
        *,
        store: Store | None = None,
        mocks: dict[str, Any] | None = None,
    ) -> None:
        store_given = store
        if store is None:
            store = import_stores().MemoryStore()
        install_sandbox(app)  # guards for orchestration code (docs/determinism.md)
        self.app = app
        self.store: Store = store
        self._now = to_ms(parse_instant(start, field="TestEngine(start)"))
        counter = itertools.count(1)
        # Ids are a counter, so a test on a fresh memory store sees the same ids every time.
        # A store passed in may already hold this engine's ids (the same script run twice on
        # one SQLite file, from the same virtual start): a random prefix keeps them unique.
        salt = 0 if store_given is None else int.from_bytes(os.urandom(4), "big") << 32
        self.engine = Engine(
            app, store, owner="test-engine",
            entropy=lambda n: ((salt | next(counter)) % (1 << (8 * n))).to_bytes(n, "big"),
            lease_ms=366 * 24 * 3600 * 1000,
        )
        self.mocks: dict[str, Any] = dict(mocks or {})
        self.steps_executed = 0
        self._settling = False
        self._run_async = body_runner(app)  # async bodies on the library the app names

    @property
    def now(self) -> dt.datetime:
        """The virtual time."""
        return from_ms(self._now)

    def send(self, events: Event | Sequence[Event]) -> SentRuns:
        """Send one event or a list, then process everything that can happen without time
        passing. Returns the events' ids, as every ``send`` does, with the runs the events
        started as ``.runs`` (``[run] = engine.send(event).runs``)."""
        batch = [events] if isinstance(events, Event) else list(events)
        sent_at = self._now
        # Sent from a step body: routed at once, as a worker would route it while the
        # body still runs; the loop goes on from there.
        sent = self.engine.send(batch, sent_at, route=self._settling)
        if not self._settling:  # (sent from a step body: the loop routes it next)
            self._settle()
        ids = set(sent) - sent.duplicates
        return SentRuns(sent, [
            RunHandle(self, r.id)
            for r in reversed(self.store.list_runs(limit=1_000_000))
            if r.created_at >= sent_at and ids.intersection(r.event_ids)
        ])

    def advance(self, duration: str | float | dt.timedelta) -> None:
        """Move the clock forward by ``duration``, firing everything that falls due in order
        (each timer at its own instant)."""
        td = parse_duration(duration, field="advance(duration)", maximum=None)
        target = self._now + int(td.total_seconds() * 1000)
        self._settle()
        while True:
            nxt = self.engine.next_deadline(self._now)
            if nxt is None or nxt > target:
                break
            self._now = max(self._now, nxt)
            self._settle()
        self._now = target
        self._settle()

    def advance_to(self, when: str | dt.datetime) -> None:
        """Move the clock to ``when`` (not backwards)."""
        at = to_ms(parse_instant(when, field="advance_to(when)"))
        if at < self._now:
            raise ValidationError(
                f"advance_to: {when!r} is before the current virtual time {self.now.isoformat()}",
                field="when",
            )
        self.advance(dt.timedelta(milliseconds=at - self._now))

    @property
    def runs(self) -> list[RunHandle]:
        """Every run (cron-started and invoked ones too), in start order."""
        return [RunHandle(self, r.id) for r in reversed(self.store.list_runs(limit=1_000_000))]

    def skipped_triggers(
        self,
        *,
        event_id: str | None = None,
        function_id: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[SkippedTrigger]:
        """Triggers folded into an existing run by a function's ``idempotency`` key, newest
        first (see :meth:`durable_core.Client.skipped_triggers`)."""
        return self.store.skipped_triggers(
            function_id=function_id, event_id=event_id, run_id=run_id, limit=limit)

    def run(self, run_id: str) -> RunHandle:
        """A handle on one run; raises RunNotFoundError."""
        self.store.get_run(run_id)
        return RunHandle(self, run_id)

    def cancel_run(self, run_id: str, *, reason: str = "cancelled by request") -> None:
        """Cancel a run, as ``Client.cancel_run`` does, and process what follows: the run
        ends with status ``cancelled``. Raises :class:`~durable_core.RunNotFoundError` for an
        unknown run."""
        self.engine.cancel_run(run_id, self._now, reason=reason)
        if not self._settling:  # (called from a step body: the loop picks it up)
            self._settle()

    def cancel_runs(
        self, function: Function[Any] | str | None = None, *,
        since: str | dt.datetime | None = None, until: str | dt.datetime | None = None,
        if_: str | None = None, reason: str = CANCEL_BY_REQUEST,
    ) -> list[RunHandle]:
        """Bulk cancel, as ``Client.cancel_runs`` does, and process what follows; returns
        handles on the runs cancelled."""
        fn_id = function.id if isinstance(function, Function) else function
        ids = self.engine.cancel_runs(
            self._now, function_id=fn_id,
            since=None if since is None else to_ms(parse_instant(since, field="since")),
            until=None if until is None else to_ms(parse_instant(until, field="until")),
            if_=if_, reason=reason)
        if not self._settling:
            self._settle()
        return [RunHandle(self, run_id) for run_id in ids]

    def rerun(self, run_id: str) -> RunHandle:
        """Run an ended run again, as ``Client.rerun`` does, and process what follows."""
        new_id = self.engine.rerun(run_id, self._now)
        if not self._settling:
            self._settle()
        return RunHandle(self, new_id)

    # ------------------------------------------------------------------ internals

    def _settle(self) -> None:
        """Run the engine's loop at the current virtual time until a poll finds nothing."""
        self._settling = True
        try:
            self._settle_now()
        finally:
            self._settling = False

    def _settle_now(self) -> None:
        now = self._now
        engine = self.engine
        finish = engine.finish_step
        mocks = self.mocks
        run_async = self._run_async
        while True:
            work = engine.poll(now)
            if work.idle:
                return
            # Steps run in the order they became ready (runs interleave, step by step).
            pending = deque(work.steps)
            pop, push = pending.popleft, pending.extend
            executed = 0
            while pending:
                step = pop()
                executed += 1
                span = engine.step_started(step) if _observe.tracing is not None else None
                value, error = (execute_body(step, mocks, run_async) if mocks
                                else run_step_body(step, run_async=run_async))
                if span is not None:
                    engine.step_ended(span, error)
                # A cancel that arrived while the body ran (as a worker's lease renewal
                # finds it): the run ends at this step boundary.
                cancels = engine.store.cancel_reasons([step.run_id])
                if cancels:
                    engine.commit([engine.cancel_live(cancels, now)])
                push(finish(step, value, error, now))
            self.steps_executed += executed


def _mock_for(step_id: str, mocks: dict[str, Any]) -> tuple[bool, Any]:
    """The mock for a step key (``fetch:1``) or its base id (``fetch``), if any."""
    if step_id in mocks:
        return True, mocks[step_id]
    base, sep, suffix = step_id.rpartition(":")
    if sep and suffix.isdigit() and base in mocks:
        return True, mocks[base]
    return False, None


def execute_body(
    step: ExecuteStep, mocks: dict[str, Any] | None = None, run_async: BodyRunner | None = None
) -> tuple[Any, BaseException | None]:
    """Run a step body synchronously (async bodies by ``run_async``, from
    :func:`~durable_core.testing._bodies.body_runner`; without it, under ``trio.run`` with an
    autojumping MockClock), with ``ctx.attempt`` set. Returns ``(value, None)`` or
    ``(None, error)``."""
    if mocks:
        found, mock = _mock_for(step.step_id, mocks)
        if found:
            if not callable(mock):
                return mock, None
            step = step._replace(fn=mock)
    return run_step_body(step, run_async=run_async or run_on_mock_clock)


# --------------------------------------------------------------------------- replay testing


def export_run(store: Store, run_id: str) -> dict[str, Any]:
    """A run and its journal as a JSON-compatible document (what ``durable export`` writes)."""
    import json

    run = store.get_run(run_id)
    return {
        "format": JOURNAL_FORMAT,
        "run": {
            "id": run.id, "function_id": run.function_id, "status": run.status,
            "events": [json.loads(e) for e in run.events], "created_at": run.created_at,
            "parent_run_id": run.parent_run_id,
            "output": None if run.output is None else json.loads(run.output),
            "error": None if run.error is None else run.error.to_dict(),
        },
        "journal": [entry_to_dict(e) for e in store.load_journal(run_id)],
    }


def replay(app: App, journal: str | os.PathLike[str] | dict[str, Any]) -> RunView:
    """Replay an exported run (a file written by ``durable export``, or its parsed JSON)
    against the current code of ``app``, with no side effects.

    Raises :class:`~durable_core.DeterminismError` showing the first diverging step
    (``position``, ``recorded`` against ``requested``) if the code no longer follows the
    journal: it asks for another step, it raises where the recorded run did not (the message
    names the exception, ``requested`` is ``raise <type>``), it returns while the journal
    holds later steps, it asks for a new step where the recorded run had ended, or it returns
    another output.
    """
    import json

    from durable_core.store import RunRecord

    if isinstance(journal, dict):
        doc = journal
        source = "<journal>"
    else:
        source = os.fspath(journal)
        with open(source, encoding="utf-8") as f:
            doc = json.load(f)
    if doc.get("format") != JOURNAL_FORMAT:
        raise ValidationError(
            f"{source}: not a durable-core journal export (format {doc.get('format')!r}, "
            f"expected {JOURNAL_FORMAT!r}); write one with `durable export RUN_ID -o FILE`",
            field="format",
        )
    run = doc["run"]
    entries = [entry_from_dict(e) for e in doc["journal"]]
    machine, now = replay_run(
        app, run["id"], run["function_id"], run["status"],
        [Event.from_dict(e) for e in run["events"]], run["created_at"], entries,
        parent_run_id=run.get("parent_run_id"), output=run["output"],
    )
    record = RunRecord(
        id=run["id"], function_id=run["function_id"], status=machine.status,
        events=tuple(json.dumps(e) for e in run["events"]), created_at=run["created_at"],
        updated_at=now, output=machine.output, error=machine.error,
    )
    return run_view(record, entries)


def replay_run(
    app: App,
    run_id: str,
    function_id: str,
    status: str,
    events: Sequence[Event],
    created_at: int,
    entries: Sequence[JournalEntry],
    *,
    parent_run_id: str | None = None,
    output: Any = None,
) -> tuple[RunMachine, int]:
    """What :func:`replay` checks, over a run's fields and journal (``output`` parsed):
    returns the machine replayed to where the journal ends and the ``now`` it was given."""
    import json

    from durable_core.core._model import (
        TERMINAL_STATUSES,
        CancelRun,
        CompleteRun,
        FailRun,
        RunStarted,
    )

    machine = RunMachine(app.get(function_id), run_id, events, created_at, entries,
                         parent_run_id=parent_run_id)
    # A run backing off after its code raised is re-entered at its retry time: the code is
    # checked now, not when the run wakes up.
    retry_at = 0
    for e in entries:
        if e.op == JournalOp.RUN_ATTEMPT_FAILED:
            retry_at = int(e.payload()["retry_at"])
    now = max([created_at, retry_at, *(e.ts for e in entries)])
    cmds = machine.handle(RunStarted(now))
    if isinstance(machine.failure, DeterminismError):
        raise machine.failure
    pos = machine.next_position
    at_pos = next((f"{e.step_id} ({e.kind})" for e in entries if e.position == pos), None)
    raised = _raised(machine.entries[len(entries):], machine.error)
    if raised is not None and raised != _recorded_error(entries):
        there = f", where the journal recorded step {at_pos}" if at_pos else ""
        raise _CodeRaised(
            f"run {run_id}: replaying its journal, the code raised {raised.type}: "
            f"{raised.message} at step position {pos}{there}; the recorded run did not",
            raised, run_id=run_id, position=pos, recorded=at_pos,
            requested=f"raise {raised.type}",
        )
    ended = status in TERMINAL_STATUSES
    new_steps = [c for c in cmds if isinstance(c, ExecuteStep)]
    if ended and new_steps:
        step = new_steps[0]
        raise DeterminismError(
            f"run {run_id}: the recorded run had ended ({status}) but the code now "
            f"asks for a new step {step.step_id!r} at position {step.position}",
            run_id=run_id, position=step.position, recorded=f"run {status}",
            requested=step.step_id,
        )
    done = [c for c in cmds if isinstance(c, CompleteRun | FailRun | CancelRun)]
    if not ended and done and at_pos is not None:
        raise DeterminismError(
            f"run {run_id}: the code now ends the run at step position {pos}, where the "
            f"journal recorded step {at_pos}",
            run_id=run_id, position=pos, recorded=at_pos, requested="the run's end",
        )
    if status == "completed":
        got = json.loads(done[0].output) if done and isinstance(done[0], CompleteRun) else None
        if not done or not isinstance(done[0], CompleteRun) or got != output:
            raise DeterminismError(
                f"run {run_id}: the recorded run returned {output!r}, the code now "
                f"{'returns ' + repr(got) if done else 'does not finish'}",
                run_id=run_id, recorded=repr(output), requested=repr(got),
            )
    return machine, now


class _CodeRaised(DeterminismError):
    """Replaying a journal, the code raised an exception the recorded run did not:
    ``error`` is its type and message. Shown as a ``DeterminismError``."""

    def __init__(self, message: str, error: ErrorInfo, **where: Any) -> None:
        super().__init__(message, **where)
        self.error = error


_CodeRaised.__name__ = _CodeRaised.__qualname__ = "DeterminismError"


def _raised(new: Sequence[JournalEntry], error: ErrorInfo | None) -> ErrorInfo | None:
    """The exception a replay's code raised: in the run-level retry it recorded (``new``,
    the entries the replay added), or the error that ended the run."""
    for e in new:
        if e.op == JournalOp.RUN_ATTEMPT_FAILED:
            return ErrorInfo.from_dict(e.payload()["error"])
    return error


def _recorded_error(entries: Sequence[JournalEntry]) -> ErrorInfo | None:
    """The latest exception the recorded run's code raised (a run-level retry, or the
    error that ended it), if any: the same one again in a replay is nothing new."""
    for e in reversed(entries):
        if e.op == JournalOp.RUN_ATTEMPT_FAILED or (
            e.op == JournalOp.RUN_ENDED and "error" in e.payload()
        ):
            return ErrorInfo.from_dict(e.payload()["error"])
    return None


def replay_folder(app: App, folder: str | os.PathLike[str]) -> int:
    """Replay every ``*.json`` export in ``folder`` against ``app``; returns how many were
    checked. Raises the first :class:`~durable_core.DeterminismError`, naming the file. Call
    it from a test so that a non-deterministic change fails before it is deployed::

        def test_recorded_runs_still_replay():
            replay_folder(app, "tests/journals")
    """
    import pathlib

    from durable_core.base._errors import DeterminismError

    paths = sorted(pathlib.Path(folder).glob("*.json"))
    for path in paths:
        try:
            replay(app, path)
        except DeterminismError as exc:
            raise DeterminismError(
                f"{path.name}: {exc}", run_id=exc.run_id, position=exc.position,
                recorded=exc.recorded, requested=exc.requested,
            ) from exc
    return len(paths)
