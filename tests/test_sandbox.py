"""The determinism sandbox and the usage errors, in every driver.

Each forbidden call, made by orchestration code, fails the run with the same
``DeterminismError`` (the same message but for the run id) in the trio ``Worker`` (memory
store, MockClock), ``TestEngine`` and the simulator; the allowed things (pure computation,
``ctx.now()``/``random()``/``uuid4()``, logging, step bodies doing every forbidden thing,
other threads) are untouched. A step created and never awaited, and a step called inside a
step body, are ``UsageError``s, the same in ``TestEngine`` and the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import random
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from uuid import uuid4  # a name bound before the sandbox was installed: re-bound to a guard

import pytest
import trio
import trio.testing

from durable_core import (
    App,
    Context,
    DeterminismError,
    Event,
    StepError,
    UsageError,
    ValidationError,
    Worker,
    on_event,
)
from durable_core.store import RunRecord
from durable_core.testing import TestEngine, crash_test
from durable_core.testing._simulation import Simulation
from stores import MemoryStore

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TERMINAL = ("completed", "failed", "cancelled")


def _trio_event_wait() -> Awaitable[Any]:
    return trio.Event().wait()


# (case id, what the orchestration code does (a sync call, or an awaitable to await), the
# call as the message names it)
FORBIDDEN: list[tuple[str, Callable[[], Any], str]] = [
    ("time.time", lambda: time.time(), "time.time()"),
    ("time.time_ns", lambda: time.time_ns(), "time.time_ns()"),
    ("time.monotonic", lambda: time.monotonic(), "time.monotonic()"),
    ("time.monotonic_ns", lambda: time.monotonic_ns(), "time.monotonic_ns()"),
    ("time.perf_counter", lambda: time.perf_counter(), "time.perf_counter()"),
    ("time.localtime", lambda: time.localtime(), "time.localtime()"),
    ("datetime.now", lambda: datetime.datetime.now(), "datetime.datetime.now()"),
    ("datetime.utcnow", lambda: datetime.datetime.utcnow(), "datetime.datetime.utcnow()"),
    ("datetime.today", lambda: datetime.datetime.today(), "datetime.datetime.today()"),
    ("date.today", lambda: datetime.date.today(), "datetime.date.today()"),
    ("random.random", lambda: random.random(), "random.random()"),
    ("random.choice", lambda: random.choice([1, 2]), "random.choice()"),
    ("random.randint", lambda: random.randint(1, 6), "random.randint()"),
    ("random.Random", lambda: random.Random(), "random.Random() without a seed"),
    ("os.urandom", lambda: os.urandom(8), "os.urandom()"),
    ("uuid.uuid4", lambda: uuid.uuid4(), "uuid.uuid4()"),
    ("uuid.uuid1", lambda: uuid.uuid1(), "uuid.uuid1()"),
    ("from-uuid-import-uuid4", lambda: uuid4(), "uuid.uuid4()"),
    ("secrets.token_hex", lambda: secrets.token_hex(8), "secrets.token_hex()"),
    ("secrets.choice", lambda: secrets.choice("ab"), "secrets.choice()"),
    ("time.sleep", lambda: time.sleep(0), "time.sleep()"),
    ("asyncio.sleep", lambda: asyncio.sleep(0), "asyncio.sleep()"),
    ("asyncio.get_running_loop", lambda: asyncio.get_running_loop(),
     "asyncio.get_running_loop()"),
    ("asyncio.new_event_loop", lambda: asyncio.new_event_loop(), "asyncio.new_event_loop()"),
    ("trio.sleep", lambda: trio.sleep(1), "trio.sleep()"),
    ("trio.current_time", lambda: trio.current_time(), "trio.current_time()"),
    ("trio.Event.wait", _trio_event_wait, "trio.Event.wait()"),
    ("thread", lambda: threading.Thread(target=int).start(), "threading.Thread.start()"),
    ("open", lambda: open(__file__).close(), "open("),
    ("socket", lambda: socket.getaddrinfo("localhost", 80), "socket.getaddrinfo('localhost', 80)"),
    ("subprocess", lambda: subprocess.run(["true"], check=False), "subprocess.Popen("),
    ("os.system", lambda: os.system("true"), "os.system('true')"),
    ("os.listdir", lambda: os.listdir("."), "os.listdir('.')"),
]
KINDS = {
    "time.sleep": "blocks or waits", "asyncio": "blocks or waits", "trio": "blocks or waits",
    "thread": "starts a thread", "open": "does I/O", "socket": "does I/O",
    "subprocess": "does I/O", "os.system": "does I/O", "os.listdir": "does I/O",
    "random": "draws random values", "os.urandom": "draws random values",
    "uuid": "draws random values", "from-uuid": "draws random values",
    "secrets": "draws random values",
}


def _kind_of(case: str) -> str:
    for prefix, kind in KINDS.items():
        if case.startswith(prefix):
            return kind
    return "reads the wall clock"


def _forbidden_app() -> App:
    app = App("sandboxed")
    for case, call, _ in FORBIDDEN:

        def make(call: Callable[[], Any]) -> Callable[[Context], Awaitable[str]]:
            async def flow(ctx: Context) -> str:
                await ctx.step.run("before", int)
                value = call()
                if hasattr(value, "__await__"):
                    await value
                elif asyncio.iscoroutine(value):
                    value.close()
                await ctx.step.run("after", int)
                return "not caught"

            return flow

        app.function(id=case, trigger=on_event(f"go/{case}"))(make(call))
    return app


# --------------------------------------------------------------------------- the drivers


def mock_ms() -> int:
    return BASE_MS + int(trio.current_time() * 1000)


def with_worker(app: App, events: Sequence[Event], expect_runs: int) -> list[RunRecord]:
    """Run ``events`` through a trio Worker (memory store, MockClock) until every run
    ended; returns the runs."""
    store = MemoryStore()

    def done() -> bool:
        runs = store.list_runs(limit=10_000)
        return len(runs) >= expect_runs and all(r.status in TERMINAL for r in runs)

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send(list(events))
            with trio.fail_after(30 * 86_400):
                while not done():
                    await trio.sleep(0.5)
            w.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return store.list_runs(limit=10_000)


def with_test_engine(app: App, events: Sequence[Event], expect_runs: int) -> list[RunRecord]:
    eng = TestEngine(app)
    eng.send(list(events))
    eng.advance("30d")
    runs = eng.store.list_runs(limit=10_000)
    assert len(runs) >= expect_runs
    return runs


def with_simulator(app: App, events: Sequence[Event], expect_runs: int) -> list[RunRecord]:
    sim = Simulation(app)
    sim.send(list(events))
    sim.run("30d")
    sim.check()
    runs = sim.inner.list_runs(limit=10_000)
    assert len(runs) >= expect_runs
    return runs


DRIVERS: dict[str, Callable[[App, Sequence[Event], int], list[RunRecord]]] = {
    "worker": with_worker, "testengine": with_test_engine, "simulator": with_simulator,
}


def _by_function(runs: list[RunRecord]) -> dict[str, RunRecord]:
    return {r.function_id: r for r in runs}


def _message(run: RunRecord) -> str:
    assert run.error is not None, (run.function_id, run.status, run.output)
    return run.error.message.replace(run.id, "<run>")


@pytest.fixture(scope="module")
def forbidden_runs() -> dict[str, dict[str, RunRecord]]:
    app = _forbidden_app()
    events = [Event(f"go/{case}") for case, _, _ in FORBIDDEN]
    return {name: _by_function(drive(app, events, len(FORBIDDEN)))
            for name, drive in DRIVERS.items()}


@pytest.mark.parametrize(("case", "call"), [(c, n) for c, _, n in FORBIDDEN],
                         ids=[c for c, _, _ in FORBIDDEN])
def test_each_forbidden_call_fails_the_run_the_same_way_in_every_driver(
    forbidden_runs: dict[str, dict[str, RunRecord]], case: str, call: str,
) -> None:
    fid = case
    messages = {}
    for driver, runs in forbidden_runs.items():
        run = runs[fid]
        assert run.status == "failed", (driver, run.status, run.output)
        assert run.error is not None and run.error.type == "DeterminismError", (
            driver, run.error)
        messages[driver] = _message(run)
    assert len(set(messages.values())) == 1, messages  # the same error everywhere
    message = messages["testengine"]
    assert message.startswith(f"run <run>: function {fid!r}, at step position 1: "
                              "orchestration code "), message
    assert call in message
    assert _kind_of(case) in message
    replacement = {"reads the wall clock": "ctx.now()",
                   "draws random values": "ctx.random() or ctx.uuid4()",
                   "blocks or waits": "ctx.step.sleep(...)",
                   "starts a thread": "ctx.step.run body",
                   "does I/O": "ctx.step.run body"}[_kind_of(case)]
    assert replacement in message


def test_the_forbidden_runs_ran_no_step_after_the_call(
    forbidden_runs: dict[str, dict[str, RunRecord]],
) -> None:
    # The error is raised at the call: the code never reaches the step after it.
    eng_app = _forbidden_app()
    eng = TestEngine(eng_app)
    [run] = eng.send(Event("go/time.time")).runs
    assert run.status == "failed"
    assert [s.id for s in run.steps] == ["before"]


# --------------------------------------------------------------------------- allowed


def sync_body() -> str:
    """A step body may do every forbidden thing."""
    time.time(), time.monotonic(), time.perf_counter(), datetime.datetime.now()
    datetime.date.today(), random.random(), os.urandom(4), uuid.uuid4(), uuid4()
    secrets.token_hex(4), time.sleep(0)
    with open(__file__) as f:
        f.read(10)
    os.listdir(".")
    socket.getaddrinfo("localhost", 80)
    subprocess.run(["true"], check=False)
    t = threading.Thread(target=int)
    t.start()
    t.join()
    asyncio.run(asyncio.sleep(0))
    return "sync ok"


async def async_body() -> str:
    """An async step body too (on trio, in every driver: the app says so)."""
    await trio.sleep(1)
    trio.current_time()
    time.time(), random.random()
    return "async ok"


def _allowed_app() -> App:
    app = App("allowed", async_bodies="trio")
    log = logging.getLogger("tests.sandbox")

    @app.function(id="allowed", trigger=on_event("go/allowed"))
    async def allowed(ctx: Context) -> dict[str, Any]:
        total = sum(i * i for i in range(100))  # pure computation
        now = ctx.now()
        draws = [ctx.random(), str(ctx.uuid4())]
        seeded = random.Random(42).random()  # a seeded generator is deterministic
        ctx.logger.warning("a record from orchestration code")
        log.warning("another, through the logging module (time-stamped)")
        import wave  # a lazy import opens files: on the import system's behalf, allowed

        assert wave.__name__ == "wave"
        return {"total": total, "now": now.isoformat(), "draws": draws, "seeded": seeded}

    @app.function(id="allowed-steps", trigger=on_event("go/allowed"))
    async def allowed_steps(ctx: Context) -> list[str]:
        a = await ctx.step.run("sync", sync_body)
        b = await ctx.step.run("async", async_body)
        return [a, b]

    return app


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_allowed_things_are_untouched_in_every_driver(driver: str) -> None:
    runs = _by_function(DRIVERS[driver](_allowed_app(), [Event("go/allowed")], 2))
    run = runs["allowed"]
    assert run.status == "completed", run.error
    assert run.output is not None and '"total":328350' in run.output
    steps = runs["allowed-steps"]
    assert steps.status == "completed", steps.error
    assert steps.output == '["sync ok","async ok"]'


def test_other_threads_are_untouched_while_orchestration_code_runs() -> None:
    go, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    results: list[Any] = []

    def other_thread() -> None:
        go.wait()
        try:  # the orchestration thread is inside the sandbox right now
            results.extend([time.time(), random.random(), uuid.uuid4(),
                            datetime.datetime.now(), os.urandom(2)])
            with open(__file__) as f:
                results.append(f.read(5))
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)
        finally:
            done.set()

    app = App("threads")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> str:
        await ctx.step.run("a", int)
        go.set()
        done.wait()  # (a blocking wait the sandbox does not see: see docs/determinism.md)
        return "ok"

    t = threading.Thread(target=other_thread)
    t.start()
    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    t.join()
    assert errors == []
    assert len(results) == 6
    assert run.status == "completed"


def test_code_outside_runs_is_untouched() -> None:
    TestEngine(_forbidden_app())  # the guards are installed
    assert isinstance(time.time(), float)
    assert 0 <= random.random() < 1
    assert isinstance(uuid4(), uuid.UUID)
    assert datetime.datetime.now().year >= 2024
    assert asyncio.run(asyncio.sleep(0, result="slept")) == "slept"
    assert trio.run(trio.sleep, 0) is None
    # The guards keep the originals' names and coroutine-ness.
    assert time.time.__name__ == "time" and asyncio.iscoroutinefunction(asyncio.sleep)
    import inspect

    assert inspect.iscoroutinefunction(trio.sleep)
    assert type(datetime.datetime.now()) is datetime.datetime


# --------------------------------------------------------------------------- the rules


def test_a_swallowed_violation_still_fails_the_run() -> None:
    app = App("swallow")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> str:
        await ctx.step.run("a", int)
        try:
            stamp = time.time()
        except Exception:
            stamp = 0.0
        await ctx.step.run("b", int, stamp)
        return "ok"

    @app.function(id="g", trigger=on_event("go"))
    async def g(ctx: Context) -> str:
        try:
            random.random()
        except DeterminismError as exc:
            raise RuntimeError("wrapped") from exc
        return "ok"

    eng = TestEngine(app)
    runs = _by_function(eng.send(Event("go")).runs and eng.store.list_runs())
    for fid, call in (("f", "time.time()"), ("g", "random.random()")):
        run = runs[fid]
        assert run.status == "failed"
        assert run.error is not None and run.error.type == "DeterminismError"
        assert call in run.error.message
    assert [s.id for s in eng.run(runs["f"].id).steps] == ["a"]  # "b" never started


def test_a_violation_in_a_finally_block_never_escapes_into_the_driver() -> None:
    app = App("finally")
    cleaned: list[str] = []

    @app.function(id="cancelled", trigger=on_event("go"))
    async def cancelled(ctx: Context) -> None:
        try:
            await ctx.step.sleep("nap", "1h")
        finally:
            cleaned.append("cancelled")
            time.monotonic()  # raises in the sandbox, while the run is being cancelled

    @app.function(id="failed", trigger=on_event("go"))
    async def failed(ctx: Context) -> None:
        try:
            await ctx.step.run("a", int)
            with contextlib.suppress(DeterminismError):
                time.time()
            await ctx.step.run("b", int)  # the run fails here: the error was swallowed
        finally:
            cleaned.append("failed")
            random.random()  # and again in the finally block, as the run ends

    eng = TestEngine(app)
    runs = _by_function(eng.send(Event("go")).runs and eng.store.list_runs())
    eng.cancel_run(runs["cancelled"].id)
    runs = _by_function(eng.store.list_runs())
    assert runs["cancelled"].status == "cancelled"
    assert runs["failed"].status == "failed"
    assert runs["failed"].error is not None and "time.time()" in runs["failed"].error.message
    assert sorted(cleaned) == ["cancelled", "failed"]


def test_escape_hatch_lifts_the_sandbox_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    app = App("hatch")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> float:
        await ctx.step.run("a", int)
        with ctx.unsafe.nondeterministic("timing for a log line only"):
            started = time.perf_counter()
        ctx.logger.info("took %s", time.perf_counter.__name__)
        await ctx.step.sleep("nap", "1h")  # the code is replayed after the sleep
        with ctx.unsafe.nondeterministic("timing again"):
            elapsed = time.perf_counter() - started
        return elapsed * 0

    eng = TestEngine(app)
    with caplog.at_level(logging.DEBUG, logger="durable_core.run"):
        [run] = eng.send(Event("go")).runs
        eng.advance("2h")
    assert run.status == "completed", run.error
    lifted = [r for r in caplog.records if "sandbox lifted" in r.getMessage()]
    # Once each: not again while the run replays its first part after the sleep.
    assert [r.getMessage().split(": ", 1)[1] for r in lifted] == [
        "sandbox lifted at step position 1: timing for a log line only",
        "sandbox lifted at step position 2: timing again",
    ]
    assert all(r.levelno == logging.DEBUG and r.__dict__["run_id"] == run.id for r in lifted)


def test_escape_hatch_needs_a_reason() -> None:
    app = App("hatch2")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        with ctx.unsafe.nondeterministic(""):
            pass

    [run] = TestEngine(app).send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "ValidationError"
    assert "say why" in run.error.message


def test_the_sandbox_can_be_turned_off_per_app_and_per_function() -> None:
    def make(app: App, **kw: Any) -> None:
        @app.function(id=f"f-{app.id}", trigger=on_event("go"), **kw)
        async def f(ctx: Context) -> bool:
            return time.time() > 0 and random.random() >= 0

    off_app = App("off", sandbox=False)
    make(off_app)
    per_fn = App("perfn")
    make(per_fn, sandbox=False)
    on_again = App("on-again", sandbox=False)
    make(on_again, sandbox=True)
    assert [off_app.get("f-off").sandbox, per_fn.get("f-perfn").sandbox,
            on_again.get("f-on-again").sandbox] == [False, False, True]
    for app, status in ((off_app, "completed"), (per_fn, "completed"), (on_again, "failed")):
        [run] = TestEngine(app).send(Event("go")).runs
        assert run.status == status, (app.id, run.error)
    with pytest.raises(ValidationError, match="sandbox"):
        App("bad", sandbox="no")  # type: ignore[arg-type]


def test_a_foreign_await_names_the_call_in_every_driver() -> None:
    # trio.Event().wait(): in the worker it yields to the machine, in TestEngine and the
    # simulator trio says "must be called from async context": one error for both.
    app = App("foreign")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        await trio.Event().wait()

    messages = {d: _message(_by_function(drive(app, [Event("go")], 1))["f"])
                for d, drive in DRIVERS.items()}
    assert len(set(messages.values())) == 1, messages
    assert "awaited trio.Event.wait()" in messages["worker"]


# --------------------------------------------------------------------------- crash_test


def test_crash_test_reports_a_random_branch_on_its_first_example() -> None:
    app = App("planted")

    @app.function(id="coin", trigger=on_event("go"))
    async def coin(ctx: Context) -> str:
        if random.random() < 0.5:  # the planted bug: replays may take the other branch
            return await ctx.step.run("heads", str, "h")
        return await ctx.step.run("tails", str, "t")

    with pytest.raises(DeterminismError) as info:
        crash_test(coin, Event("go"), max_examples=50, verbose=False)
    message = str(info.value)
    assert "fault-free run, before any fault was injected" in message
    assert "random.random()" in message and "'coin'" in message


# --------------------------------------------------------------------------- usage errors


def _usage_app() -> App:
    app = App("usage")

    @app.function(id="dropped", trigger=on_event("go"))
    async def dropped(ctx: Context) -> str:
        await ctx.step.run("first", int)
        ctx.step.run("forgotten", int)  # no await
        await ctx.step.run("next", int)
        return "ok"

    @app.function(id="dropped-last", trigger=on_event("go"))
    async def dropped_last(ctx: Context) -> str:
        await ctx.step.run("first", int)
        ctx.step.sleep("forgotten-nap", "1h")  # no await, then the code returns
        return "ok"

    @app.function(id="kept-never-awaited", trigger=on_event("go"))
    async def kept(ctx: Context) -> str:
        later = ctx.step.run("later", int)
        await ctx.step.run("now", int)
        assert later is not None
        return "ok"

    @app.function(id="awaited-later", trigger=on_event("go"))
    async def awaited_later(ctx: Context) -> list[int]:
        steps = [ctx.step.run(f"s{i}", int, i) for i in range(3)]
        out = [await s for s in steps]
        pair = await ctx.gather(ctx.step.run("x", int, 7), ctx.step.run("y", int, 8))
        return out + list(pair)

    def outer_sync() -> int:
        return 1

    @app.function(id="nested-sync", trigger=on_event("go"))
    async def nested_sync(ctx: Context) -> int:
        def body() -> int:
            ctx.step.run("inner", outer_sync)
            return 1

        return await ctx.step.run("outer", body)

    @app.function(id="nested-async", trigger=on_event("go"))
    async def nested_async(ctx: Context) -> int:
        async def body() -> int:
            return await ctx.step.run("inner", outer_sync)

        return await ctx.step.run("outer", body)

    return app


@pytest.mark.parametrize("driver", ["worker", "testengine"])
def test_usage_errors_are_the_same_in_the_worker_and_test_engine(driver: str) -> None:
    runs = _by_function(DRIVERS[driver](_usage_app(), [Event("go")], 6))
    expected = {
        "dropped": ("UsageError", "step 'forgotten' (ctx.step.run) was created but never "
                                  "awaited"),
        "dropped-last": ("UsageError", "step 'forgotten-nap' (ctx.step.sleep) was created but "
                                       "never awaited"),
        "kept-never-awaited": ("UsageError", "step 'later' (ctx.step.run) was created but "
                                             "never awaited"),
        "nested-sync": ("StepError", "step 'outer' failed: UsageError: run <run>: step 'inner' "
                                     "(ctx.step.run) was called inside the body of step "
                                     "'outer'"),
        "nested-async": ("StepError", "step 'outer' failed: UsageError: run <run>: step "
                                      "'inner' (ctx.step.run) was called inside the body of "
                                      "step 'outer'"),
    }
    for fid, (etype, text) in expected.items():
        run = runs[fid]
        assert run.status == "failed", (fid, run.status)
        assert run.error is not None and run.error.type == etype, (fid, run.error)
        assert text in _message(run), (fid, run.error.message)
    assert runs["awaited-later"].status == "completed"
    assert runs["awaited-later"].output == "[0,1,2,7,8]"


def test_a_dropped_step_never_starts_and_nothing_after_it_does() -> None:
    eng = TestEngine(_usage_app())
    eng.send(Event("go"))
    run = _by_function(eng.store.list_runs())["dropped"]
    assert [s.id for s in eng.run(run.id).steps] == ["first"]
    # The nested body failed for good at once (a UsageError is not retried).
    nested = _by_function(eng.store.list_runs())["nested-sync"]
    [outer] = eng.run(nested.id).steps
    assert outer.attempts == 1


def test_step_error_catches_nothing_of_the_usage_error_type() -> None:
    assert issubclass(UsageError, Exception) and not issubclass(UsageError, StepError)

