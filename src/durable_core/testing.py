"""Testing helpers: the whole engine on a virtual clock.

:class:`TestEngine` runs an app against a store (in memory by default) with time that moves
only when you say so. No trio, no threads and no real waiting on the caller's side::

    engine = TestEngine(app, start="2026-01-01T00:00:00Z")
    [run] = engine.send(Event("order/created", {"orderId": 1, "amount": 150}))
    assert run.status == "sleeping"
    engine.advance("1h30m")
    assert run.status == "completed"
"""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ._context import current_attempt
from ._durations import from_ms, parse_duration, parse_instant, to_ms
from ._engine import Engine, Plan
from ._errors import RunNotFoundError, ValidationError
from ._events import Event
from ._function import App
from ._model import ErrorInfo, ExecuteStep
from ._store_api import Store
from ._views import RunView, StepView, run_view

__all__ = ["RunHandle", "TestEngine"]


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
        """None, or the failure (``type`` and ``message``)."""
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
        if store is None:
            from stores import MemoryStore

            store = MemoryStore()
        self.app = app
        self.store: Store = store
        self._now = to_ms(parse_instant(start, field="TestEngine(start)"))
        counter = itertools.count(1)
        self.engine = Engine(
            app, store, owner="test-engine",
            entropy=lambda n: next(counter).to_bytes(n, "big"),
            lease_ms=366 * 24 * 3600 * 1000,
        )
        self.mocks: dict[str, Any] = dict(mocks or {})
        self.steps_executed = 0

    @property
    def now(self) -> dt.datetime:
        """The virtual time."""
        return from_ms(self._now)

    def send(self, events: Event | Sequence[Event]) -> list[RunHandle]:
        """Send one event or a list, then process everything that can happen without time
        passing. Returns the runs the events started."""
        batch = [events] if isinstance(events, Event) else list(events)
        sent_at = self._now
        stored = self.engine.send(batch, sent_at)
        self._settle()
        ids = {e.id for e in stored if not e.duplicate}
        return [
            RunHandle(self, r.id)
            for r in reversed(self.store.list_runs(limit=1_000_000))
            if r.created_at >= sent_at and ids.intersection(r.event_ids)
        ]

    def advance(self, duration: str | float | dt.timedelta) -> None:
        """Move the clock forward by ``duration``, firing everything that falls due in order
        (each timer at its own instant)."""
        td = parse_duration(duration, field="advance(duration)", maximum=None)
        target = self._now + int(td.total_seconds() * 1000)
        self._settle()
        while True:
            wakes = [w for w in (self.store.next_wake_at(),
                                 self.engine.next_cron_tick(self._now)) if w is not None]
            nxt = min(wakes, default=None)
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

    def run(self, run_id: str) -> RunHandle:
        """A handle on one run; raises RunNotFoundError."""
        self.store.get_run(run_id)
        return RunHandle(self, run_id)

    def cancel(self, run_id: str) -> None:
        """Cancel a run (it ends with status ``cancelled``)."""
        from ._model import Signal
        from ._store_api import CommitBatch

        try:
            self.store.get_run(run_id)
        except RunNotFoundError:
            raise
        self.store.commit(
            CommitBatch(now=self._now, signals=((run_id, Signal("cancel", run_id, "cancelled")),))
        )
        self._settle()

    # ------------------------------------------------------------------ internals

    def _settle(self) -> None:
        now = self._now
        engine = self.engine
        pending: deque[ExecuteStep] = deque()
        while True:
            progressed = engine.schedule_cron(now) + engine.route(now)
            plan = engine.claim(now)
            if plan is not None:
                pending.extend(engine.commit([plan]))
                progressed += 1
            while pending:
                step = pending.popleft()
                value, error = self._execute(step)
                nxt: Plan = engine.step_finished(step, value, error, now)
                pending.extend(engine.commit([nxt]))
                progressed += 1
            if not progressed:
                return

    def _execute(self, step: ExecuteStep) -> tuple[Any, BaseException | None]:
        self.steps_executed += 1
        return execute_body(step, self.mocks)


def _mock_for(step_id: str, mocks: dict[str, Any]) -> tuple[bool, Any]:
    """The mock for a step key (``fetch:1``) or its base id (``fetch``), if any."""
    if step_id in mocks:
        return True, mocks[step_id]
    base, sep, suffix = step_id.rpartition(":")
    if sep and suffix.isdigit() and base in mocks:
        return True, mocks[base]
    return False, None


def execute_body(
    step: ExecuteStep, mocks: dict[str, Any] | None = None
) -> tuple[Any, BaseException | None]:
    """Run a step body synchronously (async bodies under ``trio.run`` with an autojumping
    MockClock), with ``ctx.attempt`` set. Returns ``(value, None)`` or ``(None, error)``."""
    fn: Callable[..., Any] = step.fn
    if mocks:
        found, mock = _mock_for(step.step_id, mocks)
        if found:
            if not callable(mock):
                return mock, None
            fn = mock
    token = current_attempt.set((step.run_id, step.attempt))
    try:
        if inspect.iscoroutinefunction(fn):
            import trio
            import trio.testing

            result = trio.run(
                lambda: fn(*step.args, **step.kwargs),
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
        else:
            result = fn(*step.args, **step.kwargs)
            if inspect.isawaitable(result):
                raise ValidationError(
                    f"step {step.step_id!r}: the body returned an awaitable; pass the async "
                    "function itself, not the result of calling it",
                    field="step.fn",
                )
        return result, None
    except Exception as exc:
        return None, exc
    finally:
        current_attempt.reset(token)
