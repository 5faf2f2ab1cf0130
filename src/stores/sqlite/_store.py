"""The SQLite store: the store contract on one SQLite file, shared safely by several processes.

The file is in WAL mode with ``synchronous=FULL`` by default (every commit is durable when it
returns; ``NORMAL`` trades the last commits on power loss for speed). Every write is one
``BEGIN IMMEDIATE`` transaction, and a busy timeout makes several processes on one file take
turns instead of failing. One connection serves the whole store behind a lock, so the store
is safe to call from any thread.

The schema is versioned (``PRAGMA user_version``): opening an older file migrates it inside
an immediate transaction (so processes opening a fresh file at once do not race), and a file
written by a newer version is refused with a :class:`~durable_core.StoreError`.

The rules are the contract's (:mod:`durable_core.store`): this module only persists. Where a
rule is stated in SQL (the fenced statements of the fast paths, the claim query), it says so,
and ``stores.testing`` checks it against the rule's function for every store.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import select
import socket
import sqlite3
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlite_utils

from durable_core.base._errors import (
    RunNotFoundError,
    StoreError,
    StoreLostError,
    ValidationError,
)
from durable_core.base._redact import redact_url
from durable_core.core._model import TERMINAL_STATUSES, ErrorInfo, JournalEntry, Signal
from durable_core.store import (
    ALWAYS_DUE,
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
    StoredEvent,
    WaitRecord,
    buffer_added,
    buffer_rest,
    cron_advances,
    flag_duplicates,
    fold_writes,
    is_journal_only,
    lone_memo,
    new_runs_to_create,
    notifies,
    pick_limited,
    record_changes,
    run_events_to_append,
    signal_accepted,
    take_accepted,
    wait_changes,
    wait_records,
    write_accepted,
)

__all__ = ["SCHEMA_VERSION", "SYNCHRONOUS_MODES", "SQLiteStore"]

_T = TypeVar("_T")

log = logging.getLogger("stores.sqlite")

SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
"""Accepted ``synchronous`` settings (``OFF`` is refused: it breaks the durability promise)."""

_CHUNK = 500  # host parameters per IN (...) list; far below SQLite's limit
_TERMINAL_SQL = "('cancelled', 'completed', 'failed')"
assert frozenset(_TERMINAL_SQL.strip("()").replace("'", "").split(", ")) == TERMINAL_STATUSES

_RUN_COLUMNS = (
    "id, function_id, status, events, event_ids, created_at, updated_at, wake_at, output, "
    "error, parent_run_id, idempotency_key, ended_at, epoch, lease_owner, lease_expires, "
    "rerun_of"
)
_JOURNAL_COLUMNS = "run_id, seq, op, position, step_id, kind, ts, data"
_INSERT_JOURNAL_SQL = f"INSERT INTO journal ({_JOURNAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# A journal row is ``(run_id, *entry)``: JournalEntry's fields are the columns after run_id,
# in order.

# A run write applied in one statement: the contract's write_accepted (epoch, not ended,
# entries continuing the journal) and record_changes, stated in SQL.
_FENCED_UPDATE_SQL = f"""
UPDATE runs SET
    status = COALESCE(:status, status),
    wake_at = CASE WHEN :status IS NULL THEN wake_at WHEN :terminal THEN NULL
                   ELSE :wake_at END,
    output = CASE WHEN :terminal THEN :output ELSE output END,
    error = CASE WHEN :terminal THEN :error ELSE error END,
    ended_at = CASE WHEN :terminal THEN :now ELSE ended_at END,
    updated_at = :now,
    lease_owner = CASE WHEN :release THEN NULL ELSE lease_owner END,
    lease_expires = CASE WHEN :release THEN NULL ELSE lease_expires END
WHERE id = :id AND epoch = :epoch AND status NOT IN {_TERMINAL_SQL}
AND :first = (SELECT COALESCE(MAX(seq) + 1, 0) FROM journal WHERE run_id = :id)
"""

# The lone memo's fenced journal append: inserts the entry only if write_accepted holds (the
# run is live under the writer's epoch and the entry's seq follows the journal; the row
# count says which).
_FENCED_APPEND_SQL = f"""
INSERT INTO journal ({_JOURNAL_COLUMNS})
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 FROM runs
WHERE id = ?1 AND epoch = ?9 AND status NOT IN {_TERMINAL_SQL}
AND ?2 = (SELECT COALESCE(MAX(seq) + 1, 0) FROM journal WHERE run_id = ?1)
"""
_EVENT_COLUMNS = "seq, id, name, data, ts, received_at, duplicate"
_BUFFER_COLUMNS = ("function_id, key, kind, first_at, ready_at, count, bytes, last_seq, "
                   "period_ms, timeout_ms, max_size")
_BUFFERED_EVENTS = (
    "SELECT e.seq, e.id, e.name, e.data, e.ts, e.received_at, e.duplicate "
    "FROM flow_buffered AS b JOIN events AS e ON e.seq = b.seq "
    "WHERE b.function_id = ? AND b.key = ?"
)

# The contract's due_at, stated in SQL over a row of ``runs`` (checked against the function
# by tests/test_store_conformance.py on every combination of its inputs).
_DUE_AT_SQL = f"""(CASE
    WHEN status IN {_TERMINAL_SQL} THEN NULL
    WHEN lease_owner IS NOT NULL THEN COALESCE(lease_expires, 0)
    WHEN EXISTS (SELECT 1 FROM signals WHERE signals.run_id = runs.id)
        OR (status = 'queued' AND wake_at IS NULL) THEN {ALWAYS_DUE}
    ELSE wake_at
END)"""

# Claimable runs: due_at <= now. Each arm of the union finds candidates through an index
# (queued, set wake-ups, held leases, runs with signals), so the cost follows the runs that
# need work, not the table size; the rule itself decides. ``{functions}`` is empty or a
# filter on the function ids (one JSON array parameter).
_CLAIMABLE_SQL = f"""
SELECT id FROM runs
WHERE seq IN (
    SELECT seq FROM runs WHERE status = 'queued'
    UNION ALL SELECT seq FROM runs WHERE wake_at <= :now
    UNION ALL SELECT seq FROM runs WHERE lease_owner IS NOT NULL
    UNION ALL SELECT runs.seq FROM signals JOIN runs ON runs.id = signals.run_id
)
AND {_DUE_AT_SQL} <= :now{{functions}}
AND NOT EXISTS (SELECT 1 FROM flow_slots WHERE flow_slots.next_run = runs.id)
ORDER BY created_at - priority_ms, seq
LIMIT :limit
"""
_CLAIMABLE_ANY_SQL = _CLAIMABLE_SQL.format(functions="")
_CLAIMABLE_OF_SQL = _CLAIMABLE_SQL.format(
    functions="\nAND function_id IN (SELECT value FROM json_each(:functions))"
)

# Concurrency (issue 13): the slot keys held by runs with a live lease, counted (through the
# partial indexes of leased runs with slots), and the claimable runs of the given functions
# whose slots have room before the claim (the claim's own picks are counted by pick_limited).
_HELD_SLOTS_SQL = """
SELECT k, count(*) FROM (
    SELECT slot_key1 AS k FROM runs
    WHERE slot_key1 IS NOT NULL AND lease_owner IS NOT NULL AND lease_expires > :now
    UNION ALL SELECT slot_key2 FROM runs
    WHERE slot_key2 IS NOT NULL AND lease_owner IS NOT NULL AND lease_expires > :now
) GROUP BY k
"""
_LIMITED_SQL = "WITH held(k, n) AS (" + _HELD_SLOTS_SQL + ") " + _CLAIMABLE_SQL.format(
    functions="""
