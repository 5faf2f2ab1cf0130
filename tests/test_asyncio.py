"""asyncio, first class: async step bodies written for asyncio run in every worker and in
TestEngine; trio bodies keep running on trio when the app says so; a wrong pick fails the
step at once with an error naming the setting; a worker lives inside an asyncio application
(a FastAPI lifespan); an async client serves asyncio and trio callers off the loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sniffio
import trio
from fastapi import FastAPI, Request

import stores
from durable_core import (
    App,
    AsyncClient,
    AsyncioWorker,
    BackgroundWorker,
    Client,
    Context,
    Event,
    FunctionConfigError,
    RunFailedError,
    ValidationError,
    Worker,
    on_event,
)
from durable_core.drivers._clock import wall_clock_ms
from durable_core.testing import TestEngine, crash_test
from stores import MemoryStore


def asyncio_app() -> tuple[App, dict[str, Any]]:
    """An app whose async bodies use asyncio: a queue filled by one step and drained by the
    next (so both run on one loop), asyncio.sleep, a retried attempt, and what each body saw."""
    app = App("aio")  # async_bodies="asyncio" is the default
    seen: dict[str, Any] = {"attempts": [], "libraries": set(), "threads": set()}
    box: dict[str, asyncio.Queue[int]] = {}

    async def produce(n: int) -> int:
        seen["libraries"].add(sniffio.current_async_library())
        seen["threads"].add(threading.current_thread().name)
        box["queue"] = queue = asyncio.Queue(maxsize=1)

        async def feed() -> None:  # a task of the same loop, outliving this step
            for i in range(n):
                await queue.put(i)  # blocks on the full queue until the next step reads

        box["feeder"] = asyncio.get_running_loop().create_task(feed())  # type: ignore[assignment]
        await asyncio.sleep(0.001)
        return n

    async def consume(n: int, ctx: Context) -> list[int]:
        seen["attempts"].append(ctx.attempt)
        if ctx.attempt == 0:
            raise RuntimeError("flaky once")
        out = [await asyncio.wait_for(box["queue"].get(), 30) for _ in range(n)]
        await asyncio.sleep(0.001)
        return out

    @app.function(id="pipeline", trigger=on_event("go"))
    async def pipeline(ctx: Context) -> list[int]:
        n = await ctx.step.run("produce", produce, 3)
        return await ctx.step.run("consume", consume, n, ctx)

    return app, seen


class JumpClock:
    """The wall clock, plus jumps: lets a worker reach a retry's backoff at once."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset

    def after_first_attempt(self, store: Any, run_id: str) -> None:
        """Wait (in a thread) until the failed first attempt's retry is scheduled, then jump
        past its backoff (the worker sees it at its next poll)."""

        def watch() -> None:
            while store.get_run(run_id).status != "sleeping":
                time.sleep(0.005)
            self.offset += 3_600_000

        threading.Thread(target=watch, daemon=True).start()


def check_asyncio_run(output: Any, seen: dict[str, Any]) -> None:
    assert output == [0, 1, 2]
    assert seen["libraries"] == {"asyncio"}  # sniffio (httpx, anyio) sees asyncio in the body
    assert seen["attempts"] == [0, 1]  # ctx.attempt is right inside an asyncio body


async def until(pred: Callable[[], bool], timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):  # real seconds: only stops a broken test from hanging
        while not pred():
            await trio.sleep(0.01)


def test_an_asyncio_body_runs_in_the_trio_worker() -> None:
    app, seen = asyncio_app()
    store = MemoryStore()
    client = Client(store, app=app)

    clock = JumpClock()

    async def main() -> Any:
        worker = Worker(app, store, poll_interval=0.01, clock=clock)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            handle = client.run("pipeline", {})
            worker.wake()
            clock.after_first_attempt(store, handle.id)
            output = await handle.result_async(timeout=60)
            worker.stop()
        return output

    check_asyncio_run(trio.run(main), seen)
    # The worker's own loop ran the bodies, on its own thread, and stopped with the worker.
    assert seen["threads"] == {"durable-asyncio-bodies"}
    assert "durable-asyncio-bodies" not in {t.name for t in threading.enumerate()}


def test_an_asyncio_body_runs_in_a_background_worker() -> None:
    app, seen = asyncio_app()
    store = stores.open("memory://")
    clock = JumpClock()
    with BackgroundWorker(app, store, poll_interval=0.01, clock=clock) as bg:
        handle = bg.client.run("pipeline", {})
        clock.after_first_attempt(store, handle.id)
        check_asyncio_run(handle.result(timeout=60), seen)
    assert "durable-asyncio-bodies" not in {t.name for t in threading.enumerate()}


