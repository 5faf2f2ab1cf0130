"""A plain synchronous client: send events and inspect runs from any code."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from durable_core.base._durations import parse_instant, to_ms
from durable_core.base._errors import (
    RunFailedError,
    RunTimeoutError,
    ValidationError,
)
from durable_core.base._events import Event, Sent
from durable_core.base._serde import loads, return_hint
from durable_core.core._function import App, Function
from durable_core.core._lifecycle import CANCEL_BY_REQUEST
from durable_core.core._model import TERMINAL_STATUSES, RunStatus
from durable_core.drivers._clock import wall_clock_ms
from durable_core.drivers._notify import notifications
from durable_core.drivers._options import check_callable, check_count, check_store
from durable_core.engine._engine import Engine
from durable_core.engine._views import RunView, run_view
from durable_core.store import SkippedTrigger, Store, StoredEvent

__all__ = ["Client", "RunHandle"]

_FIRST_POLL_S = 0.002
_MAX_POLL_S = 0.1
_RECHECK_S = 5.0
"""With notifications, a waiting :class:`RunHandle` looks at its run at least this often
(seconds) even if none came: a bound on a lost wake-up, not a poll."""


def _function_ids(app: App) -> list[str]:
    # ``exclude_function_ids=[]`` means "exclude nothing": for an app with no function
    # (every run is unclaimable by it), exclude "" instead, which no function id can be.
    return list(app.functions) or [""]


class Client:
    """Send events and read runs, synchronously and thread-safely.

    Use it from sync code or from asyncio applications (call it in a thread executor if a
    blocking store would stall your loop; :meth:`RunHandle.result_async` waits without
    blocking). Events are accepted durably before ``send`` returns; a worker
    (``durable worker`` or :class:`durable_core.Worker`) runs the functions.

    With ``app``, ``send`` also routes the events it accepted before returning: the runs
    they start exist at once (``list_runs(event_id=...)`` finds them, :meth:`runs_of` gives
    their handles) and the waits they match are resumed; without it, the workers route them.
    :meth:`run` starts one run of a function directly and returns its :class:`RunHandle`.
    ``on_send`` is called after each send, start or cancel (a :class:`BackgroundWorker`
    wakes its worker with it).
    """

    def __init__(
        self, store: Store, *, app: App | None = None, clock: object = None,
        on_send: Callable[[], None] | None = None,
    ) -> None:
        check_callable("Client", "clock", clock, optional=True)
        check_callable("Client", "on_send", on_send, optional=True)
        check_store("Client", store)
        if app is not None and not isinstance(app, App):
            raise ValidationError(
                f"Client(app=...) must be a durable_core.App, got {type(app).__name__}",
                field="app")
        self.store = store
        self.app = app
        self._on_send = on_send
        self._clock = wall_clock_ms if clock is None else clock
        self._lock = threading.Lock()
        self._engine = Engine(app if app is not None else App("client"), store,
                              owner="client", entropy=os.urandom)

    def _now(self) -> int:
        return int(self._clock())  # type: ignore[operator]

    def send(self, events: Event | Sequence[Event]) -> Sent:
        """Durably accept one event or a list; returns their ids, in order (a
        :class:`~durable_core.Sent`: a list of str that also names the duplicates)."""
        batch = [events] if isinstance(events, Event) else list(events)
        with self._lock:
            # With an app, route what is waiting (these events and any before them), so
            # the runs they start exist when send returns.
            sent = self._engine.send(batch, self._now(), route=self.app is not None)
        if self._on_send is not None:
            self._on_send()
        return sent

    def run(self, function: Function[Any] | str, data: dict[str, Any] | None = None, *,
            id: str | None = None) -> RunHandle:
        """Start one run of ``function`` (a :class:`Function` or its id) with ``data`` as its
        event data, and return its handle. The run starts as ``ctx.step.invoke`` starts a
        child: its ``ctx.event`` is a ``durable/function.invoked`` event that no other
        function or wait sees. ``id`` makes the start idempotent (a retried ``run`` with the
        same ``id`` returns the same run and starts nothing). With ``app``, a function id
        the app does not define is a :class:`ValidationError`."""
        fn_id = function.id if isinstance(function, Function) else function
        if self.app is not None and fn_id not in self.app.functions:
            raise ValidationError(
                f"Client.run: app {self.app.id!r} has no function {fn_id!r} (it has: "
                f"{', '.join(sorted(self.app.functions)) or 'none'})", field="function")
        with self._lock:
            run_id = self._engine.start_run(fn_id, data, self._now(), id=id)
        if self._on_send is not None:
            self._on_send()
        return RunHandle(self, run_id, function if isinstance(function, Function) else None)

    def handle(self, run_id: str) -> RunHandle:
        """A handle on an existing run; raises :class:`~durable_core.RunNotFoundError`."""
        self.store.get_run(run_id)
        return RunHandle(self, run_id, None)

    def runs_of(self, event_id: str) -> list[RunHandle]:
        """Handles of the runs an event started, oldest first (empty until the event is
        routed: at once with a Client made with ``app``, else by a worker)."""
        records = self.store.list_runs(event_id=event_id, limit=10_000)
        return [RunHandle(self, r.id, None) for r in reversed(records)]

    def skipped_triggers(
        self,
        *,
        event_id: str | None = None,
        function_id: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[SkippedTrigger]:
        """Triggers that started no run because their function's ``idempotency`` key was
        held, or its ``rate_limit`` or ``singleton`` refused them (``reason``), newest
        first: each names the run it was folded into (``run_id``). Filter by
        the skipped event, the function, or the run they were folded into. A skipped event
        is still stored (:meth:`runs_of` finds no run of that function for it)."""
        check_count("Client.skipped_triggers", "limit", limit, 0)
        return self.store.skipped_triggers(
            function_id=function_id, event_id=event_id, run_id=run_id, limit=limit)

    def get_run(self, run_id: str) -> RunView:
        """One run with its steps; raises :class:`~durable_core.RunNotFoundError`."""
        return run_view(self.store.get_run(run_id), self.store.load_journal(run_id))

    def list_runs(
        self,
        function_id: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        *,
        limit: int = 100,
        unclaimable_by: App | None = None,
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        before: str | None = None,
    ) -> list[RunView]:
        """Runs matching the filters, newest first.

        ``unclaimable_by=app`` keeps only the runs of functions ``app`` does not define
        (renamed, removed, or another app's): a worker of ``app`` never claims them. With
        ``status="queued"`` these are the runs waiting for a worker that ``app`` cannot
        supply; see :meth:`unclaimable_runs`. ``since``/``until`` (aware datetimes or
        ISO 8601 texts with an offset) keep the runs created in ``[since, until)``;
        ``before`` (a run id: the last one of the previous page) lists the runs created
        before it, for paging."""
        check_count("Client.list_runs", "limit", limit, 0)
        window = _window("Client.list_runs", since, until)
        if before is not None and not isinstance(before, str):
            raise ValidationError(
                f"Client.list_runs(before=...) must be a run id, got {type(before).__name__}",
                field="before")
        if unclaimable_by is not None and not isinstance(unclaimable_by, App):
            raise ValidationError(
                "Client.list_runs(unclaimable_by=...) must be an App, got "
                f"{type(unclaimable_by).__name__}", field="unclaimable_by")
        exclude = None if unclaimable_by is None else _function_ids(unclaimable_by)
        return [
            run_view(r, self.store.load_journal(r.id))
            for r in self.store.list_runs(
                function_id=function_id, status=status, event_id=event_id, limit=limit,
                exclude_function_ids=exclude, since=window[0], until=window[1],
                before=before,
            )
        ]

    def list_events(
        self,
        name: str | None = None,
        *,
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events the store received, newest first, duplicates included (flagged): by
        ``name``, received in ``[since, until)``, and for paging ``before`` an event's
        ``seq`` (the last one of the previous page)."""
        check_count("Client.list_events", "limit", limit, 0)
        window = _window("Client.list_events", since, until)
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
            raise ValidationError(
                f"Client.list_events(before=...) must be an event seq (int), got {before!r}",
                field="before")
        return self.store.list_events(name=name, since=window[0], until=window[1],
                                      before=before, limit=limit)

    def unclaimable_runs(self, app: App, *, limit: int = 100) -> list[RunView]:
        """Queued runs that no worker of ``app`` will ever claim, newest first: their
        function is not one of ``app``'s (renamed, removed, or from another app on the same
        store). Deploy a worker that has the function, or cancel the runs."""
        return self.list_runs(status="queued", limit=limit, unclaimable_by=app)

    def cancel_run(self, run_id: str, *, reason: str = "cancelled by request") -> None:
        """Ask for a run to be cancelled; a worker ends it with status ``cancelled``.
        Raises :class:`~durable_core.RunNotFoundError` for an unknown run."""
        with self._lock:
            self._engine.cancel_run(run_id, self._now(), reason=reason)
        if self._on_send is not None:
            self._on_send()

    def cancel_runs(
        self, function: Function[Any] | str | None = None, *,
        since: str | dt.datetime | None = None, until: str | dt.datetime | None = None,
        if_: str | None = None, reason: str = CANCEL_BY_REQUEST,
    ) -> list[str]:
        """Cancel, in bulk, the runs that have not ended and match every filter given: of
        ``function`` (a :class:`Function` or its id), created at or after ``since`` and
        before ``until`` (aware datetimes or ISO-8601 strings), whose triggering event makes
        the CEL expression ``if_`` (over ``event``) true. ``function`` or ``if_`` is
        required. Returns the ids of the runs it cancelled (workers end them as
        ``cancel_run`` does), oldest first; bad filters raise before anything changes."""
        fn_id = function.id if isinstance(function, Function) else function
        start = None if since is None else to_ms(parse_instant(since, field="since"))
        end = None if until is None else to_ms(parse_instant(until, field="until"))
        with self._lock:
            ids = self._engine.cancel_runs(self._now(), function_id=fn_id, since=start,
                                           until=end, if_=if_, reason=reason)
        if ids and self._on_send is not None:
            self._on_send()
        return ids

    def rerun(self, run_id: str) -> RunHandle:
        """Run an ended run again: a new run of the same function with the same
        triggering event(s), linked to the first (its :attr:`RunView.rerun_of`). Raises
        :class:`~durable_core.RunNotFoundError` for an unknown run, and
        :class:`~durable_core.ValidationError` for a run that has not ended."""
        with self._lock:
            new_id = self._engine.rerun(run_id, self._now())
        if self._on_send is not None:
            self._on_send()
        return RunHandle(self, new_id, None)


class RunHandle:
    """A run started or found through a :class:`Client`: wait for its result.

    ``result()`` blocks the calling thread until the run ends; ``await result_async()`` does
    the same from trio or asyncio code without blocking the event loop. Both return the run's
    output (structured into the function's return annotation when the handle came from
    :meth:`Client.run` with a :class:`Function`), or raise :class:`RunFailedError` when the
    run failed or was cancelled, or :class:`RunTimeoutError` when ``timeout`` seconds passed
    first (the run goes on).
    """

    __slots__ = ("_client", "_function", "id")

    def __init__(self, client: Client, run_id: str, function: Function[Any] | None) -> None:
        self._client = client
        self._function = function
        self.id = run_id
        """The run's id."""

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    @property
    def status(self) -> str:
        """The run's status now (``queued running sleeping waiting completed failed
        cancelled``)."""
        return self._client.store.get_run(self.id).status

    def view(self) -> RunView:
        """The run with its steps, as :meth:`Client.get_run` gives it."""
        return self._client.get_run(self.id)

    def _outcome(self) -> tuple[bool, Any]:
        record = self._client.store.get_run(self.id)
        if record.status not in TERMINAL_STATUSES:
            return False, record.status
        if record.status == RunStatus.COMPLETED:
            fn = self._function
            if record.output is None:
                return True, None
            if fn is None:
                return True, loads(record.output)
            return True, loads(record.output, return_hint(fn.fn), fn.app.converter)
        err = record.error
        raise RunFailedError(self.id, record.function_id, record.status,
                             err.type if err is not None else "Error",
                             err.message if err is not None else "(no error recorded)")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end and return its output (see the class).

        On a store with ``wait_for_notify`` (PostgreSQL, SQLite, memory) the wait sleeps
        until a commit ends a run (or creates work) and then looks at the run again, so it
        reads the store once per notification, not on a timer; at most every
        ``_RECHECK_S`` seconds it looks anyway. On a store without, it polls with a backoff
        from 2 ms to 100 ms."""
        backoff = _Backoff(self.id, timeout)
        hub = notifications(self._client.store)
        if hub is None:
            while True:
                done, value = self._outcome()
                if done:
                    return value
                time.sleep(backoff.next(value))
        seen = hub.subscribe()  # before the first look: an end after it is heard
        try:
            while True:
                done, value = self._outcome()
                if done:
                    return value
                recheck = time.monotonic() + _RECHECK_S
                while True:
                    left = backoff.left(value, recheck)
                    now = hub.wait(seen, left)
                    if now != seen or time.monotonic() >= recheck:
                        seen = now
                        break
        finally:
            hub.unsubscribe()

    async def result_async(self, timeout: float | None = None) -> Any:
        """``result()`` for trio and asyncio code: the store is read in a worker thread and
        the waits are the event loop's (woken by the store's notifications where it has
        them), so the loop keeps running and no thread is held while waiting."""
        import sniffio

        trio_host = sniffio.current_async_library() == "trio"
        if trio_host:
            import trio

            to_thread: Any = trio.to_thread.run_sync
            sleep: Any = trio.sleep
        else:
            import asyncio

            to_thread, sleep = asyncio.to_thread, asyncio.sleep
        backoff = _Backoff(self.id, timeout)
        hub = notifications(self._client.store)
        if hub is None:
            while True:
                done, value = await to_thread(self._outcome)
                if done:
                    return value
                await sleep(backoff.next(value))
        seen = await to_thread(hub.subscribe)
        try:
            wake = _AsyncWake(trio_host)
            hub.add_callback(wake.set)
            try:
                while True:
                    done, value = await to_thread(self._outcome)
                    if done:
                        return value
                    recheck = time.monotonic() + _RECHECK_S
                    while hub.count == seen and time.monotonic() < recheck:
                        await wake.wait(backoff.left(value, recheck))
                    seen = hub.count
            finally:
                hub.remove_callback(wake.set)
        finally:
            hub.unsubscribe()


class _AsyncWake:
    """An event of the running trio or asyncio loop, set from any thread (the store's
    listening thread) and cleared by the waiter."""

    def __init__(self, trio_host: bool) -> None:
        self._trio = trio_host
        if trio_host:
            import trio

            self._token: Any = trio.lowlevel.current_trio_token()
            self._event: Any = trio.Event()
        else:
            import asyncio

            self._loop: Any = asyncio.get_running_loop()
            self._event = asyncio.Event()

    def set(self) -> None:
        """Set the event, from any thread (a closed loop is ignored)."""
        if self._trio:
            import trio

            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._event.set)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> None:
        """Wait until set or ``timeout`` seconds passed, then clear."""
        if self._trio:
            import trio

            with trio.move_on_after(timeout):
                await self._event.wait()
            self._event = trio.Event()
        else:
            import asyncio

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
            self._event.clear()


class _Backoff:
    """The pauses between two looks at a run: from 2 ms, doubling up to 100 ms, never past
    the deadline ``timeout`` seconds from now; at the deadline, :class:`RunTimeoutError`."""

    __slots__ = ("deadline", "pause", "run_id", "timeout")

    def __init__(self, run_id: str, timeout: float | None) -> None:
        self.run_id = run_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + _check_timeout(timeout)
        self.pause = _FIRST_POLL_S

    def next(self, status: str) -> float:
        """The next pause; raises :class:`RunTimeoutError` (the run is ``status``) once the
        deadline has passed."""
        pause = self.pause
        self.pause = min(pause * 2, _MAX_POLL_S)
        if self.deadline is None:
            return pause
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RunTimeoutError(self.run_id, status, float(self.timeout or 0))
        return min(pause, left)

    def left(self, status: str, until: float) -> float:
        """Seconds from now to ``until`` (monotonic) or the deadline, whichever is first;
        raises :class:`RunTimeoutError` (the run is ``status``) once the deadline has
        passed."""
        now = time.monotonic()
        if self.deadline is not None:
            if self.deadline <= now:
                raise RunTimeoutError(self.run_id, status, float(self.timeout or 0))
            until = min(until, self.deadline)
        return max(until - now, 0.0)


def _window(where: str, since: dt.datetime | str | None, until: dt.datetime | str | None
            ) -> tuple[int | None, int | None]:
    """``since``/``until`` as epoch ms (None stays None); bad values are a
    :class:`ValidationError` naming the argument."""
    out: list[int | None] = []
    for field, value in (("since", since), ("until", until)):
        if value is None:
            out.append(None)
        else:
            out.append(to_ms(parse_instant(value, field=f"{where}({field})")))
    return out[0], out[1]


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            timeout >= 0):
        raise ValidationError(
            f"result(timeout=...) must be a number of seconds >= 0 or None, got {timeout!r}",
            field="timeout")
    return float(timeout)
