"""Where a trio worker's async step bodies run when they are written for asyncio.

``App(async_bodies="asyncio")`` (the default) says the app's ``async def`` step bodies use
asyncio. The trio :class:`~durable_core.Worker` cannot await them on its own loop (asyncio's
``get_running_loop()`` finds none there), so it hands each one to an asyncio event loop:
one it owns, on its own thread (started at the first such body, stopped with the worker), or
the loop of the asyncio application that hosts the worker (:class:`AsyncioWorker` passes
its own). The trio side waits without a thread: the body's task wakes the trio task when it
ends. Sync bodies and ``async_bodies="trio"`` bodies never come here.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from durable_core.base._errors import NonRetriableError, ValidationError
from durable_core.core._context import current_attempt
from durable_core.core._function import TRIO
from durable_core.engine import _observe

if TYPE_CHECKING:
    import asyncio

__all__ = ["AsyncioBodies", "check_asyncio_loop", "wrong_library"]


def check_asyncio_loop(owner: str, loop: Any) -> None:
    """``loop`` is None or an asyncio event loop; else a ValidationError naming the option."""
    if loop is None:
        return
    import asyncio

    if not isinstance(loop, asyncio.AbstractEventLoop):
        raise ValidationError(
            f"{owner}(asyncio_loop=...) must be an asyncio event loop (e.g. "
            f"asyncio.get_running_loop()) or None, got {type(loop).__name__}",
            field="asyncio_loop")


async def _body(call: Callable[[], Any], attempt: tuple[Any, ...] | None) -> Any:
    # In a fresh context of its own (nothing of the trio task's leaks in), so only the
    # attempt (what ``ctx.attempt`` and the usage checks read) is set here.
    current_attempt.set(attempt)
    value = call()
    if inspect.isawaitable(value):
        value = await value
    return value


class AsyncioBodies:
    """Runs coroutine step bodies on an asyncio event loop, for a trio worker.

    ``loop=None``: a loop of its own on a daemon thread, started at the first body and
    stopped by :meth:`close`. With a loop, bodies run on it (it must keep running until the
    worker has stopped; :meth:`close` leaves it alone).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._given = loop
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        import asyncio

        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=_serve, args=(loop, ready),
                                          name="durable-asyncio-bodies", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    async def run(self, call: Callable[[], Any]) -> Any:
        """Run ``call()`` (and await what it returns) in a task on the asyncio loop, with
        the calling task's step attempt (``ctx.attempt``) set; return its value or raise its
        exception.

        A cancelled trio wait cancels the asyncio task. A task the loop cancelled (the loop
        shutting down) is a ``RuntimeError``: an ordinary step failure, retried."""
        import asyncio

        loop = self._ensure_loop()
        attempt = current_attempt.get()
        tracing = _observe.tracing
        if tracing is not None:  # the step's span stays the current one in the body
            with contextlib.suppress(Exception):
                call = tracing.bind(call)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[asyncio.Task[Any]] = []
        cancelled = False

        def wake(_: object) -> None:  # on the loop's thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        def start() -> None:  # on the loop's thread
            if cancelled:
                wake(None)
                return
            task = loop.create_task(_body(call, attempt), context=contextvars.Context())
            box.append(task)
            task.add_done_callback(wake)

        def cancel() -> None:  # on the loop's thread
            if box:
                box[0].cancel()

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError as exc:  # the loop is closed
            raise RuntimeError(
                f"the asyncio event loop for async step bodies is not running ({exc}); the "
                "step is retried") from None
        try:
            await done.wait()
        except BaseException:
            cancelled = True
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(cancel)
            raise
        if not box:
            raise RuntimeError("the step body was not started")
        try:
            return box[0].result()
        except asyncio.CancelledError:
            raise RuntimeError(
                "the step body's asyncio task was cancelled (its event loop is shutting down, "
                "or the body cancelled itself); the step is retried") from None

    def close(self) -> None:
        """Stop the loop this object started (blocking until its thread ends): tasks still
        pending are cancelled, async generators and the default executor shut down."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if thread is None or loop is None:
                return
            self._loop, self._thread = self._given, None
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join()


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    import asyncio

    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


# What a body written for one library raises on the other's loop (the messages are the
# libraries' own: trio's current_task()/current_time() outside trio, a trio trap yielded to
# an asyncio task; asyncio's get_running_loop()/get_event_loop() outside asyncio, and what
# trio says of a bare yield, as ``asyncio.sleep(0)`` makes).
_TRIO_ON_ASYNCIO = ("must be called from async context", "Task got bad yield: <class 'trio.")
_ASYNCIO_ON_TRIO = ("no running event loop", "There is no current event loop",
                    "trio.run received unrecognized yield message")


def wrong_library(exc: Exception, library: str, app_id: str, step_id: str | None) -> Exception:
    """``exc`` as raised by an async body that ran on ``library``; if it is what a body
    written for the other library raises there, a :class:`NonRetriableError` (retrying
    cannot help) that names the setting to change, else ``exc`` unchanged."""
    if type(exc) not in (RuntimeError, TypeError):
        return exc
    text = str(exc)
    hints, other = (_ASYNCIO_ON_TRIO, "asyncio") if library == TRIO else (
        _TRIO_ON_ASYNCIO, "trio")
    if not text.startswith(hints):
        return exc
    where = "" if step_id is None else f"step {step_id!r}: "
    error = NonRetriableError(
        f"{where}this async step body looks written for {other} (it raised "
        f"{type(exc).__name__}: {text}), but app {app_id!r} runs async step bodies on {library}"
        + (" (the default)" if library != TRIO else "")
        + f"; declare App({app_id!r}, async_bodies={other!r}), or make the body a sync "
        "function (it runs in a thread)")
    error.__cause__ = exc
    return error
