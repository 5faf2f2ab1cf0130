"""The trio driver: claims runs, executes step bodies, commits what the core decides.

One :class:`Worker` runs many runs concurrently. Each live run gets one trio task that awaits
its own step bodies in turn (sync ones in a thread; async ones on the library the app names:
directly for ``App(async_bodies="trio")``, on an asyncio loop otherwise, see ``_bodies``), so
a step costs no task spawn. Results from many runs are committed together: with an in-memory
store inline, with a blocking store (SQLite, Postgres) by one committer task that hands a whole
batch to a thread, so one transaction (one fsync) serves many steps. A step's next body never
starts before its predecessor's memo is durable.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import os
import signal
import sys
import time
import types
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import trio

from durable_core.base._errors import StoreError, StoreLostError, ValidationError
from durable_core.base._events import Event, Sent
from durable_core.base._safelog import safe_logger
from durable_core.core._context import current_attempt
from durable_core.core._function import TRIO, App
from durable_core.core._model import ExecuteStep
from durable_core.drivers._bodies import AsyncioBodies, check_asyncio_loop, wrong_library
from durable_core.drivers._clock import wall_clock_ms
from durable_core.drivers._gc import tuned_gc
from durable_core.drivers._notify import notifications
from durable_core.drivers._options import (
    check_callable,
    check_count,
    check_seconds,
    check_store,
)
from durable_core.drivers._sandbox import install as install_sandbox
from durable_core.engine import _observe
from durable_core.engine._engine import Engine, Plan
from durable_core.store import Store

__all__ = ["Worker", "wall_clock_ms"]

log = safe_logger("durable_core.worker")

_ORPHAN_CHECK_MS = 60_000  # how often a worker looks for runs of functions it lacks
_ORPHAN_SAMPLE = 100  # the most such runs it reads at a time


_CO_COROUTINE = inspect.CO_COROUTINE

_LEASE_LOST = object()
"""What _execute returns instead of a value when a body was not run for lack of a lease."""

_SIGNAL_REPEAT_S = 0.1
"""A second SIGINT/SIGTERM this soon (seconds) after the first is the same request (tools
like ``timeout`` signal both the process and its group), not a second Ctrl-C."""

_LISTEN_S = 1.0
"""How long (seconds) one ``wait_for_notify`` call of the listener blocks: the thread it
comes back at least this often (a call abandoned when the worker stops ends by then)."""

_YIELD_AFTER = 0.02
"""A run's task yields to the trio scheduler at least this often (seconds) between steps,
even if its step bodies and commits never do."""


def _exit_now(message: str, code: int) -> None:
    """End the process at once with one line on stderr (no clean-up, no traceback)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    os._exit(code)


def _identity(value: Any) -> Any:
    return value


