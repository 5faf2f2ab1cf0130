"""Run handles: start a run or find the runs an event started, and wait for the result, on
every store, from sync code, trio and asyncio."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import threading
from collections.abc import Callable, Iterator

import attrs
import pytest
import trio

import stores
from durable_core import (
    App,
    BackgroundWorker,
    Client,
    Context,
    Event,
    NonRetriableError,
    RunFailedError,
    RunHandle,
    RunNotFoundError,
    RunTimeoutError,
    Store,
    ValidationError,
    on_event,
)


@attrs.frozen
class Receipt:
    order: int
    at: dt.datetime


app = App("results")


@app.function(id="receipt", trigger=on_event("order/paid"))
async def receipt(ctx: Context) -> Receipt:
    order = ctx.event.data["order"]
    at = await ctx.step.run("stamp", lambda: "2026-01-02T03:04:05+00:00")
    return Receipt(order, dt.datetime.fromisoformat(at))


@app.function(id="broken", trigger=on_event("order/broken"), retries=0)
async def broken(ctx: Context) -> None:
    def fail() -> None:
        raise NonRetriableError("the card was declined")

    await ctx.step.run("charge", fail)


@app.function(id="nap", trigger=on_event("order/nap"))
async def nap(ctx: Context) -> str:
    await ctx.step.sleep("nap", "1d")
    return "rested"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Store]:
    if request.param == "memory":
        s: Store = stores.MemoryStore()
    elif request.param == "sqlite":
        s = stores.open(f"sqlite:///{tmp_path / 'results.db'}")
    else:
        url = request.getfixturevalue("pg_url")
        schema = request.getfixturevalue("pg_schema")
        s = stores.open(f"{url}?schema={schema}")
    yield s
    s.close()


def test_run_returns_a_handle_whose_result_is_typed(store: Store) -> None:
    with BackgroundWorker(app, store, poll_interval=0.05) as bg:
        handle = bg.client.run(receipt, {"order": 7})
        assert isinstance(handle, RunHandle)
        got = handle.result(timeout=60)
        # The output comes back as the function's annotated return type.
        assert got == Receipt(7, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
        assert handle.status == "completed"
        assert [s.id for s in handle.view().steps] == ["stamp"]
        # Started as invoke starts a child: the event is the run's own.
        assert handle.view().event_ids and bg.client.list_runs(function_id="receipt")


def test_a_failed_run_raises_its_error_typed(store: Store) -> None:
    with BackgroundWorker(app, store, poll_interval=0.05) as bg:
        handle = bg.client.run("broken")
        with pytest.raises(RunFailedError) as info:
            handle.result(timeout=60)
    err = info.value
    assert (err.run_id, err.function_id, err.status) == (handle.id, "broken", "failed")
    # The run failed because its step did: the run's error is the StepError, which names
    # the step and the step's own error.
    assert err.error_type == "StepError"
    assert err.error_message == (
        "step 'charge' failed: NonRetriableError: the card was declined")


def test_send_with_an_app_routes_at_once(store: Store) -> None:
    """The runs an event starts exist when send returns (no worker has run yet)."""
    client = Client(store, app=app)
    [event_id] = client.send(Event("order/paid", {"order": 1}))
    [handle] = client.runs_of(event_id)
    assert handle.status == "queued"
    assert [r.id for r in client.list_runs(event_id=event_id)] == [handle.id]
    # Then a worker runs it, and the handle sees the result.
    with BackgroundWorker(app, store, poll_interval=0.05):
        assert handle.result(timeout=60) == {"order": 1, "at": "2026-01-02T03:04:05+00:00"}


def test_timeout_and_cancel(store: Store) -> None:
    with BackgroundWorker(app, store, poll_interval=0.05) as bg:
        handle = bg.client.run(nap)
        with pytest.raises(RunTimeoutError) as info:
            handle.result(timeout=0)
        assert info.value.run_id == handle.id and info.value.status in {"queued", "running",
                                                                         "sleeping"}
        bg.client.cancel_run(handle.id, reason="no more naps")
        with pytest.raises(RunFailedError) as failed:
            handle.result(timeout=60)
    assert failed.value.status == "cancelled"
    assert "no more naps" in failed.value.error_message


def test_idempotent_start() -> None:
    client = Client(stores.MemoryStore(), app=app)
    first = client.run(receipt, {"order": 1}, id="order-1")
    again = client.run(receipt, {"order": 1}, id="order-1")
    assert first.id == again.id
    assert len(client.list_runs(function_id="receipt")) == 1
    other = client.run(receipt, {"order": 1}, id="order-2")
    assert other.id != first.id


@pytest.mark.parametrize(("call", "field"), [
    (lambda c: c.run("nope"), "function"),
    (lambda c: c.run("receipt", {"order": 1}, id=""), "id"),
    (lambda c: c.run("receipt", [1, 2]), "event.data"),
    (lambda c: c.handle("r_missing"), None),
    (lambda c: c.run("receipt").result(timeout=-1), "timeout"),
])
def test_bad_input_is_a_typed_error(call: Callable[[Client], object], field: str | None) -> None:
    client = Client(stores.MemoryStore(), app=app)
    if field is None:
        with pytest.raises(RunNotFoundError):
            call(client)
        return
    with pytest.raises(ValidationError) as info:
        call(client)
    assert info.value.field == field


def test_result_async_from_trio_and_asyncio() -> None:
    store = stores.MemoryStore()
    with BackgroundWorker(app, store, poll_interval=0.05) as bg:
        handle = bg.client.run(receipt, {"order": 3})

        async def from_trio() -> object:
            return await handle.result_async(timeout=60)

        async def from_asyncio() -> object:
            return await handle.result_async(timeout=60)

        assert trio.run(from_trio) == asyncio.run(from_asyncio()) == Receipt(
            3, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))


@pytest.mark.parametrize("how", ["sync", "asyncio", "trio"])
def test_a_wait_reads_the_run_only_when_notified(
    store: Store, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No busy polling: a waiting handle reads its run once at the start and then only after
    a notification. While the store's listener goes through ten of its own empty timeouts
    (the wait lasts a while, measured by the listener, not by a sleep here), the run is not
    read again; a commit that ends it wakes the waiter, which reads it once more."""
    from durable_core.drivers import _client, _notify

    monkeypatch.setattr(_client, "_RECHECK_S", 3600.0)  # no fallback look during the test
    monkeypatch.setattr(_notify, "_LISTEN_S", 0.05)  # the listener's empty timeouts
    client = Client(store, app=app)
    handle = client.run(receipt, {"order": 5})  # queued: no worker yet
    reads: list[str] = []
    real_get_run = store.get_run

    def counting_get_run(run_id: str) -> object:
        reads.append(run_id)
        return real_get_run(run_id)

    monkeypatch.setattr(store, "get_run", counting_get_run)
    hub = _notify.notifications(store)
    assert hub is not None
    got: list[object] = []

    def wait() -> None:
        if how == "sync":
            got.append(handle.result(timeout=120))
        elif how == "asyncio":
            got.append(asyncio.run(handle.result_async(timeout=120)))
        else:
            got.append(trio.run(lambda: handle.result_async(timeout=120)))

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        # The waiter has looked once and is waiting for a notification.
        assert hub.wait_until(lambda: len(reads) == 1 and hub._users >= 1, 60)
        calls = hub.calls
        assert hub.wait_until(lambda: hub.calls >= calls + 10, 60)
        assert reads == [handle.id]  # not read again while nothing happened
        # A worker runs it: the commit that ends it notifies, and the waiter reads it.
        with BackgroundWorker(app, store, poll_interval=0.05):
            waiter.join(120)
    finally:
        waiter.join(120)
    assert got == [Receipt(5, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))]
    # Once at the start, then at most once per wake-up the worker's commits caused (run
    # end; the worker's own claims and step memos notify nobody).
    assert 2 <= len(reads) <= 3


