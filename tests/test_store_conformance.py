"""The store conformance suite (``stores.testing``) against MemoryStore and SQLiteStore, plus
SQLite-only tests: durability across reopen, schema migrations, several processes on one
file, ``stores.open`` URLs, and a (printed, not asserted) commit-rate measurement."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlite_utils
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

import stores
from durable_core.base._errors import StoreError, ValidationError
from durable_core.core._model import ErrorInfo, JournalEntry, Signal
from durable_core.store import Claim, CommitBatch, RunRecord, RunWrite, Store, WaitRecord
from stores import MemoryStore, SQLiteStore
from stores.sqlite import _store as sqlite_module
from stores.sqlite._store import _MIGRATIONS, SCHEMA_VERSION

pytest.register_assert_rewrite("stores.testing")  # show values when a suite assert fails

from stores.testing import (  # noqa: E402
    LEASE,
    T0,
    StoreConformance,
    check_processes_never_share_runs,
    claim,
    create,
    entries,
    event_json,
    make_state_machine,
    new_run,
    run_gated,
    write,
)


class TestMemoryStore(StoreConformance):
    """The reference store against its own contract."""

    def make_store(self) -> MemoryStore:
        return MemoryStore()

    def reopen(self, store: Store) -> Store:
        pytest.skip("MemoryStore keeps nothing once closed: there is nothing to reopen")

    def fail_commits_half_way(self, store: Store) -> None:
        pytest.skip("MemoryStore decides a whole batch before changing anything; "
                    "test_a_batch_that_cannot_be_applied_leaves_nothing covers it")


def fail_sqlite_commits_half_way(store: SQLiteStore) -> None:
    """A trigger that aborts the transaction when the cron cursor "boom" is written (the
    last part of a commit)."""
    store._db.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON cron WHEN NEW.key = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )


class TestSQLiteStore(StoreConformance):
    """The SQLite store, one new file per store."""

    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.count = 0

    def make_store(self) -> SQLiteStore:
        self.count += 1
        return SQLiteStore(self.dir / f"store-{self.count}.db")

    def reopen(self, store: Store) -> Store:
        assert isinstance(store, SQLiteStore)
        store.close()
        return SQLiteStore(store.path)

    def fail_commits_half_way(self, store: Store) -> None:
        assert isinstance(store, SQLiteStore)
        fail_sqlite_commits_half_way(store)


class TestSQLiteMemoryStore(StoreConformance):
    """The SQLite store on an in-memory database (``sqlite://``)."""

    stateful_settings = settings(StoreConformance.stateful_settings, max_examples=10)

    def make_store(self) -> SQLiteStore:
        store = stores.open("sqlite://")
        assert isinstance(store, SQLiteStore)
        return store

    def reopen(self, store: Store) -> Store:
        pytest.skip("an in-memory SQLite database is gone once closed")

    def fail_commits_half_way(self, store: Store) -> None:
        assert isinstance(store, SQLiteStore)
        fail_sqlite_commits_half_way(store)


# --------------------------------------------------------------------------- the suite has teeth


class _LimitZeroLists(MemoryStore):
    def list_runs(self, *, function_id: str | None = None, status: str | None = None,
                  event_id: str | None = None, limit: int = 100) -> list[RunRecord]:
        return super().list_runs(function_id=function_id, status=status, event_id=event_id,
                                 limit=max(limit, 1))


class _HidesFencing(MemoryStore):
    def commit(self, batch: CommitBatch) -> set[str]:
        super().commit(batch)
        return set()


class _CronGoesBack(MemoryStore):
    def commit(self, batch: CommitBatch) -> set[str]:
        fenced = super().commit(batch)
        self._cron.update(batch.cron)
        return fenced


class _ExpiredLeasesStayHeld(MemoryStore):
    def claim_runs(self, owner: str, now: int, lease_ms: int, limit: int,
                   function_ids: Sequence[str] | None = None) -> list[Claim]:
        with self._lock:  # leased runs look ended while claiming: never claimed again
            held = {r: run for r, run in self._runs.items() if run.lease_owner is not None}
            self._runs.update({r: attrs.evolve(run, status="completed")
                               for r, run in held.items()})
            try:
                return super().claim_runs(owner, now, lease_ms, limit, function_ids)
            finally:
                self._runs.update(held)


class _KeepsConsumedSignals(MemoryStore):
    def commit(self, batch: CommitBatch) -> set[str]:
        writes = tuple(w._replace(consumed_signals=0) for w in batch.writes)
        return super().commit(batch._replace(writes=writes))


class _EmitsFencedRunEvents(MemoryStore):
    """Appends a batch's run events even for runs whose writes were fenced."""

    def commit(self, batch: CommitBatch) -> set[str]:
        fenced = super().commit(batch._replace(run_events=()))
        if batch.run_events:
            self.append_events([text for _, text in batch.run_events], batch.now)
        return fenced


class _ExtendsKeyWindows(MemoryStore):
    """Lets a skipped trigger restart its key's 24 h."""

    def commit(self, batch: CommitBatch) -> set[str]:
        fenced = super().commit(batch)
        for new in batch.runs:
            held = self._idempotency.get((new.function_id, new.idempotency_key or ""))
            if held is not None and held[1] != new.id:
                self._idempotency[(new.function_id, new.idempotency_key or "")] = (
                    new.created_at, held[1])
        return fenced


@pytest.mark.parametrize(
    ("mutant", "test_name"),
    [
        (_LimitZeroLists, "test_list_runs_limit_zero_returns_nothing"),
        (_EmitsFencedRunEvents, "test_run_events_are_appended_only_with_an_accepted_write"),
        (_ExtendsKeyWindows, "test_idempotency_window_runs_from_the_holder_creation"),
        (_HidesFencing, "test_stale_epoch_write_is_fenced_and_nothing_of_it_applied"),
        (_CronGoesBack, "test_cron_cursors_only_move_forward"),
        (_ExpiredLeasesStayHeld, "test_expired_lease_can_be_claimed_again"),
        (_KeepsConsumedSignals, "test_signals_inbox_is_consumed_up_to_seq"),
    ],
)
def test_the_suite_catches_a_broken_store(mutant: type[MemoryStore], test_name: str) -> None:
    with pytest.raises(AssertionError):
        getattr(TestMemoryStore(), test_name)(mutant())


@pytest.mark.parametrize("mutant", [_ExpiredLeasesStayHeld, _KeepsConsumedSignals])
def test_the_state_machine_catches_a_broken_store(mutant: type[MemoryStore]) -> None:
    hunt = settings(
        max_examples=1000, stateful_step_count=80, deadline=None, database=None,
        derandomize=True,  # a fixed search: the mutant is found the same way every time
        phases=[Phase.generate], report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    with pytest.raises(AssertionError):
        run_state_machine_as_test(  # type: ignore[no-untyped-call]
            make_state_machine(mutant), settings=hunt
        )


class _CronOffByOne(MemoryStore):
    def cron_cursors(self) -> dict[str, int]:
        return {k: v + 1 for k, v in super().cron_cursors().items()}


def test_a_failing_state_machine_prints_how_to_reproduce_it() -> None:
    """The suite's own settings print the failing steps and the ``@reproduce_failure`` line
    that replays them."""
    hunt = settings(StoreConformance.stateful_settings, database=None, derandomize=True,
                    max_examples=300)
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(  # type: ignore[no-untyped-call]
            make_state_machine(_CronOffByOne), settings=hunt
        )
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "state.cron(" in notes
    assert "@reproduce_failure(" in notes


# --------------------------------------------------------------------------- helpers


def snapshot(store: SQLiteStore) -> dict[str, Any]:
    """Everything observable without changing anything."""
    runs = store.list_runs(limit=10_000)
    return {
        "runs": runs,
        "journals": {r.id: store.load_journal(r.id) for r in runs},
        "unrouted": store.unrouted_events(10_000),
        "events": {i: store.get_event(i) for i in ("e1", "e2", "e3")},
        "waits": store.find_waits("paid", T0),
        "cron": store.cron_cursors(),
        "wake": store.next_wake_at(),
    }


def populate(store: SQLiteStore) -> dict[str, int]:
    """A bit of everything; returns the epochs of the claimed runs."""
    store.append_events([event_json("e1"), event_json("e2"), event_json("e1")], T0)
    [first, *_] = store.unrouted_events(10)
    create(store, new_run("r1", key="k", event_ids=("e1",)), new_run("r2"), new_run("r3"))
    epochs = {c.run.id: c.run.epoch for c in store.claim_runs("w1", T0, LEASE, 10)}
    sig = Signal("event", "e2", event_json("e2"), 0)
    assert write(
        store,
        RunWrite("r1", epochs["r1"], entries(0, 2), status="waiting", release=True),
        RunWrite("r2", epochs["r2"], entries(0, 1), status="sleeping", wake_at=T0 + 500,
                 release=True),
        RunWrite("r3", epochs["r3"], entries(0, 3), status="failed",
                 error=ErrorInfo("E", "boom")),
        now=T0 + 1,
        waits_add=(WaitRecord("r1", 1, "paid", "true", event_json("e1"), T0 + 10_000),),
        signals=(("r1", sig),),
        routed_events=(first.seq,),
        cron=(("f|* * * * *", T0),),
    ) == set()
    return epochs


# --------------------------------------------------------------------------- durability


def test_reopening_a_file_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    epochs = populate(store)
    before = snapshot(store)
    [signal_seq] = [s for s, _ in claim(store, "r1", now=T0 + 2).signals]
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_run("r1")

    store = SQLiteStore(path)
    try:
        after = snapshot(store)
        # r1 was claimed once more after the snapshot: only its lease and epoch moved.
        assert after["runs"][2].epoch == epochs["r1"] + 1
        assert [r.id for r in after["runs"]] == ["r3", "r2", "r1"]
        before["runs"][2] = after["runs"][2]
        assert after == before
        # Dedupe windows, idempotency keys, seq counters and fencing survive the reopen.
        [dup] = store.append_events([event_json("e2", ts=T0 + 5)], T0 + 5)
        assert dup.duplicate
        create(store, new_run("r9", key="k", created_at=T0 + 5))
        assert [r.id for r in store.list_runs()] == ["r3", "r2", "r1"]
        assert write(store, RunWrite("r1", epochs["r1"], entries(2, 3))) == {"r1"}
        new = Signal("cancel", "c", '"stop"')
        assert store.commit(CommitBatch(now=T0 + 6, signals=(("r2", new),))) == set()
        [(seq, got)] = claim(store, "r2", now=T0 + 7).signals
        assert got == new
        assert seq > signal_seq
        assert claim(store, "r1", owner="w2", now=T0 + 2 + LEASE).signals[0][0] == signal_seq
    finally:
        store.close()


# --------------------------------------------------------------------------- migrations


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    _MIGRATIONS[0](sqlite_utils.Database(conn, execute_plugins=False))
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO runs (id, function_id, status, events, event_ids, created_at, updated_at,"
        " epoch) VALUES ('old', 'fn', 'queued', ?, ?, 5, 5, 0)",
        (json.dumps([event_json("e1")]), json.dumps(["e1", "e2"])),
    )
    conn.execute(
        "INSERT INTO waits (event, run_id, position, if_, trigger_event, expires_at) "
        "VALUES ('paid', 'old', 0, NULL, '{}', 99)"
    )
    conn.execute("COMMIT")
    conn.close()
    assert "run_events" not in sqlite_utils.Database(path).table_names()

    store = SQLiteStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 11
        # v2: run_events is filled from the runs already there.
        old = store.get_run("old")
        assert (old.event_ids, old.created_at, old.status) == (("e1", "e2"), 5, "queued")
        assert store.list_runs(event_id="e2") == [old]
        assert store.list_runs(function_id="fn") == [old]
        create(store, new_run("new", event_ids=("e2",)))
        assert [r.id for r in store.list_runs(event_id="e2")] == ["new", "old"]
        # v3: waits registered before after_seq existed may match every event.
        assert store.find_waits("paid", 0) == [WaitRecord("old", 0, "paid", None, "{}", 99, 0)]
        # v4: the claim path's indexes are partial, and the queued run is still claimable.
        indexes = {name: sql for name, sql in store._db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs' "
            "AND sql IS NOT NULL")}
        assert "WHERE status = 'queued'" in indexes["runs_queued"]
        assert "runs_status" not in indexes
        assert [c.run.id for c in store.claim_runs("w", 10, 1000, 10)] == ["old", "new"]
    finally:
        store.close()
    db = sqlite_utils.Database(path)
    assert "run_events" in db.table_names()
    assert "runs_function" in {i.name for i in db.table("runs").indexes}


def test_a_newer_schema_is_refused_with_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 5}" in message
    assert f"schema version {SCHEMA_VERSION} at most" in message
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5
    conn.close()