def test_an_asyncio_body_runs_in_test_engine() -> None:
    app, seen = asyncio_app()
    engine = TestEngine(app)
    [run] = engine.send(Event("go")).runs
    assert run.status == "sleeping"  # the failed attempt waits for its retry
    engine.advance("1h")
    assert run.status == "completed"
    check_asyncio_run(run.output, seen)


def test_an_asyncio_body_runs_in_test_engine_called_from_async_code() -> None:
    """A TestEngine inside an asyncio (or trio) test: the bodies' loop runs on a thread."""
    app, seen = asyncio_app()

    async def main() -> Any:
        engine = TestEngine(app)
        [run] = engine.send(Event("go")).runs
        engine.advance("1h")
        return run.output

    check_asyncio_run(asyncio.run(main()), seen)
    app, seen = asyncio_app()
    check_asyncio_run(trio.run(main), seen)


def test_crash_test_runs_asyncio_bodies() -> None:
    app = App("aio-crash")

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @app.function(id="twice", trigger=on_event("go"))
    async def twice(ctx: Context) -> int:
        return await ctx.step.run("double", double, 21)

    report = crash_test(twice, Event("go"), max_examples=3, verbose=False)
    assert report.examples == 3


def trio_app() -> App:
    app = App("tr", async_bodies="trio")

    async def nap(x: int) -> str:
        await trio.sleep(3600)  # virtual under MockClock and TestEngine
        return f"{sniffio.current_async_library()}:{x}"

    @app.function(id="nap", trigger=on_event("go"))
    async def napper(ctx: Context) -> str:
        return await ctx.step.run("nap", nap, 7)

    return app


def test_a_trio_body_still_runs_on_trio_when_the_app_says_so() -> None:
    app = trio_app()
    engine = TestEngine(app)
    [run] = engine.send(Event("go")).runs
    assert run.output == "trio:7"

    store = MemoryStore()

    async def main() -> None:
        worker = Worker(app, store, poll_interval=30,
                        clock=lambda: 1_767_225_600_000 + int(trio.current_time() * 1000))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await worker.send(Event("go"))
            with trio.fail_after(10 * 3600):
                while [r.status for r in store.list_runs()] != ["completed"]:
                    await trio.sleep(60)
            worker.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    [record] = store.list_runs()
    assert record.output == '"trio:7"'
    assert "durable-asyncio-bodies" not in {t.name for t in threading.enumerate()}


# ----------------------------------------------------------------------- picking wrong


def wrong_pick_apps() -> list[tuple[App, str]]:
    """An app per library whose body is written for the other one, with the fix."""
    out = []
    on_asyncio = App("says-asyncio")

    async def uses_trio() -> None:
        await trio.sleep(0)

    @on_asyncio.function(id="f", trigger=on_event("go"), retries=3)
    async def f1(ctx: Context) -> None:
        await ctx.step.run("s", uses_trio)

    out.append((on_asyncio, "async_bodies='trio'"))
    on_trio = App("says-trio", async_bodies="trio")

    async def uses_asyncio() -> None:
        await asyncio.sleep(0)

    @on_trio.function(id="f", trigger=on_event("go"), retries=3)
    async def f2(ctx: Context) -> None:
        await ctx.step.run("s", uses_asyncio)

    out.append((on_trio, "async_bodies='asyncio'"))
    return out


@pytest.mark.parametrize("which", [0, 1], ids=["trio-body-on-asyncio", "asyncio-body-on-trio"])
def test_a_body_for_the_other_library_fails_at_once_naming_the_setting(which: int) -> None:
    app, fix = wrong_pick_apps()[which]
    engine = TestEngine(app)
    [run] = engine.send(Event("go")).runs
    assert run.status == "failed"  # no retries: retrying cannot help
    assert run.steps[0].attempts == 1
    assert run.error is not None and fix in run.error.message
    assert f"App({app.id!r}, {fix})" in run.error.message

    store = MemoryStore()
    client = Client(store, app=app)

    async def main() -> None:
        worker = Worker(app, store, poll_interval=0.01)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            handle = client.run("f", {})
            worker.wake()
            with pytest.raises(RunFailedError) as caught:
                await handle.result_async(timeout=60)
            worker.stop()
        assert caught.value.error_type == "StepError"  # the step's NonRetriableError
        assert "step 's': this async step body looks written for" in caught.value.error_message
        assert f"App({app.id!r}, {fix})" in caught.value.error_message

    trio.run(main)


