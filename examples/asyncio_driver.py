"""A reference driver: an asyncio event loop (docs/embedding.md).

Each run with a step ready gets one task that runs the run's steps in turn (async bodies in
the task, sync ones in a thread); the main loop keeps polling meanwhile. Engine calls stay on
the event loop's thread, so the engine needs no lock (with a blocking store such as SQLite
they block the loop for the length of a store call: a production driver would hand them to
one dedicated thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import Callable, Sequence

from durable_core import App, Event, Sent
from durable_core.protocol import (
    Engine,
    ExecuteStep,
    Work,
    run_step_body,
    run_step_body_async,
)
from durable_core.store import Store


def wall_clock_ms() -> int:
    """The system clock in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class AsyncioDriver:
    """Drive ``app`` against ``store`` on the running asyncio loop.

    ``max_runs`` bounds the runs with bodies in flight; ``clock``, ``lease_ms`` and
    ``poll_interval`` are as for the synchronous driver.
    """

    def __init__(self, app: App, store: Store, *, clock: Callable[[], int] = wall_clock_ms,
                 max_runs: int = 100, lease_ms: int = 30_000,
                 poll_interval: float = 1.0) -> None:
        self.clock = clock
        self.max_runs = max_runs
        self.poll_interval = poll_interval
        owner = f"asyncio-{os.getpid()}-{os.urandom(4).hex()}"
        self.engine = Engine(app, store, owner=owner, entropy=os.urandom, lease_ms=lease_ms)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._stopping = False

    async def send(self, events: Event | Sequence[Event]) -> Sent:
        """Durably accept events and wake the loop; returns their ids."""
        batch = [events] if isinstance(events, Event) else list(events)
        sent = self.engine.send(batch, self.clock())
        self._wakeup.set()
        return sent

    def stop(self) -> None:
        """Stop gracefully: bodies in flight finish, their results are committed."""
        self._stopping = True
        self._wakeup.set()

    def _poll(self) -> Work:
        room = 0 if self._stopping else self.max_runs - len(self._tasks)
        work = self.engine.poll(self.clock(), claim_limit=room)
        for step in work.steps:
            self._spawn(step)
        return work

    def _spawn(self, step: ExecuteStep) -> None:
        task = asyncio.create_task(self._drive(step))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wakeup.set()  # room for another run

    async def _drive(self, step: ExecuteStep) -> None:
        """One run's steps in turn: body, commit, next body..."""
        engine = self.engine
        while engine.is_current(step):  # not cancelled, rebuilt or taken over meanwhile
            if not engine.lease_held(step.run_id, self.clock()):
                engine.forget([step.run_id])  # held up past the lease: let the run go
                return
            if inspect.iscoroutinefunction(step.fn):
                value, error = await run_step_body_async(step)
            else:
                value, error = await asyncio.to_thread(run_step_body, step)
            # Durable before the next body starts; a store error ends this task (the run is
            # claimed again from the store once its lease runs out).
            steps = engine.finish_step(step, value, error, self.clock())
            if not steps or self._stopping:
                return
            step = steps[0]
            for other in steps[1:]:
                self._spawn(other)

    async def settle(self) -> int | None:
        """Do everything that is due now and wait for it; returns when something next
        falls due (ms). For batch jobs and tests on a virtual clock."""
        while True:
            work = self._poll()
            while self._tasks:
                await asyncio.gather(*self._tasks)
            if work.idle:
                return self.engine.next_deadline(self.clock())

    async def run(self) -> None:
        """Work until :meth:`stop` is called."""
        renewer = asyncio.create_task(self._renew())
        try:
            while not self._stopping:
                self._wakeup.clear()
                if self._poll().more:
                    await asyncio.sleep(0)
                    continue
                timeout = self.poll_interval
                deadline = self.engine.next_deadline(self.clock())
                if deadline is not None:
                    timeout = min(timeout, max(0.0, (deadline - self.clock()) / 1000))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
        finally:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            renewer.cancel()
            self.engine.release_all(self.clock())  # other processes may take our runs now

    async def _renew(self) -> None:
        """Keep the leases of runs with bodies in flight; act on cancels sent to them."""
        while True:
            await asyncio.sleep(min(1.0, self.engine.lease_ms / 3000))
            self.engine.renew_leases(self.clock())
