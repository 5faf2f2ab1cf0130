"""Several worker processes on one store: how a worker uses more than one core.

CPython runs one process's Python code on one core at a time (the GIL), and a worker is
mostly Python code: driving orchestration code, building memos, group commits. On a
machine with several cores, ``durable worker --processes N`` starts N worker processes on
one SQLite file or Postgres database and looks after them. They share the work through the
store the same way workers on different machines do (claims, leases, fencing), so nothing
here is needed for correctness: it is process management.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing import resource_tracker
from typing import Any

from durable_core.base._errors import DurableError, ValidationError
from durable_core.base._redact import redact, redact_url
from durable_core.base._safelog import safe_logger
from durable_core.core._function import App
from durable_core.drivers._loading import import_stores

log = safe_logger("durable_core.worker")

#: How long a stopping supervisor waits for each process to finish its step bodies and
#: release its runs before killing it (its runs are then claimed again when their leases
#: run out).
STOP_GRACE_SECONDS = 30.0
_RESTART_DELAY_MAX = 30.0
_HEALTHY_AFTER = 10.0  # a process that lived this long resets the restart delay
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def check_shareable(store_url: str) -> None:
    """Raise :class:`ValidationError` if worker processes could not share ``store_url``.

    The store's registered scheme decides (``stores.register(..., shareable=...)``):
    ``memory://`` and ``sqlite://`` (SQLite in memory) live inside one process, so each
    process would get its own empty store."""
    stores = import_stores()
    if not stores.shareable(store_url):
        raise ValidationError(
            f"store {redact_url(store_url)!r} lives inside one process, so worker processes "
            "cannot share it; use a file (sqlite:///path/to/file.db) or PostgreSQL, or one process",
            field="store",
        )


def run_worker(app: App, store_url: str, *, max_runs: int, poll_interval: float,
               supervisor: int | None = None, stop_asked: Sequence[int] = (),
               announce: bool = False) -> None:
    """Run one worker (as ``durable worker`` does, ``tune_gc`` on) until SIGINT/SIGTERM.

    With ``supervisor`` (its pid), the process is one of a :class:`Supervisor`'s (see
    :func:`_child_main`): it stops gracefully, within a second, once ``stop_asked`` holds a
    signal that came before the worker could take its signals itself, or once the
    supervisor is gone."""
    import trio

    from durable_core.drivers._worker import Worker

    store = import_stores().open(store_url)

    async def main(worker: Worker) -> None:
        async def watch_supervisor() -> None:
            while os.getppid() == supervisor and not stop_asked:
                await trio.sleep(1.0)
            if stop_asked:
                log.warning("received %s while starting: stopping once the step bodies in "
                            "flight finish", signal.Signals(stop_asked[0]).name)
            else:
                log.warning("the supervisor (pid %d) is gone: stopping", supervisor)
            worker.stop()

        async with trio.open_nursery() as nursery:
            if supervisor is not None:
                nursery.start_soon(watch_supervisor)
            await worker.run(handle_signals=True)
            nursery.cancel_scope.cancel()

    try:
        worker = Worker(app, store, max_runs=max_runs, poll_interval=poll_interval,
                        tune_gc=True)
        if announce:
            print(f"durable worker {worker.owner}: app {app.id!r} on "
                  f"{redact_url(store_url)} (Ctrl-C to stop)", flush=True)  # before log lines
        try:
            trio.run(main, worker)
        except BaseExceptionGroup as group:
            # One error out of the nursery (the store was lost): raise it as itself, so the
            # CLI prints one line rather than a group's traceback.
            only = _only_error(group)
            if only is None:
                raise
            raise only from None
    finally:
        store.close()


def _only_error(group: BaseExceptionGroup[BaseException]) -> DurableError | None:
    """The group's one exception, if it holds exactly one and it is a DurableError."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], DurableError):
        return leaves[0]
    return None


def _child_main(app_spec: str, store_url: str, max_runs: int, poll_interval: float,
                supervisor: int, log_level: str | None = None,
                log_format: str = "text") -> None:
    """One worker process of a :class:`Supervisor`.

    It leaves the terminal's process group, so a Ctrl-C reaches only the supervisor, which
    then asks each process to stop once (a second signal would cut the graceful stop short).
    A SIGTERM or SIGINT that comes while the process is still starting (the interpreter,
    importing the app, opening the store) is held, then noted, and honoured once the worker
    runs instead of killing the process; if the supervisor dies, the process notices and
    stops on its own."""
    os.setpgid(0, 0)
    stop_asked: list[int] = []
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: stop_asked.append(signum))
    # The supervisor started this process with these signals blocked (see Supervisor._start):
    # one that came meanwhile was held, and is delivered to the handler above now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    from durable_core.drivers._loading import load_app

    if log_level is not None:
        from durable_core.drivers._logs import configure_logging

        configure_logging(log_level, log_format)
    try:
        run_worker(load_app(app_spec), store_url, max_runs=max_runs,
                   poll_interval=poll_interval, supervisor=supervisor, stop_asked=stop_asked)
    except DurableError as exc:
        # One line, as the single-process CLI prints it; the supervisor reports the exit.
        print(f"durable worker (pid {os.getpid()}): error: {redact(str(exc), store_url)}",
              file=sys.stderr, flush=True)
        sys.exit(2)


