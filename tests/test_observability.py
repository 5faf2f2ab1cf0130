"""Logs and traces: the run lifecycle lines (``durable_core.runs``), ``ctx.logger`` and
``App(logger=...)``, the worker's last line, the text and JSON formats of ``durable worker``,
logging that never stops a run or a worker, and OpenTelemetry spans."""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

import stores
from durable_core import (
    App,
    Client,
    Context,
    Event,
    FunctionConfigError,
    JsonLogFormatter,
    NonRetriableError,
    StepError,
    TextLogFormatter,
    Worker,
    configure_logging,
    on_event,
)
from durable_core.testing import TestEngine

RUNS = "durable_core.runs"
TESTS = pathlib.Path(__file__).resolve().parent
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def refuse() -> None:
    """A step body that fails for good."""
    raise NonRetriableError("no, thanks")


def lines(caplog: pytest.LogCaptureFixture, name: str = RUNS) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "action", "") for r in lines(caplog)]


def _flaky_app(failures: int = 1, retries: int = 4) -> tuple[App, list[int]]:
    app = App("obs")
    calls: list[int] = []

    def charge() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise ValueError(f"card declined ({len(calls)})")
        return "ok"

    @app.function(id="pay", trigger=on_event("pay"), retries=retries)
    async def pay(ctx: Context) -> str:
        result = await ctx.step.run("charge", charge)
        await ctx.step.sleep("cool-down", "1h")
        return result

    return app, calls


# --------------------------------------------------------------------------- lifecycle


def test_a_run_reports_start_retry_and_completion_with_its_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=RUNS)
    eng = TestEngine(_flaky_app()[0])
    [run] = eng.send(Event("pay")).runs
    assert events(caplog) == ["run.started", "step.retrying", "run.released"]
    started, retrying, _ = lines(caplog)
    assert started.levelno == logging.INFO
    assert (started.run_id, started.function_id, started.step_id, started.attempt) == (  # type: ignore[attr-defined]
        run.id, "pay", None, 0)
    assert started.getMessage() == f"run {run.id} of pay started"
    assert retrying.levelno == logging.WARNING
    assert (retrying.run_id, retrying.function_id, retrying.step_id, retrying.attempt) == (  # type: ignore[attr-defined]
        run.id, "pay", "charge", 0)
    error = retrying.error  # type: ignore[attr-defined]
    assert (error["type"], error["message"]) == ("ValueError", "card declined (1)")
    assert "ValueError: card declined (1)" in error["traceback"]
    # The next attempt's time, as the journal has it, in ISO 8601 UTC.
    [failed] = [e for e in eng.store.load_journal(run.id) if e.op == "attempt_failed"]
    due = json.loads(failed.data)["retry_at"]
    assert retrying.retry_at == (  # type: ignore[attr-defined]
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(due / 1000)) + f".{due % 1000:03d}Z")
    assert "card declined (1)" in retrying.getMessage()
    assert retrying.retry_at in retrying.getMessage()  # type: ignore[attr-defined]

    caplog.clear()
    eng.advance("2h")
    assert run.status == "completed"
    done = lines(caplog)[-1]
    assert done.action == "run.completed" and done.levelno == logging.INFO  # type: ignore[attr-defined]
    assert done.run_id == run.id and done.status == "completed"  # type: ignore[attr-defined]
    # From the run's creation to its end, in virtual time: the retry's backoff and the hour.
    assert done.duration_ms == eng.store.get_run(run.id).updated_at - eng.store.get_run(  # type: ignore[attr-defined]
        run.id).created_at
    assert done.duration_ms >= 3_600_000  # type: ignore[attr-defined]
    assert "run.started" not in events(caplog)  # not again when the run is claimed again


