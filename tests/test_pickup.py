"""Work created by another process reaches an idle worker at once, not at its next poll.

PostgreSQL wakes workers with LISTEN/NOTIFY (tests/test_store_postgres.py); SQLite with its
wake file, ``<db>-wake``, watched with inotify (or, without inotify, by checking
``PRAGMA data_version``). Both give the worker the same ``wait_for_notify(timeout_s) -> bool``.
The worker tests run ``durable worker --poll-interval 3600``: only a wake-up can deliver the
work within the test's (generous) timeout. Also here: a ``Client.send`` of 10,000 events is
one transaction on both SQL stores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

import stores
from durable_core import Client, Event
from durable_core.core._model import Signal
from durable_core.store import CommitBatch, RunWrite
from stores import PostgresStore, SQLiteStore
from stores.sqlite import _store as sqlite_module
from stores.testing import claim, create, entries, event_json, new_run, write

TESTS = pathlib.Path(__file__).resolve().parent
T0 = 1_700_000_000_000

_SEND = """
import sys
import stores
from durable_core import Client, Event
store = stores.open(sys.argv[1])
Client(store).send([Event(sys.argv[2]) for _ in range(int(sys.argv[3]))])
store.close()
"""


def send_from_another_process(url: str, name: str, count: int = 1) -> None:
    """``Client.send`` in a process of its own, as a web app beside the worker would."""
    subprocess.run([sys.executable, "-c", _SEND, url, name, str(count)], check=True,
                   timeout=120)


@pytest.fixture(params=["inotify", "data_version"])
def mechanism(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each SQLite wake-up mechanism: inotify, and the fallback without it."""
    if request.param == "inotify":
        if sqlite_module._inotify is None:
            pytest.skip("no inotify here")
    else:
        monkeypatch.setattr(sqlite_module, "_inotify", None)
    return str(request.param)


@pytest.fixture
def db(tmp_path: pathlib.Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "wake.db")
    try:
        yield store
    finally:
        store.close()


# --------------------------------------------------------------------------- the store


def test_a_commit_in_another_process_wakes_a_listener(db: SQLiteStore, mechanism: str) -> None:
    assert db.wait_for_notify(0) is False  # starts listening; nothing pending
    send_from_another_process(f"sqlite:///{db.path}", "x")
    assert db.wait_for_notify(60) is True
    assert db.wait_for_notify(0) is False  # drained
    send_from_another_process(f"sqlite:///{db.path}", "x")
    # A wait that starts after the write still sees it: nothing is lost between waits.
    assert db.wait_for_notify(0) is True


def test_runs_signals_and_events_wake_a_listener_and_journal_writes_do_not(
    db: SQLiteStore, mechanism: str,
) -> None:
    other = SQLiteStore(db.path)
    try:
        assert db.wait_for_notify(0) is False
        create(other, new_run("r1"))
        assert db.wait_for_notify(0) is True  # the wake-up is queued before commit returns
        assert db.wait_for_notify(0) is False
        other.append_events([event_json("e1")], T0)
        assert db.wait_for_notify(0) is True
        sig = CommitBatch(now=T0, signals=(("r1", Signal("event", "k", "{}")),))
        assert other.commit(sig) == set()
        assert db.wait_for_notify(0) is True
        epoch = claim(other, "r1").run.epoch
        assert db.wait_for_notify(0) is (mechanism == "data_version")  # any commit, there
        assert write(other, RunWrite("r1", epoch, entries(0, 1))) == set()
        # A busy worker's journal appends create no work: inotify does not wake for them.
        assert db.wait_for_notify(0) is (mechanism == "data_version")
    finally:
        other.close()


def test_this_store_s_own_commits_wake_its_listener_too(db: SQLiteStore) -> None:
    """A worker's own routing (runs created) wakes its listener too: spurious but cheap, and
    the same write wakes the other workers on the file."""
    assert db.wait_for_notify(0) is False
    create(db, new_run("r1"))
    assert db.wait_for_notify(0) is True
    assert db.wait_for_notify(0) is False


def test_close_wakes_a_blocked_listener(db: SQLiteStore, mechanism: str) -> None:
    assert db.wait_for_notify(0) is False
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(db.wait_for_notify(600)))
    t.start()
    db.close()
    t.join(60)
    assert got == [False]
    assert db.wait_for_notify(5) is False  # closed: at once


def test_a_deleted_wake_file_is_watched_again(db: SQLiteStore) -> None:
    if sqlite_module._inotify is None:
        pytest.skip("no inotify here")
    wake_file = pathlib.Path(db.path + "-wake")
    assert db.wait_for_notify(0) is False
    wake_file.unlink()
    assert db.wait_for_notify(60) is True  # told (spuriously): the file is watched again
    assert wake_file.exists()
    send_from_another_process(f"sqlite:///{db.path}", "x")  # a new writer, the new file
    assert db.wait_for_notify(60) is True


def test_a_writer_whose_wake_file_was_replaced_writes_the_new_one(db: SQLiteStore) -> None:
    if sqlite_module._inotify is None:
        pytest.skip("no inotify here")
    writer = SQLiteStore(db.path)  # its wake file is open before the file is replaced
    try:
        wake_file = pathlib.Path(db.path + "-wake")
        wake_file.unlink()
        wake_file.write_bytes(b"")
        os.chmod(wake_file, 0o600)
        assert db.wait_for_notify(0) is False  # listening to the new file
        create(writer, new_run("r1"))
        assert db.wait_for_notify(0) is True
    finally:
        writer.close()


