"""PostgresStore: the conformance suite (``stores.testing``) plus Postgres-only tests:
schemas and migrations, concurrent openers (threads and processes), SKIP LOCKED claims,
deduplication under concurrency, LISTEN/NOTIFY, odd strings, ``stores.open`` URLs, an
end-to-end run on the virtual-clock engine, and a (printed, not asserted) throughput report.

Every test works in its own schema, dropped afterwards (fixtures in ``conftest.py``). Without
a server the tests are skipped with a loud reason, or fail when ``CI=true``.
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import stores
from durable_core import App, Context, Event, on_event
from durable_core.base._errors import RunNotFoundError, StoreError, ValidationError
from durable_core.core._model import ErrorInfo, JournalEntry, Signal
from durable_core.store import CommitBatch, NewRun, RunWrite, Store, WaitRecord
from durable_core.testing import TestEngine
from stores import PostgresStore
from stores.postgres import _store as pg_module

pytest.register_assert_rewrite("stores.testing")  # show values when a suite assert fails

from stores.testing import (  # noqa: E402
    LEASE,
    NASTY_STRINGS,
    T0,
    StoreConformance,
    check_processes_never_share_runs,
    claim,
    create,
    entries,
    event_json,
    new_run,
    run_gated,
    run_threads,
    write,
)

pytestmark = pytest.mark.postgres


# --------------------------------------------------------------------------- conformance


class TestPostgresStore(StoreConformance):
    """The conformance suite; every store gets a fresh schema (dropped after the test)."""

    @pytest.fixture(autouse=True)
    def _postgres(self, pg_url: str, pg_schemas: Callable[[], str]) -> None:
        self.url = pg_url
        self.new_schema = pg_schemas

    def make_store(self) -> PostgresStore:
        return PostgresStore(self.url, schema=self.new_schema(), pool_max=4)

    def reopen(self, store: Store) -> Store:
        assert isinstance(store, PostgresStore)
        store.close()
        return PostgresStore(self.url, schema=store.schema, pool_max=4)

    def fail_commits_half_way(self, store: Store) -> None:
        """A trigger that raises when the cron cursor "boom" is written."""
        assert isinstance(store, PostgresStore)
        fn = sql.Identifier(store.schema, "boom")
        with raw(self.url) as conn:
            conn.execute(sql.SQL(
                "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.key = 'boom' THEN RAISE EXCEPTION 'injected failure'; END IF; "
                "RETURN NEW; END $$"
            ).format(fn))
            conn.execute(sql.SQL(
                "CREATE TRIGGER boom BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(store.schema, "cron"), fn))


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def store(pg_url: str, pg_schema: str) -> Iterator[PostgresStore]:
    """A store in a fresh schema."""
    s = PostgresStore(pg_url, schema=pg_schema)
    try:
        yield s
    finally:
        s.close()


def raw(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A plain autocommit connection, for looking behind the store's back."""
    return psycopg.connect(url, autocommit=True)


