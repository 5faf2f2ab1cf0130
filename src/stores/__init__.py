"""Stores: persistence behind one contract (:class:`durable_core.Store`).

``MemoryStore`` is the reference implementation. ``stores.open(url)`` picks a store by URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

from durable_core.store import (
    Claim,
    CommitBatch,
    NewRun,
    RunRecord,
    RunWrite,
    Store,
    StoredEvent,
    WaitRecord,
)
from stores._memory import MemoryStore

if _TYPE_CHECKING:
    from stores.postgres import PostgresStore
    from stores.sqlite import SQLiteStore

__all__ = [
    "Claim",
    "CommitBatch",
    "MemoryStore",
    "NewRun",
    "PostgresStore",
    "RunRecord",
    "RunWrite",
    "SQLiteStore",
    "Store",
    "StoredEvent",
    "WaitRecord",
    "open",
]


def open(url: str) -> Store:
    """Open a store by URL: ``memory://``, ``sqlite:///path.db`` (see
    :meth:`SQLiteStore.from_url`), ``postgresql://user@host:5432/db?schema=name`` (or
    ``postgres://``; see :meth:`PostgresStore.from_url`)."""
    if url in ("memory://", "memory:"):
        return MemoryStore()
    if url.startswith("sqlite:"):
        from stores.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from stores.postgres import PostgresStore

        return PostgresStore.from_url(url)
    from durable_core.base._errors import ValidationError
    from durable_core.base._redact import redact_url

    raise ValidationError(
        f"store url {redact_url(url)!r}: unsupported scheme; supported: memory://, "
        "sqlite:///path.db, postgresql://user@host/db",
        field="store",
    )


def __getattr__(name: str) -> object:
    # The SQL backends are imported on first use, so that ``import stores`` (and the memory
    # store) needs neither sqlite_utils nor psycopg.
    if name == "SQLiteStore":
        from stores.sqlite import SQLiteStore

        return SQLiteStore
    if name == "PostgresStore":
        from stores.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'stores' has no attribute {name!r}")
