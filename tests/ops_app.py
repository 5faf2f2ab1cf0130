"""The app the operations tests run in ``durable worker`` processes.

Its step writes the file named by ``DURABLE_STARTED_FILE`` when it starts, then waits (at
most 60 s) until the file named by ``DURABLE_RELEASE_FILE`` exists: a test can stop the
worker while a step body is surely in flight, then let the body finish.
"""

from __future__ import annotations

import os
import pathlib
import time

from durable_core import App, Context, on_event

app = App("ops")


def held(n: int) -> int:
    """Note the start, then wait for the test's go-ahead."""
    pathlib.Path(os.environ["DURABLE_STARTED_FILE"]).write_text(str(os.getpid()))
    release = pathlib.Path(os.environ["DURABLE_RELEASE_FILE"])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


@app.function(id="held", trigger=on_event("ops/go"))
async def held_run(ctx: Context) -> int:
    first = await ctx.step.run("first", held, 1)
    second = await ctx.step.run("second", held, 2)
    return first + second