def version_of(url: str, schema: str) -> int:
    with raw(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT value FROM {} WHERE key = 'version'").format(
                sql.Identifier(schema, "meta")
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


def tables_of(url: str, schema: str) -> set[str]:
    with raw(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return {r[0] for r in rows}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (a database query, not the clock) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --------------------------------------------------------------------------- parity


def scenario(store: Any) -> list[Any]:
    """Every contract operation, in a fixed story; returns everything observable."""
    day = 24 * 3600 * 1000
    out: list[Any] = []

    def snap(now: int) -> None:
        runs = store.list_runs(limit=1000)
        out.append(runs)
        out.append({r.id: store.load_journal(r.id) for r in runs})
        out.append((store.unrouted_events(1000), store.find_waits("paid", now),
                    store.find_waits("shipped", now), store.next_wake_at(),
                    store.cron_cursors(), store.get_event("e1"), store.get_event("e2")))

    out.append(store.append_events(
        [event_json("e1", "paid"), event_json("e2", "shipped"), event_json("e1", "paid")], T0))
    out.append(store.commit(CommitBatch(
        now=T0, runs=(new_run("r1", key="k"), new_run("r2", function_id="g"),
                      new_run("r3", key="k"), new_run("r1", function_id="x"),
                      new_run("r4", key="k", function_id="g", event_ids=("e1", "e2"))),
        events=(event_json("e3"),), routed_events=(1,), cron=(("c", T0),))))
    snap(T0)
    out.append(store.list_runs(function_id="g"))
    out.append(store.list_runs(status="queued", limit=2))
    out.append(store.list_runs(event_id="e2"))
    out.append(store.list_runs(function_id="g", status="queued", event_id="e1"))
    claims = store.claim_runs("w1", T0, LEASE, 2)
    out.append(claims)
    e1, e2 = (c.run.epoch for c in claims)
    wait = WaitRecord("r1", 1, "paid", "true", event_json("e1"), T0 + 500)
    out.append(store.commit(CommitBatch(
        now=T0 + 1,
        writes=(RunWrite("r1", e1, entries(0, 2), status="waiting", wake_at=T0 + 100,
                         release=True),
                RunWrite("r2", e2 + 1, entries(0, 1))),
        waits_add=(wait, WaitRecord("r2", 0, "shipped", None, "{}", T0 + 9),
                   WaitRecord("r1", 1, "paid", None, "{}", T0 + 900)),  # again: kept as is
        signals=(("r4", Signal("event", "s1", "{}", 2)), ("ghost", Signal("cancel", "x", "{}"))),
        cron=(("c", T0 - 5), ("d", T0 + 7)))))
    snap(T0 + 1)
    out.append(store.renew("w1", ["r1", "r2", "r9"], T0 + 2, LEASE))
    out.append(store.claim_runs("w2", T0 + 100, LEASE, 10))
    out.append(store.claim_runs("w3", T0 + 100, LEASE, 10, ["g"]))
    out.append(store.claim_runs("w3", T0 + LEASE + 1, LEASE, 10, ["g"]))
    run1 = store.get_run("r1")
    out.append(store.commit(CommitBatch(
        now=T0 + LEASE + 2,
        writes=(RunWrite("r1", run1.epoch, entries(2, 3)),
                RunWrite("r1", run1.epoch, entries(3, 4), status="completed", output='"ok"'),
                RunWrite("r4", store.get_run("r4").epoch, status="failed",
                         error=ErrorInfo("E", "boom"), consumed_signals=1)),
        waits_remove=(("r1", 1),))))
    snap(T0 + LEASE + 2)
    out.append(write(store, RunWrite("r1", run1.epoch, entries(4, 5)), now=T0 + LEASE + 3))
    out.append(store.append_events([event_json("e1", "paid", ts=T0 + day)], T0 + day))
    out.append(store.commit(CommitBatch(now=T0 + day, runs=(new_run("r5", key="k",
                                                                    created_at=T0 + day),))))
    snap(T0 + day)
    with pytest.raises(RunNotFoundError):
        store.get_run("nope")
    out.append(store.load_journal("nope"))
    return out


def test_every_operation_matches_the_reference_store(store: PostgresStore) -> None:
    reference = stores.MemoryStore()
    expected = scenario(reference)
    got = scenario(store)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == e, f"step {i} differs"


# --------------------------------------------------------------------------- schema


def test_everything_lives_in_the_given_schema(pg_url: str, pg_schemas: Callable[[], str]
                                              ) -> None:
    a_name, b_name = pg_schemas(), pg_schemas()
    a = PostgresStore(pg_url, schema=a_name)
    b = PostgresStore(pg_url, schema=b_name)
    try:
        create(a, new_run("r1"))
        assert a.get_run("r1").status == "queued"
        with pytest.raises(RunNotFoundError):
            b.get_run("r1")
        assert b.list_runs() == []
        expected = {"meta", "counters", "events", "runs", "run_events", "idempotency",
                    "journal", "signals", "waits", "cron", "skipped_triggers",
                    "flow_buffers", "flow_buffered", "flow_gcra", "flow_slots"}
        assert tables_of(pg_url, a_name) == expected
        assert tables_of(pg_url, b_name) == expected
        assert version_of(pg_url, a_name) == pg_module.SCHEMA_VERSION
    finally:
        a.close()
        b.close()


def test_schema_names_are_quoted_identifiers(pg_url: str, pg_schemas: Callable[[], str]
                                             ) -> None:
    name = 'Wé"ird; DROP SCHEMA public; --' + pg_schemas()[-8:]
    store = PostgresStore(pg_url, schema=name)
    try:
        create(store, new_run("r1"))
        assert [r.id for r in store.list_runs()] == ["r1"]
        assert "runs" in tables_of(pg_url, name)
        assert store.wait_for_notify(0) is False  # LISTEN on a quoted channel works
        create(store, new_run("r2"))
        assert store.wait_for_notify(10) is True
    finally:
        store.close()
        with raw(pg_url) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    assert "runs" not in tables_of(pg_url, name)


@pytest.mark.parametrize("name", ["", "x" * 64, "nul\x00"])
def test_bad_schema_names_are_rejected(pg_url: str, name: str) -> None:
    with pytest.raises(ValidationError) as info:
        PostgresStore(pg_url, schema=name)
    assert info.value.field == "schema"


def test_unreachable_server_raises_store_error() -> None:
    with pytest.raises(StoreError, match="cannot open schema"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


def test_durable_defaults_and_close(store: PostgresStore) -> None:
    assert store.blocking is True
    assert repr(store) == f"<PostgresStore schema={store.schema!r}>"
    with store._pool.connection() as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    create(store, new_run("r1"))
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError):
        store.get_run("r1")
    assert store.wait_for_notify(5) is False  # closed: returns at once


# --------------------------------------------------------------------------- migrations


def test_an_older_schema_is_migrated_keeping_its_data(pg_url: str, pg_schema: str) -> None:
    with raw(pg_url) as conn:
        assert pg_module._migrate(conn, pg_schema, target=1) == 0
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, function_id, status, events, event_ids, created_at, "
                "updated_at) VALUES ('old', 'fn', 'queued', %s, %s, 5, 5)"
            ).format(sql.Identifier(pg_schema, "runs")),
            ([event_json("e1")], ["e1", "e2"]),
        )
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (pg_schema,)
        ).fetchall()}
    assert version_of(pg_url, pg_schema) == 1
    assert "runs_by_function" not in indexes
    assert "run_events" not in tables_of(pg_url, pg_schema)

    store = PostgresStore(pg_url, schema=pg_schema)
    try:
        assert version_of(pg_url, pg_schema) == pg_module.SCHEMA_VERSION == 10
        old = store.get_run("old")
        assert (old.event_ids, old.created_at, old.status) == (("e1", "e2"), 5, "queued")
        assert store.list_runs(event_id="e2") == [old]
        assert [c.run.id for c in store.claim_runs("w", T0, LEASE, 10)] == ["old"]
        assert old.rerun_of is None  # (v5: runs.rerun_of, NULL for runs stored before)
    finally:
        store.close()
    with raw(pg_url) as conn:
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (pg_schema,)
        ).fetchall()}
    assert {"runs_newest", "runs_by_function", "runs_by_status", "run_events_pkey"} <= indexes
    assert "run_events" in tables_of(pg_url, pg_schema)
    # Opening an up-to-date schema again changes nothing.
    PostgresStore(pg_url, schema=pg_schema).close()
    assert version_of(pg_url, pg_schema) == pg_module.SCHEMA_VERSION


def test_a_newer_schema_is_refused_naming_both_versions(pg_url: str, pg_schema: str) -> None:
    PostgresStore(pg_url, schema=pg_schema).close()
    future = pg_module.SCHEMA_VERSION + 5
    with raw(pg_url) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET value = %s WHERE key = 'version'").format(
                sql.Identifier(pg_schema, "meta")
            ),
            (str(future),),
        )
    with pytest.raises(StoreError) as info:
        PostgresStore(pg_url, schema=pg_schema)
    message = str(info.value)
    assert f"version {future}" in message
    assert f"version {pg_module.SCHEMA_VERSION}" in message
    assert "upgrade durable-core" in message
    assert version_of(pg_url, pg_schema) == future  # untouched


def test_threads_opening_a_fresh_schema_at_once(pg_url: str, pg_schema: str) -> None:
    def open_and_use(k: int) -> list[str]:
        s = PostgresStore(pg_url, schema=pg_schema, pool_min=1, pool_max=2)
        try:
            create(s, new_run(f"r{k}"))
            return [r.id for r in s.list_runs(limit=100)]
        finally:
            s.close()

    run_threads(8, open_and_use)
    assert version_of(pg_url, pg_schema) == pg_module.SCHEMA_VERSION
    store = PostgresStore(pg_url, schema=pg_schema)
    try:
        assert sorted(r.id for r in store.list_runs()) == [f"r{k}" for k in range(8)]
    finally:
        store.close()


_OPEN_CHILD = """
import json, sys
from durable_core.store import CommitBatch, NewRun
from stores import PostgresStore
url, schema, k = sys.argv[1], sys.argv[2], sys.argv[3]
print("ready", flush=True)
sys.stdin.readline()
store = PostgresStore(url, schema=schema)
run = NewRun(id="run-" + k, function_id="f", events=(), event_ids=(), created_at=1)
fenced = store.commit(CommitBatch(now=1, runs=(run,)))
print(json.dumps({"fenced": sorted(fenced), "run": store.get_run(run.id).id}), flush=True)
store.close()
"""