class Supervisor:
    """Run ``processes`` worker processes for the app ``app_spec`` (``package.module:app``)
    on ``store_url`` until :meth:`stop` (or SIGINT/SIGTERM in :meth:`run`). Each runs a
    :class:`Worker` with ``max_runs``, ``poll_interval`` and ``tune_gc=True``.

    A process that exits while the supervisor is running (a crash, an out-of-memory kill)
    is started again after a delay that doubles from ``restart_delay`` up to 30 s while it
    keeps dying young. Its runs were fenced by their leases and go to the other processes
    (or to its replacement) once the leases run out. Stopping sends SIGTERM to every
    process: each finishes the step bodies in flight, commits them and releases its runs;
    one still running after ``STOP_GRACE_SECONDS`` is killed.
    """

    def __init__(self, app_spec: str, store_url: str, *, processes: int, max_runs: int = 1000,
                 poll_interval: float = 0.5, restart_delay: float = 1.0,
                 log_level: str | None = None, log_format: str = "text") -> None:
        if processes < 1:
            raise ValidationError(f"processes must be at least 1, got {processes}",
                                  field="processes")
        check_shareable(store_url)
        self.app_spec = app_spec
        self.store_url = store_url
        self.processes = processes
        self.max_runs = max_runs
        self.poll_interval = poll_interval
        self.restart_delay = restart_delay
        self.log_level = log_level  # each process logs so (configure_logging), if set
        self.log_format = log_format
        self._on_start: Callable[[int, int], None] | None = None
        self._on_exit: Callable[[int, int, int], None] | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = threading.Event()
        self._force = threading.Event()
        self._killed = False
        self._procs: list[Any] = [None] * processes
        self._started_at = [0.0] * processes
        self._delay = [restart_delay] * processes
        self._due = [0.0] * processes

    def stop(self) -> None:
        """Ask :meth:`run` to stop the processes and return (safe from any thread)."""
        self._stop.set()

    def run(self, *, handle_signals: bool = True,
            on_start: Callable[[int, int], None] | None = None,
            on_exit: Callable[[int, int, int], None] | None = None) -> None:
        """Start the processes and look after them until stopped. ``on_start(index, pid)``
        is called for every process started, restarts included, and ``on_exit(index, pid,
        exitcode)`` for every process that ended (0 after a graceful stop; a negative code
        is the signal that ended it). With ``handle_signals``, SIGINT or SIGTERM stops the
        processes gracefully, and a second one kills them at once."""
        self._on_start, self._on_exit = on_start, on_exit
        previous: dict[signal.Signals, Any] = {}
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            for i in range(self.processes):
                self._start(i)
            while not self._stop.wait(0.2):
                self._look_after()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop.is_set():
            self._force.set()  # a second Ctrl-C: do not wait for the graceful stop
        self._stop.set()

    def _start(self, i: int) -> None:
        proc = self._ctx.Process(
            target=_child_main,
            args=(self.app_spec, self.store_url, self.max_runs, self.poll_interval,
                  os.getpid(), self.log_level, self.log_format),
            name=f"durable-worker-{i}", daemon=False,
        )
        # Started with SIGINT and SIGTERM blocked (a signal mask survives fork and exec): a
        # stop asked for before the new process can handle it waits for _child_main. The
        # helper process multiprocessing starts with the first child unblocks them when it
        # starts, so it is started first.
        resource_tracker.ensure_running()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self._procs[i] = proc
        self._started_at[i] = time.monotonic()
        if self._on_start is not None and proc.pid is not None:
            self._on_start(i, proc.pid)

    def _look_after(self) -> None:
        now = time.monotonic()
        for i, proc in enumerate(self._procs):
            if proc is not None and proc.is_alive():
                continue
            if proc is not None:
                # Exited on its own: note it, and schedule a restart.
                proc.join()
                self._exited(i, proc)
                lived = now - self._started_at[i]
                if lived >= _HEALTHY_AFTER:
                    self._delay[i] = self.restart_delay
                log.warning("worker process %d (pid %s) exited with code %s after %.1fs; "
                            "starting it again in %.1fs", i, proc.pid, proc.exitcode, lived,
                            self._delay[i])
                self._due[i] = now + self._delay[i]
                self._delay[i] = min(self._delay[i] * 2, _RESTART_DELAY_MAX)
                self._procs[i] = None
            elif now >= self._due[i]:
                self._start(i)

    def _stop_all(self) -> None:
        alive = [(i, p) for i, p in enumerate(self._procs) if p is not None and p.is_alive()]
        for _, proc in alive:
            proc.terminate()  # SIGTERM, once: a graceful stop
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for i, proc in alive:
            while proc.is_alive() and time.monotonic() < deadline and not self._force.is_set():
                proc.join(0.1)
            if proc.is_alive() and self._force.is_set():
                self._kill_all(alive)
            elif proc.is_alive():
                log.warning("worker process pid %s did not stop within %.0fs; killing it",
                            proc.pid, STOP_GRACE_SECONDS)
                proc.kill()
            proc.join()
            self._exited(i, proc)

    def _kill_all(self, procs: Sequence[tuple[int, Any]]) -> None:
        """Asked to stop again while stopping (a second Ctrl-C): kill what still runs, with
        one line (as a crash would: their runs go to other workers when leases run out)."""
        alive = [p for _, p in procs if p.is_alive()]
        if not alive or self._killed:
            return
        self._killed = True
        log.warning("durable worker: asked again: stopping now, killing %d worker "
                    "process(es) without waiting for their step bodies in flight (other "
                    "workers take their runs when the leases run out)", len(alive))
        for proc in alive:
            proc.kill()

    def _exited(self, i: int, proc: Any) -> None:
        if self._on_exit is not None:
            self._on_exit(i, proc.pid, proc.exitcode)
