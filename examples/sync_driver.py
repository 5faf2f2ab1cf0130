"""A reference driver: a plain synchronous loop on one thread (docs/embedding.md).

It runs the engine's one loop and nothing else: poll, run each step body, report its
result, and sleep until the next deadline. Step bodies run one at a time, in the order they
became ready. Use it as the skeleton of a driver for a job queue, a cron job that drains
what is due, or a serverless handler.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence

from durable_core import App, Event, Sent
from durable_core.protocol import Engine, ExecuteStep, run_step_body
from durable_core.store import Store


def wall_clock_ms() -> int:
    """The system clock in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class SyncDriver:
    """Drive ``app`` against ``store`` from the calling thread.

    ``clock`` returns the time in ms (pass a virtual one in tests); ``lease_ms`` is how
    long a run stays ours without renewal; ``poll_interval`` (seconds) bounds how long
    :meth:`run` sleeps before looking at the store again (other processes may write).
    """

    def __init__(self, app: App, store: Store, *, clock: Callable[[], int] = wall_clock_ms,
                 lease_ms: int = 30_000, poll_interval: float = 1.0) -> None:
        self.clock = clock
        self.poll_interval = poll_interval
        # The owner names this process in leases; entropy makes run and event ids unique.
        owner = f"sync-{os.getpid()}-{os.urandom(4).hex()}"
        self.engine = Engine(app, store, owner=owner, entropy=os.urandom, lease_ms=lease_ms)
        self.steps_run = 0
        self._renewed = -(2**62)

    def send(self, events: Event | Sequence[Event]) -> Sent:
        """Durably accept events (routed at the next poll); returns their ids."""
        batch = [events] if isinstance(events, Event) else list(events)
        return self.engine.send(batch, self.clock())

    def run_until_idle(self) -> int | None:
        """Do everything that is due now; returns when something next falls due (ms)."""
        engine = self.engine
        while True:
            work = engine.poll(self.clock())  # committed: its steps may run
            ready: deque[ExecuteStep] = deque(work.steps)
            while ready:
                step = ready.popleft()
                ready.extend(self._run(step))
            if work.idle:
                return engine.next_deadline(self.clock())

    def _run(self, step: ExecuteStep) -> list[ExecuteStep]:
        engine = self.engine
        if self.clock() - self._renewed >= 1_000:
            # Between steps, about every second: keep our leases, act on cancels.
            self._renewed = self.clock()
            engine.renew_leases(self._renewed)
        if not engine.is_current(step):
            return []  # the run was cancelled, rebuilt or taken over since dispatch
        if not engine.lease_held(step.run_id, self.clock()):
            # We were held up past our lease: another process may own the run and may have
            # run this very step. Let it go; it is claimed again once the lease runs out.
            engine.forget([step.run_id])
            return []
        value, error = run_step_body(step)  # ctx.attempt is right inside the body
        self.steps_run += 1
        # Persist before executing: the next steps are returned only once the result is
        # durable. A store error propagates: nothing in memory is then ahead of the store.
        return engine.finish_step(step, value, error, self.clock())

    def run(self, until: Callable[[], bool]) -> None:
        """Work until ``until()`` is true, sleeping between deadlines."""
        while not until():
            deadline = self.run_until_idle()
            if until():
                break
            pause = self.poll_interval
            if deadline is not None:
                pause = min(pause, max(0.0, (deadline - self.clock()) / 1000))
            time.sleep(pause)
        self.engine.release_all(self.clock())  # let other processes take our runs now
