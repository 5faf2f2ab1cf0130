"""A private PostgreSQL cluster for tests that stop and restart their server.

The shared server (``DURABLE_PG_URL``) must never be restarted: other tests use it. A test
that needs a server to take down starts its own with ``initdb`` and ``pg_ctl`` in a
temporary directory, on a free port, as the ``postgres`` OS user when run as root (the
server refuses to run as root), and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def _bindir() -> pathlib.Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    env = os.environ.get("DURABLE_PG_BINDIR")
    if env:
        return pathlib.Path(env)
    if found:
        return pathlib.Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return pathlib.Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """One throwaway cluster: :meth:`start`, :meth:`stop`, :meth:`restart`, :meth:`remove`."""

    def __init__(self) -> None:
        bindir = _bindir()
        reason = None
        if bindir is None or not (bindir / "pg_ctl").exists():
            reason = "initdb/pg_ctl not found (set DURABLE_PG_BINDIR)"
        elif os.geteuid() == 0 and shutil.which("runuser") is None:
            reason = "running as root without runuser to drop to the postgres user"
        if reason is not None:
            message = f"!!! SKIPPING PRIVATE-POSTGRES TEST !!! {reason}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI=true, so this test must run: {message}", pytrace=False)
            pytest.skip(message)
        assert bindir is not None
        self.bindir = bindir
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="durable-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(
            [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"]
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\n"
            )

    def _as_postgres(self, argv: list[str]) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)

    def _ctl(self, *args: str) -> None:
        self._as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w",
                           "-t", "60", "-l", str(self.root / "log"), *args])

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections are terminated; ``immediate``: a crash)."""
        self._ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again."""
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        """Stop the server if it runs, and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self._ctl("stop", "-m", "immediate")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (self.data / "postmaster.pid").exists():
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
