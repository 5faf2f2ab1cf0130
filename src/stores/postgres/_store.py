"""The PostgreSQL store: the store contract on psycopg 3 and a connection pool.

Everything lives in one schema (``durable`` by default), so several applications (or tests)
can share a database. The schema is created and migrated on open; a version row in its
``meta`` table records how far. Opening is safe from many processes at once (migrations run
under a transaction-scoped advisory lock).

The rules are the contract's (:mod:`durable_core.store`): this module persists. Where SQL
states a rule for atomicity (fencing and applying writes inside the commit statement, the
claimable runs through ``runs.due_at``, lease renewal), it says so, and ``stores.testing``
checks it against the rule's function.

Performance: a commit of run writes (journal entries, status changes, consumed signals,
waits, signals, routed marks, cron cursors) is a single SQL statement, so a single round trip;
fencing is checked inside it, under the run rows' locks. Only batches that append events or
create runs need a second round trip, for deduplication. Arrays are sent in binary and bulk
inserts use ``unnest``, so a batch of hundreds of writes costs little more than one.

Concurrency: writes to a run are fenced by its lease epoch (and journal length) on the
latest row version; claims use ``FOR NO KEY UPDATE SKIP LOCKED`` so that concurrent workers
never claim the same run and never wait for each other. Event appends are serialized by a
counter row that hands out event seqs (so the log is dense and in commit order, and
concurrent appends of one event id agree on which copy is the original); run creation takes
transaction-scoped advisory locks on run ids and idempotency keys. Locks are always taken in
the same order (advisory locks, event counter, run rows by id, then waits, events and cron
rows), so commits do not deadlock one another; a deadlock would be retried.

Every commit that creates events, runs or signals or ends a run sends a ``NOTIFY`` on a
channel named after the schema; :meth:`PostgresStore.wait_for_notify` blocks until one
arrives. Polling remains the fallback: notifications are a latency optimisation, never
needed for correctness.

Limitations: PostgreSQL ``text`` cannot hold NUL characters (``"\\x00"``), nor can Python
strings with lone surrogates be encoded; such values raise :class:`~durable_core.StoreError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, LiteralString, NamedTuple, TypeVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from durable_core.base._errors import RunNotFoundError, StoreError, ValidationError
from durable_core.base._redact import redact, redact_url
from durable_core.core._model import TERMINAL_STATUSES, ErrorInfo, JournalEntry, Signal
from durable_core.store import (
    Buffer,
    BufferAdd,
    BufferState,
    BufferTake,
    Claim,
    CommitBatch,
    NewRun,
    RunChange,
    RunRecord,
    SkippedTrigger,
    StartLimiter,
    StartLimits,
    StoredEvent,
    WaitRecord,
    buffer_added,
    buffer_rest,
    cron_advances,
    flag_duplicates,
    fold_writes,
    lone_memo,
    new_runs_to_create,
    notifies,
    pick_limited,
    routing_only,
    run_events_to_append,
    take_accepted,
    wait_changes,
    wait_records,
)

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

_T = TypeVar("_T")
_Conn = psycopg.Connection[tuple[Any, ...]]
_Cursor = psycopg.Cursor[tuple[Any, ...]]

_TERMINAL_SQL = "('completed', 'failed', 'cancelled')"
_MIN = "(-9223372036854775807 - 1)"  # runs.due_at of runs that are claimable at any time
assert frozenset({"completed", "failed", "cancelled"}) == TERMINAL_STATUSES

_TABLES = (
    "meta", "events", "runs", "run_events", "idempotency", "journal", "signals", "waits",
    "cron", "counters", "signal_seq", "skipped_triggers", "flow_gcra", "flow_slots",
    "idem", "inbox",  # the names of idempotency and signals before version 3
    "flow_buffers", "flow_buffered",
)

# ---------------------------------------------------------------------------- migrations
# Each entry upgrades the schema by one version. Never edit a released migration: append.
# ``{name}`` is replaced by the schema-qualified identifier of ``name`` (see _TABLES).

_MIGRATIONS: tuple[tuple[LiteralString, ...], ...] = (
    # 1: the tables.
    (
        # Event seqs come from a counter row, locked until commit: event appends are
        # serialized, so seq order is commit order and a dense, gap-free log.
        "CREATE TABLE {counters} (name text PRIMARY KEY, value bigint NOT NULL)",
        "INSERT INTO {counters} (name, value) VALUES ('events', 0)",
        "CREATE SEQUENCE {signal_seq}",
        """CREATE TABLE {events} (
            seq bigint PRIMARY KEY,
            id text NOT NULL,
            name text NOT NULL,
            data text NOT NULL,
            ts bigint NOT NULL,
            duplicate boolean NOT NULL,
            routed boolean NOT NULL)""",
        "CREATE INDEX events_by_id ON {events} (id, seq) WHERE NOT duplicate",
        "CREATE INDEX events_unrouted ON {events} (seq) WHERE NOT routed",
        # due_at: the earliest ``now`` at which the run is claimable (NULL: never, as things
        # stand). It folds the claimability rule into one indexable column.
        """CREATE TABLE {runs} (
            id text PRIMARY KEY,
            ord bigserial NOT NULL,
            function_id text NOT NULL,
            status text NOT NULL,
            events text[] NOT NULL,
            event_ids text[] NOT NULL,
            created_at bigint NOT NULL,
            updated_at bigint NOT NULL,
            wake_at bigint,
            output text,
            error_type text,
            error_message text,
            parent_run_id text,
            idempotency_key text,
            ended_at bigint,
            epoch bigint NOT NULL DEFAULT 0,
            lease_owner text,
            lease_expires bigint,
            journal_len bigint NOT NULL DEFAULT 0,
            inbox_count bigint NOT NULL DEFAULT 0,
            due_at bigint GENERATED ALWAYS AS (
                CASE
                    WHEN status IN ('completed', 'failed', 'cancelled') THEN NULL
                    WHEN lease_owner IS NOT NULL THEN COALESCE(lease_expires, 0)
                    WHEN status = 'queued' OR inbox_count > 0 THEN (-9223372036854775807 - 1)
                    ELSE wake_at
                END) STORED) WITH (fillfactor = 75)""",
        # Claims read the runs that are queued or signalled (due_at = MIN) in ord order,
        # and those due by time (MIN < due_at <= now); leased and sleeping runs are never
        # scanned.
        "CREATE INDEX runs_due ON {runs} (due_at, ord) WHERE due_at IS NOT NULL",
        """CREATE INDEX runs_wake ON {runs} (wake_at)
            WHERE wake_at IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled')""",
        """CREATE TABLE {idem} (
            function_id text NOT NULL,
            key text NOT NULL,
            run_id text NOT NULL,
            created_at bigint NOT NULL,
            PRIMARY KEY (key, function_id))""",
        """CREATE TABLE {journal} (
            run_id text NOT NULL,
            seq bigint NOT NULL,
            op text NOT NULL,
            position bigint NOT NULL,
            step_id text NOT NULL,
            kind text NOT NULL,
            ts bigint NOT NULL,
            data text NOT NULL,
            PRIMARY KEY (run_id, seq))""",
        """CREATE TABLE {inbox} (
            seq bigint PRIMARY KEY,
            run_id text NOT NULL,
            kind text NOT NULL,
            key text NOT NULL,
            payload text NOT NULL,
            position bigint NOT NULL)""",
        "CREATE INDEX inbox_by_run ON {inbox} (run_id, seq)",
        """CREATE TABLE {waits} (
            event text NOT NULL,
            run_id text NOT NULL,
            position bigint NOT NULL,
            if_ text,
            trigger_event text NOT NULL,
            expires_at bigint NOT NULL,
            after_seq bigint NOT NULL,
            ord bigserial NOT NULL,
            PRIMARY KEY (event, run_id, position))""",
        "CREATE INDEX waits_by_run ON {waits} (run_id, position)",
        "CREATE TABLE {cron} (key text PRIMARY KEY, tick bigint NOT NULL)",
    ),
    # 2: list_runs filters: indexes, and an index table of the runs' triggering event ids.
    (
        # Newest first. On -ord, so that claims (ORDER BY ord) cannot pick it and scan the
        # whole table in creation order: they go through runs_due.
        "CREATE INDEX runs_newest ON {runs} ((-ord))",
        "CREATE INDEX runs_by_function ON {runs} (function_id, ord)",
        "CREATE INDEX runs_by_status ON {runs} (status, ord)",
        """CREATE TABLE {run_events} (
            event_id text NOT NULL,
            run_id text NOT NULL,
            PRIMARY KEY (event_id, run_id))""",
        "INSERT INTO {run_events} (event_id, run_id) "
        "SELECT DISTINCT unnest(event_ids), id FROM {runs}",
    ),
    # 3: events.received_at (the dedupe window runs from the receipt of the original; events
    # stored before get their ts, which it was measured from then), and one name per idea
    # across the stores: signals (was inbox), idempotency (was idem).
    (
        "ALTER TABLE {events} ADD COLUMN received_at bigint",
        "UPDATE {events} SET received_at = ts",
        "ALTER TABLE {events} ALTER COLUMN received_at SET NOT NULL",
        "ALTER TABLE {inbox} RENAME TO signals",
        "ALTER INDEX {schema}.inbox_by_run RENAME TO signals_by_run",
        "ALTER TABLE {runs} RENAME COLUMN inbox_count TO signal_count",
        "ALTER TABLE {idem} RENAME TO idempotency",
    ),
    # 4: waits are indexed by (event name, match key): the primary key becomes (event,
    # match_key, run_id, position), the routing lookup's index. A wait with several keys has
    # a row per key, each holding the whole list in match_keys (JSON; NULL with one key or
    # none); '' is the key of a wait without keys (found for every event of its name, as
    # every wait registered before is). Keys are compared bytewise (COLLATE "C"), which the
    # skip scan of wait_key_paths relies on.
    (
        "ALTER TABLE {waits} ADD COLUMN match_key text COLLATE \"C\" NOT NULL DEFAULT ''",
        "ALTER TABLE {waits} ADD COLUMN match_keys text",
        "ALTER TABLE {waits} DROP CONSTRAINT waits_pkey",
        "ALTER TABLE {waits} ADD PRIMARY KEY (event, match_key, run_id, position)",
    ),
    # 5: skipped_triggers, the triggers that started no run because their function's
    # idempotency key was held (one row per would-be run id; ord orders them).
    (
        """CREATE TABLE {skipped_triggers} (
            id text PRIMARY KEY,
            ord bigserial NOT NULL,
            function_id text NOT NULL,
            key text NOT NULL,
            run_id text NOT NULL,
            event_id text,
            at bigint NOT NULL)""",
        "CREATE INDEX skipped_by_run ON {skipped_triggers} (run_id, ord)",
        "CREATE INDEX skipped_by_event ON {skipped_triggers} (event_id, ord)",
    ),
    # 6: a failed run keeps its error's traceback (bounded by ErrorInfo); NULL for runs
    # ended before, and for errors never raised (a cancel).
    (
        "ALTER TABLE {runs} ADD COLUMN error_traceback text",
    ),
    # 7: runs.rerun_of, the run a rerun was made from (Client.rerun); NULL before.
    (
        "ALTER TABLE {runs} ADD COLUMN rerun_of text",
    ),
    # 8: flow buffers (debounce, batch_events): a buffer's state per (function, key), and
    # the seqs of its events.
    (
        """CREATE TABLE IF NOT EXISTS {flow_buffers} (
            function_id text NOT NULL,
            key text NOT NULL,
            kind text NOT NULL,
            first_at bigint NOT NULL,
            ready_at bigint NOT NULL,
            count integer NOT NULL,
            bytes bigint NOT NULL,
            last_seq bigint NOT NULL,
            period_ms bigint NOT NULL,
            timeout_ms bigint,
            max_size integer NOT NULL,
            PRIMARY KEY (function_id, key))""",
        "CREATE INDEX IF NOT EXISTS flow_buffers_ready ON {flow_buffers} (ready_at)",
        """CREATE TABLE IF NOT EXISTS {flow_buffered} (
            function_id text NOT NULL,
            key text NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (function_id, key, seq))""",
    ),
    (
    # 9: the state of the start limits (flow control: throttle, rate_limit, singleton; see
    # durable_core.store.StartLimiter): flow_gcra, per GCRA bucket its theoretical arrival
    # time and the last run it let start; flow_slots, per singleton bucket the run holding
    # it (NULL: free) and the run waiting for it (never claimed while it waits);
    # skipped_triggers.reason. due_at: a queued run with a wake_at (delayed by its
    # throttle) is due at its wake_at.
        "CREATE TABLE IF NOT EXISTS {flow_gcra} (bucket text PRIMARY KEY, "
        "tat bigint NOT NULL, run_id text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {flow_slots} (bucket text PRIMARY KEY, run_id text, "
        "next_run text)",
        "CREATE INDEX IF NOT EXISTS flow_slots_by_run ON {flow_slots} (run_id) "
        "WHERE run_id IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS flow_slots_by_next ON {flow_slots} (next_run) "
        "WHERE next_run IS NOT NULL",
        "ALTER TABLE {skipped_triggers} ADD COLUMN IF NOT EXISTS reason text NOT NULL "
        "DEFAULT 'idempotency'",
        "ALTER TABLE {runs} DROP COLUMN due_at",
        """ALTER TABLE {runs} ADD COLUMN due_at bigint GENERATED ALWAYS AS (
                CASE
                    WHEN status IN ('completed', 'failed', 'cancelled') THEN NULL
                    WHEN lease_owner IS NOT NULL THEN COALESCE(lease_expires, 0)
                    WHEN signal_count > 0 OR (status = 'queued' AND wake_at IS NULL)
                        THEN (-9223372036854775807 - 1)
                    ELSE wake_at
                END) STORED""",
        "CREATE INDEX runs_due ON {runs} (due_at, ord) WHERE due_at IS NOT NULL",
    ),
    # 10: concurrency and priority (issue 13). runs.priority_ms: claims take queued runs in
    # (created_at - priority_ms, ord) order, through runs_due_order (0 for runs before);
    # runs.slot_key1/2 and their limits, the run's concurrency slots (NULL: none), each
    # with a partial index of the leased runs holding it (what a limited claim counts).
    (
        "ALTER TABLE {runs} ADD COLUMN priority_ms bigint NOT NULL DEFAULT 0",
        "ALTER TABLE {runs} ADD COLUMN slot_key1 text",
        "ALTER TABLE {runs} ADD COLUMN slot_limit1 bigint",
        "ALTER TABLE {runs} ADD COLUMN slot_key2 text",
        "ALTER TABLE {runs} ADD COLUMN slot_limit2 bigint",
        "CREATE INDEX IF NOT EXISTS runs_due_order ON {runs} "
        "(due_at, (created_at - priority_ms), ord) WHERE due_at IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS runs_slot1 ON {runs} (slot_key1) "
        "WHERE slot_key1 IS NOT NULL AND lease_owner IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS runs_slot2 ON {runs} (slot_key2) "
        "WHERE slot_key2 IS NOT NULL AND lease_owner IS NOT NULL",
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this code creates and understands."""


def _render(template: LiteralString, schema: str) -> LiteralString:
    """``template`` with ``{table}`` replaced by the quoted, schema-qualified identifier."""
    idents = {name: sql.Identifier(schema, name) for name in _TABLES}
    # Built only from a literal template and quoted identifiers: safe to use as a query.
    return sql.SQL(template).format(schema=sql.Identifier(schema), **idents).as_string(None)


def _migrate(conn: _Conn, schema: str, target: int = SCHEMA_VERSION) -> int:
    """Bring ``schema`` to version ``target`` (creating it if needed); returns the version
    found before. Runs in one transaction under an advisory lock, so concurrent openers
    queue rather than race. ``conn`` must be in autocommit mode."""
    meta = _render("{meta}", schema)
    # Fast path: already at the target version, no lock (and no CREATE privilege) needed.
    if _exists(conn, meta):
        found = _read_version(conn, schema)
        _check_not_newer(schema, found)
        if found >= target:
            return found
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            ("durable-core:migrate:" + schema,),
        )
        conn.execute(_render("CREATE SCHEMA IF NOT EXISTS {schema}", schema))
        conn.execute(
            _render("CREATE TABLE IF NOT EXISTS {meta} (key text PRIMARY KEY, value text)", schema)
        )
        found = _read_version(conn, schema)
        _check_not_newer(schema, found)
        for version in range(found + 1, target + 1):
            for stmt in _MIGRATIONS[version - 1]:
                conn.execute(_render(stmt, schema))
        if target > found:
            conn.execute(
                _render(
                    "INSERT INTO {meta} (key, value) VALUES ('version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    schema,
                ),
                (str(target),),
            )
    return found


def _exists(conn: _Conn, qualified: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,)).fetchone()
    return bool(row and row[0])


def _read_version(conn: _Conn, schema: str) -> int:
    row = conn.execute(
        _render("SELECT value FROM {meta} WHERE key = 'version'", schema)
    ).fetchone()
    return int(row[0]) if row else 0


def _check_not_newer(schema: str, found: int) -> None:
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"postgres schema {schema!r} is at version {found}, newer than version "
            f"{SCHEMA_VERSION} that this durable-core understands; upgrade durable-core "
            "(or use another schema)"
        )


# ---------------------------------------------------------------------------- queries

_RUN_COLS: LiteralString = (
    "r.id, r.function_id, r.status, r.events, r.created_at, r.updated_at, r.wake_at, "
    "r.output, r.error_type, r.error_message, r.parent_run_id, r.idempotency_key, "
    "r.ended_at, r.epoch, r.lease_owner, r.lease_expires, r.event_ids, r.rerun_of"
)
_RUN_READ_COLS: LiteralString = _RUN_COLS + ", r.error_traceback"
"""A run as read (the error's traceback last). Claims return ``_RUN_COLS``: a claimed run
has not ended, so it has no error."""
_EVENT_COLS: LiteralString = "seq, id, name, data, ts, received_at, duplicate"
_JOURNAL_COLS: LiteralString = "run_id, seq, op, position, step_id, kind, ts, data"


class _CoreShape(NamedTuple):
    """Which parts a batch's core statement needs (one prepared statement per shape)."""

    writes: bool
    record: bool  # some write changes the run record, not only the journal
    consumed: bool
    entries: bool
    signals: bool
    waits_add: bool
    waits_remove: bool
    routed: bool
    cron: bool
    notify: bool
    ending: bool = False  # some write ends its run (its signals are deleted)
    relaxed: bool = False  # committed without waiting for the WAL flush (routing_only)


class _Queries:
    """Every statement, rendered once for one schema."""

    def __init__(self, schema: str) -> None:
        def r(template: LiteralString) -> LiteralString:
            return _render(template, schema)

        self._schema = schema
        self._core_cache: dict[_CoreShape, LiteralString] = {}
        self._list_cache: dict[tuple[object, ...], LiteralString] = {}
        self.event_seqs = r(
            "UPDATE {counters} SET value = value + %s WHERE name = 'events' RETURNING value"
        )
        self.signal_seq = _render("{signal_seq}", schema)
        self.advisory: LiteralString = (
            "SELECT pg_advisory_xact_lock(k) FROM unnest(%b::bigint[]) AS k"
        )
        self.prev_events = r(
            "SELECT DISTINCT ON (id) id, received_at FROM {events} "
            "WHERE id = ANY(%b::text[]) AND NOT duplicate ORDER BY id, seq DESC"
        )
        self.insert_events = r(
            "INSERT INTO {events} (seq, id, name, data, ts, received_at, duplicate, routed) "
            "SELECT u.seq, u.id, u.name, u.data, u.ts, %s, u.dup, u.dup FROM unnest("
            "%b::bigint[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::boolean[]"
            ") AS u(seq, id, name, data, ts, dup)"
        )
        # The ids of skipped triggers count as existing too (new_runs_to_create).
        self.existing_or_skipped = r(
            "SELECT id FROM {runs} WHERE id = ANY(%b::text[]) UNION ALL "
            "SELECT id FROM {skipped_triggers} WHERE id = ANY(%b::text[])"
        )
        self.insert_skipped = r(
            "INSERT INTO {skipped_triggers} (id, function_id, key, run_id, event_id, at, "
            "reason) SELECT u.id, u.f, u.k, u.r, u.e, u.a, u.why FROM unnest(%b::text[], "
            "%b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[]) "
            "WITH ORDINALITY AS u(id, f, k, r, e, a, why, o) ORDER BY u.o "
            "ON CONFLICT (id) DO NOTHING"
        )
        # Start limits (StartLimiter): read under the buckets' advisory locks; a slot is
        # read as it stands (a run ending concurrently only frees it or hands it on).
        self.flow_gcra_get = r(
            "SELECT bucket, tat, run_id FROM {flow_gcra} WHERE bucket = ANY(%b::text[])"
        )
        self.flow_slots_get = r(
            "SELECT bucket, run_id, next_run FROM {flow_slots} WHERE bucket = ANY(%b::text[])"
        )
        self.flow_gcra_put = r(
            "INSERT INTO {flow_gcra} (bucket, tat, run_id) SELECT * FROM unnest("
            "%b::text[], %b::bigint[], %b::text[]) ON CONFLICT (bucket) DO UPDATE "
            "SET tat = excluded.tat, run_id = excluded.run_id"
        )
        # A slot taken (it was free, and only routers, serialized by the bucket's advisory
        # lock, take slots) or waited for: if its holder ended since it was read, the slot
        # is free (or was handed to a run that waited), and the waiting run takes it if free.
        self.flow_slot_take = r(
            "INSERT INTO {flow_slots} (bucket, run_id, next_run) SELECT * "
            "FROM unnest(%b::text[], %b::text[], %b::text[]) ON CONFLICT (bucket) DO UPDATE "
            "SET run_id = excluded.run_id, next_run = excluded.next_run"
        )
        self.flow_slot_wait = r(
            "UPDATE {flow_slots} AS s SET run_id = COALESCE(s.run_id, u.r), "
            "next_run = CASE WHEN s.run_id IS NULL THEN NULL ELSE u.r END "
            "FROM unnest(%b::text[], %b::text[]) AS u(b, r) WHERE s.bucket = u.b"
        )
        self.set_wake = r(
            "UPDATE {runs} AS x SET wake_at = u.w FROM unnest(%b::text[], %b::bigint[]) "
            "AS u(id, w) WHERE x.id = u.id"
        )
        self.lock_event_counter = r(
            "SELECT value FROM {counters} WHERE name = 'events' FOR UPDATE"
        )
        self.idempotency_get = r(
            "SELECT i.function_id, i.key, i.created_at, i.run_id FROM {idempotency} AS i "
            "JOIN unnest(%b::text[], %b::text[]) AS u(f, k) ON i.function_id = u.f AND i.key = u.k "
            "WHERE i.key = ANY(%b::text[])"
        )
        self.insert_run = r(
            "INSERT INTO {runs} (id, function_id, status, events, event_ids, created_at, "
            "updated_at, parent_run_id, idempotency_key, rerun_of) "
            "VALUES (%s, %s, 'queued', %b::text[], %b::text[], %s, %s, %s, %s, %s)"
        )
        # Runs triggered by one event each (the common case: routing, cron, invoke) are
        # inserted by one statement, in order (ord follows the batch).
        self.insert_runs_one_event = r(
            "INSERT INTO {runs} (id, function_id, status, events, event_ids, created_at, "
            "updated_at, parent_run_id, idempotency_key, rerun_of) "
            "SELECT u.id, u.f, 'queued', ARRAY[u.ev], ARRAY[u.ei], u.c, u.c, u.p, u.k, u.rr "
            "FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], "
            "%b::text[], %b::text[], %b::text[]) "
            "WITH ORDINALITY AS u(id, f, ev, ei, c, p, k, rr, o) "
            "ORDER BY u.o"
        )
        self.insert_run_events = r(
            "INSERT INTO {run_events} (event_id, run_id) "
            "SELECT * FROM unnest(%b::text[], %b::text[]) ON CONFLICT DO NOTHING"
        )
        self.idempotency_put = r(
            "INSERT INTO {idempotency} (function_id, key, run_id, created_at) "
            "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[]) "
            "ON CONFLICT (function_id, key) DO UPDATE "
            "SET run_id = excluded.run_id, created_at = excluded.created_at"
        )
        # Payload 'events': the commit appended events and changed nothing else (no run is
        # claimable because of it: see claim_runs); '' for every other commit.
        self.notify: LiteralString = "SELECT pg_notify(%s, 'events')"
        # A claim returns each run with its journal and signals as parallel arrays. They are
        # read in the claiming statement's snapshot, which may predate the run's version it
        # locked (a writer that committed after the statement started but before it reached
        # the row: SKIP LOCKED skips only rows locked at that moment, and the lock follows
        # the row to its latest version): the caller compares the journal with journal_len
        # and re-reads it if it is short.
        claimed: LiteralString = (
            "SELECT c.*, j.seq, j.op, j.position, j.step_id, j.kind, j.ts, j.data, "
            "i.seq, i.kind, i.key, i.payload, i.position FROM c "
            "LEFT JOIN LATERAL (SELECT array_agg(s.seq) AS seq, array_agg(s.op) AS op, "
            "array_agg(s.position) AS position, array_agg(s.step_id) AS step_id, "
            "array_agg(s.kind) AS kind, array_agg(s.ts) AS ts, array_agg(s.data) AS data "
            "FROM (SELECT * FROM {journal} WHERE run_id = c.id ORDER BY seq) AS s) AS j ON true "
            "LEFT JOIN LATERAL (SELECT array_agg(s.seq) AS seq, array_agg(s.kind) AS kind, "
            "array_agg(s.key) AS key, array_agg(s.payload) AS payload, "
            "array_agg(s.position) AS position "
            "FROM (SELECT * FROM {signals} WHERE run_id = c.id ORDER BY seq) AS s) AS i ON true "
            "ORDER BY c.ord"
        )
        # Two candidate sets, each read through runs_due and locked (skipping rows locked by
        # others): the oldest runs waiting with due_at = MIN (queued, or with signals), and
        # the oldest runs due by time. The oldest ``limit`` of both are claimed (the other
        # candidates' locks end with the statement). Written so that any plan is cheap: the
        # generic plans cached for prepared statements cannot see the parameters. The
        # second variant claims runs of the given functions only.
        # Queued runs are taken in claim_order (created_at - priority_ms, then ord: issue
        # 13's priority), through runs_due_order.
        def claim(functions: LiteralString) -> LiteralString:
            # A run waiting for a singleton slot (flow_slots.next_run) is never claimed.
            waiting: LiteralString = (
                " AND NOT EXISTS (SELECT 1 FROM {flow_slots} AS fs WHERE fs.next_run = id)"
            )
            return r(
                "WITH q1 AS (SELECT id, ord, created_at - priority_ms AS o FROM {runs} "
                "WHERE due_at = " + _MIN + functions + waiting
                + " ORDER BY due_at, created_at - priority_ms, ord LIMIT %(limit)s "
                "FOR NO KEY UPDATE SKIP LOCKED), "
                "q2 AS (SELECT id, ord, created_at - priority_ms AS o FROM {runs} "
                "WHERE due_at > " + _MIN + " "
                "AND due_at <= %(now)s" + functions + waiting + " ORDER BY ord "
                "LIMIT %(limit)s FOR NO KEY UPDATE SKIP LOCKED), "
                "picked AS (SELECT id FROM (SELECT * FROM q1 UNION ALL SELECT * FROM q2) AS a "
                "ORDER BY o, ord LIMIT %(limit)s), "
                "c AS (UPDATE {runs} AS r SET epoch = r.epoch + 1, lease_owner = %(owner)s, "
                "lease_expires = %(expires)s WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) "
                "RETURNING ROW(r.created_at - r.priority_ms, r.ord) AS ord, r.journal_len, "
                + _RUN_COLS + ") " + claimed
            )

        self.claim_runs = claim("")
        # ``function_id || ''`` keeps the planner off runs_by_function: with statistics
        # that lag a burst of new runs (before autovacuum analyzes), it estimated a few
        # hundred rows for a function holding tens of thousands and combined both indexes
        # in a bitmap scan of them all (2-4 ms per claim at 20,000 runs, instead of
        # 0.2 ms through runs_due, which yields candidates in claim order).
        self.claim_runs_of = claim(" AND function_id || '' = ANY(%(functions)s::text[])")
        # Concurrency (issue 13): the claimable runs of functions with slots whose keys have
        # room before the claim, locked, with the count of each key (held: the leased runs
        # holding it, through runs_slot1/2); pick_limited then chooses and lease_ids leases.
        # Limited claims are serialized by one advisory lock (slot_lock) taken before.
        held: LiteralString = (
            "held AS (SELECT k, count(*) AS n FROM ("
            "SELECT slot_key1 AS k FROM {runs} WHERE slot_key1 IS NOT NULL "
            "AND lease_owner IS NOT NULL AND lease_expires > %(now)s UNION ALL "
            "SELECT slot_key2 FROM {runs} WHERE slot_key2 IS NOT NULL "
            "AND lease_owner IS NOT NULL AND lease_expires > %(now)s) AS s GROUP BY k)"
        )
        self.held_slots = r("WITH " + held + " SELECT k, n FROM held")
        room: LiteralString = (
            " AND function_id || '' = ANY(%(functions)s::text[]) "
            "AND (slot_key1 IS NULL OR COALESCE((SELECT n FROM held WHERE k = slot_key1), 0) "
            "< slot_limit1) "
            "AND (slot_key2 IS NULL OR COALESCE((SELECT n FROM held WHERE k = slot_key2), 0) "
            "< slot_limit2)"
            # A run waiting for a singleton slot is never claimed (as in claim_runs).
            " AND NOT EXISTS (SELECT 1 FROM {flow_slots} AS fs WHERE fs.next_run = id)"
        )
        cols: LiteralString = (
            "SELECT id, ord, created_at - priority_ms AS o, slot_key1, slot_limit1, "
            "slot_key2, slot_limit2 FROM {runs} "
        )
        self.limited_candidates = r(
            "WITH " + held + ", "
            "q1 AS (" + cols + "WHERE due_at = " + _MIN + room
            + " ORDER BY due_at, created_at - priority_ms, ord LIMIT %(limit)s "
            "FOR NO KEY UPDATE SKIP LOCKED), "
            "q2 AS (" + cols + "WHERE due_at > " + _MIN + " AND due_at <= %(now)s" + room
            + " ORDER BY ord LIMIT %(limit)s FOR NO KEY UPDATE SKIP LOCKED) "
            "SELECT a.id, a.slot_key1, a.slot_limit1, COALESCE(h1.n, 0), a.slot_key2, "
            "a.slot_limit2, COALESCE(h2.n, 0) "
            "FROM (SELECT * FROM q1 UNION ALL SELECT * FROM q2) AS a "
            "LEFT JOIN held AS h1 ON h1.k = a.slot_key1 LEFT JOIN held AS h2 ON h2.k = a.slot_key2 "
            "ORDER BY a.o, a.ord LIMIT %(limit)s"
        )
        self.slot_lock: LiteralString = "SELECT pg_advisory_xact_lock(%s)"
        self.lease_ids = r(
            "WITH c AS (UPDATE {runs} AS r SET epoch = r.epoch + 1, lease_owner = %(owner)s, "
            "lease_expires = %(expires)s WHERE r.id = ANY(%(ids)s::text[]) "
            "RETURNING ROW(r.created_at - r.priority_ms, r.ord) AS ord, r.journal_len, "
            + _RUN_COLS + ") "
            + claimed.replace("ORDER BY c.ord", "ORDER BY array_position(%(ids)s::text[], c.id)")
        )
        self.set_flow = r(
            "UPDATE {runs} AS r SET priority_ms = u.p, slot_key1 = u.k1, slot_limit1 = u.l1, "
            "slot_key2 = u.k2, slot_limit2 = u.l2 FROM unnest(%b::text[], %b::bigint[], "
            "%b::text[], %b::bigint[], %b::text[], %b::bigint[]) AS u(id, p, k1, l1, k2, l2) "
            "WHERE r.id = u.id"
        )
        # When the next run falls due by time (a timer, a lease running out), read beside a
        # claim: until then, a claim finds nothing that a notification would not announce.
        self.next_due = r("SELECT min(due_at) FROM {runs} WHERE due_at > %(now)s")
        # The contract's lease_held, stated in SQL.
        self.renew = r(
            "WITH held AS (SELECT id FROM {runs} WHERE id = ANY(%(ids)b::text[]) "
            "AND lease_owner = %(owner)s AND lease_expires > %(now)s "
            "AND status NOT IN " + _TERMINAL_SQL + " "
            "ORDER BY id FOR NO KEY UPDATE) "
            "UPDATE {runs} AS r SET lease_expires = %(expires)s "
            "WHERE r.id = ANY(ARRAY(SELECT id FROM held)) RETURNING r.id"
        )
        self.unrouted = r(
            "SELECT " + _EVENT_COLS + " FROM {events} WHERE NOT routed ORDER BY seq LIMIT %s"
        )
        # The same, with the key paths (as wait_key_paths) of each name among the events,
        # read in the same snapshot: rows with a NULL seq are (name, path) pairs, and one
        # row with a NULL name holds the last seq handed out (in ts). The scan starts at a
        # seq below which every event is known to be routed (the partial index keeps an
        # entry per routed event until a vacuum: they are not walked through).
        self.unrouted_paths = r(
            "WITH RECURSIVE ev AS MATERIALIZED (SELECT " + _EVENT_COLS + " FROM {events} "
            "WHERE NOT routed AND seq >= %(floor)s ORDER BY seq LIMIT %(limit)s), "
            "p(e, k) AS (SELECT n.name, (SELECT min(match_key) FROM {waits} "
            "WHERE event = n.name AND match_key > '') FROM (SELECT DISTINCT name FROM ev) AS n "
            "UNION ALL SELECT p.e, (SELECT min(match_key) FROM {waits} WHERE event = p.e "
            "AND match_key >= split_part(p.k, '=', 1) || '>') FROM p WHERE p.k IS NOT NULL) "
            "SELECT * FROM ev UNION ALL SELECT NULL, NULL, e, split_part(k, '=', 1), NULL, "
            "NULL, NULL FROM p WHERE k IS NOT NULL UNION ALL "
            "SELECT NULL, NULL, NULL, NULL, value, NULL, NULL FROM {counters} "
            "WHERE name = 'events'"
        )
        self.get_event = r(
            "SELECT " + _EVENT_COLS + " FROM {events} WHERE id = %s AND NOT duplicate "
            "ORDER BY seq DESC LIMIT 1"
        )
        wait_cols: LiteralString = (
            "SELECT run_id, position, event, if_, trigger_event, expires_at, after_seq, "
            "match_key, match_keys FROM {waits} "
        )
        self.find_all_waits = r(wait_cols + "WHERE event = %s AND expires_at > %s ORDER BY ord")
        # The routing lookup: the primary key (event, match_key, ...) searched for each key.
        self.find_waits = r(
            wait_cols + "WHERE event = %s AND match_key = ANY(%s::text[]) AND expires_at > %s "
            "ORDER BY ord"
        )
        # The distinct paths of the keys (a key is path=value, and a path holds no '='):
        # from the smallest key, jump past every key of the same path ('>' follows '=').
        self.wait_key_paths = r(
            "WITH RECURSIVE p(k) AS ("
            "SELECT (SELECT min(match_key) FROM {waits} WHERE event = %(e)s AND match_key > '') "
            "UNION ALL SELECT (SELECT min(match_key) FROM {waits} WHERE event = %(e)s "
            "AND match_key >= split_part(p.k, '=', 1) || '>') FROM p WHERE p.k IS NOT NULL) "
            "SELECT split_part(k, '=', 1) FROM p WHERE k IS NOT NULL"
        )
        self.cancel_reasons = r(
            "SELECT DISTINCT ON (run_id) run_id, payload FROM {signals} WHERE kind = 'cancel' "
            "AND run_id = ANY(%s) ORDER BY run_id, seq"
        )
        self.cancel_requested = r(
            "SELECT DISTINCT run_id FROM {signals} WHERE kind = 'cancel' AND run_id = ANY(%s)"
        )
        self.next_wake = r(
            "SELECT min(wake_at) FROM {runs} "
            "WHERE wake_at IS NOT NULL AND status NOT IN " + _TERMINAL_SQL
        )
        self.cron = r("SELECT key, tick FROM {cron}")
        # The hot path: one memo appended to one run, fenced in the same statement, with
        # scalar parameters (dumping a dozen one-element arrays costs more than the rest).
        self.append_one = r(
            "WITH upd AS (UPDATE {runs} SET journal_len = journal_len + 1 "
            "WHERE id = %(id)s AND epoch = %(epoch)s::bigint "
            "AND status NOT IN " + _TERMINAL_SQL + " AND journal_len = %(seq)s::bigint "
            "RETURNING id) "
            "INSERT INTO {journal} (" + _JOURNAL_COLS + ") "
            "SELECT upd.id, %(seq)s::bigint, %(op)s, %(position)s::bigint, %(step_id)s, "
            "%(kind)s, %(ts)s::bigint, %(data)s FROM upd RETURNING run_id"
        )
        self.get_run = r("SELECT " + _RUN_READ_COLS + " FROM {runs} AS r WHERE r.id = %s")
        self.skipped = r(
            "SELECT id, function_id, key, run_id, event_id, at, reason FROM {skipped_triggers} "
            "WHERE (%(function_id)s::text IS NULL OR function_id = %(function_id)s) "
            "AND (%(event_id)s::text IS NULL OR event_id = %(event_id)s) "
            "AND (%(run_id)s::text IS NULL OR run_id = %(run_id)s) "
            "ORDER BY ord DESC LIMIT %(limit)s"
        )
        self.load_journal = r(
            "SELECT " + _JOURNAL_COLS + " FROM {journal} WHERE run_id = %s ORDER BY seq"
        )

    def list_runs(
        self, function_id: bool, status: bool, event_id: bool, exclude: bool = False,
        since: bool = False, until: bool = False, before: bool = False,
    ) -> LiteralString:
        """The list_runs query for a combination of filters."""
        key = (function_id, status, event_id, exclude, since, until, before)
        query = self._list_cache.get(key)
        if query is None:
            conds: list[LiteralString] = ["true"]
            if since:
                conds.append("r.created_at >= %(since)s::bigint")
            if until:
                conds.append("r.created_at < %(until)s::bigint")
            if before:
                conds.append("r.ord < (SELECT ord FROM {runs} WHERE id = %(before)s)")
            if function_id:
                conds.append("r.function_id = %(function_id)s")
            if exclude:
                conds.append("r.function_id <> ALL(%(exclude)s::text[])")
            if status:
                conds.append("r.status = %(status)s")
            if event_id:
                conds.append(
                    "r.id IN (SELECT run_id FROM {run_events} WHERE event_id = %(event_id)s)"
                )
            order: LiteralString = "r.ord DESC" if len(conds) > 1 else "-r.ord"
            query = _render(
                "SELECT " + _RUN_READ_COLS + " FROM {runs} AS r WHERE "
                + " AND ".join(conds)
                + " ORDER BY " + order + " LIMIT %(limit)s",
                self._schema,
            )
            self._list_cache[key] = query
        return query

    def list_events(self, name: bool, since: bool, until: bool, before: bool
                    ) -> LiteralString:
        """The list_events query for a combination of filters."""
        key = ("events", name, since, until, before)
        query = self._list_cache.get(key)
        if query is None:
            conds: list[LiteralString] = ["true"]
            if name:
                conds.append("name = %(name)s")
            if since:
                conds.append("received_at >= %(since)s::bigint")
            if until:
                conds.append("received_at < %(until)s::bigint")
            if before:
                conds.append("seq < %(before)s::bigint")
            query = _render(
                "SELECT " + _EVENT_COLS + " FROM {events} WHERE " + " AND ".join(conds)
                + " ORDER BY seq DESC LIMIT %(limit)s",
                self._schema,
            )
            self._list_cache[key] = query
        return query

    def core(self, shape: _CoreShape) -> LiteralString:
        """The one statement that applies a batch's run writes (fenced), journal entries,
        signal changes, waits, routed marks and cron cursors (see ``_core_sql``). Its result
        row holds the ids of the written runs that passed fencing."""
        query = self._core_cache.get(shape)
        if query is None:
            query = _render(_core_sql(shape), self._schema)
            self._core_cache[shape] = query
        return query


_U: LiteralString = (
    "u AS (SELECT * FROM unnest(%(u_id)b::text[], %(u_epoch)b::bigint[], "
    "%(u_expect)b::bigint[], %(u_n)b::bigint[], %(u_write)b::boolean[], "
    "%(u_set_status)b::boolean[], %(u_status)b::text[], %(u_wake_at)b::bigint[], "
    "%(u_set_end)b::boolean[], %(u_output)b::text[], %(u_error_type)b::text[], "
    "%(u_error_message)b::text[], %(u_release)b::boolean[], %(u_consumed)b::bigint[], "
    "%(u_nsig)b::bigint[], %(u_touch)b::boolean[], %(u_error_traceback)b::text[]) "
    "AS u(id, epoch, expect, n, write, set_status, status, wake_at, set_end, output, "
    "error_type, error_message, release, consumed, nsig, touch, error_traceback))"
)
_U_JOURNAL: LiteralString = (  # journal-only writes: the hot path
    "u AS (SELECT * FROM unnest(%(u_id)b::text[], %(u_epoch)b::bigint[], "
    "%(u_expect)b::bigint[], %(u_n)b::bigint[]) AS u(id, epoch, expect, n))"
)


# The runs this statement ends (needs ``u`` with its status columns, and ``ok``).
_ENDING: LiteralString = (
    "SELECT e.id FROM u AS e WHERE e.set_status AND e.status IN " + _TERMINAL_SQL + " "
    "AND e.id IN (SELECT id FROM ok)"
)


def _set_run(ok: LiteralString) -> LiteralString:
    """SET clauses applying a folded write (from row ``x``) where ``ok`` holds."""
    return (
        "status = CASE WHEN " + ok + " AND x.set_status THEN x.status ELSE r.status END, "
        "wake_at = CASE WHEN " + ok + " AND x.set_status THEN x.wake_at ELSE r.wake_at END, "
        "output = CASE WHEN " + ok + " AND x.set_end THEN x.output ELSE r.output END, "
        "error_type = CASE WHEN " + ok + " AND x.set_end THEN x.error_type "
        "ELSE r.error_type END, "
        "error_message = CASE WHEN " + ok + " AND x.set_end THEN x.error_message "
        "ELSE r.error_message END, "
        "error_traceback = CASE WHEN " + ok + " AND x.set_end THEN x.error_traceback "
        "ELSE r.error_traceback END, "
        "ended_at = CASE WHEN " + ok + " AND x.set_end THEN %(now)s ELSE r.ended_at END, "
        "lease_owner = CASE WHEN " + ok + " AND x.release THEN NULL ELSE r.lease_owner END, "
        "lease_expires = CASE WHEN " + ok + " AND x.release THEN NULL "
        "ELSE r.lease_expires END, "
        "journal_len = CASE WHEN " + ok + " THEN r.journal_len + x.n ELSE r.journal_len END, "
        "updated_at = CASE WHEN " + ok + " AND x.touch THEN %(now)s ELSE r.updated_at END"
    )


def _release_slots(ended: LiteralString) -> LiteralString:
    """The singleton slots held by the runs ``ended`` (a query of their ids) pass to the
    runs waiting for them, or become free (:func:`durable_core.store.slot_released`), in
    the statement that ends them. One UPDATE: a router that set ``next_run``
    concurrently is waited for, and the row re-checked, so the waiting run is never left
    behind."""
    return (
        "fr AS (UPDATE {flow_slots} AS fs SET run_id = fs.next_run, next_run = NULL "
        "WHERE fs.run_id IN (" + ended + "))"
    )


def _core_sql(shape: _CoreShape) -> LiteralString:
    ctes: list[LiteralString] = []
    if shape.signals or shape.consumed:
        # Locking variant: ``lk`` locks every run written or signalled, in id order, and
        # reads its fencing state; ``ok`` lists the written runs that pass (write_accepted).
        # Signal changes adjust runs.signal_count in the same (single) UPDATE of each run.
        ctes.append(_U)
        ctes.append(
            "lk AS (SELECT r.id, r.epoch, r.status, r.journal_len FROM {runs} AS r "
            "WHERE r.id = ANY(%(u_id)b::text[]) ORDER BY r.id FOR NO KEY UPDATE)"
        )
        ctes.append(
            "ok AS (SELECT u.id FROM u JOIN lk ON lk.id = u.id WHERE u.write "
            "AND lk.epoch = u.epoch AND lk.status NOT IN " + _TERMINAL_SQL + " "
            "AND (u.expect IS NULL OR lk.journal_len = u.expect))"
        )
        if shape.consumed:
            # Deletes only rows visible to this statement; RETURNING counts exactly those.
            ctes.append(
                "d AS (DELETE FROM {signals} AS i USING u WHERE i.run_id = ANY(%(u_id)b::text[]) "
                "AND i.run_id = u.id "
                "AND u.consumed > 0 AND i.seq <= u.consumed AND u.id IN (SELECT id FROM ok) "
                "RETURNING i.run_id)"
            )
            ctes.append("dc AS (SELECT run_id, count(*) AS n FROM d GROUP BY run_id)")
        if shape.signals:
            # Numbers are drawn only for runs locked by lk, so each run's signals get
            # increasing numbers in commit order: a claim never sees a gap that a slower
            # transaction fills later (and a consumed_signals mark would then delete).
            ctes.append(
                "sg AS (INSERT INTO {signals} (seq, run_id, kind, key, payload, position) "
                "SELECT nextval(%(signal_seq)s::regclass), s.run_id, s.kind, s.key, "
                "s.payload, s.position FROM unnest(%(s_run)b::text[], %(s_kind)b::text[], "
                "%(s_key)b::text[], %(s_payload)b::text[], %(s_position)b::bigint[]) "
                "WITH ORDINALITY AS s(run_id, kind, key, payload, position, o) "
                "WHERE s.run_id IN (SELECT id FROM lk WHERE lk.status NOT IN "
                + _TERMINAL_SQL + ") AND s.run_id NOT IN (" + _ENDING + ") ORDER BY s.o)"
            )
        if shape.ending:
            # A run that ends takes its undelivered signals with it.
            ctes.append("de AS (DELETE FROM {signals} AS i WHERE i.run_id IN (" + _ENDING + "))")
            ctes.append(_release_slots(_ENDING))
        deleted: LiteralString = "COALESCE(dc.n, 0)" if shape.consumed else "0"
        join_dc: LiteralString = " LEFT JOIN dc ON dc.run_id = u.id" if shape.consumed else ""
        ctes.append(
            "x AS MATERIALIZED (SELECT u.*, u.id IN (SELECT id FROM ok) AS ok, "
            + deleted + " AS deleted FROM u" + join_dc + ")"
        )
        ctes.append(
            "upd AS (UPDATE {runs} AS r SET " + _set_run("x.ok") + ", "
            "signal_count = r.signal_count + x.nsig - x.deleted "
            "FROM x WHERE r.id = ANY(%(u_id)b::text[]) AND r.id = x.id "
            "AND (x.ok OR x.nsig > 0))"
        )
    elif shape.writes:
        # Plain variant: the UPDATE itself checks fencing (re-checked on the latest row
        # version if a concurrent commit got there first) and locks the rows it changes.
        ctes.append(_U if shape.record else _U_JOURNAL)
        sets = _set_run("true") if shape.record else "journal_len = r.journal_len + x.n"
        ctes.append(
            "upd AS (UPDATE {runs} AS r SET " + sets + " FROM u AS x "
            "WHERE r.id = ANY(%(u_id)b::text[]) AND r.id = x.id AND r.epoch = x.epoch "
            "AND r.status NOT IN " + _TERMINAL_SQL + " "
            "AND (x.expect IS NULL OR r.journal_len = x.expect) "
            "RETURNING r.id, r.status, r.signal_count)"
        )
        ctes.append("ok AS (SELECT id FROM upd)")
        if shape.ending:
            # A run that ends takes its undelivered signals with it (with the check on
            # ``sg``, signals to ended runs never pile up). Only runs that hold some
            # (signal_count) are looked up: the hot path's completions cost nothing more.
            ctes.append(
                "de AS (DELETE FROM {signals} AS i USING upd AS e WHERE i.run_id = e.id "
                "AND e.signal_count > 0 AND e.status IN " + _TERMINAL_SQL + ")"
            )
            ctes.append(_release_slots(
                "SELECT e.id FROM upd AS e WHERE e.status IN " + _TERMINAL_SQL))
    if shape.entries:
        ctes.append(
            "j AS (INSERT INTO {journal} (" + _JOURNAL_COLS + ") SELECT e.* FROM unnest("
            "%(j_run)b::text[], %(j_seq)b::bigint[], %(j_op)b::text[], "
            "%(j_position)b::bigint[], %(j_step_id)b::text[], %(j_kind)b::text[], "
            "%(j_ts)b::bigint[], %(j_data)b::text[]) AS e(" + _JOURNAL_COLS + ") "
            "WHERE e.run_id IN (SELECT id FROM ok))"
        )
    # Waits of runs whose writes were fenced are dropped; waits of runs not written apply.
    wait_filter: LiteralString = ""
    if shape.writes:
        written: LiteralString = (
            "SELECT id FROM u WHERE u.write" if shape.signals or shape.consumed
            else "SELECT id FROM u"
        )
        wait_filter = (
            " AND (w.run_id NOT IN (" + written + ") OR w.run_id IN (SELECT id FROM ok))"
        )
    if shape.waits_add:
        ctes.append(
            "wa AS (INSERT INTO {waits} (event, run_id, position, if_, trigger_event, "
            "expires_at, after_seq, match_key, match_keys) SELECT w.event, w.run_id, "
            "w.position, w.if_, w.trigger_event, w.expires_at, "
            "COALESCE(NULLIF(w.after_seq, 0), (SELECT COALESCE(max(seq), 0) FROM {events})), "
            "w.match_key, w.match_keys "
            "FROM unnest(%(wa_event)b::text[], %(wa_run)b::text[], "
            "%(wa_position)b::bigint[], %(wa_if)b::text[], %(wa_trigger)b::text[], "
            "%(wa_expires)b::bigint[], %(wa_key)b::text[], %(wa_keys)b::text[], "
            "%(wa_after)b::bigint[]) "
            "WITH ORDINALITY AS w(event, run_id, position, if_, "
            "trigger_event, expires_at, match_key, match_keys, after_seq, o) WHERE true"
            + wait_filter
            + " ORDER BY w.o ON CONFLICT (event, match_key, run_id, position) DO NOTHING)"
        )
    if shape.waits_remove:
        ctes.append(
            "wr AS (DELETE FROM {waits} AS v USING unnest(%(wr_run)b::text[], "
            "%(wr_position)b::bigint[]) AS w(run_id, position) "
            "WHERE v.run_id = ANY(%(wr_run)b::text[]) AND v.run_id = w.run_id "
            "AND v.position = w.position" + wait_filter + ")"
        )
    if shape.routed:
        ctes.append(
            "rt AS (UPDATE {events} SET routed = true WHERE seq IN (SELECT seq FROM {events} "
            "WHERE seq = ANY(%(routed)b::bigint[]) AND NOT routed ORDER BY seq FOR UPDATE))"
        )
    if shape.cron:
        ctes.append(
            "cr AS (INSERT INTO {cron} AS c (key, tick) SELECT k.key, k.tick "
            "FROM unnest(%(cron_key)b::text[], %(cron_tick)b::bigint[]) AS k(key, tick) "
            "ORDER BY k.key ON CONFLICT (key) DO UPDATE SET tick = excluded.tick "
            "WHERE c.tick < excluded.tick)"
        )
    # The main query runs before the data-modifying CTEs it does not read. Reading all of
    # ``lk`` there takes the run row locks first, in id order, and before ``upd`` changes
    # those rows (a row changed by this statement would no longer show up in ``lk``).
    result: LiteralString = "NULL::bigint, NULL::text[]"
    if shape.signals or shape.consumed:
        result = "(SELECT count(*) FROM lk), ARRAY(SELECT id FROM ok)"
    elif shape.writes:
        result = "NULL::bigint, ARRAY(SELECT id FROM ok)"
    if shape.notify:
        result += ", pg_notify(%(channel)s, '')"
    if shape.relaxed:
        # Local to the transaction (the statement's own, or the explicit one it is in):
        # the setting holds for its commit.
        result += ", set_config('synchronous_commit', 'off', true)"
    return "WITH " + ", ".join(ctes) + " SELECT " + result if ctes else "SELECT " + result


# ---------------------------------------------------------------------------- rows


def _run(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0], function_id=row[1], status=row[2], events=tuple(row[3]),
        created_at=row[4], updated_at=row[5], wake_at=row[6], output=row[7],
        error=None if row[8] is None else ErrorInfo(
            type=row[8], message=row[9], traceback=row[18] if len(row) > 18 else None),
        parent_run_id=row[10], idempotency_key=row[11], ended_at=row[12], epoch=row[13],
        lease_owner=row[14], lease_expires=row[15], event_ids=tuple(row[16]),
        rerun_of=row[17],
    )


def _event(row: Sequence[Any]) -> StoredEvent:
    return StoredEvent(
        seq=row[0], id=row[1], name=row[2], data=row[3], ts=row[4], received_at=row[5],
        duplicate=row[6],
    )


def _entry(row: Sequence[Any]) -> JournalEntry:
    return JournalEntry(
        seq=row[1], op=row[2], position=row[3], step_id=row[4], kind=row[5], ts=row[6],
        data=row[7],
    )


def _claim(row: Sequence[Any]) -> tuple[Claim, bool]:
    """A claim from a claim query row, and whether its journal is complete."""
    run = _run(row[2:20])
    journal: tuple[JournalEntry, ...] = ()
    if row[20] is not None:
        journal = tuple(
            JournalEntry(seq=seq, op=op, position=pos, step_id=sid, kind=kind, ts=ts, data=data)
            for seq, op, pos, sid, kind, ts, data in zip(*row[20:27], strict=True)
        )
    signals: tuple[tuple[int, Signal], ...] = ()
    if row[27] is not None:
        signals = tuple(
            (seq, Signal(kind=kind, key=key, payload=payload, position=pos))
            for seq, kind, key, payload, pos in zip(*row[27:32], strict=True)
        )
    return Claim(run=run, journal=journal, signals=signals), len(journal) == row[1]


def _parse_event(text: str) -> tuple[str, str, int, str]:
    raw = json.loads(text)
    return str(raw["id"]), str(raw["name"]), int(raw["ts"]), text


LOCK_BUCKETS = 512
"""How many advisory locks deduplication keys share: a key locks one of these buckets, so a
commit creating any number of runs takes at most this many locks (one lock per key ran out
of PostgreSQL's shared lock table, ``max_locks_per_transaction``, on a 10,000-run batch)."""


def _hash64(*parts: str) -> int:
    """An unsigned 64-bit hash of the parts (length-prefixed, so parts cannot run together)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        b = part.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return int.from_bytes(h.digest(), "big")


def _buckets(limits: StartLimits) -> list[str]:
    """The buckets a run's start limits read and change (each is advisory-locked)."""
    out = limits.gcra_buckets()
    if limits.singleton is not None:
        out.append(limits.singleton[0])
    return out


def _lock_key(schema: str, kind: str, *parts: str) -> int:
    """A signed 64-bit advisory-lock key for a deduplication key: the key of one of
    :data:`LOCK_BUCKETS` buckets of the schema (two keys sharing a bucket only cost some
    needless waiting; every transaction maps a key to the same bucket)."""
    bucket = _hash64(kind, *parts) % LOCK_BUCKETS
    return _hash64(schema, "dedupe-bucket", str(bucket)) - 2**63


def _signal_counts(batch: CommitBatch) -> dict[str, int]:
    """The number of signals the batch sends to each run."""
    out: dict[str, int] = {}
    for run_id, _signal in batch.signals:
        out[run_id] = out.get(run_id, 0) + 1
    return out


# ---------------------------------------------------------------------------- the store


def _configure(conn: _Conn) -> None:
    """Set up a pooled connection. Our statements are all keyed lookups whose best plan does
    not depend on the parameters, so reuse generic plans instead of re-planning every
    execution (for the big commit statement planning costs more than executing)."""
    conn.execute("SET plan_cache_mode = force_generic_plan")

def _looks_dead(conn: _Conn) -> bool:
    """Whether an idle pooled connection was closed by the server (a restart, a terminated
    backend), checked without a round trip: an idle connection that does not LISTEN has
    nothing to read, unless the server said goodbye (a FATAL message, then end of file)."""
    if conn.closed:
        return True
    try:
        poller = select.poll()  # not select.select: it fails on descriptors over 1023
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, psycopg.OperationalError):
        return True