def test_processes_opening_a_fresh_schema_at_once(pg_url: str, pg_schema: str) -> None:
    n = 8
    outs = run_gated([[_OPEN_CHILD, pg_url, pg_schema, str(k)] for k in range(n)])
    assert [json.loads(o) for o in outs] == [{"fenced": [], "run": f"run-{k}"}
                                             for k in range(n)]
    assert version_of(pg_url, pg_schema) == pg_module.SCHEMA_VERSION
    store = PostgresStore(pg_url, schema=pg_schema)
    try:
        assert sorted(r.id for r in store.list_runs()) == [f"run-{k}" for k in range(n)]
    finally:
        store.close()


def test_a_lost_connection_is_survived(pg_url: str, pg_schema: str) -> None:
    store = PostgresStore(f"{pg_url}?application_name=dc-{pg_schema}", schema=pg_schema,
                          pool_min=1, pool_max=1)

    def kill() -> None:
        """Terminate the store's backends and wait until they are gone: termination is
        asynchronous, and a backend still exiting would look alive to the pool's check, so
        the next write would be sent on it and die in flight (under heavy load)."""
        with raw(pg_url) as conn:
            pids = [pid for pid, terminated in conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s", (f"dc-{pg_schema}",),
            ).fetchall() if terminated]
            assert pids
            deadline = time.monotonic() + 120
            while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                               (pids,)).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, f"backends {pids} did not exit"
                time.sleep(0.01)

    try:
        create(store, new_run("r1"))
        assert store.wait_for_notify(0) is False
        kill()
        assert store.get_run("r1").status == "queued"  # reads reconnect and retry
        assert store.wait_for_notify(60) is True  # lost listener: a (spurious) wake-up
        assert store.wait_for_notify(0) is False  # listening again
        create(store, new_run("r2"))
        assert store.wait_for_notify(30) is True
        kill()
        # The pooled connection the server closed while idle is noticed before use and
        # replaced: nothing was sent on it, so the write goes through.
        create(store, new_run("r3"))
        # A write whose connection dies while it is in flight is not retried: its outcome
        # is unknown. (Held up by a table lock, then its backend is terminated.)
        errors: list[StoreError] = []

        def write() -> None:
            try:
                create(store, new_run("r5"))
            except StoreError as exc:
                errors.append(exc)

        with raw(pg_url) as locker, locker.transaction():
            locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(pg_schema, "runs")))
            writer = threading.Thread(target=write)
            writer.start()
            deadline = time.monotonic() + 120
            while not locker.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'", (f"dc-{pg_schema}",),
            ).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the write never waited for the lock"
                time.sleep(0.01)
            kill()
            writer.join(timeout=120)
        assert not writer.is_alive()
        assert len(errors) == 1
        create(store, new_run("r4"))
        assert {"r1", "r2", "r3", "r4"} <= {r.id for r in store.list_runs()}
    finally:
        store.close()


# --------------------------------------------------------------------------- concurrency


def test_a_claim_rereads_a_journal_its_snapshot_predates(store: PostgresStore) -> None:
    """The claiming statement reads journals in its snapshot, but locks (and returns
    ``journal_len`` from) each run's latest committed version: a writer that commits between
    the two (after the statement started, before it reached the row; ``SKIP LOCKED`` skips
    only rows locked at that moment) leaves the statement's journal short, and the store
    re-reads it. That window lies inside one statement's execution and cannot be held open
    from outside (it no longer waits for row locks, as the removed ``claim_run`` did), so
    this test builds the row the statement returns in that case: a real claim row, with the
    ``journal_len`` of a version committed after its snapshot."""
    create(store, new_run("r1"))
    epoch = claim(store, "r1", owner="old", now=T0).run.epoch
    assert write(store, RunWrite("r1", epoch, entries(0, 2))) == set()
    params = {"now": T0 + LEASE, "limit": 10, "owner": "new", "expires": T0 + 2 * LEASE}
    [row] = store._run_conn(lambda conn: conn.execute(store._q.claim_runs, params).fetchall())
    assert row[1] == 2 and len(row[20]) == 2  # a row as read: complete
    # The version committed after the snapshot appended entry 2 (here written by the new
    # owner, which is who holds the lease once the claim commits).
    assert write(store, RunWrite("r1", epoch + 1, entries(2, 3))) == set()
    stale = (row[0], 3, *row[2:])
    [got] = store._run_conn(lambda conn: store._claims(conn, [stale]))
    assert got.journal == entries(0, 3)
    assert (got.run.lease_owner, got.run.epoch) == ("new", epoch + 1)


def test_claims_skip_runs_locked_by_other_transactions(pg_url: str, store: PostgresStore
                                                       ) -> None:
    create(store, new_run("r1"), new_run("r2"), new_run("r3"))
    with raw(pg_url) as conn, conn.transaction():
        conn.execute(
            sql.SQL("SELECT 1 FROM {} WHERE id = 'r1' FOR UPDATE").format(
                sql.Identifier(store.schema, "runs")
            )
        )
        # r1 is locked (as by a commit in flight): skipped, not waited for.
        assert [c.run.id for c in store.claim_runs("w1", T0, LEASE, 10)] == ["r2", "r3"]
    [c1] = store.claim_runs("w2", T0, LEASE, 10)
    assert (c1.run.id, c1.run.lease_owner, c1.run.epoch) == ("r1", "w2", 1)


def test_two_threads_claiming_never_share_a_run(pg_url: str, pg_schema: str) -> None:
    a = PostgresStore(pg_url, schema=pg_schema)
    b = PostgresStore(pg_url, schema=pg_schema)
    try:
        create(a, *(new_run(f"r{i:03d}") for i in range(200)))

        def work(k: int) -> list[str]:
            s = (a, b)[k]
            got: list[str] = []
            while claims := s.claim_runs(f"w{k}", T0, LEASE, 7):
                got += [c.run.id for c in claims]
            return got

        first, second = run_threads(2, work)
        assert not set(first) & set(second)
        assert sorted(first + second) == [f"r{i:03d}" for i in range(200)]
        for k, ids in enumerate((first, second)):
            assert {a.get_run(r).lease_owner for r in ids} <= {f"w{k}"}
    finally:
        a.close()
        b.close()


def test_two_processes_committing_and_claiming_never_share_a_run(
    pg_url: str, store: PostgresStore
) -> None:
    sep = "&" if "?" in pg_url else "?"
    check_processes_never_share_runs(f"{pg_url}{sep}schema={store.schema}")