def test_a_failed_migration_leaves_the_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(db: Any) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration 2 failed")

    monkeypatch.setattr(sqlite_module, "_MIGRATIONS", (_MIGRATIONS[0], broken))
    path = tmp_path / "broken.db"
    with pytest.raises(RuntimeError, match="migration 2 failed"):
        SQLiteStore(path)
    db = sqlite_utils.Database(path)
    assert db.table_names() == []
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    monkeypatch.undo()
    store = SQLiteStore(path)
    assert store.schema_version == SCHEMA_VERSION
    store.close()


def test_a_version_6_database_gets_skipped_triggers(tmp_path: Path) -> None:
    """Migration 7 adds ``skipped_triggers``; an idempotency key held before it still folds
    triggers, which are then recorded naming the holder."""
    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    db6 = sqlite_utils.Database(conn, execute_plugins=False)
    for step in _MIGRATIONS[:6]:
        step(db6)
    conn.execute("PRAGMA user_version = 6")
    conn.execute(
        "INSERT INTO idempotency (function_id, key, run_id, created_at) "
        "VALUES ('fn', 'k', 'r1', ?)", (T0,)
    )
    conn.execute("COMMIT")
    conn.close()
    assert "skipped_triggers" not in sqlite_utils.Database(path).table_names()
    store = SQLiteStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 11
        store.commit(CommitBatch(now=T0 + 1, runs=(new_run("r2", key="k", created_at=T0 + 1),)))
        assert [(s.id, s.run_id) for s in store.skipped_triggers()] == [("r2", "r1")]
    finally:
        store.close()


