"""One public surface: every ``send`` returns a :class:`Sent`; every cancel entry point is
``cancel_run(run_id, *, reason=...)``; ``__version__`` has one source."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import pathlib
import re
import tomllib
from typing import Any

import pytest
import trio
import trio.testing

import durable_core
from durable_core import (
    App,
    BackgroundWorker,
    Client,
    Context,
    Engine,
    Event,
    RunNotFoundError,
    Sent,
    Worker,
    on_event,
)
from durable_core.testing import SentRuns, Simulation, TestEngine
from stores import MemoryStore

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _app() -> App:
    app = App("surface")

    @app.function(id="napper", trigger=on_event("nap"))
    async def napper(ctx: Context) -> str:
        await ctx.step.sleep("nap", "1h")
        return "rested"

    return app


def _dup_batch() -> list[Event]:
    # One id seen before this send (after a first send of "old"), one new id twice in the
    # batch, and one event without an id.
    return [Event("nap", id="old"), Event("nap", id="new"), Event("nap", id="new"), Event("nap")]


def _check(sent: Sent) -> None:
    assert type(sent) in (Sent, SentRuns)
    assert isinstance(sent, list) and len(sent) == 4
    assert sent[:3] == ["old", "new", "new"]
    assert isinstance(sent[3], str) and sent[3] not in ("old", "new")
    assert sent.duplicates == {"old"}  # "new" was new to this send, even if repeated in it


def test_client_send_returns_sent() -> None:
    client = Client(MemoryStore(), clock=lambda: BASE_MS)
    assert client.send(Event("nap", id="old")) == ["old"]
    _check(client.send(_dup_batch()))


def test_engine_send_returns_sent() -> None:
    engine = Engine(_app(), MemoryStore(), owner="t", entropy=lambda n: b"\x07" * n)
    assert engine.send([Event("nap", id="old")], BASE_MS).duplicates == frozenset()
    _check(engine.send(_dup_batch(), BASE_MS))


def test_test_engine_send_returns_sent_with_the_runs() -> None:
    eng = TestEngine(_app())
    first = eng.send(Event("nap", id="old"))
    assert first == ["old"] and [r.id for r in first.runs] == [eng.runs[0].id]
    sent = eng.send(_dup_batch())
    _check(sent)
    assert isinstance(sent, SentRuns)
    # Two runs: one for "new" (its repeat is deduplicated) and one for the id-less event.
    assert len(sent.runs) == 2 and {r.status for r in sent.runs} == {"sleeping"}
    assert len(eng.runs) == 3


def test_simulation_send_returns_sent() -> None:
    sim = Simulation(_app())
    sim.send(Event("nap", id="old"))
    sent = sim.send(_dup_batch())
    assert type(sent) is Sent
    # The simulation lists each id once (it may deliver an event twice on purpose).
    assert sent[:2] == ["old", "new"] and len(sent) == 3
    assert sent.duplicates == {"old"}


def test_worker_send_returns_sent() -> None:
    store = MemoryStore()

    async def main() -> None:
        w = Worker(_app(), store, poll_interval=30, clock=lambda: BASE_MS)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send(Event("nap", id="old"))
            _check(await w.send(_dup_batch()))
            w.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_sent_repr_and_of() -> None:
    sent = Sent.of([("a", False), ("b", True), ("a", True)])
    assert sent == ["a", "b", "a"] and sent.duplicates == {"b"}
    assert repr(sent) == "Sent(['a', 'b', 'a'], duplicates=['b'])"


# --------------------------------------------------------------------------- cancel

CANCELLERS: list[Any] = [Client.cancel_run, TestEngine.cancel_run, Worker.cancel_run]


@pytest.mark.parametrize("method", CANCELLERS, ids=lambda m: m.__qualname__)
def test_every_cancel_entry_point_has_one_name_and_signature(method: Any) -> None:
    params = list(inspect.signature(method).parameters.values())
    assert [(p.name, p.kind, p.default) for p in params] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("run_id", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("reason", inspect.Parameter.KEYWORD_ONLY, "cancelled by request"),
    ]
    # The engine's takes the time, as each of its methods does.
    assert list(inspect.signature(Engine.cancel_run).parameters) == [
        "self", "run_id", "now", "reason"
    ]


def test_no_other_cancel_name_is_public() -> None:
    for cls in (Client, TestEngine, Worker, Engine, BackgroundWorker):
        names = {n for n in dir(cls) if "cancel" in n and not n.startswith("_")}
        assert names <= {"cancel_run", "cancel_runs", "cancel_live"}, (cls, names)
    # cancel_live is the engine's driver hook (cancels arriving for runs it holds);
    # cancel_runs the bulk cancel (by function, time range or CEL over the trigger).
    assert not hasattr(TestEngine, "cancel") and not hasattr(Engine, "request_cancel")


def test_test_engine_cancel_run_ends_the_run_with_the_reason() -> None:
    eng = TestEngine(_app())
    [run] = eng.send(Event("nap")).runs
    assert run.status == "sleeping"
    eng.cancel_run(run.id, reason="user left")
    assert run.status == "cancelled"
    assert run.error is not None and "user left" in run.error.message
    eng.advance("2h")
    assert run.status == "cancelled" and run.output is None
    with pytest.raises(RunNotFoundError):
        eng.cancel_run("r_nope")


def test_worker_cancel_run_ends_a_sleeping_run() -> None:
    store = MemoryStore()

    async def main() -> None:
        w = Worker(_app(), store, poll_interval=30,
                   clock=lambda: BASE_MS + int(trio.current_time() * 1000))
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send(Event("nap"))
            with trio.fail_after(60):
                while [r.status for r in store.list_runs()] != ["sleeping"]:
                    await trio.sleep(0.5)
            [rec] = store.list_runs()
            await w.cancel_run(rec.id, reason="by the worker")
            with trio.fail_after(600):
                while store.get_run(rec.id).status != "cancelled":
                    await trio.sleep(0.5)
            error = store.get_run(rec.id).error
            assert error is not None and "by the worker" in error.message
            with pytest.raises(RunNotFoundError):
                await w.cancel_run("r_nope")
            w.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_cli_cancels_with_the_same_verb(tmp_path: pathlib.Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import stores
    from durable_core.cli import main

    url = f"sqlite:///{tmp_path / 'cancel.db'}"
    store = stores.open(url)
    eng = TestEngine(_app(), store=store)
    [run] = eng.send(Event("nap")).runs
    assert run.status == "sleeping"
    assert main(["runs", "cancel", run.id, "--reason", "from the shell", "--store", url,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cancel_requested": run.id}
    eng.advance("1s")  # a worker (here the test engine) picks the cancel up
    assert run.status == "cancelled"
    assert run.error is not None and "from the shell" in run.error.message
    assert main(["runs", "cancel", "r_missing", "--store", url]) == 2
    assert "r_missing" in capsys.readouterr().err
    store.close()


# --------------------------------------------------------------------------- version


def test_version_has_one_source() -> None:
    # pyproject.toml reads the version from durable_core/__init__.py (dynamic), so the
    # installed distribution's metadata agrees with the package.
    assert importlib.metadata.version("durable-core") == durable_core.__version__
    path = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    meta = tomllib.loads(path.read_text(encoding="utf-8"))
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    dynamic = meta["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "durable_core.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", durable_core.__version__)


def test_test_engines_on_one_sqlite_file_do_not_reuse_ids(tmp_path: pathlib.Path) -> None:
    """The same test script run twice on one SQLite file, from the same virtual start, starts
    a run each time (ids that repeat would make the second event a duplicate)."""
    import stores

    url = f"sqlite:///{tmp_path / 'twice.db'}"
    seen = []
    for _ in range(2):
        store = stores.open(url)
        try:
            [run] = TestEngine(_app(), store=store).send(Event("nap")).runs
            assert run.status == "sleeping"
            seen.append(run.id)
        finally:
            store.close()
    assert len(set(seen)) == 2
    # On a fresh memory store the ids stay the same from one engine to the next.
    first = [TestEngine(_app()).send(Event("nap")).runs[0].id for _ in range(2)]
    assert first[0] == first[1]


def test_open_store_reads_durable_store(tmp_path: pathlib.Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``open_store()`` takes the URL, else $DURABLE_STORE, else ./durable.db, like the CLI."""
    from durable_core import open_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DURABLE_STORE", f"sqlite:///{tmp_path / 'env.db'}")
    open_store().close()
    assert (tmp_path / "env.db").exists() and not (tmp_path / "durable.db").exists()
    monkeypatch.delenv("DURABLE_STORE")
    open_store().close()
    assert (tmp_path / "durable.db").exists()
    open_store(f"sqlite:///{tmp_path / 'given.db'}").close()
    assert (tmp_path / "given.db").exists()


def test_a_users_stores_module_is_named_not_silently_used(tmp_path: pathlib.Path) -> None:
    """A script beside its own ``stores.py``: durable-core says what shadows its package."""
    import subprocess
    import sys

    (tmp_path / "stores.py").write_text("DATA = {}\n")
    (tmp_path / "main.py").write_text(
        "import stores\n"
        "from durable_core import App\n"
        "from durable_core.testing import TestEngine\n"
        "TestEngine(App('a'))\n")
    proc = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: 'import stores' found ")
    assert str(tmp_path / "stores.py") in last and "Rename your module" in last
