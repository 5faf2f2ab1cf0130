"""Stores: persistence behind one contract (:class:`durable_core.Store`).

``MemoryStore`` is the reference implementation. ``stores.open(url)`` picks a store by URL;
``stores.register(scheme, factory)`` adds a scheme (see :mod:`stores.registry`).
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
from stores.registry import open as _open
from stores.registry import register, shareable

if _TYPE_CHECKING:
    from stores.postgres import PostgresStore
    from stores.sqlite import SQLiteStore

_DURABLE_CORE_STORES = True  # durable_core.drivers._loading.import_stores checks it

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
    "register",
    "shareable",
]


def open(url: str) -> Store:
    """Open a store by URL: ``memory://``, ``sqlite:///path.db`` (see
    :meth:`SQLiteStore.from_url`), ``postgresql://user@host:5432/db?schema=name`` (or
    ``postgres://``; see :meth:`PostgresStore.from_url`), or a scheme added with
    :func:`register`."""
    return _open(url)


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