def test_schema_tables_and_indexes(tmp_path: Path) -> None:
    path = tmp_path / "schema.db"
    SQLiteStore(path).close()
    db = sqlite_utils.Database(path)
    assert set(db.table_names()) == {
        "events", "runs", "journal", "waits", "signals", "idempotency", "cron", "meta",
        "run_events", "skipped_triggers", "flow_buffers", "flow_buffered", "flow_gcra",
        "flow_slots",
    }
    assert db.table("flow_buffers").pks == ["function_id", "key"]
    assert db.table("flow_buffered").pks == ["function_id", "key", "seq"]
    assert db.table("journal").pks == ["run_id", "seq"]
    assert db.table("run_events").pks == ["event_id", "run_id"]
    indexes = {i.name: (i.columns, i.unique) for i in db.table("runs").indexes}
    assert indexes["runs_id"] == (["id"], 1)
    assert indexes["runs_queued"] == (["seq"], 0)
    assert indexes["runs_wake_at"] == (["wake_at"], 0)
    assert indexes["runs_lease_owner"] == (["lease_owner"], 0)
    partial = {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '% WHERE %'")}
    assert partial == {"runs_queued", "runs_wake_at", "runs_lease_owner",
                       "flow_slots_by_run", "flow_slots_by_next",
                       "runs_slot1", "runs_slot2"}  # (the last two: concurrency)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


# --------------------------------------------------------------------------- processes

_OPEN_CHILD = """
import json, sys
from durable_core.store import CommitBatch, NewRun
from stores import SQLiteStore
print("ready", flush=True)
sys.stdin.readline()
store = SQLiteStore(sys.argv[1])
run = NewRun(id="run-" + sys.argv[2], function_id="f", events=(), event_ids=(), created_at=1)
fenced = store.commit(CommitBatch(now=1, runs=(run,)))
print(json.dumps({"version": store.schema_version, "fenced": sorted(fenced),
                  "run": store.get_run(run.id).id}), flush=True)
store.close()
"""

def test_processes_opening_a_fresh_file_at_once_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    n = 6
    outs = [json.loads(o) for o in run_gated([[_OPEN_CHILD, str(path), str(i)]
                                              for i in range(n)])]
    assert outs == [{"version": SCHEMA_VERSION, "fenced": [], "run": f"run-{i}"}
                    for i in range(n)]
    store = SQLiteStore(path)
    try:
        assert sorted(r.id for r in store.list_runs()) == [f"run-{i}" for i in range(n)]
    finally:
        store.close()


def test_two_processes_committing_and_claiming_never_share_a_run(tmp_path: Path) -> None:
    check_processes_never_share_runs(f"sqlite:///{tmp_path / 'shared.db'}")


# --------------------------------------------------------------------------- urls, options


def test_open_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    cases = {
        "sqlite:///rel/a.db": ("rel/a.db", "FULL"),
        f"sqlite:///{tmp_path}/b.db": (f"{tmp_path}/b.db", "FULL"),  # sqlite:////abs/b.db
        "sqlite:///rel/c.db?synchronous=NORMAL": ("rel/c.db", "NORMAL"),
        "sqlite://": (":memory:", "FULL"),
        "sqlite:///:memory:": (":memory:", "FULL"),
        "sqlite:///:memory:?synchronous=normal": (":memory:", "NORMAL"),
    }
    assert f"sqlite:///{tmp_path}/b.db".startswith("sqlite:////")
    for url, (path, sync) in cases.items():
        store = stores.open(url)
        try:
            assert isinstance(store, SQLiteStore)
            assert (store.path, store.synchronous) == (path, sync), url
            level = store._connection().execute("PRAGMA synchronous").fetchone()[0]
            assert level == {"FULL": 2, "NORMAL": 1}[sync]
            create(store, new_run("r1"))
            assert store.get_run("r1").status == "queued"
        finally:
            store.close()
    assert (tmp_path / "rel" / "a.db").exists()
    assert (tmp_path / "b.db").exists()
    # Two in-memory stores are two databases.
    a, b = stores.open("sqlite://"), stores.open("sqlite://")
    create(a, new_run("only-a"))
    assert b.list_runs() == []
    a.close()
    b.close()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("sqlite:///x.db?journal=off", "journal"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///x.db?synchronous=OFF", "synchronous"),
    ],
)
def test_bad_sqlite_urls_are_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=needle):
        stores.open(url)
    assert not (tmp_path / "x.db").exists()


