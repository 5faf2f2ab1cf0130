"""Secrets and files: owner-only SQLite files, no password in any message, a SQLite file
lost under a running worker stops it, and the working directory cannot shadow the library."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest
import trio

import stores
from durable_core import (
    App,
    Client,
    Context,
    DurableError,
    Event,
    StoreError,
    StoreLostError,
    ValidationError,
    Worker,
    on_event,
)
from durable_core.base._redact import redact, redact_url
from durable_core.cli import main
from durable_core.drivers._processes import check_shareable, run_worker
from stores.postgres import PostgresStore
from stores.sqlite import SQLiteStore

SECRET = "S3cretPW"


# --------------------------------------------------------------------------- permissions


@pytest.fixture(params=[0o022, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_sqlite_files_are_created_owner_only(tmp_path: pathlib.Path, umask: int) -> None:
    path = tmp_path / "private.db"
    store = SQLiteStore(path)
    try:
        Client(store).send(Event("x", {"card": "4111"}))
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["private.db", "private.db-shm", "private.db-wake",
                         "private.db-wal", "private.db-writer.lock"]
        for name in files:
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode), oct(umask))
    finally:
        store.close()


def test_a_stricter_umask_is_kept(tmp_path: pathlib.Path) -> None:
    previous = os.umask(0o177)  # would take even the owner's execute bit: nothing to take
    try:
        SQLiteStore(tmp_path / "a.db").close()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.db").stat().st_mode) == 0o600


def test_an_existing_file_keeps_its_permissions(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()
    path.chmod(0o640)  # its owner chose to share it with a group
    SQLiteStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:S3cretPW@db:5432/prod", "postgresql://app:***@db:5432/prod"),
    ("postgres://app:S3cretPW@[::1:5432/x", "postgres://app:***@[::1:5432/x"),
    ("postgresql://app@db/prod?password=S3cretPW&sslmode=require",
     "postgresql://app@db/prod?password=***&sslmode=require"),
    ("host=db user=app password=S3cretPW dbname=prod",
     "host=db user=app password=*** dbname=prod"),
    ("host=db password='S3cret PW' dbname=prod", "host=db password=*** dbname=prod"),
    ("postgresql://app@db:5432/prod", "postgresql://app@db:5432/prod"),
    ("sqlite:///var/lib/app@2/x.db", "sqlite:///var/lib/app@2/x.db"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_removes_a_urls_password_from_any_text() -> None:
    url = "postgresql://app:S3cretPW@db/prod"
    assert redact(f"could not connect with S3cretPW to {url}", url) == (
        "could not connect with *** to postgresql://app:***@db/prod")


@pytest.mark.postgres
def test_a_failing_connection_does_not_show_the_password(pg_url: str) -> None:
    # The right server, a database that does not exist: libpq's message, then ours.
    base = pg_url.rsplit("/", 1)[0].replace("postgres@", f"postgres:{SECRET}@")
    url = f"{base}/no_such_database_{SECRET}"
    with pytest.raises(StoreError) as info:
        stores.open(url)
    assert SECRET not in str(info.value)
    # Malformed URLs: refused before connecting, or by the driver, whose message may
    # quote them.
    for bad in (f"postgresql://u:{SECRET}@127.0.0.1:notaport/x",
                f"postgresql://u:{SECRET}@[::1:5432/x",
                f"host=127.0.0.1 port=notaport password={SECRET}"):
        with pytest.raises(DurableError) as caught:
            stores.open(bad) if bad.startswith("postgresql") else PostgresStore(bad)
        assert SECRET not in str(caught.value), bad


@pytest.mark.parametrize("url", [
    f"mysql://root:{SECRET}@db/app",
    f"sqlite://root:{SECRET}@host/x.db",
    f"sqlite:///x.db?password={SECRET}",
])
def test_bad_store_urls_do_not_show_the_password(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        stores.open(url)
    assert SECRET not in str(info.value)
    assert "***" in str(info.value)


def test_the_cli_error_and_the_banner_do_not_show_the_password(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["send", "x", "--store", f"mysql://root:{SECRET}@db/app"]) == 2
    captured = capsys.readouterr()
    assert "durable: error:" in captured.err and SECRET not in captured.err + captured.out
    with pytest.raises(ValidationError) as info:
        check_shareable(f"memory://u:{SECRET}@x")
    assert SECRET not in str(info.value)

    # The worker's banner, on a store that works (SQLite) under a URL with a password-like
    # query part the banner must not print: the banner goes through the same helper.
    app = App("banner")
    printed: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    real_open = stores.open
    monkeypatch.setattr(stores, "open", lambda url: real_open(f"sqlite:///{tmp_path}/b.db"))

    async def stop_at_once(self: Worker, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(Worker, "run", stop_at_once)
    run_worker(app, f"postgresql://app:{SECRET}@db/prod", max_runs=1, poll_interval=0.1,
               announce=True)
    assert printed and "postgresql://app:***@db/prod" in printed[0]
    assert SECRET not in printed[0]


# --------------------------------------------------------------------------- lost file


def _delete(path: pathlib.Path) -> None:
    path.unlink()


def _replace(path: pathlib.Path) -> None:
    other = path.with_name("other.db")
    SQLiteStore(other).close()
    os.replace(other, path)


def _truncate(path: pathlib.Path) -> None:
    with path.open("r+b") as f:
        f.truncate(0)


@pytest.mark.parametrize(("damage", "why"), [
    (_delete, "was deleted"), (_replace, "was replaced"), (_truncate, "was truncated"),
])
def test_a_worker_stops_when_its_sqlite_file_is_lost(
    tmp_path: pathlib.Path, damage: Callable[[pathlib.Path], None], why: str
) -> None:
    path = tmp_path / "work.db"
    app = App("lost")
    done: list[int] = []

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> int:
        n: int = await ctx.step.run("one", lambda: 1)
        done.append(n)
        return n

    store = SQLiteStore(path)
    worker = Worker(app, store, poll_interval=0.05)

    lost: list[StoreLostError] = []

    async def damage_when_done() -> None:
        await worker.send([Event("go", {}) for _ in range(5)])
        with trio.fail_after(60):
            while len(done) < 5:
                await trio.sleep(0.02)
        damage(path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(damage_when_done)
            with trio.fail_after(60):  # the worker notices (within about a second) and ends
                try:
                    await worker.run()
                except StoreLostError as exc:
                    lost.append(exc)

    try:
        trio.run(main)
    finally:
        store.close()
    assert len(lost) == 1 and why in str(lost[0]) and "work.db" in str(lost[0])


# --------------------------------------------------------------------------- sys.path


def test_the_working_directory_cannot_shadow_the_library(tmp_path: pathlib.Path) -> None:
    (tmp_path / "stores.py").write_text("raise SystemExit('SHADOWED: ./stores.py was imported')\n")
    (tmp_path / "myapp.py").write_text(textwrap.dedent("""
        from durable_core import App
        app = App("mine")
    """))
    script = textwrap.dedent("""
        import sys
        from durable_core.drivers._loading import load_app
        app = load_app("myapp:app")
        import stores
        print(app.id, stores.__file__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    app_id, stores_file = out.stdout.split()
    assert app_id == "mine"
    assert pathlib.Path(stores_file).resolve() == pathlib.Path(stores.__file__).resolve()