def test_bad_settings_are_typed_errors_naming_the_field() -> None:
    with pytest.raises(FunctionConfigError) as caught:
        App("x", async_bodies="curio")
    assert caught.value.field == "app.async_bodies"
    assert "'asyncio' or 'trio'" in str(caught.value)
    with pytest.raises(ValidationError) as caught2:
        Worker(App("x"), MemoryStore(), asyncio_loop="main")
    assert caught2.value.field == "asyncio_loop"
    with pytest.raises(ValidationError) as caught3:
        AsyncioWorker(App("x"), MemoryStore(), separate_loop="yes")  # type: ignore[arg-type]
    assert caught3.value.field == "separate_loop"


# ----------------------------------------------------------------------- hung bodies


def test_an_asyncio_body_that_never_returns_is_handled_like_any_hung_body() -> None:
    """It holds its run (the lease is renewed), other runs go on, a cancel ends the run,
    and a result that comes after the cancel is discarded: as for sync and trio bodies."""
    app = App("hung")
    gate: dict[str, Any] = {}

    async def forever() -> str:
        gate["loop"] = asyncio.get_running_loop()
        gate["event"] = event = asyncio.Event()
        await event.wait()
        return "late"

    async def quick() -> str:
        await asyncio.sleep(0)
        return "quick"

    @app.function(id="stuck")
    async def stuck(ctx: Context) -> str:
        return await ctx.step.run("forever", forever)

    @app.function(id="fine")
    async def fine(ctx: Context) -> str:
        return await ctx.step.run("quick", quick)

    store = MemoryStore()
    client = Client(store, app=app)

    async def main() -> None:
        worker = Worker(app, store, poll_interval=0.01, lease_ms=6000)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            hung = client.run("stuck", {})
            worker.wake()
            await until(lambda: "event" in gate)
            assert await client.run("fine", {}).result_async(timeout=60) == "quick"
            renewed = store.get_run(hung.id).lease_expires
            await until(lambda: store.get_run(hung.id).lease_expires != renewed)
            assert hung.status == "running"  # still held: no other worker runs it again
            client.cancel_run(hung.id, reason="stuck")
            await until(lambda: hung.status == "cancelled")
            gate["loop"].call_soon_threadsafe(gate["event"].set)  # it ends, late
            await until(lambda: worker._active == 0)
            worker.stop()
        with pytest.raises(RunFailedError) as caught:
            hung.result(timeout=0)
        assert caught.value.status == "cancelled"
        assert [s.status for s in hung.view().steps] != ["completed"]  # the late result

    trio.run(main)


# ----------------------------------------------------------------------- async clients


