"""How TestEngine and the simulator run async step bodies: on the library the app names.

``App(async_bodies="trio")``: each body under its own ``trio.run`` with an autojumping
``MockClock`` (a ``trio.sleep`` in a body returns at once). ``"asyncio"`` (the default): on
one asyncio event loop per engine, kept between bodies (so what a body leaves bound to the
loop, a queue, a client, still works in the next one, as in a worker), in real time: a real
connection's timeouts must not fire early, and waits that should take virtual time belong in
``ctx.step.sleep``.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from durable_core.core._function import TRIO, App
from durable_core.drivers._bodies import wrong_library

if TYPE_CHECKING:
    import asyncio

__all__ = ["BodyRunner", "body_runner", "run_on_mock_clock"]

BodyRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
"""Runs a zero-argument async function to completion and returns its value (the
``run_async`` of :func:`durable_core.protocol.run_step_body`)."""


def body_runner(app: App) -> BodyRunner:
    """The ``run_async`` for ``app``'s async step bodies (see the module)."""
    library = app.async_bodies
    if library == TRIO:
        run: BodyRunner = run_on_mock_clock
    else:
        run = _AsyncioLoop()

    def run_body(afn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return run(afn)
        except Exception as exc:
            error = wrong_library(exc, library, app.id, None)
            if error is exc:
                raise
            raise error from exc

    return run_body


def run_on_mock_clock(afn: Callable[[], Awaitable[Any]]) -> Any:
    """Run an async step body under ``trio.run`` with an autojumping MockClock."""
    import trio
    import trio.testing

    return trio.run(afn, clock=trio.testing.MockClock(autojump_threshold=0))


class _AsyncioLoop:
    """One asyncio event loop that runs bodies to completion, one at a time; closed when
    this object is collected."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, afn: Callable[[], Awaitable[Any]]) -> Any:
        import asyncio

        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.new_event_loop()
            weakref.finalize(self, loop.close)

        async def main() -> Any:
            return await afn()

        if not _inside_event_loop():
            return loop.run_until_complete(main())
        # Called from async code (a TestEngine inside an asyncio or trio test): this thread
        # already runs a loop, so run the body's loop on another thread, in this context.
        context = contextvars.copy_context()
        box: list[Any] = []

        def target() -> None:
            try:
                box.append((True, context.run(loop.run_until_complete, main())))
            except BaseException as exc:
                box.append((False, exc))

        thread = threading.Thread(target=target, name="durable-test-body")
        thread.start()
        thread.join()
        ok, value = box[0]
        if not ok:
            raise value
        return value


def _inside_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        import sniffio

        return sniffio.thread_local.name is not None
    return True