_POOL_WAIT_S = 10.0
"""How long a call waits for a pooled connection (while the server is down, the pool keeps
reconnecting in the background with backoff; the call then fails with a StoreError and its
caller retries)."""

_RECONNECT_S = 5.0
"""How long the pool retries (with backoff) to replace a lost connection before it gives
up; the next call that needs a connection starts again at once. Short, so that once the
server is back, connections come back within seconds rather than after a long backoff."""

_IDLE_TRUST_S = 1.0
"""How long (seconds) an empty claim vouches for the next ones (see
:meth:`PostgresStore.claim_runs`): a change that makes a run claimable and that no
notification announces (a lease released early by another process, a row skipped because
it was locked) is seen by a claim at most this long after. Longer than a worker's default
``poll_interval`` (0.5 s), so that an idle worker's own polls keep it fresh: the first event
after a quiet spell finds it valid."""

_FLOOR_TRUST_S = 10.0
"""How long (seconds) :meth:`PostgresStore.unrouted_events` trusts what it learnt of which
events are routed before it looks at the whole log again."""

_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_ATTEMPTS = 3


class PostgresStore:
    """A store in a PostgreSQL database (see the store contract, :class:`durable_core.Store`).

    ``url`` is a libpq connection string or URL (``postgresql://user@host:5432/db``);
    ``schema`` names the schema holding the tables (created and migrated on open);
    ``pool_min``/``pool_max`` size the connection pool. Thread-safe. Raises
    :class:`~durable_core.StoreError` if the server is unreachable or the schema was
    created by a newer version of durable-core.
    """

    blocking = True

    def __init__(
        self, url: str, *, schema: str = "durable", pool_min: int = 1, pool_max: int = 8
    ) -> None:
        if not schema or len(schema.encode("utf-8", "surrogatepass")) > 63 or "\x00" in schema:
            raise ValidationError(
                f"postgres schema name {schema!r} must be 1 to 63 bytes without NUL",
                field="schema",
            )
        self.schema = schema
        self._url = url
        self._closed = False
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                _migrate(conn, schema)
        except psycopg.Error as exc:
            raise self._error(exc, f"cannot open schema {schema!r}: ") from exc
        self._q = _Queries(schema)
        self._pool: ConnectionPool[_Conn] = ConnectionPool(
            url, min_size=pool_min, max_size=pool_max, kwargs={"autocommit": True},
            configure=_configure, open=True, name=f"durable-core:{schema}",
            timeout=_POOL_WAIT_S, reconnect_timeout=_RECONNECT_S,
        )
        self._paths = threading.local()  # key paths read by unrouted_events, by name
        # Claim skipping: _gen changes (to a new value) after every commit of this store that
        # may make runs claimable, every notification received and every (re)LISTEN; an
        # empty claim records, by its function ids, the _gen read before it, when the next
        # run falls due by time, and when (monotonic) it ran.
        # The lowest seq an unrouted event may have (routed marks stay set; but a routing
        # commit may be lost in a server crash, see routing_only: then, when this store
        # sees a connection die, and every _FLOOR_TRUST_S anyway, it reads from 0 again).
        self._floor = 0
        self._floor_read = -_FLOOR_TRUST_S  # when the whole log was last read (monotonic)
        self._gens = itertools.count(1)
        self._gen = 0
        self._idle: dict[tuple[str, ...] | None, tuple[int, int | None, float]] = {}
        self._listen_lock = threading.Lock()
        self._listener: _Conn | None = None
        self._relisten = False  # whether a listening connection was opened before
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """Open a store from a ``postgresql://`` (or ``postgres://``) URL; an optional
        ``schema`` query parameter names the schema (``...?schema=myapp``).

        A malformed URL raises :class:`~durable_core.ValidationError` (its password
        redacted)."""
        shown = redact_url(url)
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - parsing it validates it
        except ValueError as exc:
            raise ValidationError(
                f"store url {shown!r}: not a valid PostgreSQL URL ({exc}); write it as "
                "postgresql://user:password@host:5432/dbname (an IPv6 host in brackets: "
                "[::1]:5432)",
                field="store",
            ) from None
        if not parts.netloc and parts.path in ("", "/"):
            raise ValidationError(
                f"store url {shown!r}: names no host and no database; write it as "
                "postgresql://user@host:5432/dbname",
                field="store",
            )
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        schema = "durable"
        rest = []
        for key, value in query:
            if key == "schema":
                schema = value
            else:
                rest.append((key, value))
        # Rebuilt by hand: urlunsplit drops an empty host ("postgresql:///db" would lose it).
        clean = url.split("?", 1)[0].split("#", 1)[0]
        if rest:
            clean += "?" + urllib.parse.urlencode(rest)
        return cls(clean, schema=schema)

    def __repr__(self) -> str:
        return f"<PostgresStore schema={self.schema!r}>"

    # ------------------------------------------------------------------ plumbing

    def _run_conn(self, fn: Callable[[_Conn], _T], *, idempotent: bool = False) -> _T:
        """Call ``fn`` with a pooled connection and turn psycopg errors into StoreError.
        Deadlocks (the transaction was rolled back) are retried; so is a lost connection
        (e.g. after a server restart) when ``fn`` is idempotent. A pooled connection that
        the server already closed (a restart, an idle timeout) is replaced before use, so
        the first statements after a restart do not fail."""
        attempt = stale = 0
        while True:
            try:
                with self._pool.connection() as conn:
                    if _looks_dead(conn) and stale <= self._pool.max_size:
                        stale += 1
                        self._floor = 0  # the server may have restarted (_FLOOR_TRUST_S)
                        conn.close()  # the pool drops closed connections
                        continue
                    return fn(conn)
            except _RETRYABLE as exc:
                attempt += 1
                if attempt == _ATTEMPTS:
                    raise self._error(exc) from exc
            except (PoolClosed, PoolTimeout) as exc:
                raise self._error(exc) from exc
            except psycopg.OperationalError as exc:
                self._floor = 0
                attempt += 1
                if not idempotent or attempt > 1:
                    raise self._error(exc) from exc
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def _error(self, exc: BaseException, what: str = "") -> StoreError:
        """A StoreError for ``exc``, with the connection URL's password kept out of it."""
        return StoreError(redact(f"postgres store: {what}{exc}", self._url))

    def _read(self, query: LiteralString, params: Sequence[Any] | dict[str, Any]
              ) -> list[tuple[Any, ...]]:
        """Run an idempotent statement and fetch its rows."""
        return self._run_conn(
            lambda conn: conn.execute(query, params).fetchall(), idempotent=True
        )

    @staticmethod
    def _transaction(conn: _Conn, body: Callable[[psycopg.Pipeline], _T]) -> _T:
        """Run ``body`` between BEGIN and COMMIT in pipeline mode (statements are sent
        without waiting; ``pipeline.sync()`` waits for the results queued so far)."""
        try:
            with conn.pipeline() as pipe:
                conn.execute("BEGIN")
                out = body(pipe)
                conn.execute("COMMIT")
            return out
        except BaseException:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ events

    def append_events(self, events: Sequence[str], now: int) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.append_events`."""
        if not events:
            return []
        parsed = [_parse_event(text) for text in events]

        def body(conn: _Conn) -> list[StoredEvent]:
            def tx(pipe: psycopg.Pipeline) -> list[StoredEvent]:
                reads = self._read_events(conn, parsed)
                pipe.sync()
                stored = self._insert_events(conn, parsed, now, reads)
                conn.execute(self._q.notify, (self.schema,))
                return stored

            return self._transaction(conn, tx)

        return self._run_conn(body)

    def _read_events(
        self, conn: _Conn, parsed: list[tuple[str, str, int, str]]
    ) -> tuple[_Cursor, _Cursor]:
        """Queue the seq allocation, whose row lock (held until commit) serializes event
        appends, then the dedupe reads, which therefore see every earlier append."""
        seqs = conn.execute(self._q.event_seqs, (len(parsed),))
        prev = conn.execute(self._q.prev_events, (sorted({p[0] for p in parsed}),))
        return prev, seqs

    def _insert_events(
        self, conn: _Conn, parsed: list[tuple[str, str, int, str]], now: int,
        cursors: tuple[_Cursor, _Cursor],
    ) -> list[StoredEvent]:
        prev_cur, seq_cur = cursors
        # When the store received the latest original of each id (see flag_duplicates).
        originals: dict[str, int] = {row[0]: row[1] for row in prev_cur.fetchall()}
        [(last,)] = seq_cur.fetchall()
        seqs = range(last - len(parsed) + 1, last + 1)
        dups = flag_duplicates([p[0] for p in parsed], originals, now)
        out = [
            StoredEvent(seq=seq, id=eid, name=name, data=text, ts=ts, received_at=now,
                        duplicate=dup)
            for seq, (eid, name, ts, text), dup in zip(seqs, parsed, dups, strict=True)
        ]
        conn.execute(
            self._q.insert_events,
            (
                now, [e.seq for e in out], [e.id for e in out], [e.name for e in out],
                [e.data for e in out], [e.ts for e in out], [e.duplicate for e in out],
            ),
        )
        return out

    def unrouted_events(self, limit: int) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.unrouted_events`.

        The same statement reads the key paths of the events' names (a skip scan each), kept
        for this thread's next :meth:`wait_key_paths` call of each name: routing asks for
        them next, and they are valid for these events (read in the same snapshot), so
        routing a batch saves that round trip per name."""
        query = self._q.unrouted_paths
        floor = 0

        def read(conn: _Conn) -> list[tuple[Any, ...]]:
            nonlocal floor
            floor = self._floor  # after the connection was checked (a dead one resets it)
            if time.monotonic() - self._floor_read >= _FLOOR_TRUST_S:
                floor = 0
                self._floor_read = time.monotonic()
            return conn.execute(query, {"limit": max(limit, 0), "floor": floor}).fetchall()

        rows = self._run_conn(read, idempotent=True)
        events: list[StoredEvent] = []
        paths: dict[str, set[str]] = {}
        last = 0
        for row in rows:
            if row[0] is not None:
                events.append(_event(row))
                paths.setdefault(row[2], set())
            elif row[2] is not None:
                paths.setdefault(row[2], set()).add(row[3])
            else:
                last = row[4]
        events.sort(key=lambda e: e.seq)
        self._paths.by_name = {name: sorted(p) for name, p in paths.items()}
        if events:
            floor = events[0].seq  # every event before it was routed
        elif limit > 0:
            floor = last + 1  # every event there is was routed; later ones get higher seqs
        self._floor = max(self._floor, floor)
        return events

    def get_event(self, event_id: str) -> StoredEvent | None:
        """See :meth:`durable_core.Store.get_event`. Like the reference store, this is the
        latest event with this id that was not a duplicate."""
        rows = self._read(self._q.get_event, (event_id,))
        return _event(rows[0]) if rows else None

    # ------------------------------------------------------------------ commit

    def commit(self, batch: CommitBatch) -> set[str]:
        """See :meth:`durable_core.Store.commit`.

        A batch of run writes, waits, signals, routed marks and cron cursors is one SQL
        statement (one round trip, its own transaction): fencing is checked in it, under row
        locks taken in id order. Events and new runs need deduplication first: then the
        commit is an explicit transaction of two round trips (advisory locks and reads;
        inserts, the same statement and COMMIT).
        """
        if not (
            batch.runs or batch.events or batch.writes or batch.waits_add
            or batch.waits_remove or batch.signals or batch.routed_events or batch.cron
            or batch.run_events
        ):
            return set()
        lone = lone_memo(batch)
        if lone is not None:
            w, e = lone
            params = {"id": w.run_id, "epoch": w.epoch, "seq": e.seq, "op": e.op,
                      "position": e.position, "step_id": e.step_id, "kind": e.kind,
                      "ts": e.ts, "data": e.data}
            query = self._q.append_one
            row = self._run_conn(
                lambda conn: conn.execute(query, params, prepare=True).fetchone()
            )
            return set() if row is not None else {w.run_id}
        parsed = [_parse_event(text) for text in batch.events]
        for _run_id, text in batch.run_events:
            _parse_event(text)  # a batch that cannot be applied raises before anything
        folded = fold_writes(batch.writes)
        try:
            return self._commit(batch, parsed, folded)
        finally:
            if batch.runs or batch.signals or batch.writes:
                self._changed()  # after the commit (or its failure): see _nothing_due

    def _commit(
        self, batch: CommitBatch, parsed: list[tuple[str, str, int, str]],
        folded: dict[str, RunChange],
    ) -> set[str]:
        if not parsed and not batch.runs and not batch.run_events:
            shape, params = self._core(batch, folded, set(), notify=notifies(batch))
            query = self._q.core(shape)
            row = self._run_conn(lambda conn: conn.execute(query, params).fetchone())
            return self._fenced(batch, row)

        keys: set[int] = set()
        for new in batch.runs:
            keys.add(_lock_key(self.schema, "run", new.id))
            if new.idempotency_key is not None:
                keys.add(_lock_key(self.schema, "idempotency", new.function_id,
                                   new.idempotency_key))
            if new.limits is not None:
                keys.update(_lock_key(self.schema, "flow", b) for b in _buckets(new.limits))
        keyed = sorted({
            (n.function_id, n.idempotency_key) for n in batch.runs if n.idempotency_key is not None
        })
        q = self._q
        limited = [n.limits for n in batch.runs if n.limits is not None]
        gcra_buckets = sorted({b for lim in limited for b in lim.gcra_buckets()})
        slot_buckets = sorted({lim.singleton[0] for lim in limited
                               if lim.singleton is not None})

        def tx(conn: _Conn, pipe: psycopg.Pipeline) -> _Cursor | tuple[Any, ...] | None:
            # Lock order, everywhere: advisory locks (sorted), the event counter, run rows
            # (sorted), then waits, event and cron rows.
            if keys:
                conn.execute(q.advisory, (sorted(keys),))
            if batch.run_events and not parsed:
                # The run events are appended after the run writes are decided: take the
                # event counter now, in lock order.
                conn.execute(q.lock_event_counter)
            event_reads = self._read_events(conn, parsed) if parsed else None
            run_reads = None
            if batch.runs:
                ids = sorted({n.id for n in batch.runs})
                run_reads = (
                    # A skipped trigger's id counts as existing, key or not (the rule).
                    conn.execute(q.existing_or_skipped, (ids, ids)),
                    conn.execute(q.idempotency_get, ([f for f, _ in keyed], [k for _, k in keyed],
                                              [k for _, k in keyed]))
                    if keyed else None,
                )
                flow_reads = (
                    conn.execute(q.flow_gcra_get, (gcra_buckets,)) if gcra_buckets else None,
                    conn.execute(q.flow_slots_get, (slot_buckets,)) if slot_buckets else None,
                ) if limited else None
            pipe.sync()
            if event_reads is not None:
                self._insert_events(conn, parsed, batch.now, event_reads)
            created: set[str] = set()
            extra: list[tuple[str, Signal]] = []
            if run_reads is not None:
                created = self._create_runs(conn, batch.runs, run_reads, batch.now,
                                            flow_reads, extra)
            # The reference store checks writes against the state before the batch: a write
            # to a run this batch creates is fenced.
            b = batch._replace(signals=(*batch.signals, *extra)) if extra else batch
            shape, params = self._core(b, folded, created, notify=True)
            cur = conn.execute(q.core(shape), params)
            if not batch.run_events:
                return cur  # read after COMMIT: one round trip
            pipe.sync()
            row: tuple[Any, ...] | None = cur.fetchone()
            appended = [_parse_event(t) for t in
                        run_events_to_append(batch, self._fenced(batch, row))]
            if appended:
                reads = self._read_events(conn, appended)
                pipe.sync()
                self._insert_events(conn, appended, batch.now, reads)
            return row

        out = self._run_conn(lambda conn: self._transaction(conn, lambda pipe: tx(conn, pipe)))
        row = out.fetchone() if isinstance(out, psycopg.Cursor) else out
        return self._fenced(batch, row)

    @staticmethod
    def _fenced(batch: CommitBatch, row: tuple[Any, ...] | None) -> set[str]:
        if not batch.writes:
            return set()
        accepted = set(row[1]) if row is not None and row[1] is not None else set()
        return {w.run_id for w in batch.writes} - accepted

    def _core(
        self, batch: CommitBatch, folded: dict[str, RunChange], prefenced: set[str], *,
        notify: bool,
    ) -> tuple[_CoreShape, dict[str, Any]]:
        """The shape and parameters of the core statement for ``batch``: the contract's
        folded changes per run (``fold_writes``), whose acceptance and effect the statement
        states in SQL (``write_accepted``, ``record_changes``)."""
        params: dict[str, Any] = {"now": batch.now}
        nsig = _signal_counts(batch) if batch.signals else {}
        # Every run written or signalled, in id order (the order run rows get locked); a run
        # only signalled has no change (None).
        runs: list[tuple[str, RunChange | None]] = sorted(
            [*folded.items(), *((r, None) for r in nsig if r not in folded)]
        )
        entries: list[tuple[str, JournalEntry]] = []
        consumed = record = ending = False
        if runs:
            empty = RunChange(None)
            fs = [empty if f is None else f for _, f in runs]
            for run_id, f in runs:
                if f is not None and f.epoch is not None and run_id not in prefenced:
                    entries.extend((run_id, e) for e in f.entries)
            # A run that ends drops all its signals through the statement's ``de`` step, so
            # its ``consumed`` mark need not take the locking variant.
            marks = [0 if f.ends else f.consumed for f in fs]
            consumed = any(marks)
            for f in fs:
                record = record or f.touch
                ending = ending or f.ends
            params.update(
                u_id=[run_id for run_id, _ in runs],
                u_epoch=[None if run_id in prefenced else f.epoch
                         for (run_id, _), f in zip(runs, fs, strict=True)],
                u_expect=[f.first for f in fs],
                u_n=[len(f.entries) for f in fs],
            )
        if record or consumed or batch.signals:
            params.update(
                u_write=[f is not None for _, f in runs],
                u_set_status=[f.status is not None for f in fs],
                u_status=[f.status for f in fs],
                u_wake_at=[f.wake_at for f in fs],
                u_set_end=[f.ends for f in fs],
                u_output=[f.output if f.ends else None for f in fs],
                u_error_type=[f.error.type if f.ends and f.error else None for f in fs],
                u_error_message=[f.error.message if f.ends and f.error else None for f in fs],
                u_error_traceback=[f.error.traceback if f.ends and f.error else None
                                   for f in fs],
                u_release=[f.release for f in fs],
                u_consumed=marks,
                u_nsig=[nsig.get(run_id, 0) for run_id, _ in runs],
                u_touch=[f.touch for f in fs],
            )
        if entries:
            params.update(
                j_run=[rid for rid, _ in entries], j_seq=[e.seq for _, e in entries],
                j_op=[e.op for _, e in entries], j_position=[e.position for _, e in entries],
                j_step_id=[e.step_id for _, e in entries], j_kind=[e.kind for _, e in entries],
                j_ts=[e.ts for _, e in entries], j_data=[e.data for _, e in entries],
            )
        if batch.signals:
            sigs = batch.signals
            params.update(
                signal_seq=self._q.signal_seq,
                s_run=[rid for rid, _ in sigs], s_kind=[s.kind for _, s in sigs],
                s_key=[s.key for _, s in sigs], s_payload=[s.payload for _, s in sigs],
                s_position=[s.position for _, s in sigs],
            )
        # The waits of runs whose writes are rejected are filtered in SQL (fencing happens
        # there); the rest of wait_changes applies here (``prefenced``: the runs this batch
        # created; the others it was to create were skipped).
        skipped = {n.id for n in batch.runs} - prefenced
        ws, removes = wait_changes(batch, (), skipped)
        removed = set(removes)
        if ws:
            # A row per key ('' for a wait without keys).
            rows = [(w, key, many) for w in ws
                    for many in (json.dumps(w.keys) if len(w.keys) > 1 else None,)
                    for key in (w.keys or ("",))]
            params.update(
                wa_event=[w.event for w, _, _ in rows], wa_run=[w.run_id for w, _, _ in rows],
                wa_position=[w.position for w, _, _ in rows], wa_if=[w.if_ for w, _, _ in rows],
                wa_trigger=[w.trigger_event for w, _, _ in rows],
                wa_expires=[w.expires_at for w, _, _ in rows],
                wa_key=[key for _, key, _ in rows], wa_keys=[many for _, _, many in rows],
                wa_after=[w.after_seq for w, _, _ in rows],
            )
        if removed:
            rs = sorted(removed)
            params.update(wr_run=[r for r, _ in rs], wr_position=[p for _, p in rs])
        if batch.routed_events:
            params["routed"] = sorted(set(batch.routed_events))
        ticks = cron_advances(batch.cron)
        if ticks:
            params.update(cron_key=list(ticks), cron_tick=list(ticks.values()))
        if notify:
            params["channel"] = self.schema
        shape = _CoreShape(
            writes=bool(batch.writes), record=record, consumed=consumed,
            entries=bool(entries), signals=bool(batch.signals), waits_add=bool(ws),
            waits_remove=bool(removed), routed=bool(batch.routed_events), cron=bool(ticks),
            notify=notify, ending=ending, relaxed=routing_only(batch),
        )
        return shape, params

    def _create_runs(
        self, conn: _Conn, runs: Sequence[NewRun], cursors: tuple[_Cursor, _Cursor | None],
        now: int = 0,
        flow: tuple[_Cursor | None, _Cursor | None] | None = None,
        signals: list[tuple[str, Signal]] | None = None,
    ) -> set[str]:
        existing = {row[0] for row in cursors[0].fetchall()}
        keys: dict[tuple[str, str], tuple[int, str]] = {
            (r[0], r[1]): (r[2], r[3]) for r in (cursors[1].fetchall() if cursors[1] else ())
        }
        skipped: list[SkippedTrigger] = []
        limiter = None
        if flow is not None:
            limiter = StartLimiter(
                {r[0]: (r[1], r[2]) for r in (flow[0].fetchall() if flow[0] else ())},
                {r[0]: (r[1], r[2]) for r in (flow[1].fetchall() if flow[1] else ())}, now)
        create = new_runs_to_create(runs, existing, keys, skipped, limiter)
        if limiter is not None:
            skipped += limiter.skipped
            self._save_limits(conn, limiter, {n.id for n in create})
            if signals is not None:
                signals += limiter.signals()
        if skipped:
            conn.execute(self._q.insert_skipped, (
                [k.id for k in skipped], [k.function_id for k in skipped],
                [k.key for k in skipped], [k.run_id for k in skipped],
                [k.event_id for k in skipped], [k.at for k in skipped],
                [k.reason for k in skipped],
            ))
        held = {(n.function_id, n.idempotency_key): n for n in create
                if n.idempotency_key is not None}
        if create and all(len(n.events) == 1 and len(n.event_ids) == 1 for n in create):
            conn.execute(self._q.insert_runs_one_event, (
                [n.id for n in create], [n.function_id for n in create],
                [n.events[0] for n in create], [n.event_ids[0] for n in create],
                [n.created_at for n in create], [n.parent_run_id for n in create],
                [n.idempotency_key for n in create], [n.rerun_of for n in create],
            ))
        elif create:
            with conn.cursor() as cur:
                cur.executemany(
                    self._q.insert_run,
                    [
                        (n.id, n.function_id, list(n.events), list(n.event_ids), n.created_at,
                         n.created_at, n.parent_run_id, n.idempotency_key, n.rerun_of)
                        for n in create
                    ],
                )
        if limiter is not None and limiter.wake_at:
            wake = sorted(limiter.wake_at.items())
            conn.execute(self._q.set_wake, ([r for r, _ in wake], [w for _, w in wake]))
        flowed = [n for n in create if n.slots or n.priority_ms]
        if flowed:
            rows = [(n.id, n.priority_ms, *(*n.slots, (None, None), (None, None))[0],
                     *(*n.slots, (None, None), (None, None))[1]) for n in flowed]
            conn.execute(self._q.set_flow, tuple(list(col) for col in zip(*rows, strict=True)))
        links = [(e, n.id) for n in create for e in n.event_ids]
        if links:
            conn.execute(self._q.insert_run_events, ([e for e, _ in links], [r for _, r in links]))
        if held:
            conn.execute(
                self._q.idempotency_put,
                (
                    [f for f, _ in held], [k for _, k in held],
                    [n.id for n in held.values()], [n.created_at for n in held.values()],
                ),
            )
        return {n.id for n in create}

    def _save_limits(self, conn: _Conn, limiter: StartLimiter, created: set[str]) -> None:
        """Persist what ``limiter`` decided: GCRA buckets, and slots taken or waited for."""
        q = self._q
        if limiter.gcra_changed:
            bs = sorted(limiter.gcra_changed)
            conn.execute(q.flow_gcra_put, (bs, [limiter.gcra[b][0] for b in bs],
                                           [limiter.gcra[b][1] for b in bs]))
        take: list[tuple[str, str, str | None]] = []
        wait: list[tuple[str, str]] = []
        for b in sorted(limiter.slots_changed):
            holder, waiting = limiter.slots[b]
            if holder is not None and holder in created:  # it was free: taken here
                take.append((b, holder, waiting))
            elif waiting is not None:
                wait.append((b, waiting))
        if take:
            conn.execute(q.flow_slot_take, ([b for b, _, _ in take], [r for _, r, _ in take],
                                            [w for _, _, w in take]))
        if wait:
            conn.execute(q.flow_slot_wait, ([b for b, _ in wait], [r for _, r in wait]))

    # ------------------------------------------------------------------ claims

    def claim_runs(
        self, owner: str, now: int, lease_ms: int, limit: int,
        function_ids: Sequence[str] | None = None,
    ) -> list[Claim]:
        """See :meth:`durable_core.Store.claim_runs`. Claims the oldest claimable runs first
        (one statement); runs locked by concurrent transactions are skipped, not awaited."""
        if limit <= 0 or (function_ids is not None and not function_ids):
            return []
        params: dict[str, Any] = {
            "now": now, "limit": limit, "owner": owner, "expires": now + lease_ms
        }
        key = None if function_ids is None else tuple(sorted(function_ids))
        if self._nothing_due(key, now):
            return []
        query = self._q.claim_runs
        if function_ids is not None:
            query = self._q.claim_runs_of
            params["functions"] = list(function_ids)
        gen = self._gen
        next_due = self._q.next_due

        def claim(conn: _Conn) -> list[Claim]:
            with conn.pipeline():  # one round trip for both
                cur = conn.execute(query, params)
                due = conn.execute(next_due, {"now": now})
            rows = cur.fetchall()
            if rows:
                self._idle.pop(key, None)  # more may be claimable: the next claim looks
            else:
                row = due.fetchone()
                self._idle[key] = (gen, None if row is None else row[0], time.monotonic())
            return self._claims(conn, rows)

        return self._run_conn(claim)

    def _nothing_due(self, key: tuple[str, ...] | None, now: int) -> bool:
        """Whether a claim can be skipped: the last claim of these functions found nothing,
        less than ``_IDLE_TRUST_S`` ago; nothing falls due by time before ``now``; and
        since it read the store, this store has committed nothing that may make a run
        claimable and the listening connection (which must exist: a worker's) has received
        no notification, nor holds one unread. Every other change is announced by a
        notification (:func:`durable_core.store.notifies`): new runs, signals, ended runs."""
        hint = self._idle.get(key)
        if hint is None or hint[0] != self._gen:
            return False
        _gen, due, at = hint
        if (due is not None and now >= due) or time.monotonic() - at >= _IDLE_TRUST_S:
            return False
        listener = self._listener
        if listener is None:
            return False
        try:
            poller = select.poll()
            poller.register(listener.pgconn.socket, select.POLLIN)
            return not poller.poll(0) and hint[0] == self._gen
        except (OSError, ValueError, psycopg.Error):
            return False

    def _changed(self) -> None:
        """Something may have made runs claimable: the next claim reads the store."""
        self._gen = next(self._gens)

    def claim_limited_runs(
        self, owner: str, now: int, lease_ms: int, limit: int, function_ids: Sequence[str],
    ) -> list[Claim]:
        """See :meth:`durable_core.Store.claim_limited_runs`: one transaction under an
        advisory lock that serializes limited claims (so the counts it reads are not
        changing under it): the candidates with their keys' counts, then the lease."""
        if limit <= 0 or not function_ids:
            return []
        q = self._q
        lock = _hash64(self.schema, "concurrency-slots") - 2**63
        params: dict[str, Any] = {"now": now, "limit": limit + min(limit, 100),
                                  "functions": list(function_ids)}

        def tx(conn: _Conn) -> list[Claim]:
            with conn.transaction():
                conn.execute(q.slot_lock, (lock,))
                held: dict[str, int] = {}
                candidates = []
                for run_id, k1, l1, n1, k2, l2, n2 in conn.execute(
                        q.limited_candidates, params).fetchall():
                    slots = []
                    for k, lim, n in ((k1, l1, n1), (k2, l2, n2)):
                        if k is not None:
                            slots.append((k, int(lim)))
                            held[k] = int(n)
                    candidates.append((run_id, tuple(slots)))
                ids = pick_limited(candidates, held, limit)
                if not ids:
                    return []
                return self._claims(conn, conn.execute(q.lease_ids, {
                    "ids": ids, "owner": owner, "expires": now + lease_ms}).fetchall())

        return self._run_conn(tx)

    def held_slots(self, now: int) -> dict[str, int]:
        """See :meth:`durable_core.Store.held_slots`."""
        return {k: int(n) for k, n in self._read(self._q.held_slots, {"now": now})}

    def _claims(self, conn: _Conn, rows: list[tuple[Any, ...]]) -> list[Claim]:
        out = []
        for row in rows:
            claim, complete = _claim(row)
            if not complete:
                # A writer committed between our snapshot and our lock: re-read the journal
                # (no one else can append to it now that we hold the lease).
                journal = conn.execute(self._q.load_journal, (claim.run.id,)).fetchall()
                claim = Claim(claim.run, tuple(_entry(r) for r in journal), claim.signals)
            out.append(claim)
        return out

    def renew(self, owner: str, run_ids: Sequence[str], now: int, lease_ms: int) -> set[str]:
        """See :meth:`durable_core.Store.renew`."""
        if not run_ids:
            return set()
        rows = self._read(
            self._q.renew,
            {"ids": list(run_ids), "owner": owner, "now": now, "expires": now + lease_ms},
        )
        return set(run_ids) - {row[0] for row in rows}

    # ------------------------------------------------------------------ queries

    def find_waits(
        self, event_name: str, now: int, keys: Collection[str] | None = None
    ) -> list[WaitRecord]:
        """See :meth:`durable_core.Store.find_waits`. With ``keys``, one statement that
        searches the primary key ``(event, match_key, ...)`` for each key (and for ``''``,
        the waits without keys)."""
        if keys is None:
            rows = self._read(self._q.find_all_waits, (event_name, now))
        else:
            rows = self._read(self._q.find_waits, (event_name, ["", *keys], now))
        return wait_records(rows)

    def wait_key_paths(self, event_name: str) -> list[str]:
        """See :meth:`durable_core.Store.wait_key_paths`: a skip scan of the primary key,
        one search per path (read with the events by :meth:`unrouted_events` if this
        thread's last call of it returned events of this name, then not read again)."""
        kept: dict[str, list[str]] | None = getattr(self._paths, "by_name", None)
        if kept is not None and event_name in kept:
            return kept.pop(event_name)
        return sorted({row[0] for row in self._read(self._q.wait_key_paths, {"e": event_name})})

    def cancel_reasons(self, run_ids: Sequence[str]) -> dict[str, str]:
        """See :meth:`durable_core.Store.cancel_reasons`."""
        if not run_ids:
            return {}
        return {row[0]: row[1] for row in self._read(self._q.cancel_reasons, (list(run_ids),))}

    def cancel_requested(self, run_ids: Sequence[str]) -> set[str]:
        """See :meth:`durable_core.Store.cancel_requested`."""
        if not run_ids:
            return set()
        return {row[0] for row in self._read(self._q.cancel_requested, (list(run_ids),))}

    def next_wake_at(self) -> int | None:
        """See :meth:`durable_core.Store.next_wake_at`."""
        rows = self._read(self._q.next_wake, ())
        return None if rows[0][0] is None else int(rows[0][0])

    def cron_cursors(self) -> dict[str, int]:
        """See :meth:`durable_core.Store.cron_cursors`."""
        return {row[0]: row[1] for row in self._read(self._q.cron, ())}

    def get_run(self, run_id: str) -> RunRecord:
        """See :meth:`durable_core.Store.get_run`."""
        rows = self._read(self._q.get_run, (run_id,))
        if not rows:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        return _run(rows[0])

    def load_journal(self, run_id: str) -> list[JournalEntry]:
        """See :meth:`durable_core.Store.load_journal`."""
        return [_entry(row) for row in self._read(self._q.load_journal, (run_id,))]

    def list_runs(
        self,
        *,
        function_id: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
        exclude_function_ids: Sequence[str] | None = None,
        since: int | None = None,
        until: int | None = None,
        before: str | None = None,
    ) -> list[RunRecord]:
        """See :meth:`durable_core.Store.list_runs`."""
        query = self._q.list_runs(function_id is not None, status is not None,
                                  event_id is not None, bool(exclude_function_ids),
                                  since is not None, until is not None, before is not None)
        params = {"function_id": function_id, "status": status, "event_id": event_id,
                  "limit": max(limit, 0), "exclude": list(exclude_function_ids or ()),
                  "since": since, "until": until, "before": before}
        return [_run(row) for row in self._read(query, params)]

    def list_events(
        self,
        *,
        name: str | None = None,
        since: int | None = None,
        until: int | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.list_events`."""
        query = self._q.list_events(name is not None, since is not None, until is not None,
                                    before is not None)
        params = {"name": name, "since": since, "until": until, "before": before,
                  "limit": max(limit, 0)}
        return [_event(row) for row in self._read(query, params)]
    def skipped_triggers(
        self,
        *,
        function_id: str | None = None,
        event_id: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[SkippedTrigger]:
        """See :meth:`durable_core.Store.skipped_triggers`."""
        params = {"function_id": function_id, "event_id": event_id, "run_id": run_id,
                  "limit": max(limit, 0)}
        return [SkippedTrigger(*row) for row in self._read(self._q.skipped, params)]

    # ------------------------------------------------------------------ notifications

    def wait_for_notify(self, timeout_s: float) -> bool:
        """Block until a commit (from any process) created events, runs or signals or ended
        a run in this schema (:func:`durable_core.store.notifies`), or until ``timeout_s``
        seconds passed. Returns True if woken by a notification, False on timeout or when
        the store is closed.

        Uses one dedicated connection, opened (and ``LISTEN``-ing) on the first call:
        notifications sent before that are not seen, so callers should poll after the first
        call. Concurrent callers take turns. A True result may be spurious (e.g. after the
        listening connection was lost and re-opened); callers just poll the store.
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        if not self._listen_lock.acquire(timeout=max(timeout_s, 0.0)):
            return False
        try:
            if self._closed:
                return False
            conn = self._listener
            if conn is None:
                try:
                    conn = self._listen()
                except psycopg.Error as exc:
                    raise self._error(exc, "cannot listen for notifications: ") from exc
                if self._relisten:
                    # Listening again after the connection was lost: notifications sent
                    # meanwhile were not seen, so tell the caller to look at the store.
                    return True
                self._relisten = True
            try:
                return self._wait(conn, deadline)
            except (psycopg.Error, OSError):
                # Notifications may have been missed: listen again at once (so that none
                # sent from now on is missed) and let the caller poll.
                self._drop_listener()
                with contextlib.suppress(psycopg.Error):
                    self._listen()
                return True
        finally:
            self._listen_lock.release()

    def _listen(self) -> _Conn:
        conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.schema)))
        except BaseException:
            conn.close()
            raise
        self._listener = conn
        self._changed()  # claims before it heard nothing
        return conn

    def _wait(self, conn: _Conn, deadline: float) -> bool:
        pg = conn.pgconn
        wake = self._wake_r.fileno()
        while True:
            pg.consume_input()
            got = changed = False
            while (n := pg.notifies()) is not None:
                got = True
                changed = changed or n.extra != b"events"
            if changed:
                self._changed()
            if got:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([pg.socket, wake], [], [], remaining)
            if wake in ready:
                return False

    def _drop_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None
                self._floor = 0
                self._changed()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the pool and the listening connection (wakes a blocked
        :meth:`wait_for_notify`). Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        with self._listen_lock:
            self._drop_listener()
            self._wake_r.close()
            self._wake_w.close()
        self._pool.close()

    # ------------------------------------------------------------------ flow buffers

    def _bq(self) -> _BufferQueries:
        q: _BufferQueries | None = getattr(self, "_buffer_q", None)
        if q is None:
            q = self._buffer_q = _BufferQueries(self.schema)
        return q

    def _buffer_reads(
        self, conn: _Conn, keys: Sequence[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], BufferState], dict[tuple[str, str], set[int]]]:
        """The states and held seqs of these buffers (their advisory locks held)."""
        q = self._bq()
        fs, ks = [f for f, _ in keys], [k for _, k in keys]
        states = {(r[0], r[1]): BufferState(*r)
                  for r in conn.execute(q.states_of, (fs, ks)).fetchall()}
        held: dict[tuple[str, str], set[int]] = {}
        for f, k, seq in conn.execute(q.held_of, (fs, ks)).fetchall():
            held.setdefault((f, k), set()).add(seq)
        return states, held

    def _buffer_lock(self, conn: _Conn, keys: Iterable[tuple[str, ...]]) -> None:
        conn.execute(self._q.advisory, (sorted({_lock_key(self.schema, *k) for k in keys}),))

    def buffer_events(self, adds: Sequence[BufferAdd], now: int) -> int:
        """See :meth:`durable_core.Store.buffer_events`: one transaction, under the advisory
        locks of the buffers, with the events' rows share-locked (a router marking them
        routed waits for it, so an event is never buffered after it was routed)."""
        if not adds:
            return 0
        q = self._bq()
        keys = sorted({(a.function_id, a.key) for a in adds})

        def tx(conn: _Conn) -> int:
            with conn.transaction():
                self._buffer_lock(conn, (("buffer", f, k) for f, k in keys))
                seqs = sorted({a.event.seq for a in adds})
                unrouted = {r[0] for r in conn.execute(q.unrouted_share, (seqs,)).fetchall()}
                states, held = self._buffer_reads(conn, keys)
                cleared: set[tuple[str, str]] = set()
                new: dict[tuple[str, str], set[int]] = {}
                applied = 0
                for add in adds:
                    bkey, seq = (add.function_id, add.key), add.event.seq
                    have = held.setdefault(bkey, set())
                    if seq not in unrouted or seq in have:
                        continue
                    state = buffer_added(states.get(bkey), add)
                    if state is None:
                        continue
                    if add.kind == "debounce":
                        cleared.add(bkey)
                        have.clear()
                        new[bkey] = set()
                    have.add(seq)
                    new.setdefault(bkey, set()).add(seq)
                    states[bkey] = state
                    applied += 1
                if cleared:
                    cl = sorted(cleared)
                    conn.execute(q.clear, ([f for f, _ in cl], [k for _, k in cl]))
                rows = [(f, k, seq) for (f, k), ss in sorted(new.items()) for seq in sorted(ss)]
                if rows:
                    conn.execute(q.insert_held, ([r[0] for r in rows], [r[1] for r in rows],
                                                 [r[2] for r in rows]))
                    self._put_buffers(conn, [states[k] for k in sorted(new)])
                return applied

        return self._run_conn(tx)

    def _put_buffers(self, conn: _Conn, sts: Sequence[BufferState]) -> None:
        conn.execute(self._bq().upsert, tuple(
            [getattr(st, f) for st in sts] for f in _BUFFER_FIELDS))

    def ready_buffers(
        self, now: int, function_ids: Sequence[str], limit: int
    ) -> list[Buffer]:
        """See :meth:`durable_core.Store.ready_buffers` (two statements)."""
        if limit <= 0 or not function_ids:
            return []
        q = self._bq()

        def read(conn: _Conn) -> list[Buffer]:
            states = [BufferState(*r) for r in conn.execute(
                q.ready, (now, list(function_ids), limit)).fetchall()]
            if not states:
                return []
            events: dict[tuple[str, str], list[StoredEvent]] = {}
            for row in conn.execute(q.routed_events_of, (
                    [st.function_id for st in states], [st.key for st in states],
                    [st.max_size for st in states])).fetchall():
                events.setdefault((row[0], row[1]), []).append(_event(row[2:]))
            return [Buffer(st, tuple(events[(st.function_id, st.key)])) for st in states
                    if (st.function_id, st.key) in events]

        return self._run_conn(read, idempotent=True)

    def take_buffer(self, take: BufferTake, now: int) -> bool:
        """See :meth:`durable_core.Store.take_buffer`: one transaction, under the advisory
        locks of the buffer and of the run's id (and idempotency key)."""
        q, bq = self._q, self._bq()
        fn, key, run = take.function_id, take.key, take.run

        def tx(conn: _Conn) -> bool:
            with conn.transaction():
                locks: list[tuple[str, ...]] = [("buffer", fn, key), ("run", run.id)]
                if run.idempotency_key is not None:
                    locks.append(("idempotency", run.function_id, run.idempotency_key))
                self._buffer_lock(conn, locks)
                rows = conn.execute(bq.state_of, (fn, key)).fetchall()
                held = {r[0] for r in conn.execute(bq.held_among,
                                                   (fn, key, list(take.seqs))).fetchall()}
                if not rows or not take_accepted(held, take):
                    return False
                state = BufferState(*rows[0])
                keyed = run.idempotency_key is not None
                self._create_runs(conn, [run], (
                    conn.execute(q.existing_or_skipped, ([run.id], [run.id])),
                    conn.execute(q.idempotency_get, ([run.function_id], [run.idempotency_key],
                                                     [run.idempotency_key]))
                    if keyed else None,
                ))
                conn.execute(bq.remove, (fn, key, list(take.seqs)))
                row = conn.execute(bq.rest_of, (fn, key)).fetchone()
                count, first, last = row if row is not None else (0, None, None)
                rest = buffer_rest(state, take, count, first or 0, last or 0)
                if rest is None:
                    conn.execute(bq.drop, (fn, key))
                else:
                    self._put_buffers(conn, [rest])
                conn.execute(q.notify, (self.schema,))
                return True

        return self._run_conn(tx)

    def next_buffer_ready(self, function_ids: Sequence[str]) -> int | None:
        """See :meth:`durable_core.Store.next_buffer_ready`."""
        if not function_ids:
            return None
        rows = self._read(self._bq().next_ready, (list(function_ids),))
        return None if rows[0][0] is None else int(rows[0][0])

    def buffer_states(self, function_id: str | None = None) -> list[BufferState]:
        """See :meth:`durable_core.Store.buffer_states`."""
        return [BufferState(*r) for r in self._read(self._bq().all_states,
                                                    (function_id, function_id))]


_BUFFER_FIELDS = ("function_id", "key", "kind", "first_at", "ready_at", "count", "bytes",
                  "last_seq", "period_ms", "timeout_ms", "max_size")
_BUFFER_COLS: LiteralString = ("function_id, key, kind, first_at, ready_at, count, bytes, "
                               "last_seq, period_ms, timeout_ms, max_size")


class _BufferQueries:
    """The flow buffers' statements, rendered once for one schema."""

    def __init__(self, schema: str) -> None:
        def r(template: LiteralString) -> LiteralString:
            return _render(template, schema)

        keys: LiteralString = "unnest(%s::text[], %s::text[]) AS u(f, k)"
        self.unrouted_share = r(
            "SELECT seq FROM {events} WHERE seq = ANY(%s::bigint[]) AND NOT routed "
            "ORDER BY seq FOR SHARE"
        )
        self.states_of = r(
            "SELECT " + _BUFFER_COLS + " FROM {flow_buffers} AS b JOIN " + keys
            + " ON b.function_id = u.f AND b.key = u.k"
        )
        self.held_of = r(
            "SELECT b.function_id, b.key, b.seq FROM {flow_buffered} AS b JOIN " + keys
            + " ON b.function_id = u.f AND b.key = u.k"
        )
        self.clear = r(
            "DELETE FROM {flow_buffered} AS b USING " + keys
            + " WHERE b.function_id = u.f AND b.key = u.k"
        )
        self.insert_held = r(
            "INSERT INTO {flow_buffered} (function_id, key, seq) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]) ON CONFLICT DO NOTHING"
        )
        self.upsert = r(
            "INSERT INTO {flow_buffers} (" + _BUFFER_COLS + ") SELECT * FROM unnest("
            "%s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::int[], "
            "%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::int[]) "
            "ON CONFLICT (function_id, key) DO UPDATE SET kind = excluded.kind, "
            "first_at = excluded.first_at, ready_at = excluded.ready_at, "
            "count = excluded.count, bytes = excluded.bytes, last_seq = excluded.last_seq, "
            "period_ms = excluded.period_ms, timeout_ms = excluded.timeout_ms, "
            "max_size = excluded.max_size"
        )
        self.ready = r(
            "SELECT " + _BUFFER_COLS + " FROM {flow_buffers} WHERE ready_at <= %s "
            "AND function_id = ANY(%s::text[]) ORDER BY ready_at, function_id, key LIMIT %s"
        )
        # The first max_size routed events of each buffer (u.n: its max_size).
        self.routed_events_of = r(
            "SELECT function_id, key, seq, id, name, data, ts, received_at, duplicate FROM ("
            "SELECT b.function_id, b.key, e.seq, e.id, e.name, e.data, e.ts, e.received_at, "
            "e.duplicate, u.n, row_number() OVER (PARTITION BY b.function_id, b.key "
            "ORDER BY b.seq) AS i FROM {flow_buffered} AS b "
            "JOIN unnest(%s::text[], %s::text[], %s::int[]) AS u(f, k, n) "
            "ON b.function_id = u.f AND b.key = u.k "
            "JOIN {events} AS e ON e.seq = b.seq WHERE e.routed) AS x WHERE i <= n "
            "ORDER BY seq"
        )
        self.rest_of = r(
            "SELECT count(*), min(e.received_at), max(e.received_at) FROM {flow_buffered} "
            "AS b JOIN {events} AS e ON e.seq = b.seq WHERE b.function_id = %s AND b.key = %s"
        )
        self.remove = r(
            "DELETE FROM {flow_buffered} WHERE function_id = %s AND key = %s "
            "AND seq = ANY(%s::bigint[])"
        )
        self.state_of = r(
            "SELECT " + _BUFFER_COLS + " FROM {flow_buffers} WHERE function_id = %s AND key = %s"
        )
        self.held_among = r(
            "SELECT seq FROM {flow_buffered} WHERE function_id = %s AND key = %s "
            "AND seq = ANY(%s::bigint[])"
        )
        self.drop = r("DELETE FROM {flow_buffers} WHERE function_id = %s AND key = %s")
        self.next_ready = r(
            "SELECT MIN(ready_at) FROM {flow_buffers} WHERE function_id = ANY(%s::text[])"
        )
        self.all_states = r(
            "SELECT " + _BUFFER_COLS + " FROM {flow_buffers} "
            "WHERE %s::text IS NULL OR function_id = %s ORDER BY function_id, key"
        )
