"""ctx.patched / ctx.deprecate_patch: changing a function's code under runs in flight.

The scenario of docs/determinism.md, version by version: runs started on one version are
replayed and continued by the next (a new TestEngine on the same store, as after a deploy),
and check_deploy says before each deploy which running runs the new version would break.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

import stores
from durable_core import App, Context, DeterminismError, Event, ValidationError, on_event
from durable_core.core._journal import JournalFold
from durable_core.core._model import JournalOp
from durable_core.store import Store
from durable_core.testing import TestEngine, check_deploy, export_run, replay

START = "2026-05-01T09:00:00Z"
_orders = iter(range(1_000_000))


def order_event() -> Event:
    """An order event with an id of its own (engines built at the same instant on one
    store would otherwise give two events the same id)."""
    return Event("order/created", {"amount": 100}, id=f"order-{next(_orders)}")


def tax_v1(amount: int) -> int:
    return amount // 10


def tax_v2(amount: int) -> int:
    return amount // 5


def version(n: int) -> App:
    """The app at version ``n``: 1 the original, 2 with the patch, 3 the patch deprecated,
    4 the patch removed. Each asks for the patch before its first step and again after
    its sleep (the same id twice gives the same answer)."""
    app = App("shop")

    @app.function(id="order", trigger=on_event("order/created"))
    async def order(ctx: Context) -> dict[str, Any]:
        amount = ctx.event.data["amount"]
        if n == 1:
            tax = await ctx.step.run("tax", tax_v1, amount)
        elif n == 2:
            if ctx.patched("tax-v2"):
                tax = await ctx.step.run("tax-v2", tax_v2, amount)
            else:
                tax = await ctx.step.run("tax", tax_v1, amount)
        else:
            if n == 3:
                ctx.deprecate_patch("tax-v2")
            tax = await ctx.step.run("tax-v2", tax_v2, amount)
        await ctx.step.sleep("cool-off", "1d")
        total = await ctx.step.run("charge", lambda: amount + tax)
        again = ctx.patched("tax-v2") if n == 2 else None
        return {"version": n, "total": total, "again": again}

    return app


def deploy(app: App, store: Store, after: TestEngine) -> TestEngine:
    """A new engine with ``app`` on ``store``, a minute after ``after`` (engines started at
    the same instant would make the same run ids: their entropy is a counter)."""
    return TestEngine(app, after.now + dt.timedelta(minutes=1), store=store)


def markers(store: Store, run_id: str) -> list[tuple[str, int, str]]:
    """The run's patch markers: (patch id, position, data)."""
    return [(e.step_id, e.position, e.data) for e in store.load_journal(run_id)
            if e.op == JournalOp.PATCHED]


def step_layout(store: Store, run_id: str) -> list[tuple[int, str]]:
    return [(e.position, e.step_id) for e in store.load_journal(run_id)
            if e.op == JournalOp.COMPLETED]


@pytest.fixture(params=["memory", "sqlite"])
def reopen(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Any]:
    """A store, and a function that closes and reopens it (a deploy restarts the
    process; the memory store is kept as it is)."""
    if request.param == "memory":
        store = stores.MemoryStore()
        yield lambda: store
        return
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    opened = [stores.open(url)]

    def again() -> Store:
        opened[-1].close()
        opened.append(stores.open(url))
        return opened[-1]

    yield again
    opened[-1].close()


