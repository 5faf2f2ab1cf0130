"""The reference drivers of docs/embedding.md run a real function against real stores.

Both drivers (examples/sync_driver.py, examples/asyncio_driver.py) use only public names:
``durable_core``, ``durable_core.protocol``, ``durable_core.store`` and ``stores``. They are
driven here on a virtual clock, through every duty the page lists: persisting before
executing, retries with ``ctx.attempt`` right in the body, a durable sleep, a wait that
never looks back, a rebuild after a crash, and cancels.
"""

from __future__ import annotations

import ast
import asyncio
import enum
import importlib.util
import pathlib
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import stores
from durable_core import App, Context, Event, on_event
from durable_core.store import Store

ROOT = pathlib.Path(__file__).resolve().parent.parent
DRIVERS = [ROOT / "examples" / "sync_driver.py", ROOT / "examples" / "asyncio_driver.py"]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _load(path: pathlib.Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sync_driver = _load(DRIVERS[0])
asyncio_driver = _load(DRIVERS[1])


# --------------------------------------------------------------------------- the drivers' shape


@pytest.mark.parametrize("path", DRIVERS, ids=lambda p: p.name)
def test_reference_driver_imports_no_private_module(path: pathlib.Path) -> None:
    imported = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a driver imports absolutely"
            imported += [f"{node.module}.{a.name}" for a in node.names]
    private = [name for name in imported if any(p.startswith("_") for p in name.split("."))
               and name != "__future__.annotations"]
    assert private == []
    assert any(name.startswith("durable_core.protocol.") for name in imported)


@pytest.mark.parametrize("path", DRIVERS, ids=lambda p: p.name)
def test_reference_driver_is_under_150_lines(path: pathlib.Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) < 150


# --------------------------------------------------------------------------- the function

app = App("embedding")
calls: list[tuple[str, int]] = []


def price(qty: int) -> int:
    return qty * 25


async def price_async(qty: int) -> int:
    await asyncio.sleep(0)
    return qty * 25


@app.function(id="order", trigger=on_event("order/created"), retries=2)
async def order(ctx: Context) -> dict[str, Any]:
    qty = ctx.event.data["qty"]
    body = price_async if ctx.event.data.get("async") else price
    total = await ctx.step.run("price", body, qty)
    await ctx.step.sleep("cool-off", "1m")

    def charge(amount: int) -> str:
        calls.append(("charge", ctx.attempt))
        if ctx.attempt == 0:
            raise RuntimeError("card declined")
        return f"charged {amount} on attempt {ctx.attempt}"

    receipt = await ctx.step.run("charge", charge, total)
    approval = await ctx.step.wait_for_event(
        "approval", event="order/approved", timeout="1h",
        if_="async.data.orderId == event.data.orderId",
    )
    return {"total": total, "receipt": receipt,
            "approved_by": None if approval is None else approval.data["by"]}


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest,
                  tmp_path: pathlib.Path) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []

    def make() -> Store:
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'e.db'}"
        if request.param == "memory" and opened:
            return opened[0]  # "reopening" a memory store: the same object
        opened.append(stores.open(url))
        return opened[-1]

    calls.clear()
    yield make
    for s in opened:
        s.close()