def test_a_store_without_notifications_is_polled_with_a_bounded_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store with no ``wait_for_notify`` still gives results: the handle polls it."""
    store = stores.MemoryStore()
    monkeypatch.setattr(store, "wait_for_notify", None)
    with BackgroundWorker(app, store, poll_interval=0.05) as bg:
        assert bg.client.run(receipt, {"order": 2}).result(timeout=60) == Receipt(
            2, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_result_async_leaves_the_event_loop_free_while_it_waits(library: str) -> None:
    """While ``result_async`` waits for a notification, the caller's loop runs other tasks:
    here the task that sees the waiter parked (its callback registered, no thread held)
    and then starts the worker that ends the run."""
    from durable_core.drivers import _notify

    store = stores.MemoryStore()
    client = Client(store, app=app)
    handle = client.run(receipt, {"order": 9})
    hub = _notify.notifications(store)
    assert hub is not None

    def parked() -> bool:
        return len(hub._callbacks) == 1

    async def on_asyncio() -> object:
        waiter = asyncio.create_task(handle.result_async(timeout=120))
        while not parked():
            await asyncio.sleep(0.01)
        assert not waiter.done()
        with BackgroundWorker(app, store, poll_interval=0.05):
            return await waiter

    async def on_trio() -> object:
        got: list[object] = []

        async def wait() -> None:
            got.append(await handle.result_async(timeout=120))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            while not parked():
                await trio.sleep(0.01)
            assert not got
            bg = BackgroundWorker(app, store, poll_interval=0.05)
            await trio.to_thread.run_sync(bg.start)
            try:
                with trio.fail_after(120):
                    while not got:
                        await trio.sleep(0.01)
            finally:
                await trio.to_thread.run_sync(bg.stop)
        return got[0]

    result = asyncio.run(on_asyncio()) if library == "asyncio" else trio.run(on_trio)
    assert result == Receipt(9, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert hub._callbacks == set()


def test_a_store_is_not_kept_alive_by_its_notifications() -> None:
    """The process's one listener per store refers to the store weakly: a store nobody
    uses any more is collected (with its listener) after its waiters are done."""
    import gc
    import weakref

    from durable_core.drivers import _notify

    store = stores.MemoryStore()
    client = Client(store, app=app)
    handle = client.run(receipt, {"order": 1})
    with BackgroundWorker(app, store, poll_interval=0.05):
        handle.result(timeout=60)
    hub = _notify.notifications(store)
    assert hub is not None
    # Nobody waits any more: the listener stops after its current call.
    assert hub.wait_until(lambda: hub._thread is None, 60)
    gone = weakref.ref(store)
    del store, client, handle
    gc.collect()
    assert gone() is None
