"""The PostgreSQL store (many workers on many hosts).

Needs the ``postgres`` extra: ``pip install 'durable-core[postgres]'``.
"""

from __future__ import annotations

try:
    import psycopg as _psycopg  # noqa: F401
    import psycopg_pool as _psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the packaging test
    from durable_core.base._errors import StoreError

    raise StoreError(
        "the PostgreSQL store needs psycopg and psycopg-pool: "
        "pip install 'durable-core[postgres]'"
    ) from exc

from stores.postgres._store import PostgresStore

__all__ = ["PostgresStore"]
