"""check_deploy / `durable replay`: replay a store's live runs against new code, read-only."""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import stores
from durable_core import App, Event
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