def _is_async(fn: Any) -> bool:
    """``inspect.iscoroutinefunction`` with a fast path for plain functions (per step)."""
    code = getattr(fn, "__code__", None)
    if code is not None and type(fn) is types.FunctionType:
        return bool(code.co_flags & _CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


_RETRY_MIN = 0.1
_RETRY_MAX = 5.0
"""Bounds (seconds) of the delay between attempts while the store is unreachable."""


class _Outage:
    """One activity's view of a store outage: the delay before its next attempt (doubling
    from ``_RETRY_MIN`` up to ``_RETRY_MAX``), and one log line when it starts failing and
    one when it recovers, instead of a line per attempt."""

    __slots__ = ("delay", "failing", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False
        self.delay = _RETRY_MIN

    def failed(self, exc: BaseException, floor: float = 0.0) -> float:
        """Note a failure; returns how long to wait before trying again."""
        if not self.failing:
            log.warning("%s failed: %s; retrying with backoff until the store answers",
                        self.what, exc)
        else:
            log.debug("%s failed again: %s", self.what, exc)
        self.failing = True
        delay = max(self.delay, floor)
        self.delay = min(self.delay * 2, _RETRY_MAX)
        return delay

    def ok(self) -> bool:
        """Note a success; True if it ends an outage."""
        if not self.failing:
            return False
        log.warning("%s works again", self.what)
        self.failing = False
        self.delay = _RETRY_MIN
        return True


class _Pending:
    __slots__ = ("done", "error", "step", "steps", "value")

    def __init__(
        self, step: ExecuteStep, value: Any, error: BaseException | None, done: trio.Event
    ) -> None:
        self.step = step
        self.value = value
        self.error = error
        self.steps: list[ExecuteStep] = []
        self.done = done  # shared by every result of one group commit


class Worker:
    """Run an app's functions against a store until stopped.

    ``clock`` returns the current time in ms (default: the system clock; pass one based on
    ``trio.current_time()`` to run under trio's ``MockClock``). ``max_runs`` bounds the runs
    with step bodies in flight; ``lease_ms`` is how long a claim lasts without renewal;
    ``poll_interval`` (seconds) bounds how long an idle worker waits before checking the
    store again (a store with ``wait_for_notify``, as PostgreSQL and SQLite files have, also
    wakes it at once when another process creates work). Options are checked here:
    ``max_runs`` and ``batch_limit`` 1 to 1,000,000,
    ``lease_ms`` 1 to 86,400,000, ``poll_interval`` more than 0 and at most 3600 (finite);
    anything else is a :class:`~durable_core.ValidationError` naming the option.
    ``tune_gc`` raises CPython's garbage-collection thresholds while the worker
    runs, with :func:`tuned_gc` (``durable worker`` does): with thousands of live runs, the
    default thresholds make the collector rescan them every few hundred allocations, which
    doubles the per-step cost (see docs/benchmarks.md). It changes a process-wide setting,
    hence off by default.

    ``async def`` step bodies run on the library the app names (``App(async_bodies=...)``):
    with ``"trio"``, in the run's trio task; with ``"asyncio"`` (the default), as tasks on an
    asyncio event loop the worker starts on a thread of its own at the first such body, or on
    ``asyncio_loop`` if given (the loop of the asyncio application that hosts the worker,
    which must keep running until the worker stops). Sync bodies run in threads.

    Counters for monitoring: ``steps_executed`` (bodies run), ``commits``,
    ``bodies_skipped`` (bodies not started because the run's lease might have run out: the
    worker was held up for longer than ``lease_ms``) and ``leases_lost`` (runs found taken
    over by another worker when renewing), ``bodies_abandoned`` (bodies cut short because
    the worker's task was cancelled from outside). ``engine.stale_writes`` counts writes the store
    fenced, ``engine.discarded_results`` results that arrived for runs no longer held.
    """

    def __init__(
        self,
        app: App,
        store: Store,
        *,
        owner: str | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        max_runs: int = 1_000,
        lease_ms: int = 30_000,
        poll_interval: float = 0.5,
        batch_limit: int = 1_000,
        tune_gc: bool = False,
        asyncio_loop: Any = None,
    ) -> None:
        if not isinstance(app, App):
            raise ValidationError(f"Worker(app=...) must be an App, got {type(app).__name__}",
                                  field="app")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ValidationError(f"Worker(owner=...) must be a non-empty str, got {owner!r}",
                                  field="owner")
        check_store("Worker", store)
        check_callable("Worker", "clock", clock)
        check_count("Worker", "max_runs", max_runs, 1, 1_000_000)
        check_count("Worker", "lease_ms", lease_ms, 1, 86_400_000)
        poll_interval = check_seconds("Worker", "poll_interval", poll_interval, 3600.0)
        check_count("Worker", "batch_limit", batch_limit, 1, 1_000_000)
        check_asyncio_loop("Worker", asyncio_loop)
        install_sandbox(app)  # guards for orchestration code (docs/determinism.md)
        self.app = app
        self.store = store
        self.owner = owner or f"worker-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.max_runs = max_runs
        self.lease_ms = lease_ms
        self.poll_interval = poll_interval
        self.batch_limit = batch_limit
        self.tune_gc = tune_gc
        self.engine = Engine(app, store, owner=self.owner, entropy=os.urandom, lease_ms=lease_ms)
        self._blocking = bool(getattr(store, "blocking", True))
        self._limiter = trio.CapacityLimiter(1)
        self._queue: list[_Pending] = []
        self._queue_ready = trio.Event()
        self._batch_done = trio.Event()
        self._wakeup = trio.Event()
        self._active = 0
        self._stopping = False
        self._stopped = trio.Event()
        self._lost: StoreLostError | None = None  # the store is gone: stop, then raise it
        self._nursery: trio.Nursery | None = None
        self.steps_executed = 0
        self.bodies_skipped = 0  # not started: the run's lease may have run out
        self.leases_lost = 0  # runs found taken over by another worker at renewal
        self.bodies_abandoned = 0  # cancelled mid-body (the worker's task was cancelled)
        self.commits = 0
        self._next_orphan_check: int | None = None  # clock ms; None: at the first poll
        self._orphans_reported: frozenset[str] = frozenset()
        self._trio_bodies = app.async_bodies == TRIO
        self._asyncio = AsyncioBodies(asyncio_loop)  # starts no thread until needed

    # ------------------------------------------------------------------ public API

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Work until :meth:`stop` is called (or SIGINT/SIGTERM with ``handle_signals``).

        Stopping is graceful: no new claims; step bodies in flight finish and their results
        are committed; runs are released so another worker can take them at once. With
        ``handle_signals``, a second signal while stopping ends the process at once with one
        line on stderr (as a crash would: the runs still held go to other workers when their
        leases run out).
        """
        with tuned_gc() if self.tune_gc else contextlib.nullcontext():
            await self._run(handle_signals, task_status)
        if self._lost is not None:
            raise self._lost

    async def _run(self, handle_signals: bool, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._blocking:
                nursery.start_soon(self._committer)
            nursery.start_soon(self._renewer)
            # A store that does no I/O (memory) lives in this process: whoever commits to
            # it here wakes the worker directly (on_send), and the worker stays free of
            # threads (testable on trio's virtual clock).
            if self._blocking and callable(getattr(self.store, "wait_for_notify", None)):
                nursery.start_soon(self._listener)
            if handle_signals:
                nursery.start_soon(self._signal_watcher)
            task_status.started()
            before = self.bodies_abandoned
            log.debug("worker %s started: app %r, max_runs %d", self.owner, self.app.id,
                      self.max_runs)
            try:
                await self._main_loop()
            finally:
                with trio.CancelScope(shield=True):
                    # (Bodies cut short by a cancel from outside may have ended already.)
                    in_flight = self._active + self.bodies_abandoned - before
                    while self._active:
                        await trio.sleep(0.01)
                    released: int | None = None
                    try:
                        released = await self._call(self.engine.release_all, self.clock())
                    except StoreError as exc:
                        if self._lost is None:
                            log.warning("could not release this worker's runs (other workers "
                                        "take them when their leases run out): %s", exc)
                    await trio.to_thread.run_sync(self._asyncio.close)
                    self._stopped.set()
                    abandoned = self.bodies_abandoned - before
                    self._log_stopped(in_flight, in_flight - abandoned, abandoned, released)
                nursery.cancel_scope.cancel()

    def _log_stopped(self, in_flight: int, finished: int, abandoned: int,
                     released: int | None) -> None:
        """The worker's last line: what was in flight when it stopped."""
        with contextlib.suppress(Exception):  # logging never stops a worker
            log.info(
                "worker %s stopped: %d run(s) had step bodies in flight (%d bodies finished "
                "and committed while stopping, %d abandoned); %s run(s) released to other "
                "workers; %d steps executed in all",
                self.owner, in_flight, finished, abandoned,
                "no" if released is None else released, self.steps_executed,
                extra={"runs_in_flight": in_flight, "bodies_finished": finished,
                       "bodies_abandoned": abandoned, "runs_released": released,
                       "steps_executed": self.steps_executed, "action": "worker.stopped"})

    def stop(self) -> None:
        """Ask the worker to stop gracefully (safe to call from the trio thread)."""
        self._stopping = True
        self._wakeup.set()

    async def send(self, events: Event | Sequence[Event]) -> Sent:
        """Durably accept one event or a list and wake the worker; returns their ids, in
        order (a :class:`~durable_core.Sent`, as ``Client.send`` does)."""
        batch = [events] if isinstance(events, Event) else list(events)
        sent: Sent = await self._call(self.engine.send, batch, self.clock())
        self._wakeup.set()
        return sent

    async def cancel_run(self, run_id: str, *, reason: str = "cancelled by request") -> None:
        """Ask for a run to be cancelled (as ``Client.cancel_run`` does) and wake the
        worker; it ends the run with status ``cancelled``. Raises
        :class:`~durable_core.RunNotFoundError` for an unknown run."""
        await self._call(functools.partial(self.engine.cancel_run, reason=reason), run_id,
                         self.clock())
        self._wakeup.set()

    def wake(self) -> None:
        """Make an idle worker look at the store now (e.g. after another process wrote)."""
        self._wakeup.set()

    def _run_bodies_on(self, loop: Any) -> None:
        """Run asyncio step bodies on ``loop`` from now on (``AsyncioWorker``: the loop of
        the application hosting the worker); call it before :meth:`run`."""
        check_asyncio_loop("Worker", loop)
        self._asyncio = AsyncioBodies(loop)

    def _store_lost(self, exc: StoreError) -> bool:
        """If ``exc`` says the store is gone for good (its file deleted, replaced or
        truncated), stop gracefully and have :meth:`run` raise it; True if so."""
        if not isinstance(exc, StoreLostError):
            return False
        if self._lost is None:
            log.info("stopping: %s", exc)  # run() raises it once stopped
            self._lost = exc
        self.stop()
        return True

    # ------------------------------------------------------------------ loop

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._blocking:
            return await trio.to_thread.run_sync(
                functools.partial(fn, *args), limiter=self._limiter
            )
        return fn(*args)

    async def _main_loop(self) -> None:
        outage = _Outage("looking at the store")
        while not self._stopping:
            self._wakeup = trio.Event()
            now = self.clock()
            try:
                steps, more, wake = await self._call(self._tick, now)
            except StoreError as exc:
                if self._store_lost(exc):
                    break
                with trio.move_on_after(outage.failed(exc, floor=self.poll_interval)):
                    while not self._stopping:
                        await self._wakeup.wait()  # only stop() cuts the pause short
                        self._wakeup = trio.Event()
                continue
            outage.ok()
            for step in steps:
                self._spawn(step)
            if more or self._stopping:
                await trio.lowlevel.checkpoint()
                continue
            timeout = self.poll_interval
            if wake is not None:
                timeout = min(timeout, max(0.0, (wake - self.clock()) / 1000))
            with trio.move_on_after(timeout):
                await self._wakeup.wait()

    def _tick(self, now: int) -> tuple[list[ExecuteStep], bool, int | None]:
        """One poll of the engine's loop (in the engine's thread for blocking stores).

        Returns the steps to start, whether more work may be waiting at once (then the main
        loop polls again without waiting) and, if not, when the next timer falls due (read in
        the same thread call, to save a thread hop)."""
        if self._next_orphan_check is None or now >= self._next_orphan_check:
            self._next_orphan_check = now + _ORPHAN_CHECK_MS
            self._report_orphans()
        room = self.max_runs - self._active
        work = self.engine.poll(
            now, limit=self.batch_limit, claim_limit=min(room, self.batch_limit)
        )
        if work.claimed:
            self.commits += 1
        return work.steps, work.more, None if work.more else self.engine.next_deadline(now)

    def _report_orphans(self) -> None:
        """Log (once per new function id, checked at most once a minute with one bounded
        query) the queued runs of functions this worker's app does not have: it never
        claims them, and without a worker that has the function they wait for ever."""
        try:
            runs = self.store.list_runs(status="queued", limit=_ORPHAN_SAMPLE,
                                        exclude_function_ids=self.engine.function_ids or [""])
        except StoreError as exc:  # the poll that follows reports the store's trouble
            log.debug("could not look for runs of unknown functions: %s", exc)
            return
        found = frozenset(r.function_id for r in runs)
        new = found - self._orphans_reported
        # Report each function once; a full sample may miss some, so it adds up.
        self._orphans_reported = found if len(runs) < _ORPHAN_SAMPLE else (
            self._orphans_reported | found)
        if new:
            count = f"{len(runs)}+" if len(runs) >= _ORPHAN_SAMPLE else str(len(runs))
            log.warning(
                "%s queued run(s) of function(s) app %r does not have (%s): this worker never "
                "claims them; run a worker whose app has them, or cancel them (list them "
                "with: durable runs list --unclaimable --app <module:app> --status queued)",
                count, self.app.id, ", ".join(repr(f) for f in sorted(found)),
            )

    def _spawn(self, step: ExecuteStep) -> None:
        assert self._nursery is not None
        self._active += 1
        self._nursery.start_soon(self._drive, step)

    async def _drive(self, step: ExecuteStep) -> None:
        """Execute a chain of steps of one run: body, commit, next body..."""
        last_yield = time.perf_counter()
        try:
            while True:
                if not self.engine.is_current(step):
                    return  # the run was rebuilt or taken over since this step was dispatched
                value, error = await self._execute(step)
                if value is _LEASE_LOST:
                    # Held up past the lease: another worker may own the run by now. Let
                    # the run go (it is claimed again once the lease runs out).
                    self.bodies_skipped += 1
                    await self._call(self.engine.forget, [step.run_id])
                    return
                steps = await self._submit(step, value, error)
                if not steps or self._stopping:
                    return
                t = time.perf_counter()
                if t - last_yield > _YIELD_AFTER:
                    # Step bodies that never yield and inline commits would otherwise keep
                    # the main loop, timers and other runs waiting for the whole run.
                    await trio.lowlevel.checkpoint()
                    last_yield = t
                step = steps[0]
                for extra in steps[1:]:
                    self._spawn(extra)
        except trio.Cancelled:
            self.bodies_abandoned += 1  # the run goes to another worker once its lease ends
            raise
        finally:
            self._active -= 1
            if self._active < self.max_runs:
                self._wakeup.set()

    async def _execute(self, step: ExecuteStep) -> tuple[Any, BaseException | None]:
        """Run a step body, unless the run's lease may have run out (then the value is
        ``_LEASE_LOST`` and nothing ran)."""
        fn = step.fn
        is_async = _is_async(fn)
        if is_async and not self.engine.lease_held(step.run_id, self.clock()):
            return _LEASE_LOST, None
        token = current_attempt.set((step.run_id, step.attempt, step.step_id))
        span = self.engine.step_started(step) if _observe.tracing is not None else None
        error: BaseException | None = None
        try:
            if is_async:
                self.steps_executed += 1
                if self._trio_bodies:
                    value = await fn(*step.args, **step.kwargs)
                else:
                    value = await self._asyncio.run(
                        functools.partial(fn, *step.args, **step.kwargs))
            else:
                # Checked in the thread, right before the body: the call may have waited
                # for a free thread.
                value = await trio.to_thread.run_sync(
                    self._run_sync_body, step, self.clock(), time.monotonic()
                )
                if value is _LEASE_LOST:
                    return _LEASE_LOST, None
                if inspect.isawaitable(value):
                    is_async = True  # e.g. ``lambda: fetch(x)`` with an async ``fetch``
                    if self._trio_bodies:
                        value = await value
                    else:
                        value = await self._asyncio.run(functools.partial(_identity, value))
            return value, None
        except Exception as exc:
            if is_async:
                error = wrong_library(exc, self.app.async_bodies, self.app.id, step.step_id)
            else:
                error = exc
            return None, error
        finally:
            if span is not None:
                self.engine.step_ended(span, error)
            current_attempt.reset(token)

    def _run_sync_body(self, step: ExecuteStep, now: int, at: float) -> Any:
        # In a worker thread: the driver's clock may only be read on the trio thread, so
        # add the time spent waiting for this thread to the ``now`` read before.
        if not self.engine.lease_held(step.run_id, now + int((time.monotonic() - at) * 1000)):
            return _LEASE_LOST
        self.steps_executed += 1
        return step.fn(*step.args, **step.kwargs)

    async def _submit(
        self, step: ExecuteStep, value: Any, error: BaseException | None
    ) -> list[ExecuteStep]:
        if not self._blocking:
            return self._commit_inline(step, value, error)
        if self._active <= 1 and not self._queue:
            # A lone run: nothing to group with, and a thread hop (~100-200 µs here) would
            # cost as much as the commit itself. Commit on the trio thread, holding the
            # engine's limiter so no thread call can touch the engine meanwhile (taken
            # without a checkpoint: _drive yields to trio every 20 ms on its own).
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                # A thread call (the main loop's pass over the store) holds the engine:
                # waiting for it costs less than a trip through the committer's thread.
                await self._limiter.acquire()
            try:
                return self._commit_inline(step, value, error)
            finally:
                self._limiter.release()
        pending = _Pending(step, value, error, self._batch_done)
        self._queue.append(pending)
        self._queue_ready.set()
        await pending.done.wait()
        return pending.steps

    def _commit_inline(
        self, step: ExecuteStep, value: Any, error: BaseException | None
    ) -> list[ExecuteStep]:
        plan = self.engine.step_finished(step, value, error, self.clock())
        try:
            steps = self.engine.commit([plan])
        except StoreError as exc:
            if not self._store_lost(exc):
                log.warning("commit failed; the run will be retried from the store: %s", exc)
            return []
        self.commits += 1
        self._after_commit(plan)
        return steps

    def _after_commit(self, plan: Plan) -> None:
        b = plan.batch
        if b.runs or b.signals or b.events:
            self._wakeup.set()

    async def _committer(self) -> None:
        """Group commit: take every pending result, commit them in one transaction."""
        while True:
            await self._queue_ready.wait()
            self._queue_ready = trio.Event()
            batch, self._queue = self._queue, []
            done, self._batch_done = self._batch_done, trio.Event()
            if not batch:
                continue
            try:
                await self._call(self._commit_batch, batch, self.clock())
            except StoreError as exc:
                if not self._store_lost(exc):
                    log.warning("group commit failed; its runs will be retried from the "
                                "store: %s", exc)
            finally:
                done.set()

    def _commit_batch(self, batch: list[_Pending], now: int) -> None:
        engine = self.engine
        plans = [engine.step_finished(p.step, p.value, p.error, now) for p in batch]
        steps = engine.commit(plans)
        self.commits += 1
        for plan in plans:
            self._after_commit(plan)
        owner: dict[str, _Pending] = {}
        for p in batch:
            owner.setdefault(p.step.run_id, p)
        for s in steps:
            owner[s.run_id].steps.append(s)

    async def _renewer(self) -> None:
        """Renew the leases of runs with steps in flight, and act on cancels sent to them."""
        outage = _Outage("lease renewal")
        collected_at = self.commits
        while True:
            await trio.sleep(min(self.lease_ms / 3000, 1.0))
            if self.tune_gc and not self._active and self.commits != collected_at:
                # Idle after work: with the tuned thresholds, garbage in reference cycles
                # (failed runs' tracebacks, the driver's own) can wait a long time for a full
                # collection; idle is the cheap moment for one.
                collected_at = self.commits
                gc.collect()
            try:
                await self._call(self._renew, self.clock())
            except StoreError as exc:
                # Leases not renewed run out: bodies not yet started are then not run (see
                # _execute), and their runs go to whichever worker claims them next.
                if not self._store_lost(exc):
                    outage.failed(exc)
            else:
                outage.ok()

    def _renew(self, now: int) -> None:
        # Under the engine's limiter, like every engine call: no commit can end or drop a
        # run between reading the leased runs and acting on the store's answer.
        lost = self.engine.renew_leases(now)
        if lost:
            log.warning("lost the lease of %d run(s); another worker took them: %s", len(lost),
                        ", ".join(sorted(lost)[:10]), extra={"run_ids": sorted(lost)})
            self.leases_lost += len(lost)

    async def _listener(self) -> None:
        """Wake the main loop when a commit, in any process, creates work: the store's
        ``wait_for_notify(timeout_s) -> bool`` (PostgreSQL LISTEN/NOTIFY, SQLite's wake file;
        see docs/stores.md), heard through the process's one listener for the store (a
        :class:`RunHandle` waiting on the same store hears it too)."""
        hub = notifications(self.store)
        assert hub is not None
        # Listening starts before the main loop looks at the store again: work created
        # between its first poll and the start of listening is not left waiting for the
        # poll interval.
        seen = await trio.to_thread.run_sync(hub.subscribe)
        try:
            self._wakeup.set()
            while True:
                now = await trio.to_thread.run_sync(hub.wait, seen, _LISTEN_S,
                                                    abandon_on_cancel=True)
                if now != seen:
                    seen = now
                    self._wakeup.set()
        finally:
            hub.unsubscribe()

    async def _signal_watcher(self) -> None:
        first = None
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if first is None:
                    first = time.monotonic()
                    log.warning("received %s: stopping once the step bodies in flight "
                                "finish (send it again to stop now)", name)
                    self.stop()
                    continue
                if time.monotonic() - first < _SIGNAL_REPEAT_S:
                    # One stop sent twice (``timeout`` signals the process, then its group):
                    # not someone asking again.
                    continue
                # Asked again while stopping (a second Ctrl-C): stop now, as a crash would:
                # the store is consistent after any crash, and the runs still held are
                # claimed again when their leases run out. One line, not a traceback.
                _exit_now(f"durable worker: {name} again: stopping now, without waiting "
                          f"for {self._active} run(s) with step bodies in flight (other "
                          "workers take them when their leases run out)", 128 + signum)
