"""check_deploy / `durable replay`: replay a store's live runs against new code, read-only."""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import stores
from durable_core import App, Event, ValidationError
from durable_core.cli import main
from durable_core.store import Store
from durable_core.testing import TestEngine, check_deploy

APP_V1 = '''
from durable_core import App, on_event

app = App("shop")

@app.function(id="order", trigger=on_event("order/created"))
async def order(ctx):
    await ctx.step.run("charge", lambda: 1)
    await ctx.step.run("ship", lambda: 2)
    await ctx.step.sleep("cool-off", "1d")
    return "done"

@app.function(id="refund", trigger=on_event("refund/asked"))
async def refund(ctx):
    await ctx.step.run("check", lambda: 1)
    await ctx.step.wait_for_event("approval", event="refund/approved", timeout="7d")
    return "refunded"
'''

# Version 2 swaps "charge" and "ship" in "order"; "refund" is unchanged.
APP_V2 = APP_V1.replace(
    'await ctx.step.run("charge", lambda: 1)\n    await ctx.step.run("ship", lambda: 2)',
    'await ctx.step.run("ship", lambda: 2)\n    await ctx.step.run("charge", lambda: 1)',
)
assert APP_V2 != APP_V1

ORDERS, REFUNDS, ENDED = 60, 50, 3