AND function_id IN (SELECT value FROM json_each(:functions))
AND (slot_key1 IS NULL OR COALESCE((SELECT n FROM held WHERE k = slot_key1), 0) < slot_limit1)
AND (slot_key2 IS NULL OR COALESCE((SELECT n FROM held WHERE k = slot_key2), 0) < slot_limit2)"""
).replace("SELECT id FROM runs\nWHERE seq IN", "SELECT id, slot_key1, slot_limit1, slot_key2, "
          "slot_limit2 FROM runs\nWHERE seq IN", 1)


# --------------------------------------------------------------------------- schema


def _migrate_v1(db: Any) -> None:
    """Version 1: the core tables and the indexes of the claim and routing paths."""
    db["events"].create(
        {"seq": int, "id": str, "name": str, "data": str, "ts": int, "duplicate": int,
         "routed": int},
        pk="seq",
        not_null=["id", "name", "data", "ts", "duplicate", "routed"],
    )
    # Duplicates are stored with routed=1: there is nothing to route for them.
    db["events"].create_index(["id", "duplicate", "seq"], index_name="events_by_id")
    db["events"].create_index(["routed", "seq"], index_name="events_unrouted")
    db["runs"].create(
        {"seq": int, "id": str, "function_id": str, "status": str, "events": str,
         "event_ids": str, "created_at": int, "updated_at": int, "wake_at": int,
         "output": str, "error": str, "parent_run_id": str, "idempotency_key": str,
         "ended_at": int, "epoch": int, "lease_owner": str, "lease_expires": int},
        pk="seq",
        not_null=["id", "function_id", "status", "events", "event_ids", "created_at",
                  "updated_at", "epoch"],
    )
    db["runs"].create_index(["id"], index_name="runs_id", unique=True)
    db["runs"].create_index(["status", "seq"], index_name="runs_status")
    db["runs"].create_index(["wake_at"], index_name="runs_wake_at")
    db["runs"].create_index(["lease_owner"], index_name="runs_lease_owner")
    db["journal"].create(
        {"run_id": str, "seq": int, "op": str, "position": int, "step_id": str, "kind": str,
         "ts": int, "data": str},
        pk=("run_id", "seq"),
        not_null=["run_id", "seq", "op", "position", "step_id", "kind", "ts", "data"],
    )
    db["waits"].create(
        {"event": str, "run_id": str, "position": int, "if_": str, "trigger_event": str,
         "expires_at": int},
        pk=("event", "run_id", "position"),
        not_null=["event", "run_id", "position", "trigger_event", "expires_at"],
    )
    db["waits"].create_index(["run_id", "position"], index_name="waits_by_run")
    db["signals"].create(
        {"seq": int, "run_id": str, "kind": str, "key": str, "payload": str, "position": int},
        pk="seq",
        not_null=["run_id", "kind", "key", "payload", "position"],
    )
    db["signals"].create_index(["run_id", "seq"], index_name="signals_by_run")
    db["idempotency"].create(
        {"function_id": str, "key": str, "run_id": str, "created_at": int},
        pk=("function_id", "key"),
        not_null=["function_id", "key", "run_id", "created_at"],
    )
    db["cron"].create({"key": str, "tick": int}, pk="key", not_null=["tick"])
    # Counters that must never go back (signal seqs are never reused, even after deletes).
    db["meta"].create({"key": str, "value": int}, pk="key", not_null=["value"])
    db.execute("INSERT INTO meta (key, value) VALUES ('signal_seq', 0)")


def _migrate_v2(db: Any) -> None:
    """Version 2: ``run_events`` for ``list_runs(event_id=...)``, and the listing index."""
    db["run_events"].create(
        {"event_id": str, "run_id": str},
        pk=("event_id", "run_id"),
        not_null=["event_id", "run_id"],
    )
    rows = [
        (event_id, run_id)
        for run_id, event_ids in db.execute("SELECT id, event_ids FROM runs").fetchall()
        for event_id in json.loads(event_ids)
    ]
    db.conn.executemany(
        "INSERT OR IGNORE INTO run_events (event_id, run_id) VALUES (?, ?)", rows
    )
    db["runs"].create_index(["function_id", "seq"], index_name="runs_function")


def _migrate_v3(db: Any) -> None:
    """Version 3: ``waits.after_seq``, the last event seq when the wait was registered.

    Waits registered before it get 0 (every event in the log may match them, as before)."""
    db["waits"].add_column("after_seq", int, not_null_default=0)


def _migrate_v4(db: Any) -> None:
    """Version 4: partial indexes on the claim path's ``runs`` columns.

    Each of ``status``, ``wake_at`` and ``lease_owner`` is looked up for one kind of value
    only (queued runs, set wake-ups, held leases), so each index keeps just those rows.
    Updating a run that is not in an index's subset (say, a running run completing) then
    leaves that index alone: fewer pages to write and sync per commit."""
    for name in ("runs_status", "runs_wake_at", "runs_lease_owner"):
        db.execute(f"DROP INDEX {name}")
    db.execute("CREATE INDEX runs_queued ON runs (seq) WHERE status = 'queued'")
    db.execute("CREATE INDEX runs_wake_at ON runs (wake_at) WHERE wake_at IS NOT NULL")
    db.execute(
        "CREATE INDEX runs_lease_owner ON runs (lease_owner) WHERE lease_owner IS NOT NULL"
    )


def _migrate_v5(db: Any) -> None:
    """Version 5: ``events.received_at``, when the store received the event (the dedupe
    window runs from it). Events stored before it get their ``ts``, as the window was then
    measured from."""
    db["events"].add_column("received_at", int)
    db.execute("UPDATE events SET received_at = ts")


def _migrate_v6(db: Any) -> None:
    """Version 6: waits are indexed by (event name, match key).

    ``waits`` gets ``match_key`` (``''``: a wait without keys, found for every event of its
    name) in its primary key, ``(event, match_key, run_id, position)``, which is the routing
    lookup's index: a wait with several keys has a row per key, each holding the whole list
    in ``match_keys`` (JSON, NULL with one key or none). Waits registered before keep
    ``''``: they are found for every event, as before."""
    db.execute(
        "CREATE TABLE waits_v6 (event TEXT NOT NULL, match_key TEXT NOT NULL, "
        "run_id TEXT NOT NULL, position INTEGER NOT NULL, if_ TEXT, trigger_event TEXT NOT NULL, "
        "expires_at INTEGER NOT NULL, after_seq INTEGER NOT NULL DEFAULT 0, match_keys TEXT, "
        "PRIMARY KEY (event, match_key, run_id, position))"
    )
    db.execute(
        "INSERT INTO waits_v6 (event, match_key, run_id, position, if_, trigger_event, "
        "expires_at, after_seq) SELECT event, '', run_id, position, if_, trigger_event, "
        "expires_at, after_seq FROM waits ORDER BY rowid"
    )
    db.execute("DROP TABLE waits")
    db.execute("ALTER TABLE waits_v6 RENAME TO waits")
    db.execute("CREATE INDEX waits_by_run ON waits (run_id, position)")


def _migrate_v7(db: Any) -> None:
    """Version 7: ``skipped_triggers``, the triggers that started no run because their
    function's idempotency key was held (one row per would-be run id; ``seq`` orders them)."""
    db.execute(
        "CREATE TABLE skipped_triggers (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
        "function_id TEXT NOT NULL, key TEXT NOT NULL, run_id TEXT NOT NULL, event_id TEXT, "
        "at INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX skipped_by_run ON skipped_triggers (run_id, seq)")
    db.execute("CREATE INDEX skipped_by_event ON skipped_triggers (event_id, seq)")


def _migrate_v8(db: Any) -> None:
    """Version 8: ``runs.rerun_of``, the run a rerun was made from (``Client.rerun``);
    NULL for every run before."""
    db["runs"].add_column("rerun_of", str)


def _migrate_v9(db: Any) -> None:
    """Version 9: flow buffers (``debounce``, ``batch_events``): ``flow_buffers`` holds a
    buffer's state per (function, key), ``flow_buffered`` the seqs of its events."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS flow_buffers (function_id TEXT NOT NULL, key TEXT NOT NULL, "
        "kind TEXT NOT NULL, first_at INTEGER NOT NULL, ready_at INTEGER NOT NULL, "
        "count INTEGER NOT NULL, bytes INTEGER NOT NULL, last_seq INTEGER NOT NULL, "
        "period_ms INTEGER NOT NULL, timeout_ms INTEGER, max_size INTEGER NOT NULL, "
        "PRIMARY KEY (function_id, key))"
    )
    db.execute("CREATE INDEX IF NOT EXISTS flow_buffers_ready ON flow_buffers (ready_at)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS flow_buffered (function_id TEXT NOT NULL, "
        "key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (function_id, key, seq))"
    )


def _migrate_v10(db: Any) -> None:
    """Version 10: the state of the start limits (flow control: throttle, rate_limit,
    singleton; see :class:`durable_core.store.StartLimiter`). ``flow_gcra``: per GCRA
    bucket, its theoretical arrival time and the last run it let start. ``flow_slots``: per
    singleton bucket, the run holding it (NULL: free) and the run waiting for it (never
    claimed while it waits). ``skipped_triggers.reason``: why the trigger started no run
    (rows before it were all idempotency skips)."""
    db.execute("CREATE TABLE IF NOT EXISTS flow_gcra (bucket TEXT PRIMARY KEY, "
               "tat INTEGER NOT NULL, run_id TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS flow_slots (bucket TEXT PRIMARY KEY, run_id TEXT, "
               "next_run TEXT)")
    db.execute("CREATE INDEX IF NOT EXISTS flow_slots_by_run ON flow_slots (run_id) "
               "WHERE run_id IS NOT NULL")
    db.execute("CREATE INDEX IF NOT EXISTS flow_slots_by_next ON flow_slots (next_run) "
               "WHERE next_run IS NOT NULL")
    db.execute("ALTER TABLE skipped_triggers ADD COLUMN reason TEXT NOT NULL "
               "DEFAULT 'idempotency'")


def _migrate_v11(db: Any) -> None:
    """Version 11: concurrency and priority (issue 13). ``runs.priority_ms`` (claims take
    runs in ``created_at - priority_ms`` order; 0 for every run before) and the run's
    concurrency slots ``slot_key1/2`` with their limits (NULL: none), each with a partial
    index of the leased runs holding it, which is what a limited claim counts."""
    db.execute("ALTER TABLE runs ADD COLUMN priority_ms INTEGER NOT NULL DEFAULT 0")
    for n in (1, 2):
        db.execute(f"ALTER TABLE runs ADD COLUMN slot_key{n} TEXT")
        db.execute(f"ALTER TABLE runs ADD COLUMN slot_limit{n} INTEGER")
        db.execute(f"CREATE INDEX IF NOT EXISTS runs_slot{n} ON runs (slot_key{n}) "
                   f"WHERE slot_key{n} IS NOT NULL AND lease_owner IS NOT NULL")


_MIGRATIONS: tuple[Callable[[Any], None], ...] = (
    _migrate_v1, _migrate_v2, _migrate_v3, _migrate_v4, _migrate_v5, _migrate_v6,
    _migrate_v7, _migrate_v8, _migrate_v9, _migrate_v10, _migrate_v11,
)
"""``_MIGRATIONS[v]`` moves a database from schema version ``v`` to ``v + 1``."""

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this code writes (``PRAGMA user_version``)."""


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _check_not_newer(version: int, path: str) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"SQLite store {path!r} has schema version {version}, but this durable-core "
            f"supports schema version {SCHEMA_VERSION} at most; upgrade durable-core to open it"
        )