class Clock:
    """A virtual clock: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance_to(self, when: int | None) -> None:
        assert when is not None and when >= self.now
        self.now = when


def _the_run(store: Store) -> Any:
    [run] = store.list_runs(function_id="order")
    return run


# --------------------------------------------------------------------------- sync driver


def test_sync_driver_runs_steps_sleep_retry_and_wait(store_factory: Callable[[], Store]) -> None:
    store, clock = store_factory(), Clock()
    driver = sync_driver.SyncDriver(app, store, clock=clock)
    driver.send(Event("order/created", {"orderId": 7, "qty": 3}))
    # An approval sent before the run waits for it must not count: waits never look back.
    driver.send(Event("order/approved", {"orderId": 7, "by": "too-early"}))
    deadline = driver.run_until_idle()
    assert _the_run(store).status == "sleeping"
    assert deadline == T0 + 60_000

    clock.advance_to(deadline)
    retry_at = driver.run_until_idle()  # the charge fails on attempt 0: retried later
    assert calls == [("charge", 0)]
    assert _the_run(store).status == "sleeping" and retry_at is not None
    clock.advance_to(retry_at)
    timeout_at = driver.run_until_idle()
    assert calls == [("charge", 0), ("charge", 1)]
    assert _the_run(store).status == "waiting" and timeout_at == clock.now + 3_600_000

    driver.send(Event("order/approved", {"orderId": 8, "by": "someone-else"}))
    driver.run_until_idle()
    assert _the_run(store).status == "waiting"
    driver.send(Event("order/approved", {"orderId": 7, "by": "alice"}))
    driver.run_until_idle()
    run = _the_run(store)
    assert run.status == "completed"
    assert store.get_run(run.id).output is not None
    assert (driver.engine.store.get_run(run.id).output
            == '{"total":75,"receipt":"charged 75 on attempt 1","approved_by":"alice"}')


def test_sync_driver_wait_times_out(store_factory: Callable[[], Store]) -> None:
    store, clock = store_factory(), Clock()
    driver = sync_driver.SyncDriver(app, store, clock=clock)
    driver.send(Event("order/created", {"orderId": 1, "qty": 1}))
    while (deadline := driver.run_until_idle()) is not None:
        clock.advance_to(deadline)
    assert _the_run(store).output == (
        '{"total":25,"receipt":"charged 25 on attempt 1","approved_by":null}'
    )


def test_sync_driver_rebuilds_a_run_after_a_crash(store_factory: Callable[[], Store]) -> None:
    store, clock = store_factory(), Clock()
    crashing = sync_driver.SyncDriver(app, store, clock=clock, lease_ms=10_000)
    crashing.send(Event("order/created", {"orderId": 2, "qty": 2}))
    clock.advance_to(crashing.run_until_idle())

    class Crash(BaseException):
        pass

    def die(step: Any, **kwargs: Any) -> Any:
        raise Crash  # the process dies in the middle of a step body, holding the lease

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sync_driver, "run_step_body", die)
        with pytest.raises(Crash):
            crashing.run_until_idle()
    assert _the_run(store).lease_owner == crashing.engine.owner

    # A new process (a new driver on the reopened store) claims the run once the dead
    # one's lease has run out, rebuilds it from the journal and carries on.
    survivor = sync_driver.SyncDriver(app, store_factory(), clock=clock)
    survivor.run_until_idle()  # the dead driver's lease still holds the run: nothing to do
    assert _the_run(store).lease_owner == crashing.engine.owner and calls == []
    clock.advance_to(clock.now + 10_000)
    while (deadline := survivor.run_until_idle()) is not None:
        clock.advance_to(deadline)
    assert calls == [("charge", 0), ("charge", 1)]
    assert '"receipt":"charged 50 on attempt 1"' in (_the_run(survivor.engine.store).output)


def test_sync_driver_run_loop_on_the_wall_clock(store_factory: Callable[[], Store]) -> None:
    quick = App("quick")

    @quick.function(id="add", trigger=on_event("add"))
    async def add(ctx: Context) -> int:
        a = await ctx.step.run("a", lambda: ctx.event.data["x"] + 1)
        return int(await ctx.step.run("b", lambda: a * 2))

    store = store_factory()
    driver = sync_driver.SyncDriver(quick, store, poll_interval=0.01)
    driver.send(Event("add", {"x": 4}))
    driver.run(until=lambda: [r.status for r in store.list_runs()] == ["completed"])
    assert store.list_runs()[0].output == "10"
    assert store.list_runs()[0].lease_owner is None and driver.steps_run == 2


# --------------------------------------------------------------------------- asyncio driver


def test_asyncio_driver_runs_steps_sleep_retry_and_wait(
    store_factory: Callable[[], Store],
) -> None:
    store, clock = store_factory(), Clock()

    async def main() -> None:
        driver = asyncio_driver.AsyncioDriver(app, store, clock=clock)
        await driver.send(Event("order/created", {"orderId": 7, "qty": 3, "async": True}))
        await driver.send(Event("order/approved", {"orderId": 7, "by": "too-early"}))
        clock.advance_to(await driver.settle())  # the cool-off sleep
        clock.advance_to(await driver.settle())  # the charge's retry backoff
        assert await driver.settle() == clock.now + 3_600_000  # the wait's timeout
        assert calls == [("charge", 0), ("charge", 1)]
        assert _the_run(store).status == "waiting"
        await driver.send(Event("order/approved", {"orderId": 7, "by": "bob"}))
        await driver.settle()

    asyncio.run(main())
    assert _the_run(store).status == "completed"
    assert _the_run(store).output == (
        '{"total":75,"receipt":"charged 75 on attempt 1","approved_by":"bob"}'
    )


def test_asyncio_driver_runs_many_runs_concurrently(store_factory: Callable[[], Store]) -> None:
    store, clock = store_factory(), Clock()

    async def main() -> None:
        driver = asyncio_driver.AsyncioDriver(app, store, clock=clock, max_runs=3)
        await driver.send([Event("order/created", {"orderId": i, "qty": i, "async": i % 2})
                           for i in range(5)])
        while (deadline := await driver.settle()) is not None:
            clock.advance_to(deadline)

    asyncio.run(main())
    runs = store.list_runs(function_id="order")
    assert sorted(r.status for r in runs) == ["completed"] * 5
    assert sorted(r.output or "" for r in runs) == sorted(
        f'{{"total":{i * 25},"receipt":"charged {i * 25} on attempt 1","approved_by":null}}'
        for i in range(5)
    )


def test_asyncio_driver_run_loop_and_graceful_stop(store_factory: Callable[[], Store]) -> None:
    quick = App("quick")

    @quick.function(id="add", trigger=on_event("add"))
    async def add(ctx: Context) -> int:
        a = await ctx.step.run("a", lambda: ctx.event.data["x"] + 1)
        b = await ctx.step.run("b", price_async, a)
        return int(b)

    store = store_factory()

    async def main() -> None:
        driver = asyncio_driver.AsyncioDriver(quick, store, poll_interval=0.01)
        task = asyncio.create_task(driver.run())
        await driver.send(Event("add", {"x": 1}))
        while [r.status for r in store.list_runs()] != ["completed"]:
            await asyncio.sleep(0.005)
        driver.stop()
        await task

    asyncio.run(asyncio.wait_for(main(), 30))
    assert store.list_runs()[0].output == "50"


# --------------------------------------------------------------------------- the protocol module


def test_protocol_exports_resolve_and_are_documented() -> None:
    from durable_core import protocol

    for name in protocol.__all__:
        obj = getattr(protocol, name)
        assert not name.startswith("_")
        if isinstance(obj, type) or callable(obj):
            assert (getattr(obj, "__doc__", None) or "").strip(), name
    text = protocol.__doc__ or ""
    assert "Stability" in text


def _fields(cls: type) -> tuple[str, ...]:
    import attrs

    if attrs.has(cls):
        return tuple(a.name for a in attrs.fields(cls))
    return tuple(cls._fields)  # type: ignore[attr-defined]


def test_protocol_documents_every_field_of_every_input_command_and_record() -> None:
    # Each class is listed in the module docstring with its fields, in order: a field added,
    # renamed or removed must be documented there too.
    import re

    from durable_core import protocol

    documented = dict(re.findall(r":class:`(\w+)` ``\(([^)]*)\)``", protocol.__doc__ or ""))
    classes = [getattr(protocol, n) for n in protocol.__all__
               if isinstance(getattr(protocol, n), type)
               and not issubclass(getattr(protocol, n), enum.Enum)
               and n not in ("Engine", "Plan", "Work", "RunMachine")]
    assert len(classes) >= 20
    for cls in classes:
        assert cls.__name__ in documented, f"{cls.__name__} is not documented"
        assert tuple(f.strip() for f in documented[cls.__name__].split(",")) == _fields(cls)


def _attempt_app() -> tuple[App, Any]:
    attempts = App("attempts")

    @attempts.function(id="flaky", trigger=on_event("go"), retries=2)
    async def flaky(ctx: Context) -> list[int]:
        def sync_body() -> int:
            if ctx.attempt == 0:
                raise RuntimeError("first attempt fails")
            return ctx.attempt

        async def async_body() -> int:
            await asyncio.sleep(0)
            return ctx.attempt

        return [await ctx.step.run("sync", sync_body), await ctx.step.run("async", async_body)]

    return attempts, flaky


def test_run_step_body_sets_ctx_attempt_for_sync_and_async_bodies() -> None:
    from durable_core.protocol import (
        CompleteRun,
        ExecuteStep,
        RunMachine,
        RunStarted,
        StepFailed,
        TimerFired,
        run_step_body,
        run_step_body_async,
    )

    _, flaky = _attempt_app()
    m = RunMachine(flaky, "r1", [Event("go", {}, id="e1", ts=T0)], T0)
    [step] = [c for c in m.handle(RunStarted(T0)) if isinstance(c, ExecuteStep)]
    value, error = run_step_body(step)
    assert value is None and isinstance(error, RuntimeError) and step.attempt == 0
    m.handle(StepFailed(step.position, step.attempt, error, T0))
    deadline = m.next_deadline()
    assert deadline is not None
    [step] = [c for c in m.handle(TimerFired(deadline)) if isinstance(c, ExecuteStep)]
    assert run_step_body(step) == (1, None)  # ctx.attempt read 1 inside the body
    [step] = [c for c in m.step_completed(step.position, step.attempt, 1, deadline)
              if isinstance(c, ExecuteStep)]
    assert step.step_id == "async" and step.attempt == 0
    assert run_step_body(step) == (0, None)  # an async body, on a fresh asyncio loop
    assert asyncio.run(run_step_body_async(step)) == (0, None)
    done = m.step_completed(step.position, step.attempt, 0, deadline)
    assert [c.output for c in done if isinstance(c, CompleteRun)] == ["[1,0]"]


def test_run_step_body_rejects_a_sync_body_that_returns_an_awaitable() -> None:
    import warnings

    from durable_core import ValidationError
    from durable_core.protocol import ExecuteStep, run_step_body, run_step_body_async

    step = ExecuteStep("r", 0, "s", 0, lambda: price_async(2), (), {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed, never left un-awaited
        value, error = run_step_body(step)
    assert value is None and isinstance(error, ValidationError)
    assert "pass the async function itself" in str(error)
    assert asyncio.run(run_step_body_async(step)) == (50, None)  # awaited in an event loop


def test_the_loop_exists_once() -> None:
    # Cron, routing, claims, feeding and the wake-up computation are the engine's: every
    # driver (Worker, TestEngine, Simulation, the reference drivers) calls Engine.poll and
    # Engine.next_deadline instead of a copy of its own.
    loop_calls = {"claim_runs", "route", "schedule_cron", "feed_claims", "next_wake_at",
                  "next_cron_tick"}
    src = ROOT / "src" / "durable_core"
    found = []
    for path in [*src.rglob("*.py"), *DRIVERS]:
        if path in (src / "engine" / "_engine.py", src / "engine" / "_flow_concurrency.py"):
            continue  # (the second: the engine's claims of functions with concurrency)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in loop_calls):
                found.append(f"{path.name}:{node.lineno} {node.func.attr}")
    assert found == []