def test_a_failed_and_a_cancelled_run_say_so_with_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RUNS)
    app = App("obs")

    @app.function(id="refuse", trigger=on_event("refuse"))
    async def refuse_fn(ctx: Context) -> None:
        await ctx.step.run("refuse", refuse)

    @app.function(id="nap", trigger=on_event("nap"))
    async def nap(ctx: Context) -> None:
        await ctx.step.sleep("nap", "1d")

    eng = TestEngine(app)
    [bad] = eng.send(Event("refuse")).runs
    assert bad.status == "failed"
    failed = [r for r in lines(caplog) if r.action == "run.failed"]  # type: ignore[attr-defined]
    assert len(failed) == 1 and failed[0].levelno == logging.ERROR
    assert failed[0].error["type"] == "StepError"  # type: ignore[attr-defined]
    assert "step.failed" in events(caplog)  # the step's own failure, before the run's
    [sleeper] = eng.send(Event("nap")).runs
    eng.cancel_run(sleeper.id, reason="changed my mind")
    [cancelled] = [r for r in lines(caplog) if r.action == "run.cancelled"]  # type: ignore[attr-defined]
    assert cancelled.levelno == logging.WARNING and cancelled.run_id == sleeper.id  # type: ignore[attr-defined]
    assert "changed my mind" in cancelled.getMessage()


def test_a_step_that_failed_for_good_is_reported_when_the_code_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RUNS)
    app = App("obs")

    @app.function(id="fallback", trigger=on_event("go"))
    async def fallback(ctx: Context) -> str:
        try:
            await ctx.step.run("primary", refuse)
        except StepError:
            ctx.logger.info("primary refused; using the secondary")
        return await ctx.step.run("secondary", lambda: "ok")

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "completed"
    assert events(caplog) == ["run.started", "step.failed", "run.completed"]
    failed = lines(caplog)[1]
    assert failed.step_id == "primary" and failed.run_id == run.id  # type: ignore[attr-defined]
    assert failed.error["type"] == "NonRetriableError"  # type: ignore[attr-defined]