class _WriterGate:
    """Takes turns between processes writing one file, with prompt hand-overs.

    SQLite already serializes writers, but a writer that finds the file locked sleeps 1,
    2, 5, 10... ms between attempts; with several worker processes committing big batches
    that leaves the file idle while the next writer sleeps. Writers first take an
    exclusive ``flock`` on a side file (``<db>-writer.lock``), polled every 50-500 µs, so
    the next one starts as soon as the last one is done. It is an optimization only:
    SQLite's own lock still guarantees correctness (other programs writing the file do not
    take the gate), and a writer that cannot get the gate within the busy timeout goes
    ahead to SQLite's lock anyway. The kernel drops the ``flock`` of a process that dies.
    """

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self._fd = os.open(path + "-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._timeout = busy_timeout_ms / 1000

    def acquire(self) -> bool:
        """Take the gate (False if it could not be had within the busy timeout)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self._timeout
        pause = 0.00005
        while True:
            time.sleep(pause)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
            pause = min(pause * 1.5, 0.0005)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def _enable_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Switch the file to WAL mode (persistent, so usually already done).

    Switching needs an exclusive lock, and when several processes open a fresh file at once
    SQLite reports the contention as "database is locked" without calling the busy handler;
    so retry, with a short backoff, for up to the busy timeout.
    """
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + busy_timeout_ms / 1000
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


# --------------------------------------------------------------------------- the file

_FILE_CHECK_S = 1.0
"""How often (seconds, at most) a store checks that its path still names the file it has
open: a file deleted, replaced or truncated under a running worker is noticed this fast."""


def _is_file(path: str) -> bool:
    return path not in ("", ":memory:") and not path.startswith("file:")


def _create_private(path: str) -> None:
    """Create the database file owner-only (0600, or stricter with the user's umask) if it
    does not exist. SQLite gives the ``-wal`` and ``-shm`` files it creates next to it the
    same permissions, so event data is not left readable by other local users."""
    if not _is_file(path):
        return
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # an existing file keeps the permissions its owner gave it
    except OSError:
        pass  # a missing directory and the like: sqlite3.connect says what is wrong


class _FileWatch:
    """Notices when the path no longer names the file opened (deleted, replaced by another
    file, truncated), checking at most every ``_FILE_CHECK_S`` seconds."""

    __slots__ = ("_check_at", "_identity", "_min_size", "_path")

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        path = os.path.abspath(path)  # as SQLite does: a later chdir changes nothing
        st = os.stat(path)
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._path = path
        self._identity = (st.st_dev, st.st_ino)
        self._min_size = min(st.st_size, page)  # a database file is at least a page
        self._check_at = time.monotonic() + _FILE_CHECK_S

    def check(self) -> None:
        """Raise :class:`StoreLostError` if the file is gone (rate-limited: cheap to call)."""
        now = time.monotonic()
        if now < self._check_at:
            return
        self._check_at = now + _FILE_CHECK_S
        self.check_now()

    def check_now(self) -> None:
        """Raise :class:`StoreLostError` if the file is gone."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            why = "was deleted"
        except OSError as exc:
            why = f"cannot be found any more ({exc})"
        else:
            if (st.st_dev, st.st_ino) != self._identity:
                why = "was replaced by another file"
            elif st.st_size < self._min_size:
                why = f"was truncated (to {st.st_size} bytes)"
            else:
                return
        raise StoreLostError(
            f"SQLite store {self._path!r}: the database file {why} while this process had it "
            "open; stopping rather than writing into a file no one else sees (restore the "
            "file, or start again on the right path)"
        )


# --------------------------------------------------------------------------- wake-ups

_WAKE_SUFFIX = "-wake"
"""The wake file, ``<db>-wake``: a commit that creates events, runs or signals rewrites its
one byte, and listeners (:meth:`SQLiteStore.wait_for_notify`) watch it with inotify."""

_FALLBACK_CHECK_S = 0.05
"""Without inotify, how often (seconds) a listener checks ``PRAGMA data_version``."""

_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_MOVE_SELF = 0x800
_IN_DELETE_SELF = 0x400
_IN_IGNORED = 0x8000
_IN_WATCH = _IN_MODIFY | _IN_ATTRIB | _IN_MOVE_SELF | _IN_DELETE_SELF
_IN_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then name)

_inotify: tuple[Callable[[int], int], Callable[[int, bytes, int], int]] | None = None
"""Linux's ``inotify_init1`` and ``inotify_add_watch`` through ctypes (None elsewhere, or if
the C library lacks them: listeners then fall back to checking ``PRAGMA data_version``)."""
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _init1 = _libc.inotify_init1
        _init1.argtypes, _init1.restype = [ctypes.c_int], ctypes.c_int
        _add_watch = _libc.inotify_add_watch
        _add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _add_watch.restype = ctypes.c_int
        _inotify = (_init1, _add_watch)
    except (OSError, AttributeError):  # pragma: no cover - a libc without inotify
        _inotify = None


class _WakeFile:
    """Wake-ups between processes sharing one database file: SQLite's stand-in for
    PostgreSQL's ``LISTEN``/``NOTIFY``.

    A writer whose commit created events, runs or signals rewrites the one byte of
    ``<db>-wake`` *after* the commit (so a woken listener finds the data). A listener watches
    the file with Linux inotify: it sleeps in the kernel, costing nothing while idle, and the
    kernel queues every change, so a write between two waits is never lost. Commits that
    only append to journals (the bulk of a busy worker's) do not touch the file. Without
    inotify (another OS, or the per-user inotify limits reached), a listener checks
    ``PRAGMA data_version`` on a connection of its own every ``_FALLBACK_CHECK_S``
    seconds, which changes on any other connection's commit. Wake-ups only save latency:
    workers keep polling, so a lost one (a writer that crashed between its commit and the
    write here, another program writing the database) costs at most a poll interval.
    """

    def __init__(self, path: str) -> None:
        self._path = path + _WAKE_SUFFIX
        self._fd = self._open()
        self._ino: int | None = None  # the inotify instance, once listening
        self._dv_conn: sqlite3.Connection | None = None  # the fallback's connection
        self._dv_last = 0
        self._db_path = path

    def _open(self) -> int:
        return os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def notify(self) -> None:
        """Wake every listener (call after the commit)."""
        try:
            if os.fstat(self._fd).st_nlink == 0:  # deleted or replaced: write the new file
                os.close(self._fd)
                self._fd = self._open()
            os.pwrite(self._fd, b"\0", 0)  # one byte, rewritten: the file never grows
        except OSError:
            pass  # only latency is lost: listeners poll too

    def listen(self) -> bool:
        """Start listening (inotify, else the fallback); True if it was already started."""
        if self._ino is not None or self._dv_conn is not None:
            return True
        if _inotify is not None:
            init1, _ = _inotify
            fd = init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                self._ino = fd
                if self._watch():
                    return False
                os.close(fd)
                self._ino = None
        # The fallback: a connection of its own, so that its data_version moves on every
        # commit of this process's store connection too.
        conn = sqlite3.connect(  # mode=rw: never create a deleted database file again
            f"file:{urllib.parse.quote(self._db_path)}?mode=rw", uri=True,
            isolation_level=None, check_same_thread=False,
        )
        self._dv_last = conn.execute("PRAGMA data_version").fetchone()[0]
        self._dv_conn = conn
        return False

    def _watch(self) -> bool:
        assert self._ino is not None and _inotify is not None
        with contextlib.suppress(OSError):
            os.close(self._open())  # (re)create the file if it was deleted
        return _inotify[1](self._ino, os.fsencode(self._path), _IN_WATCH) >= 0

    def wait(self, stop: socket.socket, deadline: float) -> bool:
        """Block until a wake-up, ``deadline`` (monotonic) or a byte on ``stop``; True if
        woken (possibly spuriously)."""
        while True:
            remaining = deadline - time.monotonic()
            if self._ino is None:
                conn = self._dv_conn
                assert conn is not None
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._dv_last:
                    self._dv_last = version
                    return True
                if remaining <= 0:
                    return False
                ready, _, _ = select.select([stop], [], [], min(remaining, _FALLBACK_CHECK_S))
                if ready:
                    return False
                continue
            woken = self._drain()
            if woken:
                return True
            if remaining <= 0:
                return False
            readable, _, _ = select.select([self._ino, stop.fileno()], [], [], remaining)
            if stop.fileno() in readable:
                return False

    def _drain(self) -> bool:
        """Read the queued inotify events; True if there was any. A file deleted, moved
        or changed in its links is watched again by path."""
        assert self._ino is not None
        got = rearm = False
        while True:
            try:
                data = os.read(self._ino, 4096)
            except BlockingIOError:
                break
            got = True
            for offset in range(0, len(data), _IN_EVENT.size):
                _, mask, _, length = _IN_EVENT.unpack_from(data, offset)
                if mask & (_IN_ATTRIB | _IN_MOVE_SELF | _IN_DELETE_SELF | _IN_IGNORED):
                    rearm = True
                if length:  # pragma: no cover - a file watch has no names
                    break
        if rearm and not self._watch():
            # The file cannot be watched any more: check data_version from now on.
            os.close(self._ino)
            self._ino = None
            self.listen()
        return got

    def close(self) -> None:
        """Close the file, the inotify instance and the fallback's connection."""
        for fd in (self._fd, self._ino):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._ino = None
        if self._dv_conn is not None:
            self._dv_conn.close()
            self._dv_conn = None


# --------------------------------------------------------------------------- helpers


_WAIT_COLS = (
    "run_id, position, event, if_, trigger_event, expires_at, after_seq, match_key, match_keys"
)
_FIND_ALL_WAITS = (
    f"SELECT {_WAIT_COLS} FROM waits WHERE event = ? AND expires_at > ? ORDER BY rowid"
)
# The routing lookup: one seek of the primary key per key (json_each gives the keys).
_FIND_WAITS = (
    f"SELECT {_WAIT_COLS} FROM waits WHERE event = ?1 "
    "AND match_key IN (SELECT value FROM json_each(?2)) AND expires_at > ?3 ORDER BY rowid"
)
# The distinct paths of the keys (a key is path=value, and a path holds no '='): from the
# smallest key, jump past every key of the same path ('>' follows '=') to the next one.
_WAIT_KEY_PATHS = (
    "WITH RECURSIVE p(k) AS ("
    "SELECT (SELECT min(match_key) FROM waits WHERE event = ?1 AND match_key > '') "
    "UNION ALL SELECT (SELECT min(match_key) FROM waits WHERE event = ?1 "
    "AND match_key >= substr(p.k, 1, instr(p.k, '=') - 1) || '>') FROM p "
    "WHERE p.k IS NOT NULL) "
    "SELECT substr(k, 1, instr(k, '=') - 1) FROM p WHERE k IS NOT NULL"
)


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _flow_row(n: NewRun) -> tuple[Any, ...]:
    """A new run's priority and slots as the parameters of the update that stores them."""
    (k1, l1), (k2, l2) = (*n.slots, (None, None), (None, None))[:2]
    return (n.priority_ms, k1, l1, k2, l2, n.id)


def _run_from_row(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0], function_id=row[1], status=row[2], events=tuple(json.loads(row[3])),
        created_at=row[5], updated_at=row[6], wake_at=row[7], output=row[8],
        error=None if row[9] is None else ErrorInfo.from_dict(json.loads(row[9])),
        parent_run_id=row[10], idempotency_key=row[11], ended_at=row[12], epoch=row[13],
        lease_owner=row[14], lease_expires=row[15], event_ids=tuple(json.loads(row[4])),
        rerun_of=row[16],
    )


