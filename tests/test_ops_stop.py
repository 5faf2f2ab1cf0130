"""Stopping ``durable worker`` (one process and ``--processes``): a graceful stop hands its
runs back at once, and a second signal ends it at once, with one line."""

from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import stores
from durable_core import Client, Event, Worker
from durable_core.drivers._worker import _SIGNAL_REPEAT_S

pytestmark = pytest.mark.slow

TESTS = pathlib.Path(__file__).resolve().parent


class _Worker:
    """``durable worker ops_app:app`` in a new session, with its output read by a thread."""

    def __init__(self, tmp: pathlib.Path, url: str, processes: int) -> None:
        self.started = tmp / "started"
        self.release = tmp / "release"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(TESTS), os.environ.get("PYTHONPATH", "")]),
            DURABLE_STARTED_FILE=str(self.started), DURABLE_RELEASE_FILE=str(self.release))
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from durable_core.cli import main; sys.exit(main())",
             "worker", "ops_app:app", "--processes", str(processes), "--poll-interval",
             "0.05", "--store", url],
            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        self.reader = threading.Thread(
            target=lambda: [self.lines.put(line) for line in stdout], daemon=True)
        self.reader.start()

    def wait_for_line(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Until ``count`` lines containing ``text`` were printed."""
        deadline = time.monotonic() + timeout
        while count:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            self.seen.append(line)
            count -= text in line

    def wait_for_body(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.started.exists():
            assert time.monotonic() < deadline, "no step body started"
            assert self.proc.poll() is None, "the worker exited"
            time.sleep(0.02)

    def interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does

    def output(self) -> str:
        self.reader.join(timeout=30)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(params=[1, 2], ids=["one-process", "processes"])
def processes(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@contextlib.contextmanager
def _worker(tmp_path: pathlib.Path, processes: int) -> Iterator[tuple[_Worker, Client]]:
    url = f"sqlite:///{tmp_path / 'stop.db'}"
    store = stores.open(url)  # created (and migrated) before the worker opens it
    w = _Worker(tmp_path, url, processes)
    try:
        yield w, Client(store)
    finally:
        w.kill()
        store.close()


def test_a_graceful_stop_hands_its_runs_back_at_once(
    tmp_path: pathlib.Path, processes: int
) -> None:
    with _worker(tmp_path, processes) as (w, client):
        client.send(Event("ops/go"))
        w.wait_for_body()
        w.interrupt()
        # Every process was asked to stop (each says so) before the body may finish.
        w.wait_for_line("stopping once the step bodies in flight finish", processes)
        w.release.write_text("")  # the body in flight finishes; the worker then stops
        assert w.proc.wait(timeout=60) == 0
        assert "Traceback" not in w.output()

        # The run was handed back: another worker claims it now, not when the lease would
        # have run out, and finishes it from where the first one stopped.
        store = client.store
        (record,) = store.list_runs()
        assert record.status == "running" and record.lease_owner is None
        app = __import__("ops_app").app
        other = Worker(app, store, poll_interval=0.05)
        now = other.clock()
        claims = store.claim_runs("someone-else", now, 30_000, 10)
        assert [c.run.id for c in claims] == [record.id]
        assert [e.step_id for e in claims[0].journal if e.op == "completed"] == ["first"]


def test_a_second_ctrl_c_stops_at_once_with_one_line(
    tmp_path: pathlib.Path, processes: int
) -> None:
    with _worker(tmp_path, processes) as (w, client):
        client.send(Event("ops/go"))
        w.wait_for_body()
        w.interrupt()
        # The body never finishes (until the test's 60 s): only the second Ctrl-C ends it.
        w.wait_for_line("stopping once the step bodies in flight finish", processes)
        # Past the window in which a repeated signal counts as the same stop request (see
        # _SIGNAL_REPEAT_S): this one is a person pressing Ctrl-C again.
        time.sleep(_SIGNAL_REPEAT_S * 2)
        w.interrupt()
        code = w.proc.wait(timeout=30)
        text = w.output()
        assert "Traceback" not in text and "ExceptionGroup" not in text
        now_lines = [line for line in text.splitlines() if "stopping now" in line]
        assert len(now_lines) == 1, text
        if processes == 1:
            assert code == 128 + signal.SIGINT
        else:
            assert code == 0 and "stopped" in text