def test_a_step_whose_output_holds_an_error_field_is_not_reported_as_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed step is told from its journal entry's prefix (``{"error":``, what
    ``error_data`` writes), never from an ``"error"`` anywhere in a successful output."""
    from durable_core.core._journal import error_data
    from durable_core.core._model import ErrorInfo
    from durable_core.engine._observe import _FAILED_STEP

    assert error_data(ErrorInfo("E", "m")).startswith(_FAILED_STEP)
    assert error_data(ErrorInfo("E", "m"), started_at=5).startswith(_FAILED_STEP)
    caplog.set_level(logging.INFO, logger=RUNS)
    app = App("obs")

    @app.function(id="answer", trigger=on_event("go"))
    async def answer(ctx: Context) -> dict[str, Any]:
        return await ctx.step.run("call", lambda: {"error": "none", "ok": True})

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.output == {"error": "none", "ok": True}
    assert events(caplog) == ["run.started", "run.completed"]


def test_orchestration_code_that_raises_reports_a_run_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RUNS)
    app = App("obs")
    seen: list[int] = []

    @app.function(id="wobbly", trigger=on_event("go"))
    async def wobbly(ctx: Context) -> int:
        seen.append(1)
        if len(seen) == 1:
            raise RuntimeError("not yet")
        return len(seen)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    [retry] = [r for r in lines(caplog) if r.action == "run.retrying"]  # type: ignore[attr-defined]
    assert retry.step_id is None and retry.attempt == 0 and retry.run_id == run.id  # type: ignore[attr-defined]
    error = retry.error  # type: ignore[attr-defined]
    assert (error["type"], error["message"]) == ("RuntimeError", "not yet")
    assert "RuntimeError: not yet" in error["traceback"]
    eng.advance("1h")
    assert run.status == "completed"


def test_lines_are_not_repeated_when_a_run_is_replayed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RUNS)
    app, _ = _flaky_app()
    eng = TestEngine(app)
    [run] = eng.send(Event("pay")).runs
    eng.advance("10m")  # the retry succeeded; the run sleeps
    before = events(caplog)
    assert before == ["run.started", "step.retrying"]
    # Another engine rebuilds the run from its journal (a replay) and finishes it.
    eng2 = TestEngine(app, start=eng.now, store=eng.store)
    eng2.advance("2h")
    assert eng2.run(run.id).status == "completed"
    assert events(caplog) == [*before, "run.completed"]


def test_lines_cost_nothing_when_their_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=RUNS)
    eng = TestEngine(_flaky_app()[0])
    [run] = eng.send(Event("pay")).runs
    eng.advance("2h")
    assert run.status == "completed" and lines(caplog) == []


# --------------------------------------------------------------------------- ctx.logger


def test_ctx_logger_records_carry_the_run_function_step_and_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    mine = logging.getLogger("tests.observability.mine")
    app = App("obs", logger=mine)
    attempts: list[int] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        ctx.logger.info("before", extra={"order": 7})

        def body() -> None:
            attempts.append(1)
            ctx.logger.warning("in the body")
            if len(attempts) == 1:
                raise ValueError("again")

        await ctx.step.run("body", body)
        ctx.logger.info("after")

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h")
    assert run.status == "completed"
    records = lines(caplog, "tests.observability.mine")
    assert [r.getMessage() for r in records] == ["before", "in the body", "in the body", "after"]
    got = [(r.run_id, r.function_id, r.step_id, r.attempt) for r in records]  # type: ignore[attr-defined]
    assert got == [(run.id, "f", None, 0), (run.id, "f", "body", 0), (run.id, "f", "body", 1),
                   (run.id, "f", None, 0)]
    assert records[0].order == 7  # type: ignore[attr-defined]  # the caller's own extra is kept
    assert records[0].funcName == "f"  # the line of the caller, not of ctx.logger
    assert lines(caplog, "durable_core.run") == []  # nothing went to the default logger


def test_the_default_ctx_logger_is_durable_core_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="durable_core.run")
    app = App("obs")
    assert app.logger is logging.getLogger("durable_core.run")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        ctx.logger.info("hi")

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    [record] = lines(caplog, "durable_core.run")
    assert record.getMessage() == "hi" and record.run_id == run.id  # type: ignore[attr-defined]


def test_app_logger_must_be_a_logger() -> None:
    with pytest.raises(FunctionConfigError, match=r"logger=\.\.\.\): must be a logging.Logger"):
        App("obs", logger="myapp")  # type: ignore[arg-type]
    adapter = logging.LoggerAdapter(logging.getLogger("x"), {"tenant": "t1"})
    assert App("obs", logger=adapter).logger is adapter


def test_an_adapter_as_app_logger_keeps_its_extra_and_the_runs_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tests.observability.tenant")

    class Prefixed(logging.LoggerAdapter):  # type: ignore[type-arg]
        def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
            msg, kwargs = super().process(msg, kwargs)
            return f"[t1] {msg}", kwargs

    app = App("obs", logger=Prefixed(logging.getLogger("tests.observability.tenant"),
                                     {"tenant": "t1"}))

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        ctx.logger.info("hi")

    [run] = TestEngine(app).send(Event("go")).runs
    [record] = lines(caplog, "tests.observability.tenant")
    assert record.getMessage() == "[t1] hi"
    assert (record.tenant, record.run_id, record.function_id) == ("t1", run.id, "f")  # type: ignore[attr-defined]
    assert record.funcName == "f"


def test_ctx_logger_lines_after_the_last_step_repeat_when_the_code_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/semantics.md: a line logged after the last step, in code that then raises, is
    logged again when the code is retried; lines before that step are not."""
    caplog.set_level(logging.INFO, logger="durable_core.run")
    app = App("obs")
    raised: list[int] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        ctx.logger.info("before a")
        await ctx.step.run("a", lambda: 1)
        ctx.logger.info("after a")
        if not raised:
            raised.append(1)
            raise RuntimeError("orchestration code failed once")

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h")
    assert run.status == "completed"
    messages = [r.getMessage() for r in lines(caplog, "durable_core.run")]
    assert messages == ["before a", "after a", "after a"]