def test_unknown_scheme_lists_the_supported_ones() -> None:
    with pytest.raises(ValidationError) as info:
        stores.open("mysql://localhost/db")
    assert "memory://" in str(info.value)
    assert "sqlite://" in str(info.value)
    assert info.value.field == "store"


def test_bad_synchronous_setting_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        SQLiteStore(tmp_path / "x.db", synchronous="OFF")
    assert info.value.field == "synchronous"
    assert not (tmp_path / "x.db").exists()


def test_blocking_and_repr(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "x.db", synchronous="normal")
    try:
        assert store.blocking is True
        assert repr(store) == f"SQLiteStore({str(tmp_path / 'x.db')!r}, synchronous='NORMAL')"
    finally:
        store.close()
    store.close()  # closing twice is harmless


# --------------------------------------------------------------------------- performance


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_commit_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     synchronous: str) -> None:
    """Measures group-commit throughput (printed, not asserted)."""
    store = SQLiteStore(tmp_path / "bench.db", synchronous=synchronous)
    try:
        create(store, *(new_run(f"r{i:03d}") for i in range(100)))
        epochs = {c.run.id: c.run.epoch for c in store.claim_runs("w", T0, 10**12, 100)}
        ids = sorted(epochs)

        def one(seq: int, run_id: str) -> RunWrite:
            e = JournalEntry(seq, "completed", seq, f"s{seq}", "run", T0, '{"output": 1}')
            return RunWrite(run_id, epochs[run_id], (e,), status="running")

        n_single = 300
        start = time.perf_counter()
        for seq in range(n_single):
            assert store.commit(CommitBatch(now=T0, writes=(one(seq, ids[0]),))) == set()
        single = time.perf_counter() - start

        n_batches = 30
        start = time.perf_counter()
        for seq in range(n_batches):
            writes = (*(one(seq, r) for r in ids[1:]), one(n_single + seq, ids[0]))
            batch = CommitBatch(now=T0, writes=writes)
            assert store.commit(batch) == set()
        batched = time.perf_counter() - start

        assert len(store.load_journal(ids[0])) == n_single + n_batches
        assert all(len(store.load_journal(r)) == n_batches for r in ids[1:])
        with capsys.disabled():
            print(
                f"\n[SQLiteStore synchronous={synchronous}] "
                f"1 write/1 entry: {n_single / single:,.0f} commits/s "
                f"({single / n_single * 1e6:,.0f} us each); "
                f"100 writes: {n_batches / batched:,.0f} commits/s "
                f"({batched / n_batches * 1e3:,.2f} ms each, "
                f"{100 * n_batches / batched:,.0f} run writes/s)"
            )
    finally:
        store.close()