def _entry_from_row(row: Sequence[Any]) -> JournalEntry:
    return JournalEntry(
        seq=row[1], op=row[2], position=row[3], step_id=row[4], kind=row[5], ts=row[6],
        data=row[7],
    )


def _event_from_row(row: Sequence[Any]) -> StoredEvent:
    return StoredEvent(
        seq=row[0], id=row[1], name=row[2], data=row[3], ts=row[4], received_at=row[5],
        duplicate=bool(row[6]),
    )


def _error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else json.dumps(error.to_dict())


class _RunState:
    """The mutable columns of a run while a commit applies its writes."""

    __slots__ = (
        "ended_at", "epoch", "error", "lease_expires", "lease_owner", "length", "output",
        "status", "updated_at", "wake_at",
    )

    def __init__(self, row: Sequence[Any]) -> None:
        (self.status, self.wake_at, self.output, self.error, self.ended_at, self.updated_at,
         self.lease_owner, self.lease_expires, self.epoch, self.length) = row


# --------------------------------------------------------------------------- the store


class SQLiteStore:
    """A store in one SQLite file (or in memory with ``":memory:"``); see the store contract.

    ``synchronous`` is ``"FULL"`` (default: durable on return, one fsync per commit),
    ``"NORMAL"`` (faster; a power loss may drop the last commits) or ``"EXTRA"``.
    ``busy_timeout_ms`` is how long a call waits for another process's write to finish.
    """

    blocking = True
    """Calls do file I/O: async drivers call them from worker threads."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
    ) -> None:
        sync = synchronous.upper()
        if sync not in SYNCHRONOUS_MODES:
            raise ValidationError(
                f"synchronous={synchronous!r}: use one of {', '.join(SYNCHRONOUS_MODES)}",
                field="synchronous",
            )
        self._path = os.fspath(path)
        self._synchronous = sync
        self._lock = threading.Lock()
        self._watch: _FileWatch | None = None
        _create_private(self._path)
        try:
            conn = sqlite3.connect(
                self._path, timeout=busy_timeout_ms / 1000, isolation_level=None,
                check_same_thread=False, cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self._path!r}: {exc}") from exc
        try:
            _enable_wal(conn, busy_timeout_ms)
            conn.execute(f"PRAGMA synchronous = {sync}")  # one of SYNCHRONOUS_MODES
            self._db = sqlite_utils.Database(
                conn, execute_plugins=False, recursive_triggers=False
            )
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open SQLite store {self._path!r}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._gate: _WriterGate | None = None
        self._wake: _WakeFile | None = None
        self._listen_lock = threading.Lock()
        self._stop_r, self._stop_w = socket.socketpair()  # wakes wait_for_notify at close
        # Without a wake file (in memory, or it could not be opened), this process's own
        # commits wake its listener: commits counted, under a condition.
        self._local = threading.Condition()
        self._local_commits = 0
        self._local_seen: int | None = None  # the count last seen by wait_for_notify
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":  # a file
            try:
                self._gate = _WriterGate(self._path, busy_timeout_ms)
                self._watch = _FileWatch(self._path, conn)
            except OSError as exc:
                conn.close()
                self._stop_r.close()
                self._stop_w.close()
                raise StoreError(
                    f"cannot open SQLite store {self._path!r}: its writers' lock file: {exc}"
                ) from exc
            self._wake = self._open_wake_file()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """Open a store from a SQLAlchemy-style URL.

        ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` name a file;
        ``sqlite://`` and ``sqlite:///:memory:`` give an in-memory database. The query
        parameter ``synchronous`` (``FULL``, ``NORMAL`` or ``EXTRA``) is accepted. The path
        is taken literally (no percent-decoding).
        """
        shown = redact_url(url)  # for messages: never a password
        scheme, sep, rest = url.partition("://")
        if scheme != "sqlite" or not sep:
            raise ValidationError(
                f"store url {shown!r}: not a sqlite:// url (use sqlite:///path.db)", field="store"
            )
        location, _, query = rest.partition("?")
        if location and not location.startswith("/"):
            raise ValidationError(
                f"store url {shown!r}: a SQLite url has no host; use sqlite:///relative.db "
                "or sqlite:////absolute.db",
                field="store",
            )
        path = location[1:] or ":memory:"
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(params) - {"synchronous"})
        if unknown:
            raise ValidationError(
                f"store url {shown!r}: unknown parameter(s) {', '.join(unknown)}; "
                "supported: synchronous",
                field="store",
            )
        synchronous = params.get("synchronous", ["FULL"])[-1]
        return cls(path, synchronous=synchronous)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = _user_version(conn)
        _check_not_newer(version, self._path)
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another process may have migrated meanwhile.
            version = _user_version(conn)
            _check_not_newer(version, self._path)
            for step in _MIGRATIONS[version:]:
                step(self._db)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ plumbing

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` for an in-memory store)."""
        return self._path

    @property
    def synchronous(self) -> str:
        """The ``synchronous`` setting in force (``FULL``, ``NORMAL`` or ``EXTRA``)."""
        return self._synchronous

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._read() as conn:
            return _user_version(conn)

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r}, synchronous={self._synchronous!r})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"SQLite store {self._path!r} is closed")
        if self._watch is not None:
            self._watch.check()
        return self._conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self._path!r}: {exc}") from exc

    @contextmanager
    def _writer(self) -> Iterator[sqlite3.Connection]:
        """The connection, for writing: under the thread lock and the writers' gate, with
        SQLite's errors raised as :class:`~durable_core.StoreError`."""
        with self._lock:
            conn = self._connection()
            gate = self._gate
            gated = gate is not None and gate.acquire()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self._path!r}: {exc}") from exc
            finally:
                if gated and gate is not None:
                    gate.release()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, committed on success, rolled back on error."""
        with self._writer() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connection; later calls raise :class:`~durable_core.StoreError`.
        Wakes a blocked :meth:`wait_for_notify`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._gate is not None:
                self._gate.close()
                self._gate = None
            wake, self._wake = self._wake, None
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")  # wakes a blocked wait_for_notify
        with self._local:
            self._local.notify_all()
        with self._listen_lock:
            if wake is not None:
                wake.close()
            self._stop_r.close()
            self._stop_w.close()

    # ------------------------------------------------------------------ notifications

    def _open_wake_file(self) -> _WakeFile | None:
        try:
            return _WakeFile(self._path)
        except OSError as exc:
            # Only latency is lost: workers on this file poll (every --poll-interval).
            log.warning("SQLite store %r: no wake-ups between processes (%s); workers find "
                        "new work by polling", self._path, exc)
            return None

    def _notify(self) -> None:
        """After a commit that created events, runs or signals or ended a run
        (:func:`durable_core.store.notifies`): wake listeners."""
        with self._lock:  # not while close() closes the file
            if self._wake is not None:
                self._wake.notify()
                return
        with self._local:
            self._local_commits += 1
            self._local.notify_all()

    def wait_for_notify(self, timeout_s: float) -> bool:
        """Block until a commit (from any process using this file, this one included)
        created events, runs or signals, or until ``timeout_s`` seconds passed. Returns True
        if woken, False on timeout or when the store is closed: the shape of
        :meth:`stores.PostgresStore.wait_for_notify`, so a worker waits on either alike.

        Listening starts on the first call (which returns False at once if ``timeout_s`` is
        0): commits before it are not seen, so callers should look at the store after the
        first call. From then on no wake-up is lost between calls. A True result may be
        spurious; callers just look at the store. Linux wakes listeners through inotify on
        ``<db>-wake`` (no cost while idle); elsewhere a listener checks
        ``PRAGMA data_version`` every 50 ms. An in-memory store (or one whose wake file could
        not be opened) hears only its own commits.
        """
        timeout_s = max(timeout_s, 0.0)
        deadline = time.monotonic() + timeout_s
        if not self._listen_lock.acquire(timeout=timeout_s):
            return False
        try:
            if self._conn is None:
                return False
            wake = self._wake
            if wake is None:
                return self._wait_local(deadline)
            try:
                wake.listen()
                return wake.wait(self._stop_r, deadline)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(
                    f"SQLite store {self._path!r}: cannot listen for wake-ups: {exc}"
                ) from exc
        finally:
            self._listen_lock.release()

    def _wait_local(self, deadline: float) -> bool:
        """wait_for_notify without a wake file: for this process's own commits."""
        with self._local:
            if self._local_seen is None:
                self._local_seen = self._local_commits  # listening starts now
            while self._local_commits == self._local_seen and self._conn is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._local.wait(remaining)
            if self._conn is None:
                return False
            self._local_seen = self._local_commits
            return True

    # ------------------------------------------------------------------ events

    def append_events(self, events: Sequence[str], now: int) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.append_events`."""
        if not events:
            return []
        with self._write() as conn:
            stored = self._insert_events(conn, events, now)
        self._notify()
        return stored

    @staticmethod
    def _insert_events(
        conn: sqlite3.Connection, texts: Sequence[str], now: int
    ) -> list[StoredEvent]:
        parsed = [json.loads(text) for text in texts]
        # When the store received the latest original of each id (see flag_duplicates).
        originals: dict[str, int] = {}
        for event_id in dict.fromkeys(raw["id"] for raw in parsed):
            row = conn.execute(
                "SELECT received_at FROM events WHERE id = ? AND duplicate = 0 "
                "ORDER BY seq DESC LIMIT 1",
                (event_id,),
            ).fetchone()
            if row is not None:
                originals[event_id] = row[0]
        dups = flag_duplicates([raw["id"] for raw in parsed], originals, now)
        seq: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        out = [
            StoredEvent(
                seq=seq + i, id=raw["id"], name=raw["name"], data=text, ts=int(raw["ts"]),
                received_at=now, duplicate=dup,
            )
            for i, (text, raw, dup) in enumerate(zip(texts, parsed, dups, strict=True), 1)
        ]
        conn.executemany(
            "INSERT INTO events (seq, id, name, data, ts, received_at, duplicate, routed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.seq, e.id, e.name, e.data, e.ts, now, int(e.duplicate), int(e.duplicate))
             for e in out],
        )
        return out

    def unrouted_events(self, limit: int) -> list[StoredEvent]:
        """See :meth:`durable_core.Store.unrouted_events`."""
        if limit <= 0:
            return []
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE routed = 0 AND duplicate = 0 "
                "ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [_event_from_row(r) for r in rows]

    def get_event(self, event_id: str) -> StoredEvent | None:
        """See :meth:`durable_core.Store.get_event` (duplicates are never returned)."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ? AND duplicate = 0 "
                "ORDER BY seq DESC LIMIT 1",
                (event_id,),
            ).fetchone()
        return None if row is None else _event_from_row(row)

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
        if limit <= 0:
            return []
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (("name = ?", name), ("received_at >= ?", since),
                              ("received_at < ?", until), ("seq < ?", before)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events {where}ORDER BY seq DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_event_from_row(r) for r in rows]

    # ------------------------------------------------------------------ commit

    def commit(self, batch: CommitBatch) -> set[str]:
        """See :meth:`durable_core.Store.commit`. One immediate transaction, batched.

        Fast paths serve the hot cases. A single memo and nothing else (a lone run's step)
        is one statement in autocommit mode that carries its own fencing check; if it is
        refused (a stale epoch, an ended run, a seq that does not follow the journal),
        nothing was written and the batch goes through the validated path, which says what
        was fenced. A batch that only appends memos reads just the fencing state of its runs
        before inserting them all at once. A batch with a single write that also changes
        the run's status is one fenced ``UPDATE`` and its memos (see ``_apply_one``).
        """
        lone = lone_memo(batch)
        if lone is not None:
            # A single fenced statement in autocommit mode is its own transaction, with no
            # BEGIN and COMMIT. If refused, nothing was written, and the validated path
            # below says what was fenced.
            w, e = lone
            with self._writer() as conn:
                if conn.execute(_FENCED_APPEND_SQL, (w.run_id, *e, w.epoch)).rowcount == 1:
                    return set()
        writes = batch.writes
        with self._write() as conn:
            if writes and all(is_journal_only(w) for w in writes):
                fenced = self._commit_appends(conn, batch)
            elif len(writes) == 1 and self._apply_one(conn, batch):
                fenced = set()
            else:
                fenced = self._commit(conn, batch)
        if notifies(batch):
            self._notify()
        return fenced

    def _apply_one(self, conn: sqlite3.Connection, batch: CommitBatch) -> bool:
        """Apply a batch's only write (with memos, and a status or lease change: a run's
        last step, a sleep...) by one fenced ``UPDATE`` of its run and one insert, then the
        rest of the batch. Returns False, having changed nothing, if the write was refused
        or does not fit (its memos not dense): the validated path then applies the batch."""
        w = batch.writes[0]
        entries = w.entries
        if not entries or any(e.seq != entries[0].seq + i for i, e in enumerate(entries)):
            return False
        terminal = w.status in TERMINAL_STATUSES
        changed = conn.execute(
            _FENCED_UPDATE_SQL,
            {"id": w.run_id, "epoch": w.epoch, "first": entries[0].seq, "now": batch.now,
             "status": w.status, "wake_at": w.wake_at, "terminal": terminal,
             "output": w.output if terminal else None,
             "error": _error_json(w.error) if terminal else None,
             "release": w.release or terminal},
        ).rowcount
        if changed != 1:
            return False
        conn.executemany(_INSERT_JOURNAL_SQL, [(w.run_id, *e) for e in entries])
        consumed = fold_writes(batch.writes)[w.run_id].consumed
        if consumed:
            conn.execute("DELETE FROM signals WHERE run_id = ? AND seq <= ?",
                         (w.run_id, consumed))
        self._commit_rest(conn, batch, set())
        return True

    def _commit_appends(self, conn: sqlite3.Connection, batch: CommitBatch) -> set[str]:
        """A batch whose writes only append memos (group commit's common case): one light
        query reads the fencing state of its runs, one ``executemany`` inserts the rows."""
        changes = fold_writes(batch.writes)
        state: dict[str, tuple[int, str, int]] = {}  # run id -> epoch, status, journal length
        for chunk in _chunks(list(changes)):
            for run_id, epoch, status, length in conn.execute(
                "SELECT id, epoch, status, "
                "(SELECT COALESCE(MAX(j.seq) + 1, 0) FROM journal AS j WHERE j.run_id = runs.id) "
                f"FROM runs WHERE id IN ({_marks(len(chunk))})",
                chunk,
            ):
                state[run_id] = (epoch, status, length)
        fenced = self._fenced(changes, state)
        conn.executemany(
            _INSERT_JOURNAL_SQL,
            [(run_id, *e) for run_id, c in changes.items() if run_id not in fenced
             for e in c.entries],
        )
        self._commit_rest(conn, batch, fenced)
        return fenced

    @staticmethod
    def _fenced(changes: dict[str, RunChange], state: dict[str, tuple[int, str, int]]
                ) -> set[str]:
        """The runs whose changes the contract's write_accepted rejects, given each stored
        run's (epoch, status, journal length)."""
        fenced: set[str] = set()
        for run_id, c in changes.items():
            st = state.get(run_id)
            if st is None or not write_accepted(c.epoch, c.first, *st):
                fenced.add(run_id)
        return fenced

    def _commit(self, conn: sqlite3.Connection, batch: CommitBatch) -> set[str]:
        changes = fold_writes(batch.writes)
        states = self._run_states(conn, list(changes))
        # Decide every write first, against the state before the batch, so a rejected run
        # leaves nothing half-applied.
        fenced = self._fenced(
            changes, {r: (s.epoch, s.status, s.length) for r, s in states.items()}
        )
        if batch.events:
            self._insert_events(conn, batch.events, batch.now)
        skipped: set[str] = set()
        if batch.runs:
            extra: list[tuple[str, Signal]] = []
            skipped = self._create_runs(conn, batch.runs, batch.now, extra)
            if extra:
                batch = batch._replace(signals=(*batch.signals, *extra))
        if changes:
            self._apply_writes(conn, batch.now, changes, states, fenced)
        self._commit_rest(conn, batch, fenced, created=True, skipped=skipped)
        return fenced

    def _commit_rest(
        self, conn: sqlite3.Connection, batch: CommitBatch, fenced: set[str], *,
        created: bool = False, skipped: set[str] | None = None,
    ) -> None:
        """The parts of a batch besides its run writes (events and runs unless ``created``;
        then ``skipped`` are the runs it did not create)."""
        if not created:
            if batch.events:
                self._insert_events(conn, batch.events, batch.now)
            if batch.runs:
                extra: list[tuple[str, Signal]] = []
                skipped = self._create_runs(conn, batch.runs, batch.now, extra)
                if extra:
                    batch = batch._replace(signals=(*batch.signals, *extra))
        if any(w.status in TERMINAL_STATUSES for w in batch.writes):
            self._release_slots(conn, {w.run_id for w in batch.writes
                                       if w.status in TERMINAL_STATUSES} - fenced)
        waits_add, waits_remove = wait_changes(batch, fenced, skipped or ())
        if waits_add:
            # Only events after the last one in the log (this batch's included) may match a
            # new wait, unless it says from which seq on; registering the same wait again
            # keeps the original record.
            after: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            conn.executemany(
                "INSERT OR IGNORE INTO waits (event, match_key, run_id, position, if_, "
                "trigger_event, expires_at, after_seq, match_keys) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(w.event, key, w.run_id, w.position, w.if_, w.trigger_event, w.expires_at,
                  w.after_seq or after, many)
                 for w in waits_add
                 for many in (json.dumps(w.keys) if len(w.keys) > 1 else None,)
                 for key in (w.keys or ("",))],
            )
        if waits_remove:
            conn.executemany("DELETE FROM waits WHERE run_id = ? AND position = ?", waits_remove)
        if batch.run_events:
            appended = run_events_to_append(batch, fenced)
            if appended:
                self._insert_events(conn, appended, batch.now)
        if batch.signals:
            self._insert_signals(conn, batch.signals)
        if batch.routed_events:
            conn.executemany(
                "UPDATE events SET routed = 1 WHERE seq = ?",
                [(seq,) for seq in batch.routed_events],
            )
        if batch.cron:
            # Cursors only move forward (see cron_advances).
            conn.executemany(
                "INSERT INTO cron (key, tick) VALUES (?1, ?2) "
                "ON CONFLICT (key) DO UPDATE SET tick = excluded.tick "
                "WHERE excluded.tick > cron.tick",
                list(cron_advances(batch.cron).items()),
            )

    @staticmethod
    def _run_states(conn: sqlite3.Connection, run_ids: Sequence[str]) -> dict[str, _RunState]:
        states: dict[str, _RunState] = {}
        for chunk in _chunks(run_ids):
            rows = conn.execute(
                "SELECT id, status, wake_at, output, error, ended_at, updated_at, lease_owner, "
                "lease_expires, epoch, "
                "(SELECT COALESCE(MAX(j.seq) + 1, 0) FROM journal AS j WHERE j.run_id = runs.id) "
                f"FROM runs WHERE id IN ({_marks(len(chunk))})",
                chunk,
            ).fetchall()
            for row in rows:
                states[row[0]] = _RunState(row[1:])
        return states

    @staticmethod
    def _statuses(conn: sqlite3.Connection, run_ids: Sequence[str]) -> dict[str, str]:
        """The status of each existing run among ``run_ids``."""
        found: dict[str, str] = {}
        for chunk in _chunks(run_ids):
            found.update(
                conn.execute(
                    f"SELECT id, status FROM runs WHERE id IN ({_marks(len(chunk))})", chunk
                ).fetchall()
            )
        return found

    def _create_runs(self, conn: sqlite3.Connection, runs: Sequence[NewRun], now: int,
                     signals: list[tuple[str, Signal]]) -> set[str]:
        """Create the runs to create (:func:`new_runs_to_create`, with their start limits:
        :class:`StartLimiter`) and record the triggers skipped; returns the ids of the runs
        it skipped. The limits' cancel signals are appended to ``signals``."""
        ids = list(dict.fromkeys(r.id for r in runs))
        existing = set(self._statuses(conn, ids))
        keys: dict[tuple[str, str], tuple[int, str]] = {}
        for k in dict.fromkeys(
            (n.function_id, n.idempotency_key) for n in runs if n.idempotency_key is not None
        ):
            row = conn.execute(
                "SELECT created_at, run_id FROM idempotency WHERE function_id = ? AND key = ?",
                k,
            ).fetchone()
            if row is not None:
                keys[k] = (row[0], row[1])
        for chunk in _chunks(ids):  # a skipped trigger's id counts as existing
            existing.update(r[0] for r in conn.execute(
                f"SELECT id FROM skipped_triggers WHERE id IN ({_marks(len(chunk))})", chunk
            ))
        skipped: list[SkippedTrigger] = []
        limiter = self._limiter(conn, runs, now)
        create = new_runs_to_create(runs, existing, keys, skipped, limiter)
        if limiter is not None:
            skipped += limiter.skipped
            self._save_limits(conn, limiter)
            signals += limiter.signals()
        if skipped:
            conn.executemany(
                "INSERT OR IGNORE INTO skipped_triggers (id, function_id, key, run_id, "
                "event_id, at, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k.id, k.function_id, k.key, k.run_id, k.event_id, k.at, k.reason)
                 for k in skipped],
            )
        conn.executemany(
            "INSERT INTO runs (id, function_id, status, events, event_ids, created_at, "
            "updated_at, parent_run_id, idempotency_key, epoch, rerun_of, wake_at) "
            "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            [(n.id, n.function_id, json.dumps(list(n.events)), json.dumps(list(n.event_ids)),
              n.created_at, n.created_at, n.parent_run_id, n.idempotency_key, n.rerun_of,
              None if limiter is None else limiter.wake_at.get(n.id))
             for n in create],
        )
        flow = [_flow_row(n) for n in create if n.slots or n.priority_ms]
        if flow:
            conn.executemany(
                "UPDATE runs SET priority_ms = ?, slot_key1 = ?, slot_limit1 = ?, "
                "slot_key2 = ?, slot_limit2 = ? WHERE id = ?", flow)
        conn.executemany(
            "INSERT OR REPLACE INTO idempotency (function_id, key, run_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            [(n.function_id, n.idempotency_key, n.id, n.created_at)
             for n in create if n.idempotency_key is not None],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO run_events (event_id, run_id) VALUES (?, ?)",
            [(event_id, n.id) for n in create for event_id in n.event_ids],
        )
        return {n.id for n in runs} - {n.id for n in create}

    @staticmethod
    def _limiter(conn: sqlite3.Connection, runs: Sequence[NewRun], now: int
                 ) -> StartLimiter | None:
        """A :class:`StartLimiter` over the stored state of the runs' buckets (None if no
        run has start limits). The write transaction serializes routers."""
        limited = [n.limits for n in runs if n.limits is not None]
        if not limited:
            return None
        gcra: dict[str, tuple[int, str]] = {}
        slots: dict[str, tuple[str | None, str | None]] = {}
        for b in dict.fromkeys(b for lim in limited for b in lim.gcra_buckets()):
            row = conn.execute("SELECT tat, run_id FROM flow_gcra WHERE bucket = ?",
                               (b,)).fetchone()
            if row is not None:
                gcra[b] = (row[0], row[1])
        for b in dict.fromkeys(lim.singleton[0] for lim in limited
                               if lim.singleton is not None):
            row = conn.execute("SELECT run_id, next_run FROM flow_slots WHERE bucket = ?",
                               (b,)).fetchone()
            if row is not None:
                slots[b] = (row[0], row[1])
        return StartLimiter(gcra, slots, now)

    @staticmethod
    def _save_limits(conn: sqlite3.Connection, limiter: StartLimiter) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO flow_gcra (bucket, tat, run_id) VALUES (?, ?, ?)",
            [(b, *limiter.gcra[b]) for b in sorted(limiter.gcra_changed)])
        conn.executemany(
            "INSERT OR REPLACE INTO flow_slots (bucket, run_id, next_run) VALUES (?, ?, ?)",
            [(b, *limiter.slots[b]) for b in sorted(limiter.slots_changed)])

    @staticmethod
    def _release_slots(conn: sqlite3.Connection, ended: Iterable[str]) -> None:
        """The singleton slots held by runs that ended in this commit pass to the runs
        waiting for them (:func:`slot_released`), or become free."""
        conn.executemany(
            "UPDATE flow_slots SET run_id = next_run, next_run = NULL WHERE run_id = ?",
            [(r,) for r in ended])

    @staticmethod
    def _apply_writes(
        conn: sqlite3.Connection, now: int, changes: dict[str, RunChange],
        states: dict[str, _RunState], fenced: set[str],
    ) -> None:
        journal: list[tuple[Any, ...]] = []
        consumed: list[tuple[str, int]] = []
        changed: dict[str, _RunState] = {}
        for run_id, c in changes.items():
            if run_id in fenced:
                continue
            journal.extend((run_id, *e) for e in c.entries)
            fields = record_changes(c, now)
            if not fields:
                continue  # journal only (the hot path): the run record stays as it is
            state = states[run_id]
            for name, value in fields.items():
                setattr(state, name, value)
            if "error" in fields:
                state.error = _error_json(c.error)
            if c.consumed:
                consumed.append((run_id, c.consumed))
            changed[run_id] = state
        if journal:
            conn.executemany(_INSERT_JOURNAL_SQL, journal)
        if changed:
            conn.executemany(
                "UPDATE runs SET status = ?, wake_at = ?, output = ?, error = ?, ended_at = ?, "
                "updated_at = ?, lease_owner = ?, lease_expires = ? WHERE id = ?",
                [(s.status, s.wake_at, s.output, s.error, s.ended_at, s.updated_at,
                  s.lease_owner, s.lease_expires, run_id) for run_id, s in changed.items()],
            )
        if consumed:
            conn.executemany("DELETE FROM signals WHERE run_id = ? AND seq <= ?", consumed)

    def _insert_signals(
        self, conn: sqlite3.Connection, signals: Sequence[tuple[str, Signal]]
    ) -> None:
        statuses = self._statuses(conn, list(dict.fromkeys(r for r, _ in signals)))
        seq: int = conn.execute("SELECT value FROM meta WHERE key = 'signal_seq'").fetchone()[0]
        rows = []
        for run_id, s in signals:
            if signal_accepted(statuses.get(run_id)):
                seq += 1
                rows.append((seq, run_id, s.kind, s.key, s.payload, s.position))
        if rows:
            conn.executemany(
                "INSERT INTO signals (seq, run_id, kind, key, payload, position) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'signal_seq'", (seq,))

    # ------------------------------------------------------------------ claims

    def claim_runs(
        self, owner: str, now: int, lease_ms: int, limit: int,
        function_ids: Sequence[str] | None = None,
    ) -> list[Claim]:
        """See :meth:`durable_core.Store.claim_runs` (select and lease in one transaction)."""
        if limit <= 0 or (function_ids is not None and not function_ids):
            return []
        params: dict[str, Any] = {"now": now, "limit": limit}
        query = _CLAIMABLE_ANY_SQL
        if function_ids is not None:
            query = _CLAIMABLE_OF_SQL
            params["functions"] = json.dumps(list(function_ids))
        with self._write() as conn:
            ids = [r[0] for r in conn.execute(query, params)]
            return self._claim(conn, ids, owner, now, lease_ms)

    @staticmethod
    def _claim(
        conn: sqlite3.Connection, ids: list[str], owner: str, now: int, lease_ms: int
    ) -> list[Claim]:
        if not ids:
            return []
        conn.executemany(
            "UPDATE runs SET epoch = epoch + 1, lease_owner = ?, lease_expires = ? WHERE id = ?",
            [(owner, now + lease_ms, run_id) for run_id in ids],
        )
        runs: dict[str, RunRecord] = {}
        journals: dict[str, list[JournalEntry]] = {}
        pending: dict[str, list[tuple[int, Signal]]] = {}
        for chunk in _chunks(ids):
            marks = _marks(len(chunk))
            for row in conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id IN ({marks})", chunk
            ):
                runs[row[0]] = _run_from_row(row)
            for row in conn.execute(
                f"SELECT {_JOURNAL_COLUMNS} FROM journal WHERE run_id IN ({marks}) "
                "ORDER BY run_id, seq",
                chunk,
            ):
                journals.setdefault(row[0], []).append(_entry_from_row(row))
            for run_id, seq, kind, key, payload, position in conn.execute(
                "SELECT run_id, seq, kind, key, payload, position FROM signals "
                f"WHERE run_id IN ({marks}) ORDER BY seq",
                chunk,
            ):
                pending.setdefault(run_id, []).append((seq, Signal(kind, key, payload, position)))
        return [
            Claim(
                run=runs[run_id],
                journal=tuple(journals.get(run_id, ())),
                signals=tuple(pending.get(run_id, ())),
            )
            for run_id in ids
        ]

    def renew(self, owner: str, run_ids: Sequence[str], now: int, lease_ms: int) -> set[str]:
        """See :meth:`durable_core.Store.renew`."""
        unique = list(dict.fromkeys(run_ids))
        if not unique:
            return set()
        with self._write() as conn:
            held: set[str] = set()
            for chunk in _chunks(unique):
                held.update(
                    r[0] for r in conn.execute(
                        # The contract's lease_held, stated in SQL.
                        f"SELECT id FROM runs WHERE id IN ({_marks(len(chunk))}) "
                        f"AND lease_owner = ? AND lease_expires > ? "
                        f"AND status NOT IN {_TERMINAL_SQL}",
                        (*chunk, owner, now),
                    )
                )
            conn.executemany(
                "UPDATE runs SET lease_expires = ? WHERE id = ?",
                [(now + lease_ms, run_id) for run_id in unique if run_id in held],
            )
        return {run_id for run_id in unique if run_id not in held}

    # ------------------------------------------------------------------ queries

    def find_waits(
        self, event_name: str, now: int, keys: Collection[str] | None = None
    ) -> list[WaitRecord]:
        """See :meth:`durable_core.Store.find_waits`. With ``keys``, one query that seeks
        the primary key ``(event, match_key, ...)`` once per key (and once for ``''``, the
        waits without keys)."""
        with self._read() as conn:
            if keys is None:
                rows = conn.execute(_FIND_ALL_WAITS, (event_name, now)).fetchall()
            else:
                rows = conn.execute(
                    _FIND_WAITS, (event_name, json.dumps(["", *keys]), now)
                ).fetchall()
        return wait_records(rows)

    def wait_key_paths(self, event_name: str) -> list[str]:
        """See :meth:`durable_core.Store.wait_key_paths`: a skip scan of the primary key,
        one seek per path."""
        with self._read() as conn:
            rows = conn.execute(_WAIT_KEY_PATHS, (event_name,)).fetchall()
        return sorted({row[0] for row in rows})

    def cancel_reasons(self, run_ids: Sequence[str]) -> dict[str, str]:
        """See :meth:`durable_core.Store.cancel_reasons`."""
        out: dict[str, str] = {}
        with self._read() as conn:
            for chunk in _chunks(list(run_ids)):
                for run_id, payload in conn.execute(
                    "SELECT run_id, payload FROM signals WHERE kind = 'cancel' AND run_id IN "
                    f"({_marks(len(chunk))}) ORDER BY seq DESC",
                    tuple(chunk),
                ):
                    out[run_id] = payload  # (the first cancel of each run comes last)
        return out

    def cancel_requested(self, run_ids: Sequence[str]) -> set[str]:
        """See :meth:`durable_core.Store.cancel_requested`."""
        out: set[str] = set()
        with self._read() as conn:
            for chunk in _chunks(list(run_ids)):
                out.update(
                    row[0] for row in conn.execute(
                        "SELECT DISTINCT run_id FROM signals WHERE kind = 'cancel' AND run_id IN "
                        f"({_marks(len(chunk))})",
                        tuple(chunk),
                    )
                )
        return out

    def next_wake_at(self) -> int | None:
        """See :meth:`durable_core.Store.next_wake_at`."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT wake_at FROM runs WHERE wake_at IS NOT NULL "
                f"AND status NOT IN {_TERMINAL_SQL} ORDER BY wake_at LIMIT 1"
            ).fetchone()
        return None if row is None else int(row[0])

    def cron_cursors(self) -> dict[str, int]:
        """See :meth:`durable_core.Store.cron_cursors`."""
        with self._read() as conn:
            return {key: tick for key, tick in conn.execute("SELECT key, tick FROM cron")}

    def get_run(self, run_id: str) -> RunRecord:
        """See :meth:`durable_core.Store.get_run`."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        return _run_from_row(row)

    def load_journal(self, run_id: str) -> list[JournalEntry]:
        """See :meth:`durable_core.Store.load_journal`."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_JOURNAL_COLUMNS} FROM journal WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
        return [_entry_from_row(r) for r in rows]

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
        if limit <= 0:
            return []
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("created_at < ?")
            params.append(until)
        if before is not None:
            clauses.append("seq < (SELECT seq FROM runs WHERE id = ?)")
            params.append(before)
        if function_id is not None:
            clauses.append("function_id = ?")
            params.append(function_id)
        if exclude_function_ids:
            clauses.append("function_id NOT IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(exclude_function_ids)))
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if event_id is not None:
            clauses.append("id IN (SELECT run_id FROM run_events WHERE event_id = ?)")
            params.append(event_id)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs {where}ORDER BY seq DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_run_from_row(r) for r in rows]

    def skipped_triggers(
        self,
        *,
        function_id: str | None = None,
        event_id: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[SkippedTrigger]:
        """See :meth:`durable_core.Store.skipped_triggers`."""
        if limit <= 0:
            return []
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("function_id", function_id), ("event_id", event_id),
                              ("run_id", run_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, function_id, key, run_id, event_id, at, reason FROM skipped_triggers "
                f"{where}ORDER BY seq DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [SkippedTrigger(*r) for r in rows]

    # ------------------------------------------------------------------ flow buffers

    @staticmethod
    def _buffer_state(conn: sqlite3.Connection, function_id: str, key: str
                      ) -> BufferState | None:
        row = conn.execute(f"SELECT {_BUFFER_COLUMNS} FROM flow_buffers "
                           "WHERE function_id = ? AND key = ?", (function_id, key)).fetchone()
        return None if row is None else BufferState(*row)

    @staticmethod
    def _put_buffer(conn: sqlite3.Connection, st: BufferState) -> None:
        conn.execute(
            f"INSERT OR REPLACE INTO flow_buffers ({_BUFFER_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (st.function_id, st.key, st.kind, st.first_at, st.ready_at, st.count, st.bytes,
             st.last_seq, st.period_ms, st.timeout_ms, st.max_size),
        )

    def buffer_events(self, adds: Sequence[BufferAdd], now: int) -> int:
        """See :meth:`durable_core.Store.buffer_events`: one immediate transaction."""
        if not adds:
            return 0
        applied = 0
        with self._write() as conn:
            for add in adds:
                seq = add.event.seq
                row = conn.execute("SELECT routed FROM events WHERE seq = ?", (seq,)).fetchone()
                if row is None or row[0]:
                    continue  # routed already (by a racing or earlier router)
                if conn.execute("SELECT 1 FROM flow_buffered WHERE function_id = ? AND key = ? "
                                "AND seq = ?", (add.function_id, add.key, seq)).fetchone():
                    continue
                state = buffer_added(self._buffer_state(conn, add.function_id, add.key), add)
                if state is None:
                    continue
                if add.kind == "debounce":
                    conn.execute("DELETE FROM flow_buffered WHERE function_id = ? AND key = ?",
                                 (add.function_id, add.key))
                conn.execute("INSERT INTO flow_buffered (function_id, key, seq) "
                             "VALUES (?, ?, ?)", (add.function_id, add.key, seq))
                self._put_buffer(conn, state)
                applied += 1
        return applied

    def ready_buffers(
        self, now: int, function_ids: Sequence[str], limit: int
    ) -> list[Buffer]:
        """See :meth:`durable_core.Store.ready_buffers`."""
        if limit <= 0 or not function_ids:
            return []
        out: list[Buffer] = []
        with self._read() as conn:
            ids = list(function_ids)[:_CHUNK]
            rows = conn.execute(
                f"SELECT {_BUFFER_COLUMNS} FROM flow_buffers WHERE ready_at <= ? "
                f"AND function_id IN ({_marks(len(ids))}) "
                "ORDER BY ready_at, function_id, key LIMIT ?", (now, *ids, limit),
            ).fetchall()
            for row in rows:
                st = BufferState(*row)
                events = conn.execute(
                    _BUFFERED_EVENTS + " AND e.routed = 1 ORDER BY b.seq LIMIT ?",
                    (st.function_id, st.key, st.max_size)).fetchall()
                if events:
                    out.append(Buffer(st, tuple(_event_from_row(e) for e in events)))
        return out

    def take_buffer(self, take: BufferTake, now: int) -> bool:
        """See :meth:`durable_core.Store.take_buffer`: one immediate transaction."""
        fn, key = take.function_id, take.key
        with self._write() as conn:
            state = self._buffer_state(conn, fn, key)
            if state is None:
                return False
            held: set[int] = set()
            for chunk in _chunks(list(take.seqs)):
                held.update(r[0] for r in conn.execute(
                    "SELECT seq FROM flow_buffered WHERE function_id = ? AND key = ? "
                    f"AND seq IN ({_marks(len(chunk))})", (fn, key, *chunk)))
            if not take_accepted(held, take):
                return False
            self._commit(conn, CommitBatch(now=now, runs=(take.run,)))
            conn.executemany("DELETE FROM flow_buffered WHERE function_id = ? AND key = ? "
                             "AND seq = ?", [(fn, key, seq) for seq in take.seqs])
            count, first, last = conn.execute(
                "SELECT COUNT(*), MIN(e.received_at), MAX(e.received_at) FROM flow_buffered "
                "AS b JOIN events AS e ON e.seq = b.seq WHERE b.function_id = ? AND b.key = ?",
                (fn, key)).fetchone()
            rest = buffer_rest(state, take, count, first or 0, last or 0)
            if rest is None:
                conn.execute("DELETE FROM flow_buffers WHERE function_id = ? AND key = ?",
                             (fn, key))
            else:
                self._put_buffer(conn, rest)
        self._notify()
        return True

    def next_buffer_ready(self, function_ids: Sequence[str]) -> int | None:
        """See :meth:`durable_core.Store.next_buffer_ready`."""
        if not function_ids:
            return None
        ids = list(function_ids)[:_CHUNK]
        with self._read() as conn:
            row = conn.execute(
                f"SELECT MIN(ready_at) FROM flow_buffers WHERE function_id IN "
                f"({_marks(len(ids))})", ids).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def buffer_states(self, function_id: str | None = None) -> list[BufferState]:
        """See :meth:`durable_core.Store.buffer_states`."""
        with self._read() as conn:
            if function_id is None:
                rows = conn.execute(f"SELECT {_BUFFER_COLUMNS} FROM flow_buffers "
                                    "ORDER BY function_id, key").fetchall()
            else:
                rows = conn.execute(f"SELECT {_BUFFER_COLUMNS} FROM flow_buffers "
                                    "WHERE function_id = ? ORDER BY key",
                                    (function_id,)).fetchall()
        return [BufferState(*r) for r in rows]

    # ------------------------------------------------------------------ concurrency

    def claim_limited_runs(
        self, owner: str, now: int, lease_ms: int, limit: int, function_ids: Sequence[str],
    ) -> list[Claim]:
        """See :meth:`durable_core.Store.claim_limited_runs`: counted, picked and leased in
        one write transaction (writers are serialized, across processes too)."""
        if limit <= 0 or not function_ids:
            return []
        params = {"now": now, "limit": limit + min(limit, 100),
                  "functions": json.dumps(list(function_ids))}
        with self._write() as conn:
            held = {k: n for k, n in conn.execute(_HELD_SLOTS_SQL, {"now": now})}
            candidates = [
                (run_id, tuple((k, lim) for k, lim in ((k1, l1), (k2, l2)) if k is not None))
                for run_id, k1, l1, k2, l2 in conn.execute(_LIMITED_SQL, params)
            ]
            ids = pick_limited(candidates, held, limit)
            return self._claim(conn, ids, owner, now, lease_ms)

    def held_slots(self, now: int) -> dict[str, int]:
        """See :meth:`durable_core.Store.held_slots`."""
        with self._read() as conn:
            return {k: n for k, n in conn.execute(_HELD_SLOTS_SQL, {"now": now})}