def test_concurrent_appends_of_one_event_id_flag_all_but_one(store: PostgresStore) -> None:
    texts = [event_json("same", data={"k": k}) for k in range(8)]
    out = run_threads(8, lambda k: store.append_events([texts[k], event_json(f"own{k}")], T0))
    firsts = [evs[0] for evs in out]
    assert sum(not e.duplicate for e in firsts) == 1
    [original] = [e for e in firsts if not e.duplicate]
    assert store.get_event("same") == original
    assert [e.id for e in store.unrouted_events(100)].count("same") == 1
    # Seqs are unique, dense and in commit order.
    seqs = sorted(e.seq for evs in out for e in evs)
    assert seqs == list(range(1, 17))


def test_concurrent_creations_with_one_idempotency_key_create_one_run(
    store: PostgresStore,
) -> None:
    def create_one(k: int) -> None:
        batch = CommitBatch(now=T0, runs=(new_run(f"r{k}", key="once"),
                                          new_run(f"own{k}")))
        assert store.commit(batch) == set()

    run_threads(8, create_one)
    runs = store.list_runs(limit=100)
    assert len([r for r in runs if r.idempotency_key == "once"]) == 1
    assert sorted(r.id for r in runs if r.id.startswith("own")) == [f"own{k}" for k in range(8)]


def test_concurrent_fenced_writers_one_wins(store: PostgresStore) -> None:
    create(store, new_run("r1"))
    epoch = claim(store, "r1").run.epoch

    def append(k: int) -> set[str]:
        w = RunWrite("r1", epoch, (JournalEntry(0, "completed", 0, f"s{k}", "run", T0, "{}"),))
        return write(store, w)

    results = run_threads(6, append)
    assert sorted(len(r) for r in results) == [0, 1, 1, 1, 1, 1]  # one seq-0 entry wins
    [winner] = [k for k, r in enumerate(results) if not r]
    assert [e.step_id for e in store.load_journal("r1")] == [f"s{winner}"]


def test_signals_and_writes_for_one_run_in_one_batch(store: PostgresStore) -> None:
    create(store, new_run("r1"), new_run("r2"))
    assert store.commit(CommitBatch(now=T0, signals=(("r1", Signal("event", "a", "1")),))) \
        == set()
    c1 = claim(store, "r1")
    [(seq_a, _)] = c1.signals
    # One batch: r1 consumes signal a, gets signal b, and r2 (not written) gets c.
    batch = CommitBatch(
        now=T0 + 1,
        writes=(RunWrite("r1", c1.run.epoch, entries(0, 1), status="waiting",
                         consumed_signals=seq_a, release=True),),
        signals=(("r1", Signal("event", "b", "2")), ("r2", Signal("cancel", "c", "3")),
                 ("nobody", Signal("event", "d", "4"))),
    )
    assert store.commit(batch) == set()
    claims = {c.run.id: c for c in store.claim_runs("w2", T0 + 2, LEASE, 10)}
    assert sorted(claims) == ["r1", "r2"]
    assert [s.key for _, s in claims["r1"].signals] == ["b"]
    assert [s.key for _, s in claims["r2"].signals] == ["c"]
    # A fenced write still lets the batch's signals to that run through.
    stale = CommitBatch(now=T0 + 3, writes=(RunWrite("r1", c1.run.epoch, entries(1, 2)),),
                        signals=(("r1", Signal("event", "e", "5")),))
    assert store.commit(stale) == {"r1"}
    assert [s.key for _, s in claim(store, "r1", now=T0 + 3 + LEASE).signals] == ["b", "e"]


def test_signals_only_batch_reaches_every_run(store: PostgresStore) -> None:
    create(store, new_run("r1"), new_run("r2"))
    sigs = (("r1", Signal("event", "k1", "1")), ("r1", Signal("event", "k2", "2")),
            ("r2", Signal("event", "k3", "3")), ("ghost", Signal("event", "k4", "4")))
    assert store.commit(CommitBatch(now=T0, signals=sigs)) == set()
    got = {c.run.id: [s.key for _, s in c.signals]
           for c in store.claim_runs("w", T0, LEASE, 10)}
    assert got == {"r1": ["k1", "k2"], "r2": ["k3"]}


def test_waits_after_seq_is_the_log_end_when_first_registered(store: PostgresStore) -> None:
    create(store, new_run("r1"))
    store.append_events([event_json("e1"), event_json("e2")], T0)
    w = WaitRecord("r1", 0, "paid", None, event_json("e0"), T0 + 100)
    assert store.commit(CommitBatch(now=T0, waits_add=(w,),
                                    events=(event_json("e3"),))) == set()
    [got] = store.find_waits("paid", T0)
    assert got.after_seq == 3  # includes the batch's own event
    store.append_events([event_json("e4")], T0)
    again = WaitRecord("r1", 0, "paid", "true", event_json("e0"), T0 + 200)
    assert store.commit(CommitBatch(now=T0, waits_add=(again,))) == set()
    # Registering again keeps the first registration whole, as the reference store does.
    assert store.find_waits("paid", T0) == [got]


# --------------------------------------------------------------------------- notifications


def test_notify_wakes_a_listener_on_runs_signals_and_events(pg_url: str,
                                                            store: PostgresStore) -> None:
    other = PostgresStore(pg_url, schema=store.schema)
    try:
        assert store.wait_for_notify(0) is False  # starts listening; nothing pending
        create(other, new_run("r1"))
        assert store.wait_for_notify(30) is True
        assert store.wait_for_notify(0) is False  # drained
        other.append_events([event_json("e1")], T0)
        assert store.wait_for_notify(30) is True
        sig = CommitBatch(now=T0, signals=(("r1", Signal("event", "k", "{}")),))
        assert other.commit(sig) == set()
        assert store.wait_for_notify(30) is True
        # Writes that create nothing new do not notify.
        epoch = claim(other, "r1").run.epoch
        assert write(other, RunWrite("r1", epoch, entries(0, 1)),
                     cron=(("k", T0),)) == set()
        assert store.wait_for_notify(0.2) is False
    finally:
        other.close()


def test_notify_wakes_a_blocked_waiter_thread(pg_url: str, store: PostgresStore) -> None:
    assert store.wait_for_notify(0) is False
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(store.wait_for_notify(60)))
    t.start()
    started = time.monotonic()
    create(store, new_run("r1"))
    t.join(30)
    assert got == [True]
    assert time.monotonic() - started < 30