def test_patch_lifecycle_across_four_versions(reopen: Any) -> None:
    store = reopen()
    # Version 1: a run starts, pays the old tax and parks on its sleep.
    v1 = TestEngine(version(1), START, store=store)
    [old] = v1.send(order_event()).runs
    assert old.status == "sleeping"

    # Version 2 is deployed: check_deploy first; the old run still replays.
    assert check_deploy(version(2), store).ok
    store = reopen()
    v2 = deploy(version(2), store, v1)
    old = v2.run(old.id)  # (a handle reads through its engine's store)
    [new] = v2.send(order_event()).runs
    assert new.status == "sleeping"
    assert markers(store, old.id) == []
    assert markers(store, new.id) == [("tax-v2", -1, '{"at":0,"deprecated":false}')]
    # The marker holds no step position: the new run's steps sit where the old one's do.
    assert [p for p, _ in step_layout(store, new.id)] == [p for p, _ in
                                                           step_layout(store, old.id)]
    v2.advance("1d")
    # The old run took the old branch, and the second ask (past the end of its journal)
    # answered the same as the first; the new one took the new branch.
    assert old.output == {"version": 2, "total": 110, "again": False}
    assert new.output == {"version": 2, "total": 120, "again": True}
    assert markers(store, old.id) == []  # the old run never recorded the marker
    assert [s.id for s in old.steps] == ["tax", "cool-off", "charge"]
    assert [s.id for s in new.steps] == ["tax-v2", "cool-off", "charge"]

    # Version 3 (deprecated) while a run started on v1 is still parked: check_deploy says
    # it would break (it took the old branch), and names the step.
    [v1_run] = deploy(version(1), store, v2).send(order_event()).runs
    [v2_run] = v2.send(order_event()).runs
    report = check_deploy(version(3), store)
    [failure] = report.failures
    assert (failure.run_id, failure.position, failure.recorded, failure.requested) == (
        v1_run.id, 0, "tax (run)", "tax-v2 (run)")
    v2.advance("2d")  # wait until the v1 run is done (with v2 deployed)
    assert v1_run.output["total"] == 110 and v2_run.output["total"] == 120

    # Now only v2 runs are running: v3 follows them.
    [v2_run] = v2.send(order_event()).runs
    assert check_deploy(version(3), store).ok
    store = reopen()
    v3 = deploy(version(3), store, v2)
    v2_run = v3.run(v2_run.id)
    [v3_run] = v3.send(order_event()).runs
    assert markers(store, v3_run.id) == [("tax-v2", -1, '{"at":0,"deprecated":true}')]
    # Version 4 (removed) cannot be deployed yet: the v2 run recorded the marker.
    report = check_deploy(version(4), store)
    [failure] = report.failures
    assert failure.run_id == v2_run.id and failure.error == "DeterminismError"
    assert (failure.position, failure.recorded, failure.requested) == (
        0, "patch 'tax-v2'", "tax-v2 (run)")
    # But the v3 run's deprecated marker is no obstacle, and a rollback to v2 follows both.
    assert check_deploy(version(2), store).ok
    v3.advance("1d")
    assert v2_run.output == {"version": 3, "total": 120, "again": None}
    assert v3_run.output == {"version": 3, "total": 120, "again": None}

    # Version 4 once only v3 runs are running.
    [v3_run] = v3.send(order_event()).runs
    assert check_deploy(version(4), store).ok
    store = reopen()
    v4 = deploy(version(4), store, v3)
    v3_run = v4.run(v3_run.id)
    [v4_run] = v4.send(order_event()).runs
    assert markers(store, v4_run.id) == []
    v4.advance("1d")
    assert v3_run.output == v4_run.output == {"version": 4, "total": 120, "again": None}
    assert {r.status for r in v4.runs} == {"completed"}


def test_a_run_parked_before_the_patch_point_takes_the_new_branch() -> None:
    """A patch placed after where a running run is parked: the run had not got that far
    with the old code, so it takes the new branch when it gets there (and records it)."""
    app = App("shop")
    took: list[bool] = []

    @app.function(id="order", trigger=on_event("order/created"))
    async def order(ctx: Context) -> str:
        await ctx.step.sleep("wait", "1h")
        took.append(ctx.patched("after-wait"))
        return "done"

    old_app = App("shop")

    @old_app.function(id="order", trigger=on_event("order/created"))
    async def order_v1(ctx: Context) -> str:
        await ctx.step.sleep("wait", "1h")
        return "done"

    store = stores.MemoryStore()
    [run] = TestEngine(old_app, START, store=store).send(order_event()).runs
    engine = TestEngine(app, "2026-05-01T09:01:00Z", store=store)
    engine.advance("1h")
    assert run.status == "completed" and took == [True]
    assert markers(store, run.id) == [("after-wait", -1, '{"at":1,"deprecated":false}')]
    # and its journal replays against the code that has the patch (it asks for it again)
    took.clear()
    replay(app, export_run(store, run.id))
    assert took == [True]