def load(tmp_path: pathlib.Path, name: str, source: str) -> App:
    (tmp_path / f"{name}.py").write_text(source)
    namespace: dict[str, Any] = {}
    exec(compile(source, f"{name}.py", "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, App)
    return app


def populate(store: Store, app: App) -> tuple[set[str], set[str]]:
    """ENDED runs of "order" that completed, then ORDERS runs of "order" parked on their
    sleep and REFUNDS runs of "refund" parked on their wait."""
    eng = TestEngine(app, store=store)
    eng.send([Event("order/created", {"i": -i}) for i in range(1, ENDED + 1)])
    eng.advance("1d")
    orders = {r.id for r in eng.send(
        [Event("order/created", {"i": i}) for i in range(ORDERS)]).runs}
    refunds = {r.id for r in eng.send(
        [Event("refund/asked", {"i": i}) for i in range(REFUNDS)]).runs}
    assert {r.id for r in store.list_runs(status="sleeping", limit=1000)} == orders
    assert {r.id for r in store.list_runs(status="waiting", limit=1000)} == refunds
    assert len(store.list_runs(status="completed", limit=1000)) == ENDED
    return orders, refunds


def snapshot(store: Store) -> str:
    runs = sorted(store.list_runs(limit=100_000), key=lambda r: r.id)
    return repr([(r, store.load_journal(r.id)) for r in runs])


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        schema = request.getfixturevalue("pg_schema")
        yield f"{url}?schema={schema}"


def test_report_names_exactly_the_runs_of_the_changed_function(
    store_url: str, tmp_path: pathlib.Path
) -> None:
    store = stores.open(store_url)
    try:
        v1, v2 = load(tmp_path, "v1", APP_V1), load(tmp_path, "v2", APP_V2)
        orders, refunds = populate(store, v1)
        before = snapshot(store)

        same = check_deploy(v1, store)
        assert same.ok and same.checked == len(orders) + len(refunds)

        report = check_deploy(v2, store)
        assert snapshot(store) == before  # read-only: runs and journals unchanged
        by_fn = {f.function_id: f for f in report.functions}
        assert not report.ok
        assert by_fn["refund"].checked == len(refunds) and by_fn["refund"].failures == ()
        assert by_fn["order"].checked == len(orders)
        assert {x.run_id for x in by_fn["order"].failures} == orders
        for x in by_fn["order"].failures:
            assert (x.error, x.position, x.recorded) == ("DeterminismError", 0, "charge (run)")
            assert x.requested == "ship (run)"
        assert f"order: {ORDERS} checked, {ORDERS} would fail" in report.format()

        # ended runs are checked only when asked for: the completed orders now fail too
        ended = check_deploy(v2, store, include_ended_since_ms=0)
        assert snapshot(store) == before
        assert {f.function_id: f.checked for f in ended.functions} == {
            "order": ORDERS + ENDED, "refund": REFUNDS}
        assert len(ended.failures) == ORDERS + ENDED
        # a function the app no longer has: each of its runs is reported
        gone = App("shop")
        rest = check_deploy(gone, store)
        assert all(f.missing for f in rest.functions) and len(rest.failures) == rest.checked
    finally:
        store.close()


def test_cli_exit_codes_and_json(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = stores.open(url)
    try:
        orders, _ = populate(store, load(tmp_path, "shop_v1", APP_V1))
        before = snapshot(store)
    finally:
        store.close()
    load(tmp_path, "shop_v2", APP_V2)
    monkeypatch.syspath_prepend(str(tmp_path))

    def run(*args: str) -> tuple[int, str]:
        code = main(["replay", *args, "--store", url])
        return code, capsys.readouterr().out

    code, out = run("--app", "shop_v1:app")
    assert code == 0 and "would fail" in out and out.rstrip().endswith("ok")
    code, out = run("--app", "shop_v2:app")
    assert code == 1
    run_id = min(orders)
    assert f"{run_id} (sleeping) at step 0: recorded charge (run), asked for ship (run)" in out
    code, out = run("--app", "shop_v2:app", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["failed"] == ORDERS
    assert [f["function_id"] for f in doc["functions"]] == ["order", "refund"]
    failures = doc["functions"][0]["failures"]
    assert {f["run_id"] for f in failures} == orders
    [failure] = [f for f in failures if f["run_id"] == run_id]
    assert failure["position"] == 0 and failure["recorded"] == "charge (run)"
    assert set(failure) == {"run_id", "status", "error", "message", "position", "recorded",
                            "requested"}
    code, out = run("--app", "shop_v2:app", "--json", "--ended-within", "3650d")
    assert code == 1 and json.loads(out)["checked"] == ORDERS + ENDED + REFUNDS
    store = stores.open(url)
    try:
        assert snapshot(store) == before
    finally:
        store.close()
    for name in ("shop_v1", "shop_v2"):
        sys.modules.pop(name, None)



# --------------------------------------------------------------------------- 1,000 runs, in
# parallel processes, against SQLite and PostgreSQL

BULK_V1 = '''
from durable_core import App, on_event

app = App("bulk")

@app.function(id="pay", trigger=on_event("pay/asked"))
async def pay(ctx):
    i = ctx.event.data["i"]
    await ctx.step.run("check", lambda: i)
    if i % 7 == 0:
        await ctx.step.run("fraud-check", lambda: True)
    await ctx.step.sleep("settle", "1d")
    return i

@app.function(id="notify", trigger=on_event("notify/asked"))
async def notify(ctx):
    i = ctx.event.data["i"]
    await ctx.step.wait_for_event("ack", event="notify/ack", timeout="7d")
    return i
'''

# Version 2 renames a step only runs with i % 7 == 0 took, and reads a field only events
# with i % 11 == 0 lack (their code now raises a KeyError before the wait they are parked on).
BULK_V2 = BULK_V1.replace('"fraud-check"', '"risk-check"').replace(
    '    i = ctx.event.data["i"]\n    await ctx.step.wait_for_event(',
    '    i = ctx.event.data["i"]\n    if i % 11 == 0:\n        ctx.event.data["channel"]\n'
    '    await ctx.step.wait_for_event(',
)
assert BULK_V2.count("risk-check") == 1 and "channel" in BULK_V2
PAYS, NOTIFIES = 700, 300


def dump(url: str) -> Any:
    """Every row of every table of the store, sorted, with the sequences' values: any write
    at all changes it."""
    if url.startswith("sqlite:"):
        import sqlite3

        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            tables = [t for (t,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in tables} | {
                "user_version": db.execute("PRAGMA user_version").fetchone()}
        finally:
            db.close()
    import psycopg
    from psycopg import sql

    base, _, schema = url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "ORDER BY table_name", (schema,))]
        out: dict[str, Any] = {t: sorted(map(repr, conn.execute(
            sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(t)))))
            for t in tables}
        out["sequences"] = list(conn.execute(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = %s "
            "ORDER BY sequencename", (schema,)))
        return out


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return f"{request.getfixturevalue('pg_url')}?schema={request.getfixturevalue('pg_schema')}"


def test_durable_replay_of_1000_runs_in_processes_names_exactly_the_broken_ones(
    shared_url: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"bulk_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}_v1.py").write_text(BULK_V1)
    (tmp_path / f"{name}_v2.py").write_text(BULK_V2)
    monkeypatch.syspath_prepend(str(tmp_path))  # (spawned processes get the same path)
    store = stores.open(shared_url)
    try:
        eng = TestEngine(load(tmp_path, "bulk_v1", BULK_V1), store=store)
        eng.send([Event("pay/asked", {"i": i}) for i in range(PAYS)])
        eng.send([Event("notify/asked", {"i": i}) for i in range(NOTIFIES)])
        runs = [r for s in ("sleeping", "waiting") for r in store.list_runs(status=s, limit=5000)]
        assert len(runs) == PAYS + NOTIFIES
        i_of = {r.id: json.loads(r.events[0])["data"]["i"] for r in runs}
        fn_of = {r.id: r.function_id for r in runs}
    finally:
        store.close()
    broken_pays = {r for r, i in i_of.items() if fn_of[r] == "pay" and i % 7 == 0}
    broken_notifies = {r for r, i in i_of.items() if fn_of[r] == "notify" and i % 11 == 0}
    assert (len(broken_pays), len(broken_notifies)) == (100, 28)
    before = dump(shared_url)

    from durable_core.testing import _deploy

    parallel: list[int] = []
    real = _deploy._replay_in_processes

    def spy(app: str, store: str, run_ids: list[str], processes: int) -> Any:
        parallel.append(processes)
        return real(app, store, run_ids, processes)

    monkeypatch.setattr(_deploy, "_replay_in_processes", spy)

    def durable_replay(app: str) -> tuple[int, dict[str, Any]]:
        code = main(["replay", "--app", app, "--store", shared_url, "--json", "--jobs", "2"])
        return code, json.loads(capsys.readouterr().out)

    code, doc = durable_replay(f"{name}_v1:app")
    assert code == 0 and doc["ok"] and doc["checked"] == PAYS + NOTIFIES
    code, doc = durable_replay(f"{name}_v2:app")
    assert parallel == [2, 2]  # both checks ran in two processes
    assert code == 1 and doc["checked"] == PAYS + NOTIFIES
    assert doc["failed"] == len(broken_pays) + len(broken_notifies)
    by_fn = {f["function_id"]: f for f in doc["functions"]}
    assert (by_fn["pay"]["checked"], by_fn["notify"]["checked"]) == (PAYS, NOTIFIES)
    assert {f["run_id"] for f in by_fn["pay"]["failures"]} == broken_pays
    assert {f["run_id"] for f in by_fn["notify"]["failures"]} == broken_notifies
    for f in by_fn["pay"]["failures"]:
        assert (f["error"], f["position"], f["recorded"], f["requested"]) == (
            "DeterminismError", 1, "fraud-check (run)", "risk-check (run)")
    for f in by_fn["notify"]["failures"]:
        assert (f["error"], f["message"], f["position"], f["recorded"], f["requested"]) == (
            "KeyError", "'channel'", 0, "ack (wait_for_event)", "raise KeyError")
    assert dump(shared_url) == before  # nothing in the store changed
    for module in (f"{name}_v1", f"{name}_v2"):
        sys.modules.pop(module, None)


def test_the_code_raising_on_an_old_journal_is_reported(tmp_path: pathlib.Path) -> None:
    """Before, orchestration code that raised an ordinary exception on a recorded journal
    replayed as a run-level retry, and the deploy check said nothing."""
    store = stores.MemoryStore()
    eng = TestEngine(load(tmp_path, "bulk_v1", BULK_V1), store=store)
    [run] = eng.send(Event("notify/asked", {"i": 22})).runs
    report = check_deploy(load(tmp_path, "bulk_v2", BULK_V2), store)
    [failure] = report.failures
    assert (failure.run_id, failure.error, failure.message, failure.position) == (
        run.id, "KeyError", "'channel'", 0)
    text = report.format()
    assert f"{run.id} (waiting) at step 0: the code raised KeyError: 'channel'" in text
    # The same error the recorded run already had is not the deploy's doing.
    same = TestEngine(load(tmp_path, "bulk_v2", BULK_V2), store=stores.MemoryStore())
    [failing] = same.send(Event("notify/asked", {"i": 33})).runs
    assert failing.status == "sleeping"  # backing off after its code raised
    assert check_deploy(load(tmp_path, "bulk_v2", BULK_V2), same.store).ok
    fixed = BULK_V2.replace('ctx.event.data["channel"]', 'ctx.event.data.get("channel")')
    assert check_deploy(load(tmp_path, "bulk_v3", fixed), same.store).ok
    broken = BULK_V2.replace('ctx.event.data["channel"]', 'ctx.event.data["x"]')
    [failure] = check_deploy(load(tmp_path, "bulk_v4", broken), same.store).failures
    assert (failure.run_id, failure.error, failure.message) == (failing.id, "KeyError", "'x'")


def test_the_code_ending_where_the_journal_went_on_is_reported(tmp_path: pathlib.Path) -> None:
    store = stores.MemoryStore()
    [run] = TestEngine(load(tmp_path, "v1", APP_V1), store=store).send(
        Event("order/created", {})).runs
    early = APP_V1.replace('    await ctx.step.run("ship", lambda: 2)\n',
                           '    return "early"\n', 1)
    [failure] = check_deploy(load(tmp_path, "early", early), store).failures
    assert (failure.run_id, failure.position, failure.recorded, failure.requested) == (
        run.id, 1, "ship (run)", "the run's end")


def test_jobs_need_paths_a_shared_store_and_a_positive_count(tmp_path: pathlib.Path) -> None:
    app = load(tmp_path, "v1", APP_V1)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    for kwargs, field in [
        ({"app": app, "store": url, "jobs": 2}, "app"),
        ({"app": "v1:app", "store": "memory://", "jobs": 2}, "store"),
        ({"app": "v1:app", "store": stores.MemoryStore(), "jobs": 2}, "store"),
        ({"app": app, "store": stores.MemoryStore(), "jobs": 0}, "jobs"),
        ({"app": "no_such_module_here", "store": stores.MemoryStore()}, "app"),
    ]:
        with pytest.raises(ValidationError) as caught:
            check_deploy(**kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field, kwargs


def test_a_replay_process_that_dies_is_an_error_not_a_hang(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = stores.open(url)
    try:
        populate(store, load(tmp_path, "v1", APP_V1))
    finally:
        store.close()
    # The app imports in this process, not in the replay processes.
    (tmp_path / "child_fails.py").write_text(
        "import multiprocessing\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise SystemExit(3)\n" + APP_V1)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["replay", "--app", "child_fails:app", "--store", url, "--jobs", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "a replay process stopped before it finished" in err
    assert "--jobs 1" in err
    sys.modules.pop("child_fails", None)
