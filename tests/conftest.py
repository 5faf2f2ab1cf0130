"""Shared fixtures. Only PostgreSQL fixtures live here: the server URL (skipping, or failing
on CI, when the server is down) and throwaway schemas that are dropped after each test."""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from durable_core.store import Store

PG_URL = os.environ.get("DURABLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL server the tests use (override with ``DURABLE_PG_URL``)."""

_START_HINT = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(trust auth, database `test`, user `postgres`), or point DURABLE_PG_URL at a server"
)

_reachable: dict[str, str | None] = {}


def _server_error(url: str) -> str | None:
    """None if the server answers, else why not (checked once per session)."""
    if url not in _reachable:
        try:
            with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
                conn.execute("SELECT 1")
            _reachable[url] = None
        except psycopg.Error as exc:
            _reachable[url] = f"{type(exc).__name__}: {str(exc).strip()}"
    return _reachable[url]


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The URL of a reachable PostgreSQL server. When it is unreachable the test is skipped
    with a loud reason, except on CI (``CI=true``) where that is a failure."""
    error = _server_error(PG_URL)
    if error is not None:
        message = f"PostgreSQL is unreachable at {PG_URL} ({error}); {_START_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true, so the PostgreSQL tests must run: {message}", pytrace=False)
        pytest.skip(f"!!! SKIPPING POSTGRES TESTS !!! {message}")
    return PG_URL


def drop_schema(url: str, schema: str) -> None:
    """Drop a schema and everything in it, if it exists."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


@pytest.fixture
def pg_schemas(pg_url: str) -> Iterator[Callable[[], str]]:
    """A factory of unique schema names; every schema it named is dropped afterwards."""
    names: list[str] = []

    def new() -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        names.append(name)
        return name

    yield new
    for name in names:
        drop_schema(pg_url, name)


@pytest.fixture
def pg_schema(pg_schemas: Callable[[], str]) -> str:
    """A unique schema name for one test (dropped afterwards)."""
    return pg_schemas()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Store]:
    """Each store in turn: memory, a SQLite file, a PostgreSQL schema (closed afterwards)."""
    from stores import MemoryStore
    from stores.postgres import PostgresStore
    from stores.sqlite import SQLiteStore

    store: Store
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "s.db")
    else:
        store = PostgresStore(request.getfixturevalue("pg_url"),
                              schema=request.getfixturevalue("pg_schema"), pool_max=2)
    yield store
    store.close()
