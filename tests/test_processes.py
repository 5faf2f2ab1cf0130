"""``durable worker --processes N``: several worker processes on one store, looked after by
a supervisor that restarts the ones that die and stops them all gracefully."""

from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import stores
from durable_core import Client, Event, ValidationError
from durable_core.cli import main
from durable_core.drivers._processes import Supervisor, check_shareable

TESTS = pathlib.Path(__file__).resolve().parent


@pytest.mark.parametrize("url", ["memory://", "sqlite://", "sqlite:///:memory:"])
def test_a_store_inside_one_process_cannot_be_shared(url: str) -> None:
    with pytest.raises(ValidationError, match="cannot share") as info:
        check_shareable(url)
    assert info.value.field == "store"
    with pytest.raises(ValidationError):
        Supervisor("processes_app:app", url, processes=2)


def test_the_cli_says_why_it_cannot_start_processes_on_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["worker", "processes_app:app", "--processes", "2", "--store", "memory://"]) == 2
    err = capsys.readouterr().err
    assert "cannot share" in err and "sqlite:///" in err


def test_processes_must_be_positive() -> None:
    with pytest.raises(ValidationError) as info:
        Supervisor("processes_app:app", "sqlite:///x.db", processes=0)
    assert info.value.field == "processes"


class _Output:
    """The lines a process prints, read by a thread (so waiting for one has a timeout)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.pids: list[int] = []  # every worker process started
        assert proc.stdout is not None
        stdout = proc.stdout
        self.reader = threading.Thread(target=lambda: [self.lines.put(line) for line in stdout],
                                       daemon=True)
        self.reader.start()

    def started(self, count: int, timeout: float = 60) -> list[tuple[int, int]]:
        """The next ``count`` "process I started (pid P)" lines, as (I, P)."""
        found: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            self.seen.append(line)
            m = re.search(r"process (\d+) started \(pid (\d+)\)", line)
            if m:
                found.append((int(m[1]), int(m[2])))
                self.pids.append(int(m[2]))
        return found

    def rest(self) -> str:
        """Everything the process printed (call it once the process has ended)."""
        self.reader.join(timeout=30)  # until the end of its output
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


def _wait_completed(client: Client, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.list_runs(limit=count + 10)
        if len(runs) >= count and all(r.status == "completed" for r in runs):
            return
        time.sleep(0.05)
    raise AssertionError(f"runs did not complete: {[r.status for r in runs]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _supervisor(
    tmp_path: pathlib.Path, *, wait_for_pids: int = 0, new_session: bool = False
) -> Iterator[tuple[subprocess.Popen[str], _Output, Client]]:
    """``durable worker processes_app:app --processes 2`` on a SQLite file in ``tmp_path``;
    whatever is still running at the end is killed."""
    db = tmp_path / "procs.db"
    pids_file = tmp_path / "pids"
    pids_file.write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")]), DURABLE_PIDS_FILE=str(pids_file),
        DURABLE_WAIT_FOR_PIDS=str(wait_for_pids))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "worker", "processes_app:app", "--processes", "2", "--max-runs", "2",
         "--store", f"sqlite:///{db}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=new_session,
    )
    out = _Output(proc)
    client = Client(stores.open(f"sqlite:///{db}"))
    try:
        yield proc, out, client
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in out.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        client.store.close()


def _exits(text: str) -> dict[int, int]:
    """pid -> exit code, from the supervisor's "exited with code" lines."""
    return {int(m[1]): int(m[2])
            for m in re.finditer(r"\(pid (\d+)\) exited with code (-?\d+)", text)}


def test_processes_share_the_work_restart_after_a_crash_and_stop_gracefully(
    tmp_path: pathlib.Path,
) -> None:
    with _supervisor(tmp_path, wait_for_pids=2) as (proc, out, client):
        first = dict(out.started(2))
        assert sorted(first) == [0, 1]
        # Each process holds at most 2 runs, and a body waits until both processes have
        # run one: all 12 runs complete only if both processes took runs.
        client.send([Event("proc/go") for _ in range(12)])
        _wait_completed(client, 12)
        outputs = {client.get_run(r.id).output for r in client.list_runs(limit=20)}
        assert outputs == set(first.values())

        # A process that dies is started again, and the work goes on.
        os.kill(first[0], signal.SIGKILL)
        (index, pid), = out.started(1)
        assert index == 0 and pid not in first.values()
        client.send([Event("proc/go") for _ in range(6)])
        _wait_completed(client, 18)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        text = out.rest()
        assert "stopped" in text
        # The killed one was reported; the others stopped gracefully (exit code 0).
        assert _exits(text) == {first[0]: -signal.SIGKILL, pid: 0, first[1]: 0}
        assert not _alive(pid) and not _alive(first[1])


def test_ctrl_c_stops_every_process_gracefully(tmp_path: pathlib.Path) -> None:
    """A terminal's Ctrl-C signals its whole foreground process group; the worker
    processes leave that group, so only the supervisor gets it and asks each to stop once
    (a second signal would have cut their graceful stop short)."""
    with _supervisor(tmp_path, new_session=True) as (proc, out, client):
        pids = dict(out.started(2))
        client.send([Event("proc/go") for _ in range(4)])
        _wait_completed(client, 4)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
        assert proc.wait(timeout=60) == 0
        assert _exits(out.rest()) == {pid: 0 for pid in pids.values()}


def test_processes_stop_on_their_own_when_the_supervisor_dies(tmp_path: pathlib.Path) -> None:
    with _supervisor(tmp_path) as (proc, out, _client):
        pids = list(dict(out.started(2)).values())
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)


def test_a_stop_while_the_processes_start_is_still_graceful(tmp_path: pathlib.Path) -> None:
    """A Ctrl-C right after the processes were started, before they could take their
    signals (the interpreter is still starting, the app is being imported): each stops
    gracefully rather than being killed by the signal."""
    with _supervisor(tmp_path, new_session=True) as (proc, out, _client):
        pids = dict(out.started(2))
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert _exits(out.rest()) == {pid: 0 for pid in pids.values()}
