"""Stores: persistence behind one contract (:class:`durable_core.Store`).

``MemoryStore`` is the reference implementation. ``stores.open(url)`` picks a store by URL.
"""

from __future__ import annotations

from durable_core._store_api import (
    Claim,
    CommitBatch,
    NewRun,
    RunRecord,
    RunWrite,
    Store,
    StoredEvent,
    WaitRecord,
)

from ._memory import MemoryStore
from ._postgres import PostgresStore
from ._sqlite import SQLiteStore

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
        return SQLiteStore.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore.from_url(url)
    from durable_core._errors import ValidationError

    raise ValidationError(
        f"store url {url!r}: unsupported scheme; supported: memory://, sqlite:///path.db, "
        "postgresql://user@host/db",
        field="store",
    )