class _Broken(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise OSError("the log disk is full")


class _BadFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("a filter with a bug")


class _BadFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        raise RuntimeError("a formatter with a bug")


@pytest.fixture
def broken_logging() -> Iterator[None]:
    """Every way a logging set-up can raise, on the loggers runs and the worker use."""
    root = logging.getLogger()
    stream = logging.StreamHandler(io.StringIO())
    stream.setFormatter(_BadFormatter())
    installed = [(root, _Broken()), (root, stream)]
    flt = _BadFilter()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    for logger, handler in installed:
        logger.addHandler(handler)
    for name in ("durable_core.run", RUNS, "durable_core.worker"):
        logging.getLogger(name).addFilter(flt)
    raise_exceptions = logging.raiseExceptions
    logging.raiseExceptions = False  # (handleError's report would go to the test's stderr)
    try:
        yield
    finally:
        logging.raiseExceptions = raise_exceptions
        root.setLevel(old_level)
        for logger, handler in installed:
            logger.removeHandler(handler)
        for name in ("durable_core.run", RUNS, "durable_core.worker"):
            logging.getLogger(name).removeFilter(flt)


def test_broken_logging_stops_no_run(broken_logging: None) -> None:
    app, _ = _flaky_app()

    @app.function(id="talk", trigger=on_event("talk"))
    async def talk(ctx: Context) -> str:
        ctx.logger.info("hello")
        return await ctx.step.run("s", lambda: "done")

    eng = TestEngine(app)
    [run] = eng.send(Event("pay")).runs
    [talker] = eng.send(Event("talk")).runs
    eng.advance("2h")
    assert run.status == "completed" and talker.status == "completed"


def mock_ms() -> int:
    return BASE_MS + int(trio.current_time() * 1000)


async def until_completed(store: stores.MemoryStore) -> None:
    with trio.fail_after(86_400):
        while [r.status for r in store.list_runs()] != ["completed"]:
            await trio.sleep(1)


def test_broken_logging_stops_no_worker(broken_logging: None) -> None:
    app, _ = _flaky_app()
    store = stores.MemoryStore()

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            await w.send(Event("pay"))
            await until_completed(store)
            w.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert store.list_runs()[0].status == "completed"


# --------------------------------------------------------------------------- the worker


def test_the_worker_reports_runs_and_a_last_line_on_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app, _ = _flaky_app()
    store = stores.MemoryStore()
    release = trio.Event()
    reached = trio.Event()

    async def slow() -> str:
        reached.set()
        await release.wait()
        return "slow"

    @app.function(id="slow", trigger=on_event("slow"))
    async def slow_fn(ctx: Context) -> str:
        await ctx.step.run("slow", slow)
        return await ctx.step.run("next", lambda: "never started by this worker")

    app.async_bodies = "trio"

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms, owner="w1")
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            await w.send(Event("pay"))
            await until_completed(store)
            await w.send(Event("slow"))
            await reached.wait()
            w.stop()  # the body in flight finishes and is committed, then the worker stops
            await trio.sleep(5)
            release.set()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    pay_events = [r.action for r in lines(caplog)  # type: ignore[attr-defined]
                  if r.function_id == "pay" and r.action != "run.released"]  # type: ignore[attr-defined]
    assert pay_events == ["run.started", "step.retrying", "run.completed"]
    [done] = [r for r in lines(caplog) if r.action == "run.completed"]  # type: ignore[attr-defined]
    assert done.duration_ms >= 3_600_000  # type: ignore[attr-defined]  # virtual time
    [last] = [r for r in lines(caplog, "durable_core.worker") if "stopped" in r.getMessage()]
    assert last is caplog.records[-1]
    assert (last.runs_in_flight, last.bodies_finished, last.bodies_abandoned,  # type: ignore[attr-defined]
            last.runs_released) == (1, 1, 0, 1)  # type: ignore[attr-defined]
    assert last.getMessage().startswith("worker w1 stopped: 1 run(s) had step bodies in flight")
    (slow_run,) = [r for r in store.list_runs() if r.function_id == "slow"]
    assert slow_run.status == "running" and slow_run.lease_owner is None  # handed back


# --------------------------------------------------------------------------- formats


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("durable_core.runs", logging.WARNING, __file__, 1,
                               "run %s retrying", ("r_1",), None)
    record.created = 1_767_225_600.5
    record.__dict__.update(extra)
    return record


def test_json_lines_hold_the_time_level_logger_message_and_ids() -> None:
    line = JsonLogFormatter().format(_record(run_id="r_1", function_id="pay", step_id="charge",
                                          attempt=2, error={"type": "E"}, odd=object()))
    assert "\n" not in line
    out = json.loads(line)
    assert {k: out[k] for k in ("time", "level", "logger", "message", "run_id", "function_id",
                                "step_id", "attempt", "error")} == {
        "time": "2026-01-01T00:00:00.500Z", "level": "WARNING", "logger": "durable_core.runs",
        "message": "run r_1 retrying", "run_id": "r_1", "function_id": "pay",
        "step_id": "charge", "attempt": 2, "error": {"type": "E"}}
    assert out["odd"].startswith("<object object")  # not JSON: shown as its repr
    bare = json.loads(JsonLogFormatter().format(_record()))
    assert bare["run_id"] is None and bare["attempt"] is None  # always present
    try:
        raise ValueError("boom")
    except ValueError:
        rec = _record()
        rec.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonLogFormatter().format(rec))["exception"]


