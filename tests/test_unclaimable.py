"""Runs no worker has are visible as such: ``Client.unclaimable_runs``,
``Client.list_runs(unclaimable_by=app)``, ``durable runs list --unclaimable --app`` and the
worker's once-per-function warning (on memory, SQLite and Postgres)."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from collections.abc import Callable, Iterator

import pytest
import trio
import trio.testing

from durable_core import App, Client, Context, Event, Worker, on_event
from durable_core.cli import main
from durable_core.store import RunRecord, Store
from stores import MemoryStore, SQLiteStore
from stores.testing import T0, create, new_run

app = App("a")


@app.function(id="hello", trigger=on_event("hi"))
async def hello(ctx: Context) -> str:
    return await ctx.step.run("greet", lambda: "hello")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "u.db")
    else:
        from stores.postgres import PostgresStore

        new_schema: Callable[[], str] = request.getfixturevalue("pg_schemas")
        s = PostgresStore(request.getfixturevalue("pg_url"), schema=new_schema())
    yield s
    s.close()


def ids(runs: list[object]) -> list[str]:
    return [r.id for r in runs]  # type: ignore[attr-defined]


def test_client_lists_the_runs_an_app_never_claims(store: Store) -> None:
    create(store, new_run("r1", function_id="gone", created_at=T0),
           new_run("r2", function_id="hello", created_at=T0 + 1),
           new_run("r3", function_id="other", created_at=T0 + 2))
    client = Client(store)
    assert ids(client.unclaimable_runs(app)) == ["r3", "r1"]  # newest first
    assert ids(client.unclaimable_runs(app, limit=1)) == ["r3"]
    assert ids(client.list_runs(unclaimable_by=app)) == ["r3", "r1"]
    assert ids(client.list_runs("gone", unclaimable_by=app)) == ["r1"]
    assert ids(client.list_runs("hello", unclaimable_by=app)) == []
    assert ids(client.list_runs(status="completed", unclaimable_by=app)) == []
    # An app with no functions claims nothing: every run is unclaimable by it.
    assert ids(client.unclaimable_runs(App("empty"))) == ["r3", "r2", "r1"]
    assert ids(client.list_runs()) == ["r3", "r2", "r1"]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "durable_core.worker" and "does not have" in r.getMessage()]


def test_the_worker_warns_once_per_function_it_does_not_have(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Checked at most once a minute of the worker's clock (here a hand-moved one); each
    unknown function reported once, however many polls and minutes pass; a new one is
    reported when it appears. A run claimed by a poll proves that poll's check ran."""
    caplog.set_level(logging.WARNING, logger="durable_core.worker")
    create(store, new_run("orphan", function_id="gone", created_at=T0))
    now = [T0]
    done = [0]

    async def one_run(w: Worker) -> None:
        """Send a run and wait for it to complete: some polls of the worker's loop ran."""
        await w.send(Event("hi"))
        done[0] += 1
        with trio.fail_after(120):  # real seconds: generous under load
            while len(store.list_runs(function_id="hello", status="completed")) < done[0]:
                await trio.sleep(0.01)

    async def main_() -> list[list[str]]:
        seen = []
        w = Worker(app, store, poll_interval=0.01, clock=lambda: now[0])
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await one_run(w)
            await one_run(w)
            seen.append(warnings_of(caplog))  # the first poll looked
            create(store, new_run("orphan2", function_id="later", created_at=T0 + 1),
                   new_run("orphan3", function_id="gone", created_at=T0 + 2))
            now[0] += 59_000
            await one_run(w)
            seen.append(warnings_of(caplog))  # under a minute: not looked again
            now[0] += 1_000
            await one_run(w)  # its claiming poll looked first
            seen.append(warnings_of(caplog))
            for _ in range(3):
                now[0] += 61_000
                await one_run(w)
            seen.append(warnings_of(caplog))  # looked three more times: nothing new
            w.stop()
        return seen

    seen = trio.run(main_)
    assert len(seen[0]) == 1
    assert "1 queued run(s)" in seen[0][0] and "'gone'" in seen[0][0] and "'a'" in seen[0][0]
    assert seen[1] == seen[0]
    assert len(seen[2]) == 2 and "'later'" in seen[2][1] and "3 queued run(s)" in seen[2][1]
    assert seen[3] == seen[2]
    assert store.get_run("orphan").status == "queued"


def test_durable_runs_list_unclaimable(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "uapp.py").write_text(
        "from durable_core import App, Context, on_event\n"
        "app = App('u')\n"
        "@app.function(id='hello', trigger=on_event('hi'))\n"
        "async def hello(ctx: Context) -> str:\n"
        "    return 'hi'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "uapp", raising=False)
    db = tmp_path / "cli.db"
    seed = SQLiteStore(db)
    create(seed, new_run("r1", function_id="gone", created_at=T0),
           new_run("r2", function_id="hello", created_at=T0 + 1))
    seed.close()
    url = f"sqlite:///{db}"

    code = main(["runs", "list", "--unclaimable", "--app", "uapp:app", "--store", url, "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and [r["id"] for r in json.loads(out)] == ["r1"]
    code = main(["runs", "list", "--unclaimable", "--app", "uapp:app", "--status", "queued",
                 "--store", url])
    out, _ = capsys.readouterr()
    # A table: a header, then a row per run (id, function, status, created, duration,
    # steps).
    [row] = out.splitlines()[1:]
    assert code == 0 and row.split()[:3] == ["r1", "gone", "queued"]
    assert row.split()[-1] == "0"
    code = main(["runs", "list", "--store", url])
    out, _ = capsys.readouterr()
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["r2", "r1"]

    code = main(["runs", "list", "--unclaimable", "--store", url])
    _, err = capsys.readouterr()
    assert code == 2 and "--unclaimable needs --app" in err
    code = main(["runs", "list", "--app", "uapp:app", "--store", url])
    _, err = capsys.readouterr()
    assert code == 2 and "--app is used only with --unclaimable" in err


class CountingStore(MemoryStore):
    """A memory store that counts the worker's look-ups of runs of unknown functions."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def list_runs(self, **kwargs: object) -> list[RunRecord]:  # type: ignore[override]
        if kwargs.get("exclude_function_ids"):
            self.lookups += 1
        return super().list_runs(**kwargs)  # type: ignore[arg-type]


def test_the_worker_looks_for_unknown_functions_at_most_once_a_minute() -> None:
    """Ten virtual minutes of a busy worker (a run sleeping 1 s at a time, hundreds of
    polls): at most one bounded look-up a minute (the memory store runs in the trio thread,
    so virtual time is exact)."""
    store = CountingStore()
    polls = App("p")

    @polls.function(id="ticker", trigger=on_event("tick"))
    async def ticker(ctx: Context) -> int:
        for i in range(600):
            await ctx.step.sleep(f"s{i}", "1s")
        return 600

    async def main_() -> None:
        w = Worker(polls, store, poll_interval=0.25,
                   clock=lambda: T0 + int(trio.current_time() * 1000))
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send(Event("tick"))
            await trio.sleep(600)
            w.stop()

    trio.run(main_, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 10 <= store.lookups <= 11
    assert store.list_runs(function_id="ticker")[0].status in ("sleeping", "completed")
