"""The SQLite store (embedded, the default)."""

from stores.sqlite._store import SQLiteStore

__all__ = ["SQLiteStore"]