def test_notifications_are_per_schema(pg_url: str, store: PostgresStore,
                                      pg_schemas: Callable[[], str]) -> None:
    elsewhere = PostgresStore(pg_url, schema=pg_schemas())
    try:
        assert store.wait_for_notify(0) is False
        create(elsewhere, new_run("r1"))
        assert store.wait_for_notify(0.2) is False
    finally:
        elsewhere.close()


def test_close_wakes_a_blocked_waiter(store: PostgresStore) -> None:
    assert store.wait_for_notify(0) is False
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(store.wait_for_notify(120)))
    t.start()
    started = time.monotonic()
    wait_until(lambda: store._listen_lock.locked(), "the waiter to block")
    store.close()
    t.join(30)
    assert got == [False]
    assert time.monotonic() - started < 30


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize("s", (*NASTY_STRINGS, "$1 %s %(x)s {} ::text[] E'\\x00'"))
def test_sql_metacharacters_and_unicode_round_trip(store: PostgresStore, s: str) -> None:
    """Every user-controlled field, written and read back byte for byte."""
    text = event_json(f"{s}#e", f"{s}#n", data={s: s})
    [ev] = store.append_events([text], T0)
    assert (ev.id, ev.name, ev.data) == (f"{s}#e", f"{s}#n", text)
    assert store.get_event(f"{s}#e") == ev
    run = NewRun(id=f"{s}#r", function_id=f"{s}#f", events=(text, s), event_ids=(s, f"{s}#e"),
                 created_at=T0, idempotency_key=s, parent_run_id=f"{s}#p")
    wait = WaitRecord(f"{s}#r", 3, f"{s}#n", s, s, T0 + 10)
    sig = Signal(kind=s, key=s, payload=s, position=7)
    assert store.commit(CommitBatch(now=T0, runs=(run,), waits_add=(wait,),
                                    signals=((run.id, sig),), cron=((s, T0),))) == set()
    rec = store.get_run(run.id)
    assert (rec.function_id, rec.events, rec.event_ids) == (run.function_id, run.events,
                                                            run.event_ids)
    assert (rec.idempotency_key, rec.parent_run_id) == (s, f"{s}#p")
    assert store.list_runs(function_id=run.function_id, event_id=s, status="queued") == [rec]
    assert store.find_waits(f"{s}#n", T0) == [WaitRecord(f"{s}#r", 3, f"{s}#n", s, s, T0 + 10,
                                                          after_seq=ev.seq)]
    assert store.cron_cursors() == {s: T0}
    got = claim(store, run.id, owner=s)
    assert got.run.lease_owner == s
    assert [x for _, x in got.signals] == [sig]
    e = JournalEntry(seq=0, op=s, position=1, step_id=s, kind=s, ts=T0, data=s)
    assert write(store, RunWrite(run.id, got.run.epoch, (e,))) == set()
    assert store.load_journal(run.id) == [e]
    assert claim(store, run.id, owner=s, now=T0 + LEASE).journal == (e,)
    epoch = store.get_run(run.id).epoch
    err = ErrorInfo(type=s, message=s)
    assert write(store, RunWrite(run.id, epoch, status="failed", output=s, error=err)) == set()
    done = store.get_run(run.id)
    assert (done.output, done.error, done.status) == (s, err, "failed")
    assert store.renew(s, [run.id, s], T0, LEASE) == {run.id, s}


def test_nul_characters_are_refused_with_a_store_error(store: PostgresStore) -> None:
    with pytest.raises(StoreError):
        create(store, new_run("nul\x00id"))
    create(store, new_run("fine"))  # the store still works
    assert [r.id for r in store.list_runs()] == ["fine"]


# --------------------------------------------------------------------------- urls


def test_open_postgres_urls(pg_url: str, pg_schemas: Callable[[], str]) -> None:
    base = pg_url.split("://", 1)[1]
    for scheme in ("postgresql", "postgres"):
        name = pg_schemas()
        url = f"{scheme}://{base}?connect_timeout=5&schema={name}&application_name=dc-test"
        store = stores.open(url)
        try:
            assert isinstance(store, PostgresStore)
            assert store.schema == name
            with store._pool.connection() as conn:
                assert conn.execute("SHOW application_name").fetchone() == ("dc-test",)
            create(store, new_run("r1"))
            assert store.get_run("r1").status == "queued"
        finally:
            store.close()
        assert "runs" in tables_of(pg_url, name)
    default = stores.open(f"postgresql://{base}")
    try:
        assert isinstance(default, PostgresStore)
        assert default.schema == "durable"
    finally:
        default.close()


# --------------------------------------------------------------------------- engine


def test_a_workflow_runs_end_to_end_on_postgres(store: PostgresStore) -> None:
    app = App("pg-e2e")
    calls: list[str] = []

    def charge(amount: int) -> dict[str, int]:
        calls.append("charge")
        return {"charged": amount}

    @app.function(id="child", trigger=on_event("never/sent"))
    async def child(ctx: Context) -> str:
        return "child-done"

    @app.function(id="order", trigger=on_event("order/created"))
    async def order(ctx: Context) -> dict[str, Any]:
        paid = await ctx.step.run("charge", charge, ctx.event.data["amount"])
        await ctx.step.sleep("cool-off", "1h")
        shipped = await ctx.step.wait_for_event("shipped", event="order/shipped",
                                                timeout="1d")
        kid = await ctx.step.invoke("kid", function=child)
        await ctx.step.send_event("notify", Event("order/done", {"id": 1}))
        return {"paid": paid, "shipped": shipped is not None, "kid": kid}

    engine = TestEngine(app, start="2026-01-01T00:00:00Z", store=store)
    [run] = engine.send(Event("order/created", {"amount": 150})).runs
    assert run.status == "sleeping"
    engine.advance("1h")
    assert run.status == "waiting"
    engine.send(Event("order/shipped", {"id": 1}))
    assert run.status == "completed"
    assert run.output == {"paid": {"charged": 150}, "shipped": True, "kid": "child-done"}
    assert calls == ["charge"]
    assert [s.id for s in run.steps] == ["charge", "cool-off", "shipped", "kid", "notify"]
    assert {r.function_id for r in store.list_runs()} == {"order", "child"}


# --------------------------------------------------------------------------- performance