def test_writers_take_turns_through_a_gate_file(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    a, b = SQLiteStore(path), SQLiteStore(path)
    try:
        assert (tmp_path / "gate.db-writer.lock").exists()
        # While one store holds the gate, the other's write waits for it (then commits).
        assert a._gate is not None and a._gate.acquire()
        started = time.monotonic()
        done: list[float] = []

        def write() -> None:
            create(b, new_run("gated"))
            done.append(time.monotonic())



        t = threading.Thread(target=write)
        t.start()
        time.sleep(0.2)
        assert not done  # still waiting at the gate
        a._gate.release()
        t.join(5)
        assert done and done[0] - started >= 0.2
        assert b.get_run("gated").status == "queued"
    finally:
        a.close()
        b.close()


def test_an_unusable_gate_file_is_a_clear_store_error(tmp_path: Path) -> None:
    (tmp_path / "x.db-writer.lock").mkdir()
    with pytest.raises(StoreError, match="writers' lock file"):
        SQLiteStore(tmp_path / "x.db")


# --------------------------------------------------------------------------- registered schemes


def test_a_registered_scheme_opens_with_stores_open_and_says_if_shareable(
    tmp_path: Path,
) -> None:
    from durable_core.drivers._processes import check_shareable

    opened: list[str] = []

    class MyStore(SQLiteStore):
        @classmethod
        def from_my_url(cls, url: str) -> MyStore:
            opened.append(url)
            return cls(tmp_path / url.removeprefix("mine-test://"))

    stores.register("mine-test", MyStore.from_my_url)
    stores.register("mine-test-local", lambda url: MemoryStore(), shareable=False)
    with pytest.raises(ValidationError, match="already registered"):
        stores.register("mine-test", MyStore.from_my_url)
    with pytest.raises(ValidationError, match="scheme"):
        stores.register("bad scheme", MyStore.from_my_url)
    store = stores.open("mine-test://a.db")
    try:
        assert isinstance(store, MyStore) and opened == ["mine-test://a.db"]
        create(store, new_run("r1"))
    finally:
        store.close()
    assert stores.open("mine-test://a.db").get_run("r1").status == "queued"
    assert isinstance(stores.open("mine-test-local://"), MemoryStore)
    assert "mine-test" in stores.registry.schemes()
    # The multi-process check asks the scheme.
    check_shareable("mine-test://a.db")
    with pytest.raises(ValidationError, match="inside one process"):
        check_shareable("mine-test-local://")
    for url in ("memory://", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValidationError, match="inside one process"):
            check_shareable(url)
    check_shareable(f"sqlite:///{tmp_path / 'x.db'}")
    check_shareable("postgresql://u@h/db")
    with pytest.raises(ValidationError, match="unsupported scheme 'nope'"):
        stores.open("nope://x")
    with pytest.raises(ValidationError, match="no scheme"):
        stores.open("just-a-path.db")


# --------------------------------------------------------------------------- unknown functions


def test_a_worker_never_claims_a_run_of_a_function_it_does_not_have() -> None:
    """A worker for app A and a run of function ``gone`` in the same store: the worker
    keeps running and never claims it; the run stays queued, listed as a run no worker of
    the app will claim."""
    import trio
    import trio.testing

    from durable_core import App, Context, Event, Worker, on_event

    # Bodies on trio, in the test's thread: under the autojumping clock a body in another
    # thread would let virtual time race ahead while it runs.
    app = App("a", async_bodies="trio")

    async def greet() -> str:
        return "hello"

    @app.function(id="hello", trigger=on_event("hi"))
    async def hello(ctx: Context) -> str:
        return await ctx.step.run("greet", greet)

    store = MemoryStore()
    create(store, new_run("orphan", function_id="gone", created_at=T0))

    async def main() -> None:
        w = Worker(app, store, poll_interval=1,
                   clock=lambda: T0 + int(trio.current_time() * 1000))
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await w.send([Event("hi"), Event("hi")])
            with trio.fail_after(3600):
                while sorted(r.status for r in store.list_runs(function_id="hello")) != [
                    "completed", "completed"
                ]:
                    await trio.sleep(0.5)
            await trio.sleep(3 * LEASE / 1000)  # more claims, lease periods pass
            await w.send(Event("hi"))
            with trio.fail_after(3600):
                while len(store.list_runs(function_id="hello", status="completed")) < 3:
                    await trio.sleep(0.5)
            w.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    orphan = store.get_run("orphan")
    assert (orphan.status, orphan.epoch, orphan.lease_owner) == ("queued", 0, None)
    assert store.list_runs(status="queued", exclude_function_ids=list(app.functions)) == [
        orphan
    ]


def test_durable_worker_processes_use_a_scheme_the_app_registers(tmp_path: Path) -> None:
    """``durable worker --processes 2 --store myfile://...``: the app's module registers the
    scheme; the supervisor's shareability check and every worker process open it."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "myapp.py").write_text(
        "import stores\n"
        "from stores import SQLiteStore\n"
        "from durable_core import App, Context, on_event\n"
        "stores.register('myfile', lambda url: SQLiteStore(url.removeprefix('myfile://')))\n"
        "app = App('mine')\n"
        "@app.function(id='hello', trigger=on_event('hi'))\n"
        "async def hello(ctx: Context) -> str:\n"
        "    return await ctx.step.run('greet', lambda: 'hello')\n"
    )
    db = tmp_path / "custom.db"
    seed = SQLiteStore(db)
    seed.append_events([event_json(f"e{i}", "hi") for i in range(4)], T0)
    seed.close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "worker", "myapp:app", "--processes", "2", "--poll-interval", "0.05",
         "--store", f"myfile://{db}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    store = SQLiteStore(db)
    try:
        deadline = time.monotonic() + 120
        while len(store.list_runs(status="completed")) < 4:  # poll the database
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the runs did not complete"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "2 processes" in out and f"myfile://{db}" in out
        assert {r.output for r in store.list_runs()} == {'"hello"'}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        store.close()


# --------------------------------------------------------------------------- SQL rules


def test_sqlite_due_at_sql_is_the_contracts_due_at() -> None:
    """The claim query's ``_DUE_AT_SQL`` gives :func:`durable_core.store.due_at` on every
    combination of its inputs."""
    import itertools

    from durable_core.store import due_at

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE runs (id TEXT, status TEXT, lease_owner TEXT, "
                 "lease_expires INTEGER, wake_at INTEGER)")
    conn.execute("CREATE TABLE signals (run_id TEXT)")
    combos = list(itertools.product(
        ("queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled"),
        (None, "w"), (None, 0, 5, 100), (None, 5), (False, True),
    ))
    for i, (status, owner, expires, wake, sig) in enumerate(combos):
        conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
                     (str(i), status, owner, expires, wake))
        if sig:
            conn.execute("INSERT INTO signals VALUES (?)", (str(i),))
    got = dict(conn.execute(f"SELECT id, {sqlite_module._DUE_AT_SQL} FROM runs"))
    for i, combo in enumerate(combos):
        assert got[str(i)] == due_at(*combo), combo


def test_a_version_4_database_gets_received_at_from_ts(tmp_path: Path) -> None:
    """Version 5 adds events.received_at; events stored before get their ts (which the
    dedupe window was measured from then), and dedupe goes on from it."""
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    db = sqlite_utils.Database(conn, execute_plugins=False)
    for step in _MIGRATIONS[:4]:
        step(db)
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO events (seq, id, name, data, ts, duplicate, routed) "
                 "VALUES (1, 'e1', 'a', ?, ?, 0, 0)", (event_json("e1", "a", T0 - 5), T0 - 5))
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        ev = store.get_event("e1")
        assert ev is not None and (ev.ts, ev.received_at) == (T0 - 5, T0 - 5)
        [dup] = store.append_events([event_json("e1", "a")], T0 + 10)
        assert dup.duplicate and dup.received_at == T0 + 10
    finally:
        store.close()