def test_a_rollback_is_caught_even_when_the_steps_are_the_same() -> None:
    """The patch changes only an argument: the steps are the same in both branches, so only
    the marker tells that a run took the new branch; code without the patch (a rollback, or
    removing the patch too early) is a DeterminismError at the first step after it."""
    def build(patched: bool) -> App:
        app = App("shop")

        @app.function(id="order", trigger=on_event("order/created"))
        async def order(ctx: Context) -> int:
            rate = 20 if patched and ctx.patched("rate") else 10
            await ctx.step.sleep("wait", "1h")
            return await ctx.step.run("charge", lambda: rate)

        return app

    store = stores.MemoryStore()
    engine = TestEngine(build(True), START, store=store)
    [run] = engine.send(order_event()).runs
    report = check_deploy(build(False), store)
    [failure] = report.failures
    assert (failure.run_id, failure.position, failure.recorded, failure.requested) == (
        run.id, 0, "patch 'rate'", "wait (sleep)")
    with pytest.raises(DeterminismError, match=r"recorded ctx.patched\('rate'\) before step "
                                               r"position 0.*ctx.deprecate_patch\('rate'\)"):
        replay(build(False), export_run(store, run.id))
    # deployed anyway, the run fails with that error rather than silently charging 10
    rolled_back = TestEngine(build(False), "2026-05-01T09:01:00Z", store=store)
    rolled_back.advance("1h")
    assert run.status == "failed" and run.error is not None
    assert run.error.type == "DeterminismError"


def test_same_id_same_answer_and_ids_are_independent() -> None:
    app = App("shop")
    answers: list[tuple[bool, ...]] = []

    @app.function(id="order", trigger=on_event("order/created"))
    async def order(ctx: Context) -> None:
        first = ctx.patched("a")
        await ctx.step.run("one", lambda: 1)
        answers.append((first, ctx.patched("a"), ctx.patched("b"), ctx.patched("a")))
        await ctx.step.sleep("wait", "1h")
        answers.append((ctx.patched("a"), ctx.patched("b")))

    engine = TestEngine(app, START)
    [run] = engine.send(order_event()).runs
    engine.advance("1h")
    assert answers == [(True, True, True, True), (True, True)]
    # each id is recorded once, before the step the code asked for next
    assert markers(engine.store, run.id) == [
        ("a", -1, '{"at":0,"deprecated":false}'), ("b", -1, '{"at":1,"deprecated":false}')]
    fold = JournalFold(engine.store.load_journal(run.id))
    assert fold.patches == {"a": (0, False), "b": (1, False)}
    assert sorted(fold.steps) == [0, 1]  # markers are not steps


def test_a_replay_without_the_marker_answers_false_everywhere() -> None:
    """An old journal replayed from the top: False at the first ask (replaying) and at a
    later ask of the same id past the end of the journal; an id first asked past the end
    is True (the run had not got there)."""
    old = App("shop")

    @old.function(id="order", trigger=on_event("order/created"))
    async def order_v1(ctx: Context) -> None:
        await ctx.step.run("one", lambda: 1)
        await ctx.step.sleep("wait", "1h")

    new = App("shop")
    answers: list[bool] = []

    @new.function(id="order", trigger=on_event("order/created"))
    async def order_v2(ctx: Context) -> None:
        answers.append(ctx.patched("a"))
        await ctx.step.run("one", lambda: 1)
        await ctx.step.sleep("wait", "1h")
        answers.extend([ctx.patched("a"), ctx.patched("c")])

    store = stores.MemoryStore()
    [run] = TestEngine(old, START, store=store).send(order_event()).runs
    TestEngine(new, "2026-05-01T09:01:00Z", store=store).advance("1h")
    assert run.status == "completed" and answers == [False, False, True]
    assert [m[0] for m in markers(store, run.id)] == ["c"]