def test_throughput_report(pg_url: str, store: PostgresStore,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """Measures commit and claim rates next to raw single-statement baselines on the same
    server (printed, not asserted: the numbers depend on the machine and its load)."""
    n_runs = 300
    create(store, *(new_run(f"r{i:03d}") for i in range(n_runs)))
    epochs: dict[str, int] = {}

    def best(fn: Callable[[], object], n: int, reps: int = 3) -> float:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - start) / n)
        return min(times)

    def release_all() -> None:
        writes = tuple(RunWrite(r, e, status="queued", release=True) for r, e in epochs.items())
        assert store.commit(CommitBatch(now=T0, writes=writes)) == set()

    def claim_all(limit: int) -> None:
        got = [c for _ in range(n_runs // limit) for c in store.claim_runs("w", T0, 10**12, limit)]
        assert len(got) == n_runs
        epochs.update((c.run.id, c.run.epoch) for c in got)

    claim_one = claim_batch = float("inf")
    for _ in range(3):
        for limit in (1, 100):
            if epochs:
                release_all()
            start = time.perf_counter()
            claim_all(limit)
            per = (time.perf_counter() - start) / (n_runs // limit)
            if limit == 1:
                claim_one = min(claim_one, per)
            else:
                claim_batch = min(claim_batch, per)

    ids = sorted(epochs)[:100]
    length = dict.fromkeys(ids, 0)

    def one(run_id: str) -> RunWrite:
        seq = length[run_id]
        length[run_id] += 1
        e = JournalEntry(seq, "completed", seq, f"s{seq}", "run", T0, '{"output": 1}')
        return RunWrite(run_id, epochs[run_id], (e,))

    single = best(lambda: store.commit(CommitBatch(now=T0, writes=(one(ids[0]),))), 200)
    batched = best(lambda: store.commit(CommitBatch(now=T0, writes=tuple(map(one, ids)))), 30)
    assert len(store.load_journal(ids[0])) == length[ids[0]]
    assert all(len(store.load_journal(r)) == length[r] for r in ids)

    with raw(pg_url) as conn:
        table = sql.Identifier(store.schema, "bench")
        conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, a text, b bigint)")
                     .format(table))
        ins = sql.SQL("INSERT INTO {} (a, b) VALUES (%s, %s)").format(table)
        many = sql.SQL("INSERT INTO {} (a, b) SELECT * FROM unnest(%s::text[], %s::bigint[])"
                       ).format(table)
        raw_one = best(lambda: conn.execute(ins, ("x", 1)), 200)
        raw_many = best(lambda: conn.execute(many, (["x"] * 100, list(range(100)))), 30)

    with capsys.disabled():
        print(
            f"\n[PostgresStore] commit 1 write/1 entry: {1 / single:,.0f}/s "
            f"({single * 1e6:,.0f} us; raw 1-row INSERT {raw_one * 1e6:,.0f} us)"
            f"\n[PostgresStore] commit 100 writes/1 entry each: {1 / batched:,.0f}/s "
            f"({batched * 1e3:,.2f} ms, {100 / batched:,.0f} run writes/s; "
            f"raw 100-row INSERT..unnest {raw_many * 1e3:,.2f} ms)"
            f"\n[PostgresStore] claim_runs limit=1: {1 / claim_one:,.0f} claims/s "
            f"({claim_one * 1e6:,.0f} us); limit=100: {100 / claim_batch:,.0f} claims/s "
            f"({claim_batch * 1e3:,.2f} ms per 100)"
        )


def test_the_due_at_column_is_the_contracts_due_at(store: PostgresStore, pg_url: str) -> None:
    """The generated ``runs.due_at`` column (what claims select on) gives
    :func:`durable_core.store.due_at` on every combination of its inputs."""
    import itertools

    from durable_core.store import due_at

    combos = list(itertools.product(
        ("queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled"),
        (None, "w"), (None, 0, 5, 100), (None, 5), (0, 2),
    ))
    runs = sql.Identifier(store.schema, "runs")
    with raw(pg_url) as conn:
        for i, (status, owner, expires, wake, nsig) in enumerate(combos):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, function_id, status, events, event_ids, created_at, "
                    "updated_at, lease_owner, lease_expires, wake_at, signal_count) "
                    "VALUES (%s, 'f', %s, '{{}}', '{{}}', 0, 0, %s, %s, %s, %s)"
                ).format(runs),
                (str(i), status, owner, expires, wake, nsig),
            )
        got = dict(conn.execute(sql.SQL("SELECT id, due_at FROM {}").format(runs)).fetchall())
    for i, (status, owner, expires, wake, nsig) in enumerate(combos):
        assert got[str(i)] == due_at(status, owner, expires, wake, nsig > 0), combos[i]


def test_a_version_2_schema_keeps_its_data_through_version_3(pg_url: str,
                                                              pg_schema: str) -> None:
    """Version 3 renames inbox -> signals and idem -> idempotency and adds
    events.received_at (= ts for events stored before): nothing stored is lost."""
    with raw(pg_url) as conn:
        assert pg_module._migrate(conn, pg_schema, target=2) == 0
        q = {name: sql.Identifier(pg_schema, name)
             for name in ("runs", "events", "inbox", "idem")}
        conn.execute(sql.SQL(
            "INSERT INTO {} (id, function_id, status, events, event_ids, created_at, updated_at,"
            " idempotency_key, inbox_count) VALUES ('old', 'fn', 'queued', '{{}}', '{{}}', %s,"
            " %s, 'k', 1)").format(q["runs"]), (T0, T0))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('fn', 'k', 'old', %s)").format(q["idem"]),
                     (T0,))
        conn.execute(sql.SQL(
            "INSERT INTO {} (seq, run_id, kind, key, payload, position) "
            "VALUES (7, 'old', 'event', 'k', '{{}}', 0)").format(q["inbox"]))
        conn.execute(sql.SQL(
            "INSERT INTO {} (seq, id, name, data, ts, duplicate, routed) "
            "VALUES (1, 'e1', 'a', %s, %s, false, false)").format(q["events"]),
            (event_json("e1", "a", T0 - 5), T0 - 5))
        conn.execute(sql.SQL("SELECT setval({}::regclass, 7)").format(
            sql.Literal(f'"{pg_schema}"."signal_seq"')))
        conn.execute(sql.SQL("UPDATE {} SET value = 1 WHERE name = 'events'").format(
            sql.Identifier(pg_schema, "counters")))
    store = PostgresStore(pg_url, schema=pg_schema)
    try:
        assert version_of(pg_url, pg_schema) == pg_module.SCHEMA_VERSION
        assert {"signals", "idempotency"} <= tables_of(pg_url, pg_schema)
        assert not {"inbox", "idem"} & tables_of(pg_url, pg_schema)
        ev = store.get_event("e1")
        assert ev is not None and (ev.ts, ev.received_at) == (T0 - 5, T0 - 5)
        [dup] = store.append_events([event_json("e1", "a")], T0)
        assert dup.duplicate
        create(store, new_run("new", function_id="fn", key="k", created_at=T0 + 1))
        assert [r.id for r in store.list_runs()] == ["old"]
        [c] = store.claim_runs("w", T0, LEASE, 10)
        assert [(seq, s.key) for seq, s in c.signals] == [(7, "k")]
        assert store.cancel_requested(["old"]) == set()
        assert store.commit(CommitBatch(now=T0, signals=(("old", Signal("cancel", "c", "1")),
                                                         ))) == set()
        assert store.cancel_requested(["old"]) == {"old"}
        w = RunWrite("old", c.run.epoch, status="completed", output="1")
        assert store.commit(CommitBatch(now=T0, writes=(w,))) == set()
        assert store.cancel_requested(["old"]) == set()
    finally:
        store.close()