def test_text_lines_show_the_ids_after_the_message() -> None:
    line = TextLogFormatter().format(_record(run_id="r_1", step_id="charge", attempt=0))
    assert line == ("2026-01-01T00:00:00.500Z WARNING durable_core.runs: run r_1 retrying "
                    "run_id=r_1 step_id=charge attempt=0")


def test_configure_logging_checks_its_arguments_and_replaces_itself() -> None:
    from durable_core import ValidationError

    with pytest.raises(ValidationError, match="log format must be one of text, json"):
        configure_logging("info", "xml")
    with pytest.raises(ValidationError, match="log level must be one of"):
        configure_logging("loud", "text")
    root = logging.getLogger()
    level = root.level
    try:
        first = configure_logging("warning", "text", io.StringIO())
        second = configure_logging("debug", "json", io.StringIO())
        assert first not in root.handlers and second in root.handlers
        assert root.level == logging.DEBUG
    finally:
        root.removeHandler(second)
        root.setLevel(level)
        logging.captureWarnings(False)


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "processes"])
def test_durable_worker_log_format_json_writes_one_object_per_line(
    tmp_path: pathlib.Path, processes: int,
) -> None:
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    store = stores.open(url)
    client = Client(store)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "worker", "logs_app:app", "--log-format", "json", "--log-level", "info",
         "--poll-interval", "0.05", "--processes", str(processes), "--store", url],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        client.send([Event("logs/greet", {"name": "Ada"}), Event("logs/refuse")])
        deadline = time.monotonic() + 60
        while sorted(r.status for r in store.list_runs()) != ["completed", "failed"]:
            assert time.monotonic() < deadline, "the worker did not finish the runs"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        store.close()
    assert proc.returncode == 0, err
    assert "durable worker" in out and "Ctrl-C to stop" in out  # the start line still
    if processes > 1:
        assert out.rstrip().endswith("durable worker: stopped")  # the supervisor's lines
    records = [json.loads(line) for line in err.splitlines()]  # every line is one object
    for r in records:
        assert {"time", "level", "logger", "message", "run_id", "function_id", "step_id",
                "attempt"} <= set(r)
        assert r["time"].endswith("Z")
    runs = {r.function_id: r.id for r in Client(stores.open(url)).list_runs()}
    greet = [r for r in records if r["run_id"] == runs["greet"]]
    assert [r["message"] for r in greet if r["logger"] == "durable_core.run"] == [
        "greeting Ada"]
    assert [r.get("action") for r in greet if r["logger"] == RUNS] == [
        "run.started", "run.completed"]
    [failed] = [r for r in records if r.get("action") == "run.failed"]
    assert failed["run_id"] == runs["refuse"] and failed["level"] == "ERROR"
    assert failed["error"]["type"] == "StepError"
    stops = [r for r in records if r.get("action") == "worker.stopped"]
    assert len(stops) == processes  # each worker process's last line
    if processes == 1:
        assert any("received SIGTERM" in r["message"] and r["level"] == "WARNING"
                   for r in records)
        assert records[-1] == stops[0]
    assert all(r["logger"] == "durable_core.worker" and r["runs_in_flight"] == 0
               and r["message"].startswith("worker ") for r in stops)


# --------------------------------------------------------------------------- OpenTelemetry


otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")


@pytest.fixture
def spans() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from durable_core import otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(tracer_provider=provider)
    exporter.provider = provider  # type: ignore[attr-defined]
    try:
        yield exporter
    finally:
        otel.uninstrument()


