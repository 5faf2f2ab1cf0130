"""Run a worker in a background thread of a sync or asyncio application."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import trio

from durable_core.core._function import App
from durable_core.drivers._client import Client
from durable_core.drivers._options import check_seconds
from durable_core.drivers._worker import Worker
from durable_core.store import Store

__all__ = ["BackgroundWorker"]


class BackgroundWorker:
    """A :class:`Worker` on its own thread, with its own trio loop.

    For applications that are not trio programs: a sync web app, a script (an asyncio
    service uses :class:`~durable_core.AsyncioWorker`, which runs one of these and starts
    and stops it without blocking the loop). ``client`` sends events and wakes the worker at
    once::

        with BackgroundWorker(app, store) as bg:
            bg.client.send(Event("order/created", {...}))

    Leaving the ``with`` block (or :meth:`stop`) stops the worker gracefully. Keyword
    arguments go to :class:`Worker`, which checks them at once (a bad option is a
    :class:`~durable_core.ValidationError` naming it, raised here, not in the thread).
    """

    def __init__(self, app: App, store: Store, **worker_options: Any) -> None:
        self.worker = Worker(app, store, **worker_options)
        self.client = Client(store, app=app, on_send=self.wake)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the worker thread; returns once the worker is running."""
        check_seconds("BackgroundWorker.start", "timeout", timeout)
        if self._thread is not None:
            raise RuntimeError("this BackgroundWorker was already started")
        self._thread = threading.Thread(target=self._main, name="durable-worker", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"the worker did not start within {timeout}s")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        async def run() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.worker.run)
                self._started.set()

        try:
            trio.run(run)
        except BaseException as exc:  # surfaced to start()/stop()
            self._error = exc
            self._started.set()

    def wake(self) -> None:
        """Make the worker look at the store now (thread-safe)."""
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self.worker.wake, trio_token=self._token)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop gracefully (in-flight steps finish and are committed) and join the thread."""
        check_seconds("BackgroundWorker.stop", "timeout", timeout)
        if self._thread is None:
            return
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self.worker.stop, trio_token=self._token)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the worker did not stop within {timeout}s")
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWorker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
