"""Errors kept whole, attempts that tell the truth, and ``ctx.attempt`` following the step
being retried (as in Inngest): each rule as a TestEngine scenario, on every store where the
rule is about what is persisted."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from durable_core import App, Context, ErrorInfo, Event, on_event
from durable_core.cli import main
from durable_core.core._journal import MAX_RUN_STATE_BYTES, MAX_STEP_OUTPUT_BYTES
from durable_core.core._machine import RunMachine
from durable_core.core._model import (
    MAX_TRACEBACK_BYTES,
    ExecuteStep,
    JournalOp,
    RunStarted,
    StepFailed,
    TimerFired,
    bound_traceback,
)
from durable_core.store import Store
from durable_core.testing import TestEngine, check_deploy, export_run, replay
from stores import SQLiteStore


def _reopened(app: App, eng: TestEngine) -> TestEngine:
    """A new engine on the same store, as after a restart: views come from what is stored."""
    return TestEngine(app, start=eng.now, store=eng.store)


# --------------------------------------------------------------------------- errors kept whole


def test_a_long_traceback_is_cut_in_the_middle_with_the_marker() -> None:
    text = "Traceback (most recent call last):\n" + "".join(
        f'  File "app.py", line {i}, in f\n    return f(n - 1)  ✓\n' for i in range(2000)
    ) + "RecursionError: deep\n"
    cut = bound_traceback(text)
    assert len(cut.encode("utf-8")) <= MAX_TRACEBACK_BYTES
    assert cut.startswith("Traceback (most recent call last):")
    assert cut.endswith("RecursionError: deep\n")
    assert "bytes of traceback cut: tracebacks are kept up to 16 KiB] ..." in cut
    cut_bytes = int(cut.split("\n... [")[1].split(" ")[0])
    assert cut_bytes == len(text.encode("utf-8")) - len(
        cut.encode("utf-8")) + len(cut.split("\n... [")[1].split("] ...\n")[0]) + 12
    short = "Traceback (most recent call last):\nValueError: x\n"
    assert bound_traceback(short) == short


def test_an_error_never_raised_has_no_traceback_and_tracebacks_do_not_change_equality() -> None:
    assert ErrorInfo.from_exception(ValueError("x")).traceback is None
    try:
        raise ValueError("x")
    except ValueError as exc:
        raised = ErrorInfo.from_exception(exc)
    assert raised.traceback is not None and "raise ValueError" in raised.traceback
    assert raised == ErrorInfo("ValueError", "x")  # replays compare type and message
    assert ErrorInfo.from_dict(raised.to_dict()).traceback == raised.traceback
    assert ErrorInfo.from_dict({"type": "E", "message": "m"}).traceback is None  # old data


def _deep(n: int) -> None:
    """Raise an error with ``n`` chained causes: a traceback far over 16 KiB."""
    cause: Exception | None = None
    for i in range(n):
        try:
            raise OSError(f"cause {i}: " + "x" * 100) from cause
        except OSError as exc:
            cause = exc
    raise ValueError("connect to postgresql://app:S3cretPw@db/prod failed") from cause


def test_a_failed_run_keeps_a_bounded_redacted_traceback(any_store: Store) -> None:
    app = App("tb")

    def body() -> None:
        _deep(300)

    @app.function(id="f", trigger=on_event("go"), retries=0)
    async def f(ctx: Context) -> None:
        await ctx.step.run("deep", body)

    eng = TestEngine(app, store=any_store)
    [run] = eng.send(Event("go")).runs
    view = _reopened(app, eng).run(run.id).view()
    assert view.status == "failed"
    [step] = view.steps
    assert step.error is not None and step.error.traceback is not None
    tb = step.error.traceback
    assert len(tb.encode("utf-8")) <= MAX_TRACEBACK_BYTES
    assert "bytes of traceback cut" in tb
    assert tb.startswith("Traceback (most recent call last):")
    assert tb.rstrip().endswith("ValueError: connect to postgresql://app:***@db/prod failed")
    assert "S3cretPw" not in tb
    # The run failed of the step's StepError: its traceback (the orchestration code's) ends
    # with the step's own error, and the stored record keeps it (every store).
    assert view.error is not None and view.error.type == "StepError"
    assert view.error.traceback is not None and "The step's own error" in view.error.traceback
    stored = any_store.get_run(run.id).error
    assert stored is not None and stored.traceback == view.error.traceback
    # And --json shows it.
    doc = view.to_dict()
    assert doc["error"]["traceback"] == view.error.traceback
    assert doc["steps"][0]["attempt_log"][0]["error"]["traceback"] == tb


def test_three_failed_attempts_then_success_keep_three_errors(any_store: Store) -> None:
    app = App("three")
    calls: list[int] = []

    def flaky(ctx: Context) -> str:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"refused on attempt {ctx.attempt}")
        return "ok"

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> str:
        return await ctx.step.run("call", flaky, ctx)

    eng = TestEngine(app, store=any_store)
    [run] = eng.send(Event("go")).runs
    eng.advance("1h")
    assert calls == [0, 1, 2, 3]
    view = _reopened(app, eng).run(run.id).view()
    assert (view.status, view.output) == ("completed", "ok")
    [step] = view.steps
    assert (step.status, step.attempts, step.error) == ("completed", 4, None)
    log = step.attempt_log
    assert [a.attempt for a in log] == [0, 1, 2, 3]
    assert [a.error.message if a.error else None for a in log] == [
        "refused on attempt 0", "refused on attempt 1", "refused on attempt 2", None]
    for a in log[:3]:
        assert a.error is not None and a.error.type == "ConnectionError"
        assert a.error.traceback is not None and "in flaky" in a.error.traceback
        assert a.retry_at is not None and a.started_at is not None
        assert a.started_at <= a.ended_at <= a.retry_at
    # Each attempt started at its retry time; the step started with its first attempt.
    assert [log[i + 1].started_at for i in range(3)] == [a.retry_at for a in log[:3]]
    assert step.started_at == log[0].started_at == view.created_at
    assert step.ended_at == log[3].ended_at and step.duration_ms == log[3].ended_at - (
        log[0].started_at or 0)
    raw = view.to_dict()["steps"][0]
    assert len(raw["attempt_log"]) == 4 and raw["attempt_log"][0]["started_at"].endswith(
        "+00:00")


def test_a_retrying_run_shows_its_error_and_next_attempt_and_keeps_it_after(
        any_store: Store) -> None:
    app = App("code")
    seen: list[int] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> str:
        seen.append(ctx.attempt)
        await ctx.step.run("a", lambda: 1)
        if ctx.attempt == 0:
            raise KeyError("missing")
        return "done"

    eng = TestEngine(app, store=any_store)
    [run] = eng.send(Event("go")).runs
    view = _reopened(app, eng).run(run.id).view()
    assert run.status == "sleeping"  # as stored
    assert view.status == "retrying"
    assert view.error is not None and view.error.type == "KeyError"
    assert view.error.traceback is not None and "raise KeyError" in view.error.traceback
    assert view.next_attempt_at is not None and view.next_attempt_at > view.created_at
    assert view.to_dict()["next_attempt_at"].endswith("+00:00")
    eng.advance("1h")
    view = _reopened(app, eng).run(run.id).view()
    assert (view.status, view.error, view.next_attempt_at) == ("completed", None, None)
    [failed] = view.attempt_log  # the failed attempt of the code is kept
    assert failed.error is not None and failed.error.message == "'missing'"
    assert seen == [0, 1]


def test_an_ended_run_shows_ended_steps() -> None:
    app = App("ended")

    def boom() -> None:
        raise RuntimeError("no")

    @app.function(id="f", trigger=on_event("go"), retries=0)
    async def f(ctx: Context) -> Any:
        return await ctx.gather(ctx.step.sleep("nap", "1h"),
                                ctx.step.wait_for_event("w", event="paid", timeout="2h"),
                                ctx.step.run("boom", boom))

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    view = run.view()
    assert view.status == "waiting"
    nap, w, boom_ = view.steps
    assert (nap.status, w.status, boom_.status) == ("sleeping", "waiting", "failed")
    eng.advance("10m")
    eng.cancel_run(run.id)
    view = run.view()
    assert view.status == "cancelled"
    nap, w, boom_ = view.steps  # no step of an ended run is left sleeping or waiting
    assert (nap.status, w.status, boom_.status) == ("abandoned", "abandoned", "failed")
    assert nap.ended_at == w.ended_at == view.ended_at == view.created_at + 600_000
    assert nap.until == view.created_at + 3600_000 and w.until == view.created_at + 7200_000
    assert w.waiting_for == {"event": "paid", "if": None}
    assert view.error is not None and view.error.traceback is None  # a cancel never raised


def test_sleeps_and_waits_say_what_they_wait_for_and_until_when() -> None:
    app = App("waits")

    @app.function(id="kid", trigger=on_event("kid"))
    async def kid(ctx: Context) -> int:
        await ctx.step.sleep("z", "1d")
        return 1

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> Any:
        await ctx.step.sleep("nap", "10m")
        await ctx.step.wait_for_event("w", event="paid", if_="async.data.k == event.data.k",
                                      timeout="1h")
        return await ctx.step.invoke("k", function=kid)

    eng = TestEngine(app)
    [run] = eng.send(Event("go", {"k": 1})).runs
    [nap] = run.view().steps
    assert (nap.status, nap.until, nap.waiting_for) == (
        "sleeping", run.view().created_at + 600_000, None)
    eng.advance("10m")
    nap, w = run.view().steps
    assert nap.status == "completed" and nap.duration_ms == 600_000
    assert w.status == "waiting" and w.waiting_for == {
        "event": "paid", "if": "async.data.k == event.data.k"}
    eng.send(Event("paid", {"k": 1}))
    k = run.view().steps[2]
    assert k.status == "waiting" and k.waiting_for is not None
    assert k.waiting_for["function"] == "kid" and k.waiting_for["run_id"]
    assert k.until is not None


# --------------------------------------------------------------------------- ctx.attempt


def test_ctx_attempt_in_orchestration_code_follows_the_step_being_retried(
        any_store: Store) -> None:
    app = App("follow")
    before: list[int] = []
    after: list[int] = []
    args: list[str] = []

    def fetch(url: str) -> str:
        args.append(url)
        if not url.endswith("mirror-2"):
            raise TimeoutError(url)
        return url

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> str:
        before.append(ctx.attempt)
        # Code before the step picks other arguments on a later attempt.
        url = "https://primary" if ctx.attempt == 0 else f"https://mirror-{ctx.attempt}"
        got = await ctx.step.run("fetch", fetch, url)
        after.append(ctx.attempt)  # past the step: the next step's attempt (0)
        return got

    eng = TestEngine(app, store=any_store)
    [run] = eng.send(Event("go")).runs
    for _ in range(4):  # restarts in between: the attempt is read from the journal
        eng = _reopened(app, eng)
        eng.advance("2m")
    assert eng.run(run.id).output == "https://mirror-2"
    assert args == ["https://primary", "https://mirror-1", "https://mirror-2"]
    assert before[:3] == [0, 1, 2] and after == [0]
    # The recorded run replays: a replay reads each attempt from the journal.
    view = replay(app, export_run(eng.store, run.id))
    assert view.status == "completed"
    [step] = eng.run(run.id).view().steps
    assert [a.error.message if a.error else None for a in step.attempt_log] == [
        "https://primary", "https://mirror-1", None]


def test_if_attempt_over_n_takes_a_fallback_step_and_the_run_replays(any_store: Store) -> None:
    app = App("fallback")

    def primary() -> str:
        raise ConnectionError("primary down")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> str:
        if ctx.attempt > 1:  # Inngest's pattern, as written
            return await ctx.step.run("fallback", lambda: "from fallback")
        return await ctx.step.run("primary", primary)

    eng = TestEngine(app, store=any_store)
    [run] = eng.send(Event("go")).runs
    eng.advance("5m")
    view = _reopened(app, eng).run(run.id).view()
    assert (view.status, view.output) == ("completed", "from fallback")
    [step] = view.steps
    assert (step.id, step.status, step.attempts) == ("fallback", "completed", 3)
    assert [(a.attempt, a.step_id) for a in step.attempt_log] == [
        (0, "primary"), (1, "primary"), (2, "fallback")]
    assert replay(app, export_run(eng.store, run.id)).output == "from fallback"
    report = check_deploy(app, eng.store, include_ended_since_ms=0)
    assert report.checked == 1 and report.failures == []


def test_a_retry_inside_a_gather_keeps_the_other_members() -> None:
    app = App("gather")
    calls: dict[str, int] = {"a": 0, "b": 0}

    def a(ctx: Context) -> str:
        calls["a"] += 1
        if ctx.attempt == 0:
            raise RuntimeError("first a fails")
        return "A"

    def b() -> str:
        calls["b"] += 1
        return "B"

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> Any:
        got = await ctx.gather(ctx.step.run("a", a, ctx), ctx.step.sleep("nap", "1h"),
                               ctx.step.run("b", b))
        return list(got)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("2m")  # a retried while the sleep is pending: the sleep is kept
    assert run.status == "sleeping"
    eng.advance("1h")
    assert run.output == ["A", None, "B"]
    assert calls == {"a": 2, "b": 1}
    entries = eng.store.load_journal(run.id)
    assert [e.step_id for e in entries if e.op == JournalOp.SCHEDULED] == ["nap"]


def test_a_body_still_running_in_a_gather_is_not_dispatched_again_by_a_retry() -> None:
    app = App("inflight")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> Any:
        return list(await ctx.gather(ctx.step.run("a", lambda: "A"),
                                     ctx.step.run("slow", lambda: "S")))

    m = RunMachine(app.get("f"), "r1", [Event("go", {})], 0)
    cmds = m.handle(RunStarted(0))
    a, slow = [c for c in cmds if isinstance(c, ExecuteStep)]
    m.handle(StepFailed(a.position, a.attempt, RuntimeError("a fails"), 10))
    deadline = m.next_deadline()
    assert deadline is not None
    cmds = m.handle(TimerFired(deadline))
    [again] = [c for c in cmds if isinstance(c, ExecuteStep)]
    assert (again.step_id, again.attempt) == ("a", 1)  # the code re-driven up to a
    assert m.is_current(slow)  # the running body is still the one the run waits for
    m.step_completed(slow.position, slow.attempt, "S", deadline + 1)
    m.step_completed(again.position, again.attempt, "A", deadline + 2)
    assert m.done and json.loads(m.output or "null") == ["A", "S"]


# --------------------------------------------------------------------------- limits


def test_the_run_output_counts_in_the_run_state_limit() -> None:
    app = App("state")
    chunk = MAX_STEP_OUTPUT_BYTES - 100

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> str:
        n = MAX_RUN_STATE_BYTES // chunk  # the steps' outputs fit, 800 bytes under...
        for i in range(n):
            await ctx.step.run(f"s{i}", lambda: "x" * chunk)
        return "y" * 2000  # ...the output takes the run over the limit

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "LimitExceededError"
    assert "recorded state" in run.error.message and "run's output" in run.error.message


def test_the_event_data_counts_in_the_run_state_limit() -> None:
    app = App("events")
    chunk = MAX_STEP_OUTPUT_BYTES - 100
    n = MAX_RUN_STATE_BYTES // chunk
    # The steps' outputs alone fit; with the event's data they do not.
    assert n * chunk <= MAX_RUN_STATE_BYTES < n * chunk + 300_000

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> int:
        for i in range(n):
            await ctx.step.run(f"s{i}", lambda: "x" * chunk)
        return n

    eng = TestEngine(app)
    [run] = eng.send(Event("go", {"blob": "e" * 300_000})).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "LimitExceededError"
    [small] = eng.send(Event("go", {"blob": ""})).runs
    assert small.status == "completed"


def test_the_run_output_is_limited_like_a_step_output() -> None:
    app = App("out")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> str:
        return "z" * (MAX_STEP_OUTPUT_BYTES + 1)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "LimitExceededError"
    assert "output" in run.error.message


# --------------------------------------------------------------------------- CLI


def test_runs_show_prints_attempts_errors_and_tracebacks(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = App("cli")

    def flaky(ctx: Context) -> str:
        if ctx.attempt < 2:
            raise ConnectionError(f"refused {ctx.attempt}")
        raise ValueError("bad data")

    @app.function(id="f", trigger=on_event("go"), retries=2)
    async def f(ctx: Context) -> str:
        return await ctx.step.run("call", flaky, ctx)

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = SQLiteStore(tmp_path / "cli.db")
    eng = TestEngine(app, store=store)
    [run] = eng.send(Event("go")).runs
    eng.advance("10m")
    store.close()
    assert main(["runs", "show", run.id, "--store", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "failed"
    [step] = doc["steps"]
    assert [a["error"]["message"] for a in step["attempt_log"]] == [
        "refused 0", "refused 1", "bad data"]
    assert all("Traceback" in a["error"]["traceback"] for a in step["attempt_log"])
    assert step["started_at"].endswith("+00:00") and step["duration_ms"] >= 0
    assert "Traceback" in doc["error"]["traceback"]
    assert main(["runs", "show", run.id, "--store", url]) == 0
    out = capsys.readouterr().out
    # Counted from 1 in text, as the run lines and the dashboard count them (--json and
    # ctx.attempt count from 0).
    assert "attempt 1 call: ConnectionError: refused 0 (next attempt" in out
    assert "attempt 3 call: ValueError: bad data" in out
    assert "Traceback (most recent call last)" in out


def test_ctx_attempt_adds_the_codes_own_failures_to_the_steps_attempts() -> None:
    app = App("both")
    seen: list[tuple[str, int]] = []

    def flaky(ctx: Context) -> int:
        seen.append(("body", ctx.attempt))
        if ctx.attempt == 0:
            raise RuntimeError("step hiccup")
        return ctx.attempt

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> int:
        seen.append(("code", ctx.attempt))
        if ctx.attempt == 0:
            raise RuntimeError("code hiccup")  # the code's own failure: 1
        return await ctx.step.run("s", flaky, ctx)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("10m")
    assert run.output == 1
    # The code re-entered after raising (1), then re-driven for the step's second attempt
    # (1 + 1); the body reads its own step's attempt.
    assert seen == [("code", 0), ("code", 1), ("body", 0), ("code", 2), ("body", 1)]
    assert replay(app, export_run(eng.store, run.id)).output == 1


def test_a_journal_written_before_tracebacks_and_start_times_still_replays() -> None:
    app = App("old")

    def flaky(ctx: Context) -> int:
        if ctx.attempt == 0:
            raise RuntimeError("once")
        return 7

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> int:
        a = await ctx.step.run("a", lambda: 1)
        await ctx.step.sleep("nap", "1m")
        return a + await ctx.step.run("b", flaky, ctx)

    eng = TestEngine(app)
    [run] = eng.send(Event("go")).runs
    eng.advance("10m")
    assert run.output == 8
    doc = export_run(eng.store, run.id)
    for e in doc["journal"]:  # as an older durable-core wrote it
        e["data"].pop("started_at", None)
        if isinstance(e["data"].get("error"), dict):
            e["data"]["error"].pop("traceback", None)
    view = replay(app, doc)
    assert view.status == "completed" and view.output == 8
    a, nap, b = view.steps
    assert a.started_at == a.ended_at  # no entry before it: its own time
    assert b.started_at == nap.ended_at  # the entry before its first one
    [failed, ok] = b.attempt_log
    assert failed.error is not None and failed.error.traceback is None
    assert ok.error is None and ok.started_at == failed.ended_at  # the entry before