def test_a_span_per_run_and_per_step_attempt_in_the_senders_trace(
    spans: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app, _ = _flaky_app()
    eng = TestEngine(app)
    tracer = spans.provider.get_tracer("test")
    with tracer.start_as_current_span("checkout") as sender:
        [run] = eng.send(Event("pay")).runs
    eng.advance("2h")
    assert run.status == "completed"
    got = spans.get_finished_spans()
    trace_id = sender.get_span_context().trace_id
    assert {s.context.trace_id for s in got} == {trace_id}  # one trace, from the send
    steps = [s for s in got if s.name == "durable.step charge"]
    assert [(s.attributes["durable.attempt"], s.attributes["durable.outcome"]) for s in steps] == [
        (0, "error"), (1, "ok")]
    assert steps[0].attributes["error.type"] == "ValueError"
    assert steps[0].status.status_code.name == "ERROR"
    assert steps[0].attributes["durable.run_id"] == run.id
    assert steps[0].attributes["durable.function_id"] == "pay"
    assert steps[0].attributes["durable.step_id"] == "charge"
    assert any(e.name == "exception" for e in steps[0].events)
    run_spans = [s for s in got if s.name == "durable.run pay"]
    # The run sleeps twice (the retry's backoff, the hour): three stretches, one trace.
    assert [s.attributes["durable.outcome"] for s in run_spans] == [
        "sleeping", "sleeping", "completed"]
    assert all(s.parent is not None and s.parent.span_id == sender.get_span_context().span_id
               for s in run_spans)
    for step in steps:
        assert step.parent is not None
        assert step.parent.span_id in {s.context.span_id for s in run_spans}
    # Log records about the run carry its trace.
    for r in lines(caplog):
        assert r.trace_id == format(trace_id, "032x")  # type: ignore[attr-defined]


def test_client_send_carries_the_trace_into_the_runs_it_starts(spans: Any) -> None:
    app, _ = _flaky_app(failures=0)
    seen: list[dict[str, Any]] = []

    @app.function(id="look", trigger=on_event("pay"))
    async def look(ctx: Context) -> None:
        seen.append(ctx.event.to_dict())

    store = stores.MemoryStore()
    tracer = spans.provider.get_tracer("test")
    with tracer.start_as_current_span("web request") as request:
        Client(store).send(Event("pay"))  # a process without the app: the event only
    raw = json.loads(store.unrouted_events(10)[0].data)
    assert raw["traceparent"].split("-")[1] == format(request.get_span_context().trace_id,
                                                      "032x")
    eng = TestEngine(app, store=store)  # a worker elsewhere picks the event up
    eng.advance("2h")
    assert sorted(r.status for r in eng.runs) == ["completed", "completed"]
    assert set(seen[0]) == {"name", "data", "id", "ts"}  # ctx.event: no trace field in it
    got = spans.get_finished_spans()
    assert {s.context.trace_id for s in got} == {request.get_span_context().trace_id}
    first_run_span = next(s for s in got if s.name == "durable.run pay")
    assert first_run_span.parent.span_id == request.get_span_context().span_id


def test_replayed_steps_make_no_spans(spans: Any) -> None:
    app, calls = _flaky_app(failures=0)
    eng = TestEngine(app)
    [run] = eng.send(Event("pay")).runs
    eng2 = TestEngine(app, start=eng.now, store=eng.store)  # replays "charge" from the journal
    eng2.advance("2h")
    assert eng2.run(run.id).status == "completed" and len(calls) == 1
    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("durable.step charge") == 1


def test_a_failed_run_span_holds_the_error(spans: Any) -> None:
    app = App("obs")

    @app.function(id="refuse", trigger=on_event("refuse"))
    async def refuse_fn(ctx: Context) -> None:
        await ctx.step.run("refuse", refuse)

    [run] = TestEngine(app).send(Event("refuse")).runs
    [span] = [s for s in spans.get_finished_spans() if s.name == "durable.run refuse"]
    assert span.attributes["durable.outcome"] == "failed"
    assert span.attributes["error.type"] == "StepError"
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["durable.run_id"] == run.id


def test_ctx_logger_records_carry_the_trace_of_their_step_or_run(
    spans: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="durable_core.run")
    app = App("obs")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        ctx.logger.info("in the code")
        await ctx.step.run("s", lambda: ctx.logger.info("in the body"))

    TestEngine(app).send(Event("go"))
    by_name = {s.name: s for s in spans.get_finished_spans()}
    code, body = lines(caplog, "durable_core.run")
    assert code.span_id == format(by_name["durable.run f"].context.span_id, "016x")  # type: ignore[attr-defined]
    assert body.span_id == format(by_name["durable.step s"].context.span_id, "016x")  # type: ignore[attr-defined]
    assert code.trace_id == body.trace_id  # type: ignore[attr-defined]


def test_spans_on_the_trio_worker(spans: Any) -> None:
    app, _ = _flaky_app(failures=0)
    store = stores.MemoryStore()

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            await w.send(Event("pay"))
            await until_completed(store)
            w.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    got = spans.get_finished_spans()
    [step] = [s for s in got if s.name == "durable.step charge"]
    assert step.attributes["durable.outcome"] == "ok"
    [last] = [s for s in got if s.name == "durable.run pay"
              and s.attributes["durable.outcome"] == "completed"]
    assert last.context.trace_id == step.context.trace_id


def test_import_durable_core_does_not_import_opentelemetry() -> None:
    code = ("import durable_core, durable_core.testing, sys; "
            "print(any(m.startswith('opentelemetry') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "False"


def test_the_step_span_is_current_in_sync_and_asyncio_bodies_on_the_worker(spans: Any) -> None:
    from opentelemetry import trace

    app = App("obs")  # async bodies on the worker's asyncio loop thread; sync in threads
    tracer = spans.provider.get_tracer("body")

    def sync_body() -> None:
        with tracer.start_as_current_span("inner sync"):
            pass

    async def async_body() -> None:
        assert trace.get_current_span().is_recording()
        with tracer.start_as_current_span("inner async"):
            pass

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        await ctx.step.run("sync", sync_body)
        await ctx.step.run("async", async_body)

    store = stores.MemoryStore()

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms)
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            await w.send(Event("go"))
            await until_completed(store)
            w.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    by_name = {s.name: s for s in spans.get_finished_spans()}
    for inner, step in (("inner sync", "durable.step sync"), ("inner async", "durable.step async")):
        assert by_name[inner].parent.span_id == by_name[step].context.span_id, inner


def test_python_warnings_go_through_the_same_path() -> None:
    import warnings

    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings():  # (out of pytest's own capture of warnings)
            warnings.simplefilter("always")
            handler = configure_logging("info", "json", out)
            warnings.warn("something odd", UserWarning, stacklevel=1)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["logger"] == "py.warnings" and line["level"] == "WARNING"
    assert "something odd" in line["message"] and line["time"].endswith("Z")


def test_the_last_line_counts_bodies_abandoned_when_the_worker_is_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="durable_core.worker")
    app = App("obs", async_bodies="trio")
    reached = trio.Event()

    async def forever() -> None:
        reached.set()
        await trio.sleep_forever()

    @app.function(id="stuck", trigger=on_event("stuck"))
    async def stuck(ctx: Context) -> None:
        await ctx.step.run("forever", forever)

    store = stores.MemoryStore()

    async def main() -> None:
        w = Worker(app, store, poll_interval=30, clock=mock_ms, owner="w2")
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            await w.send(Event("stuck"))
            await reached.wait()
            nursery.cancel_scope.cancel()  # from outside: the body is cut short

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    [last] = [r for r in lines(caplog, "durable_core.worker") if "stopped" in r.getMessage()]
    assert (last.runs_in_flight, last.bodies_finished, last.bodies_abandoned,  # type: ignore[attr-defined]
            last.runs_released) == (1, 0, 1, 1)  # type: ignore[attr-defined]
    (run,) = store.list_runs()
    assert run.lease_owner is None  # handed back: another worker runs the body again


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_many_runs_on_the_worker_each_report_once(
    kind: str, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """With a blocking store (SQLite) results are group-committed from a thread: each run
    still reports its start and its end once."""
    caplog.set_level(logging.INFO, logger=RUNS)
    app = App("obs", async_bodies="trio")

    async def body(i: int) -> int:
        await trio.sleep(1)
        return i

    @app.function(id="three", trigger=on_event("go"))
    async def three(ctx: Context) -> int:
        total = 0
        for i in range(3):
            total += await ctx.step.run(f"s{i}", body, i)
        return total

    store = stores.open("memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'w.db'}")

    async def main() -> None:
        # Virtual time runs on while a thread commits: no lease may expire meanwhile (a run
        # claimed again before its first commit reports its start again, as after a crash).
        w = Worker(app, store, poll_interval=30, clock=mock_ms, lease_ms=86_400_000)
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            await w.send([Event("go") for _ in range(20)])
            with trio.fail_after(86_400):
                while sorted(r.status for r in store.list_runs()) != ["completed"] * 20:
                    await trio.sleep(1)
            w.stop()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        run_ids = sorted(r.id for r in store.list_runs())
    finally:
        store.close()
    started = sorted(r.run_id for r in lines(caplog) if r.action == "run.started")  # type: ignore[attr-defined]
    done = sorted(r.run_id for r in lines(caplog) if r.action == "run.completed")  # type: ignore[attr-defined]
    assert started == run_ids and done == run_ids