class ThreadRecordingStore(MemoryStore):
    """Notes the thread of every read the client makes."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def get_run(self, run_id: str) -> Any:
        self.threads.add(threading.get_ident())
        return super().get_run(run_id)

    def list_runs(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.add(threading.get_ident())
        return super().list_runs(*args, **kwargs)


def hello_app() -> App:
    app = App("hello")

    @app.function(id="hello", trigger=on_event("hi"))
    async def hello(ctx: Context) -> str:
        name = ctx.event.data["name"]
        return await ctx.step.run("greet", lambda: f"hello {name}")

    return app


async def exercise(client: AsyncClient, store: ThreadRecordingStore) -> None:
    handle = await client.run("hello", {"name": "Ada"})
    assert await handle.result_async(timeout=60) == "hello Ada"
    [event_id] = await client.send(Event("hi", {"name": "Bo"}))
    [other] = await client.runs_of(event_id)
    assert await other.result_async(timeout=60) == "hello Bo"
    view = await client.get_run(handle.id)
    assert view.status == "completed" and [s.id for s in view.steps] == ["greet"]
    assert {handle.id, other.id} <= {v.id for v in await client.list_runs("hello")}
    sleeper = await client.run("hello", {"name": "Cy"}, id="cancel-me")
    try:
        await client.cancel_run(sleeper.id)
    except ValidationError as error:  # it ended first (or in the first pass): a clear error
        assert "already ended" in str(error)
        assert (await client.get_run(sleeper.id)).status in ("completed", "cancelled")
    assert (await client.handle(sleeper.id)).id == sleeper.id
    assert threading.get_ident() not in store.threads  # every read ran off the loop's thread


def test_the_async_client_from_asyncio_and_trio_with_a_background_worker() -> None:
    app = hello_app()
    store = ThreadRecordingStore()
    with BackgroundWorker(app, store, poll_interval=0.05) as bg:
        client = AsyncClient(store, app=app, on_send=bg.wake)
        asyncio.run(exercise(client, store))
        trio.run(exercise, client, store)


def test_asyncio_worker_in_an_asyncio_program() -> None:
    app = hello_app()
    store = ThreadRecordingStore()

    async def main() -> None:
        async with AsyncioWorker(app, store, poll_interval=0.05) as worker:
            await exercise(worker.client, store)
            assert worker.worker.steps_executed >= 2

    asyncio.run(main())


# ----------------------------------------------------------------------- FastAPI


def fastapi_service(store: Any) -> tuple[Any, dict[str, Any]]:
    """A FastAPI app with a worker in its lifespan and a route that starts a run and awaits
    its result; the step body uses a resource opened in the lifespan, on the app's loop."""
    app = App("orders")
    seen: dict[str, Any] = {}
    resources: dict[str, Any] = {}

    async def reserve(sku: str, qty: int) -> dict[str, Any]:
        seen["loop"] = asyncio.get_running_loop()
        async with resources["lock"]:  # an asyncio.Lock made in the lifespan, on its loop
            await asyncio.sleep(0.001)
            return {"sku": sku, "qty": qty, "reserved": True}

    @app.function(id="order")
    async def order(ctx: Context) -> dict[str, Any]:
        data = ctx.event.data
        return await ctx.step.run("reserve", reserve, data["sku"], data["qty"])

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        resources["lock"] = asyncio.Lock()
        seen["app_loop"] = asyncio.get_running_loop()
        async with AsyncioWorker(app, store, poll_interval=0.05) as worker:
            api.state.durable = worker.client
            yield
        seen["stopped"] = True

    api = FastAPI(lifespan=lifespan)

    @api.post("/orders")
    async def create_order(request: Request) -> dict[str, Any]:
        body = await request.json()
        client: AsyncClient = request.app.state.durable
        handle = await client.run("order", body)
        return {"run": handle.id, "result": await handle.result_async(timeout=60)}

    return api, seen


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_fastapi_lifespan_worker_serves_a_request_that_awaits_a_run() -> None:
    from fastapi.testclient import TestClient

    api, seen = fastapi_service(stores.open("memory://"))
    with TestClient(api) as http:  # runs the lifespan: the worker starts and stops with it
        response = http.post("/orders", json={"sku": "A-1", "qty": 2})
    assert response.status_code == 200
    assert response.json()["result"] == {"sku": "A-1", "qty": 2, "reserved": True}
    assert seen["loop"] is seen["app_loop"]  # the body ran on the application's loop
    assert seen["stopped"]


def test_fastapi_under_httpx_asgi_transport(tmp_path: Any) -> None:
    import httpx

    store = stores.open(f"sqlite:///{tmp_path / 'orders.db'}")
    api, seen = fastapi_service(store)

    async def main() -> Any:
        async with api.router.lifespan_context(api):  # ASGITransport runs no lifespan
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                responses = await asyncio.gather(*(
                    http.post("/orders", json={"sku": f"S-{i}", "qty": i}) for i in range(5)))
        return [r.json()["result"]["sku"] for r in responses]

    assert asyncio.run(main()) == [f"S-{i}" for i in range(5)]
    assert seen["loop"] is seen["app_loop"]
    assert len(store.list_runs(function_id="order", status="completed")) == 5
    store.close()


# ----------------------------------------------------------------------- durable worker

CLI_APP = '''
import asyncio
from durable_core import App, Context

app = App("cli-aio")

async def pause_and_echo(text: str) -> str:
    queue: asyncio.Queue[str] = asyncio.Queue()
    asyncio.get_running_loop().call_later(0.001, queue.put_nowait, text)
    return (await queue.get()).upper()

@app.function(id="echo")
async def echo(ctx: Context) -> str:
    return await ctx.step.run("echo", pause_and_echo, ctx.event.data["text"])
'''


def test_durable_worker_runs_asyncio_bodies(tmp_path: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "cli_aio_app.py").write_text(CLI_APP, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import cli_aio_app  # type: ignore[import-not-found]

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = stores.open(url)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "worker", "cli_aio_app:app", "--poll-interval", "0.05", "--store", url],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        handle = Client(store, app=cli_aio_app.app).run("echo", {"text": "hi"})
        assert handle.result(timeout=120) == "HI"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        store.close()
    assert proc.returncode == 0, out


def test_asyncio_worker_outside_asyncio_says_what_to_use() -> None:
    worker = AsyncioWorker(hello_app(), MemoryStore())
    with pytest.raises(RuntimeError, match=r"run Worker\(app, store\)\.run in a nursery"):
        trio.run(worker.start)