def test_one_commit_creates_ten_thousand_keyed_runs(store: PostgresStore) -> None:
    # Every new run and idempotency key once took its own advisory lock: 20,000 locks in one
    # transaction ran out of the server's shared lock table ("out of shared memory"). Keys
    # now share LOCK_BUCKETS locks, so the lock count is bounded whatever the batch size.
    runs = tuple(new_run(f"r{k}", key=f"key{k}") for k in range(10_000))
    assert store.commit(CommitBatch(now=T0, runs=runs, events=(event_json("e1"),))) == set()
    assert len(store.list_runs(limit=20_000)) == 10_000
    # The keys still deduplicate: a second run with a taken key is skipped.
    assert store.commit(CommitBatch(now=T0 + 1, runs=(new_run("again", key="key7"),))) == set()
    with pytest.raises(RunNotFoundError):
        store.get_run("again")


def test_deduplication_keys_share_a_bounded_set_of_locks() -> None:
    keys = {pg_module._lock_key("s", "run", f"r{k}") for k in range(20_000)}
    assert len(keys) == pg_module.LOCK_BUCKETS
    assert all(-(2**63) <= k < 2**63 for k in keys)
    # The same key always maps to the same lock; another schema to other locks.
    assert pg_module._lock_key("s", "run", "r1") == pg_module._lock_key("s", "run", "r1")
    assert pg_module._lock_key("t", "run", "r1") not in keys


def test_a_version_5_schema_keeps_its_runs_through_version_6(pg_url: str,
                                                              pg_schema: str) -> None:
    """Version 6 adds runs.error_traceback: a run failed before reads back its error with no
    traceback, and a run failing now keeps its traceback."""
    with raw(pg_url) as conn:
        assert pg_module._migrate(conn, pg_schema, target=5) == 0
        runs = sql.Identifier(pg_schema, "runs")
        conn.execute(sql.SQL(
            "INSERT INTO {} (id, function_id, status, events, event_ids, created_at, updated_at,"
            " error_type, error_message, ended_at) VALUES ('old', 'fn', 'failed', '{{}}', '{{}}',"
            " %s, %s, 'ValueError', 'nope', %s)").format(runs), (T0, T0, T0))
    store = PostgresStore(pg_url, schema=pg_schema)
    try:
        assert version_of(pg_url, pg_schema) == pg_module.SCHEMA_VERSION == 10
        old = store.get_run("old")
        assert old.error is not None
        assert (old.error.type, old.error.message, old.error.traceback) == (
            "ValueError", "nope", None)
        create(store, new_run("new", function_id="fn", created_at=T0 + 1))
        [c] = store.claim_runs("w", T0, LEASE, 10)
        error = ErrorInfo("KeyError", "'k'", "Traceback (most recent call last):\n...\n")
        w = RunWrite("new", c.run.epoch, status="failed", error=error)
        assert store.commit(CommitBatch(now=T0, writes=(w,))) == set()
        got = store.get_run("new").error
        assert got is not None and got.traceback == error.traceback
    finally:
        store.close()


# --------------------------------------------------------------------------- the routing poll


