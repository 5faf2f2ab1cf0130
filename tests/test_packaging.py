"""An embeddable core: importing it, its client and the memory store pulls in no driver or
database library (each import runs in a fresh interpreter), and the package metadata keeps
PostgreSQL support in an extra."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

HEAVY = ["trio", "psycopg", "psycopg_pool", "sqlite_utils", "sqlite3", "opentelemetry"]


@pytest.mark.parametrize(
    "statement",
    [
        "import durable_core",
        "from durable_core import Client",
        "from durable_core import App, Event, Context, RunMachine, Engine",
        "from stores import MemoryStore",
        "import stores",
    ],
)
def test_import_loads_no_driver_or_database_library(statement: str) -> None:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    loaded = {m.split(".")[0] for m in json.loads(out)}
    assert loaded & set(HEAVY) == set()


def test_the_sql_stores_load_their_libraries_only_when_asked_for() -> None:
    code = ("import stores, sys\nstores.SQLiteStore\nprint('sqlite_utils' in sys.modules, "
            "'psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["True", "False"]


def test_postgres_support_is_an_extra() -> None:
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    deps = " ".join(meta["project"]["dependencies"])
    assert "psycopg" not in deps
    extras = meta["project"]["optional-dependencies"]
    assert any(d.startswith("psycopg") for d in extras["postgres"])
    assert "durable-core[postgres]" in extras["dev"]  # the README's commands install it
