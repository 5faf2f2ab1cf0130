"""A plain synchronous client: send events and inspect runs from any code."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from durable_core.base._errors import ValidationError
from durable_core.base._events import Event, Sent
from durable_core.core._function import App
from durable_core.drivers._clock import wall_clock_ms
from durable_core.drivers._options import check_callable, check_count, check_store
from durable_core.engine._engine import Engine
from durable_core.engine._views import RunView, run_view
from durable_core.store import Store

__all__ = ["Client"]


def _function_ids(app: App) -> list[str]:
    # ``exclude_function_ids=[]`` means "exclude nothing": for an app with no function
    # (every run is unclaimable by it), exclude "" instead, which no function id can be.
    return list(app.functions) or [""]


class Client:
    """Send events and read runs, synchronously and thread-safely.

    Use it from sync code or from asyncio applications (call it in a thread executor if a
    blocking store would stall your loop). Events are accepted durably before ``send``
    returns; a worker (``durable worker`` or :class:`durable_core.Worker`) runs the functions.
    ``on_send`` is called after each send or cancel (a :class:`BackgroundWorker` wakes its
    worker with it).
    """

    def __init__(
        self, store: Store, *, clock: object = None, on_send: Callable[[], None] | None = None
    ) -> None:
        check_callable("Client", "clock", clock, optional=True)
        check_callable("Client", "on_send", on_send, optional=True)
        check_store("Client", store)
        self.store = store
        self._on_send = on_send
        self._clock = wall_clock_ms if clock is None else clock
        self._lock = threading.Lock()
        self._engine = Engine(App("client"), store, owner="client", entropy=os.urandom)

    def _now(self) -> int:
        return int(self._clock())  # type: ignore[operator]

    def send(self, events: Event | Sequence[Event]) -> Sent:
        """Durably accept one event or a list; returns their ids, in order (a
        :class:`~durable_core.Sent`: a list of str that also names the duplicates)."""
        batch = [events] if isinstance(events, Event) else list(events)
        with self._lock:
            sent = self._engine.send(batch, self._now())
        if self._on_send is not None:
            self._on_send()
        return sent

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
    ) -> list[RunView]:
        """Runs matching the filters, newest first.

        ``unclaimable_by=app`` keeps only the runs of functions ``app`` does not define
        (renamed, removed, or another app's): a worker of ``app`` never claims them. With
        ``status="queued"`` these are the runs waiting for a worker that ``app`` cannot
        supply; see :meth:`unclaimable_runs`."""
        check_count("Client.list_runs", "limit", limit, 0)
        if unclaimable_by is not None and not isinstance(unclaimable_by, App):
            raise ValidationError(
                "Client.list_runs(unclaimable_by=...) must be an App, got "
                f"{type(unclaimable_by).__name__}", field="unclaimable_by")
        exclude = None if unclaimable_by is None else _function_ids(unclaimable_by)
        return [
            run_view(r, self.store.load_journal(r.id))
            for r in self.store.list_runs(
                function_id=function_id, status=status, event_id=event_id, limit=limit,
                exclude_function_ids=exclude,
            )
        ]

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