def _claims_reaching_the_server(store: PostgresStore) -> list[int]:
    """Count the claims that reach the server (``claim_runs`` may answer an empty claim
    from what it knows: see ``_nothing_due``)."""
    sent: list[int] = []
    real = store._run_conn

    def counting(fn: Callable[..., Any], **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "claim":
            sent.append(1)
        return real(fn, **kwargs)

    store._run_conn = counting  # type: ignore[method-assign]
    return sent


def test_a_skipped_claim_never_hides_a_claimable_run(
    pg_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty claim vouches for the next ones only while nothing that could make a run
    claimable happened: a commit through this store, a notification of another process's
    commit (runs, signals, ended runs), or time reaching the next due run."""
    monkeypatch.setattr(pg_module, "_IDLE_TRUST_S", 3600.0)  # no timing in this test
    a = PostgresStore(pg_url, schema=pg_schema)
    b = PostgresStore(pg_url, schema=pg_schema)  # another process
    try:
        sent = _claims_reaching_the_server(a)
        assert a.claim_runs("w", T0, LEASE, 10) == []  # no listener: never skipped
        assert a.claim_runs("w", T0, LEASE, 10) == []
        assert len(sent) == 2
        assert a.wait_for_notify(0) is False  # listening, as a worker does
        assert a.claim_runs("w", T0, LEASE, 10) == []
        assert a.claim_runs("w", T0, LEASE, 10) == []
        assert len(sent) == 3  # the second was answered without a round trip

        # Event appends (from anywhere) make no run claimable: still skipped.
        b.append_events([event_json("e1")], T0)
        assert a.wait_for_notify(10) is True
        assert a.claim_runs("w", T0, LEASE, 10) == []
        assert len(sent) == 3

        # Another process creates a run: once its notification is in, claims look again.
        create(b, new_run("r1"))
        assert a.wait_for_notify(10) is True
        assert [c.run.id for c in a.claim_runs("w", T0, 100, 10)] == ["r1"]
        assert len(sent) == 4

        # This store's own commits count at once; the lease of r1 runs out at T0 + 100.
        assert a.claim_runs("w", T0 + 1, LEASE, 10) == []
        create(a, new_run("r2"))
        assert [c.run.id for c in a.claim_runs("w", T0 + 2, LEASE, 10)] == ["r2"]
        assert a.claim_runs("w", T0 + 3, LEASE, 10) == []  # r2's notification is unread
        assert a.wait_for_notify(10) is True
        assert a.claim_runs("w", T0 + 3, LEASE, 10) == []
        n = len(sent)
        assert a.claim_runs("w", T0 + 99, LEASE, 10) == []
        assert len(sent) == n  # nothing due before T0 + 100
        assert [c.run.id for c in a.claim_runs("w2", T0 + 100, LEASE, 10)] == ["r1"]

        # A claim of other functions vouches for nothing about these.
        assert a.claim_runs("w", T0 + 101, LEASE, 10, ["other"]) == []
        create(b, new_run("r3", function_id="fn"))
        assert a.wait_for_notify(10) is True
        assert [c.run.id for c in a.claim_runs("w", T0 + 102, LEASE, 10, ["fn"])] == ["r3"]
    finally:
        a.close()
        b.close()


def test_a_skipped_claim_vouches_for_a_short_while(
    pg_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change that no notification announces (here a run written behind the store's
    back) is seen once the empty claim's word runs out (``_IDLE_TRUST_S``)."""
    a = PostgresStore(pg_url, schema=pg_schema)
    try:
        create(a, new_run("r1"))
        claim(a, "r1")
        assert a.wait_for_notify(0) is False
        monkeypatch.setattr(pg_module, "_IDLE_TRUST_S", 3600.0)
        assert a.claim_runs("w", T0, LEASE, 10) == []
        with raw(pg_url) as conn:  # a release that notifies nobody
            conn.execute(sql.SQL("UPDATE {} SET lease_owner = NULL, lease_expires = NULL")
                         .format(sql.Identifier(pg_schema, "runs")))
        assert a.claim_runs("w", T0, LEASE, 10) == []  # within the window: not looked at
        monkeypatch.setattr(pg_module, "_IDLE_TRUST_S", 0.0)
        assert [c.run.id for c in a.claim_runs("w", T0, LEASE, 10)] == ["r1"]
    finally:
        a.close()


def test_unrouted_events_read_the_key_paths_of_their_names(store: PostgresStore) -> None:
    """Routing asks for the key paths of each name of the events it read: they come with
    the events (same snapshot), once; asked again, they are read again."""
    trigger = event_json("t0")
    store.commit(CommitBatch(now=T0, waits_add=(
        WaitRecord("r1", 0, "go", "x", trigger, T0 + LEASE, 0, ("data.k=1", "user.id=2")),
        WaitRecord("r2", 0, "go", "x", trigger, T0 + LEASE, 0, ("data.k=3",)),
    )))
    store.append_events([event_json("e1", "go"), event_json("e2", "other")], T0)
    queries: list[object] = []
    real = store._run_conn

    def reading(fn: Callable[..., Any], **kwargs: Any) -> Any:
        queries.append(fn)
        return real(fn, **kwargs)

    store._run_conn = reading  # type: ignore[method-assign]
    assert [e.id for e in store.unrouted_events(10)] == ["e1", "e2"]
    assert store.wait_key_paths("go") == ["data.k", "user.id"]
    assert store.wait_key_paths("other") == []
    assert len(queries) == 1
    assert store.wait_key_paths("go") == ["data.k", "user.id"]  # not kept: read again
    assert len(queries) == 2


def test_unrouted_events_start_past_the_routed_ones(
    pg_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read starts at the lowest seq not known to be routed. A routing commit lost in
    a server crash (``routing_only``: committed without waiting for the flush), simulated
    here by clearing a mark behind the store's back, is read again once the store saw a
    connection die, or ``_FLOOR_TRUST_S`` after it last read the whole log."""
    store = PostgresStore(f"{pg_url}?application_name=fl-{pg_schema}", schema=pg_schema,
                          pool_min=1, pool_max=1)
    try:
        stored = store.append_events([event_json(f"e{i}") for i in range(4)], T0)
        store.commit(CommitBatch(now=T0, routed_events=(stored[0].seq, stored[1].seq)))
        assert [e.id for e in store.unrouted_events(10)] == ["e2", "e3"]
        store.commit(CommitBatch(now=T0, routed_events=(stored[2].seq, stored[3].seq)))
        assert store.unrouted_events(10) == []
        assert [e.id for e in store.unrouted_events(0)] == []
        new = store.append_events([event_json("e4")], T0)
        assert [e.id for e in store.unrouted_events(10)] == ["e4"]  # later events: seen
        store.commit(CommitBatch(now=T0, routed_events=(new[0].seq,)))

        def unroute(event_id: str) -> None:
            with raw(pg_url) as conn:
                conn.execute(sql.SQL("UPDATE {} SET routed = false WHERE id = %s")
                             .format(sql.Identifier(pg_schema, "events")), (event_id,))

        unroute("e1")
        assert store.unrouted_events(10) == []  # behind the floor
        monkeypatch.setattr(pg_module, "_FLOOR_TRUST_S", 0.0)
        assert [e.id for e in store.unrouted_events(10)] == ["e1"]
        store.commit(CommitBatch(now=T0, routed_events=(stored[1].seq,)))
        monkeypatch.setattr(pg_module, "_FLOOR_TRUST_S", 3600.0)
        assert store.unrouted_events(10) == []
        assert store.unrouted_events(10) == []

        unroute("e0")
        assert store.unrouted_events(10) == []
        with raw(pg_url) as conn:  # the server "restarts": the store's connection dies
            pids = [pid for pid, ok in conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s", (f"fl-{pg_schema}",)).fetchall() if ok]
            assert pids
            wait_until(lambda: not conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()[0], "the backend to exit")  # type: ignore[index]
        assert [e.id for e in store.unrouted_events(10)] == ["e0"]
    finally:
        store.close()


def test_a_claim_that_finds_runs_vouches_for_nothing(
    pg_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty claim's word ends with the next claim that finds runs: there may be more
    (here two runs released behind the store's back, and a notification that only says
    "events" makes the store look, and find the first of them)."""
    monkeypatch.setattr(pg_module, "_IDLE_TRUST_S", 3600.0)
    a = PostgresStore(pg_url, schema=pg_schema)
    try:
        create(a, new_run("r1"), new_run("r2"))
        assert len(a.claim_runs("w", T0, LEASE, 10)) == 2
        assert a.wait_for_notify(0) is False
        assert a.claim_runs("w", T0, LEASE, 10) == []
        with raw(pg_url) as conn:
            conn.execute(sql.SQL("UPDATE {} SET lease_owner = NULL, lease_expires = NULL")
                         .format(sql.Identifier(pg_schema, "runs")))
            assert a.claim_runs("w", T0, LEASE, 10) == []  # not announced: not looked at
            conn.execute("SELECT pg_notify(%s, 'events')", (pg_schema,))
        listener = a._listener
        assert listener is not None
        poller = select.poll()
        poller.register(listener.pgconn.socket, select.POLLIN)
        assert poller.poll(30_000), "the notification did not arrive"
        assert [c.run.id for c in a.claim_runs("w", T0, LEASE, 1)] == ["r1"]  # unread: looks
        assert a.wait_for_notify(10) is True  # "events": no run made claimable by it
        assert [c.run.id for c in a.claim_runs("w", T0, LEASE, 1)] == ["r2"]
    finally:
        a.close()