def test_an_unusable_wake_file_leaves_polling(tmp_path: pathlib.Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "x.db-wake").mkdir()
    with caplog.at_level(logging.WARNING, logger="stores.sqlite"):
        store = SQLiteStore(tmp_path / "x.db")
    try:
        assert "no wake-ups between processes" in caplog.text and "polling" in caplog.text
        create(store, new_run("r1"))  # writes work
        assert store.wait_for_notify(0) is False  # starts listening: to this process only
        create(store, new_run("r2"))
        assert store.wait_for_notify(0) is True
        assert [r.id for r in store.list_runs()] == ["r2", "r1"]
    finally:
        store.close()


def test_an_in_memory_store_hears_its_own_commits(tmp_path: pathlib.Path) -> None:
    store = SQLiteStore(":memory:")
    create(store, new_run("r1"))
    assert store.wait_for_notify(0) is False  # starts listening: r1 came before
    create(store, new_run("r2"))
    assert store.wait_for_notify(0) is True
    assert store.wait_for_notify(0) is False
    assert not list(tmp_path.iterdir())
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(store.wait_for_notify(600)))
    t.start()
    store.close()
    t.join(60)
    assert got == [False]


# --------------------------------------------------------------------------- the worker


@contextlib.contextmanager
def worker(tmp_path: pathlib.Path, *args: str, patch: str = ""
           ) -> Iterator[tuple[Client, str]]:
    """``durable worker processes_app:app --store sqlite:///...`` with ``args``, after running
    the Python statement ``patch`` in its process; yields a client on the same file and the
    store's URL."""
    url = f"sqlite:///{tmp_path / 'worker.db'}"
    pids = tmp_path / "pids"
    pids.write_text("")
    env = dict(os.environ, DURABLE_PIDS_FILE=str(pids), PYTHONPATH=os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")]))
    code = ("import sys\nimport stores.sqlite._store as s\n" + patch +
            "\nfrom durable_core.cli import main\nsys.exit(main())")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "worker", "processes_app:app", "--store", url, *args],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    client = Client(stores.open(url))
    try:
        yield client, url
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        client.store.close()
    assert proc.returncode == 0, err  # stopped gracefully


def wait_completed(client: Client, count: int, timeout: float = 120) -> None:
    """Wait (looking at the store from this process) until ``count`` runs completed."""
    deadline = time.monotonic() + timeout
    runs = client.list_runs(limit=count + 10)
    while time.monotonic() < deadline:
        runs = client.list_runs(limit=count + 10)
        if len(runs) >= count and all(r.status == "completed" for r in runs):
            return
        time.sleep(0.02)
    raise AssertionError(f"runs did not complete: {[r.status for r in runs]}")


@pytest.mark.parametrize(("processes", "patch"), [
    ("1", ""),
    ("2", ""),
    ("1", "s._inotify = None  # the fallback: PRAGMA data_version"),
], ids=["inotify", "inotify-2-processes", "data_version"])
def test_a_worker_picks_up_work_from_another_process_without_polling(
    tmp_path: pathlib.Path, processes: str, patch: str,
) -> None:
    with worker(tmp_path, "--poll-interval", "3600", "--processes", processes,
                patch=patch) as (client, url):
        # Each round finds the worker idle (a poll due only in an hour): the runs complete
        # only if the other process's commit wakes it.
        for done in (1, 3, 6):
            send_from_another_process(url, "proc/go", done - len(client.list_runs()))
            wait_completed(client, done)


def test_without_wake_ups_polling_still_delivers(tmp_path: pathlib.Path) -> None:
    # No wait_for_notify at all: the worker has no listener and finds work by polling.
    with worker(tmp_path, "--poll-interval", "0.05",
                patch="s.SQLiteStore.wait_for_notify = None") as (client, url):
        for done in (1, 2):
            send_from_another_process(url, "proc/go")
            wait_completed(client, done)


# --------------------------------------------------------------------------- event ingest


def test_sending_10_000_events_is_one_sqlite_transaction(db: SQLiteStore) -> None:
    statements: list[str] = []
    assert db._conn is not None
    db._conn.set_trace_callback(statements.append)
    try:
        sent = Client(db).send([Event("bulk", {"i": i}) for i in range(10_000)])
    finally:
        db._conn.set_trace_callback(None)
    assert len(sent) == 10_000 and not sent.duplicates
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")] == [
        "BEGIN IMMEDIATE", "COMMIT"]
    assert len(db.unrouted_events(20_000)) == 10_000


def test_sending_10_000_events_is_one_postgres_transaction(pg_url: str, pg_schema: str) -> None:
    store = PostgresStore(pg_url, schema=pg_schema)
    try:
        sent = Client(store).send([Event("bulk", {"i": i}) for i in range(10_000)])
        assert len(sent) == 10_000
    finally:
        store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # Rows written by one transaction share its id (xmin).
        [(rows, transactions)] = conn.execute(sql.SQL(
            "SELECT count(*), count(DISTINCT xmin::text) FROM {}.events"
        ).format(sql.Identifier(pg_schema))).fetchall()
    assert (rows, transactions) == (10_000, 1)


def test_the_pickup_benchmark_app_imports_as_the_worker_imports_it() -> None:
    # benchmarks/pickup.py runs `durable worker benchmarks.pickup:app` from the repository
    # root: the module must import as `benchmarks.pickup` (a sibling script imported by its
    # bare name at the top once made every worker it started die at import).
    root = pathlib.Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c",
         "from durable_core.drivers._loading import load_app; "
         "print(sorted(load_app('benchmarks.pickup:app').functions))"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['burst',", "'pickup']"]