def test_a_patch_asked_where_the_run_ends_is_recorded_before_the_end() -> None:
    app = App("shop")

    @app.function(id="order", trigger=on_event("order/created"))
    async def order(ctx: Context) -> str:
        return "new" if ctx.patched("short-cut") else "old"

    engine = TestEngine(app, START)
    [run] = engine.send(order_event()).runs
    assert run.output == "new"
    ops = [e.op for e in engine.store.load_journal(run.id)]
    assert ops == [JournalOp.PATCHED, JournalOp.RUN_ENDED]
    replay(app, export_run(engine.store, run.id))  # a finished run replays to "new"


def test_invalid_patch_ids_are_typed_errors_naming_the_field() -> None:
    app = App("shop")
    caught: list[tuple[str, str | None, str]] = []
    bad_ids: list[Any] = ["", 3, None, "x" * 257, "a\x00b", "\ud800", b"bytes"]

    @app.function(id="order", trigger=on_event("order/created"))
    async def order(ctx: Context) -> str:
        for bad in bad_ids:
            for ask in (ctx.patched, ctx.deprecate_patch):
                try:
                    ask(bad)
                except ValidationError as exc:
                    caught.append((ask.__name__, exc.field, str(exc)))
        assert ctx.patched("x" * 256)  # the longest id
        return "ok"

    engine = TestEngine(app, START)
    [run] = engine.send(order_event()).runs
    assert run.status == "completed"
    assert len(caught) == 2 * len(bad_ids)
    assert {field for _, field, _ in caught} == {"patch_id"}
    assert caught[0][2].startswith("ctx.patched(patch_id): a patch id must be a non-empty "
                                   "string of at most 256 characters, got ''")
    assert "got a str of 257 characters" in caught[6][2]
    assert "NUL" in caught[8][2] and caught[9][0] == "deprecate_patch"
    assert markers(engine.store, run.id) == [("x" * 256, -1, '{"at":0,"deprecated":false}')]


def test_an_invalid_patch_id_fails_the_run_at_once() -> None:
    app = App("shop")

    @app.function(id="order", trigger=on_event("order/created"), retries=3)
    async def order(ctx: Context) -> str:
        return "new" if ctx.patched("") else "old"

    engine = TestEngine(app, START)
    [run] = engine.send(order_event()).runs
    assert run.status == "failed" and run.error is not None
    assert run.error.type == "ValidationError" and "patch id" in run.error.message


def test_patched_in_a_step_body_is_an_error() -> None:
    app = App("shop")

    @app.function(id="order", trigger=on_event("order/created"), retries=0)
    async def order(ctx: Context) -> str:
        return await ctx.step.run("body", lambda: str(ctx.patched("inside")))

    engine = TestEngine(app, START)
    [run] = engine.send(order_event()).runs
    assert run.status == "failed" and run.error is not None
    assert "called inside a step body" in run.error.message


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"])
def test_every_store_keeps_the_marker(
    backend: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    """The marker is an ordinary journal entry (position -1): each backend stores it as it
    is, and a run reloaded from the store takes the same branch."""
    if backend == "memory":
        url = "memory://"
    elif backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        url = f"{request.getfixturevalue('pg_url')}?schema={request.getfixturevalue('pg_schema')}"
    store = stores.open(url)
    try:
        engine = TestEngine(version(2), START, store=store)
        [run] = engine.send(order_event()).runs
        if backend != "memory":
            store.close()
            store = stores.open(url)
            engine = TestEngine(version(2), "2026-05-01T09:01:00Z", store=store)
        [entry] = [e for e in store.load_journal(run.id) if e.op == "patched"]
        assert (entry.position, entry.step_id, entry.kind, json.loads(entry.data)) == (
            -1, "tax-v2", "", {"at": 0, "deprecated": False})
        engine.advance("1d")
        assert engine.run(run.id).output == {"version": 2, "total": 120, "again": True}
    finally:
        store.close()


def test_crash_test_holds_with_patch_markers() -> None:
    """Crashes before and after the commit that carries the marker, failed and unknown
    writes, duplicate deliveries: the run ends as the fault-free run does, on the new
    branch, and crash_test's invariants (no acknowledged entry changes, no replayed side
    effect) hold after every commit."""
    from durable_core.testing import crash_test

    report = crash_test(version(2).get("order"), order_event(), max_examples=25)
    assert report.outcomes == [("order", "completed",
                                {"version": 2, "total": 120, "again": True})]
