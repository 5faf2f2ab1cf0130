"""For async applications: a client whose calls never block the event loop, and a worker
that lives inside an asyncio application (a FastAPI/Starlette lifespan, Django ASGI)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from durable_core.base._events import Event, Sent
from durable_core.core._function import App, Function
from durable_core.drivers._client import Client, RunHandle
from durable_core.drivers._options import check_seconds
from durable_core.engine._views import RunView
from durable_core.store import SkippedTrigger, Store, StoredEvent

if TYPE_CHECKING:
    from durable_core.drivers._background import BackgroundWorker
    from durable_core.drivers._worker import Worker

__all__ = ["AsyncClient", "AsyncioWorker"]

T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in a worker thread of the running event loop's library (trio or asyncio)."""
    import sniffio

    call = functools.partial(fn, *args, **kwargs)
    if sniffio.current_async_library() == "trio":
        import trio

        return await trio.to_thread.run_sync(call)
    import asyncio

    return await asyncio.to_thread(call)


class AsyncClient:
    """:class:`Client` for async code: the same methods, awaited; each store call runs in a
    worker thread, so the event loop (asyncio or trio) keeps serving meanwhile.

    ``await client.run(fn, data)`` returns a :class:`RunHandle`; wait for its output with
    ``await handle.result_async(timeout=...)``. The arguments are :class:`Client`'s (checked
    here, at once); ``sync`` is the underlying :class:`Client`, for code that is not async.
    """

    def __init__(
        self, store: Store, *, app: App | None = None, clock: object = None,
        on_send: Callable[[], None] | None = None,
    ) -> None:
        self.sync = Client(store, app=app, clock=clock, on_send=on_send)
        """The blocking :class:`Client` this one calls in threads."""

    @property
    def store(self) -> Store:
        """The store the client reads and writes."""
        return self.sync.store

    async def send(self, events: Event | Sequence[Event]) -> Sent:
        """:meth:`Client.send`: durably accept one event or a list; their ids, in order."""
        return await _in_thread(self.sync.send, events)

    async def run(self, function: Function[Any] | str, data: dict[str, Any] | None = None, *,
                  id: str | None = None) -> RunHandle:
        """:meth:`Client.run`: start one run of ``function`` and return its handle."""
        return await _in_thread(self.sync.run, function, data, id=id)

    async def handle(self, run_id: str) -> RunHandle:
        """:meth:`Client.handle`: a handle on an existing run."""
        return await _in_thread(self.sync.handle, run_id)

    async def runs_of(self, event_id: str) -> list[RunHandle]:
        """:meth:`Client.runs_of`: handles of the runs an event started, oldest first."""
        return await _in_thread(self.sync.runs_of, event_id)

    async def skipped_triggers(
        self,
        *,
        event_id: str | None = None,
        function_id: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[SkippedTrigger]:
        """:meth:`Client.skipped_triggers`: triggers folded into a run by ``idempotency``."""
        return await _in_thread(self.sync.skipped_triggers, event_id=event_id,
                                function_id=function_id, run_id=run_id, limit=limit)

    async def get_run(self, run_id: str) -> RunView:
        """:meth:`Client.get_run`: one run with its steps."""
        return await _in_thread(self.sync.get_run, run_id)

    async def list_runs(
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
        """:meth:`Client.list_runs`: runs matching the filters, newest first."""
        return await _in_thread(self.sync.list_runs, function_id, status, event_id,
                                limit=limit, unclaimable_by=unclaimable_by, since=since,
                                until=until, before=before)

    async def list_events(
        self,
        name: str | None = None,
        *,
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """:meth:`Client.list_events`: events the store received, newest first."""
        return await _in_thread(self.sync.list_events, name, since=since, until=until,
                                before=before, limit=limit)

    async def unclaimable_runs(self, app: App, *, limit: int = 100) -> list[RunView]:
        """:meth:`Client.unclaimable_runs`: queued runs no worker of ``app`` will claim."""
        return await _in_thread(self.sync.unclaimable_runs, app, limit=limit)

    async def cancel_run(self, run_id: str, *, reason: str = "cancelled by request") -> None:
        """:meth:`Client.cancel_run`: ask for a run to be cancelled."""
        await _in_thread(self.sync.cancel_run, run_id, reason=reason)

    async def cancel_runs(
        self, function: Function[Any] | str | None = None, *,
        since: str | dt.datetime | None = None, until: str | dt.datetime | None = None,
        if_: str | None = None, reason: str = "cancelled by request",
    ) -> list[str]:
        """:meth:`Client.cancel_runs`: cancel runs in bulk; returns their ids."""
        return await _in_thread(self.sync.cancel_runs, function, since=since, until=until,
                                if_=if_, reason=reason)

    async def rerun(self, run_id: str) -> RunHandle:
        """:meth:`Client.rerun`: run an ended run again, linked to it."""
        return await _in_thread(self.sync.rerun, run_id)


class AsyncioWorker:
    """A worker inside an asyncio application, started and stopped without blocking its loop.

    In a FastAPI or Starlette lifespan::

        @contextlib.asynccontextmanager
        async def lifespan(api):
            async with AsyncioWorker(app, store) as worker:
                api.state.durable = worker.client   # an AsyncClient
                yield

    The trio :class:`Worker` runs on a thread of its own (a :class:`BackgroundWorker`);
    :meth:`start` and :meth:`stop` wait for it in a thread, so the application's loop keeps
    serving. ``async def`` step bodies of an ``App(async_bodies="asyncio")`` app run as tasks
    on the application's own loop, like its request handlers: they can use the connection
    pools and clients it opened (a body that blocks the loop stalls the application, as a
    handler would). With ``separate_loop=True`` they run on an asyncio loop of the worker's
    own thread instead. Other keyword arguments go to :class:`Worker`, which checks them here.
    """

    def __init__(self, app: App, store: Store, *, separate_loop: bool = False,
                 **worker_options: Any) -> None:
        from durable_core.drivers._background import BackgroundWorker

        if not isinstance(separate_loop, bool):
            from durable_core.base._errors import ValidationError

            raise ValidationError(
                f"AsyncioWorker(separate_loop=...) must be True or False, got {separate_loop!r}",
                field="separate_loop")
        self._separate = separate_loop
        self._background: BackgroundWorker = BackgroundWorker(app, store, **worker_options)
        self.client = AsyncClient(store, app=app, on_send=self._background.wake)
        """An :class:`AsyncClient` on the worker's store that wakes the worker when it sends,
        starts or cancels a run."""

    @property
    def worker(self) -> Worker:
        """The trio :class:`Worker` (its counters: ``steps_executed``, ``commits``...)."""
        return self._background.worker

    async def start(self, timeout: float = 30.0) -> None:
        """Start the worker; returns once it runs. Call it from the application's loop."""
        import asyncio

        check_seconds("AsyncioWorker.start", "timeout", timeout)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "AsyncioWorker.start() must be awaited in an asyncio program; in a trio "
                "program, run Worker(app, store).run in a nursery instead") from None
        if not self._separate:
            self._background.worker._run_bodies_on(loop)
        await asyncio.to_thread(self._background.start, timeout)

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop gracefully (step bodies in flight finish and are committed)."""
        import asyncio

        check_seconds("AsyncioWorker.stop", "timeout", timeout)
        await asyncio.to_thread(self._background.stop, timeout)

    async def __aenter__(self) -> AsyncioWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
