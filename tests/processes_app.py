"""The app the ``durable worker --processes`` tests run.

Its one step appends the worker process's pid to the file named by ``DURABLE_PIDS_FILE``,
then, while ``DURABLE_WAIT_FOR_PIDS`` is set, waits until that many different processes have
written there (at most 30 s). With few runs in flight per process, runs that one process
holds can only finish once another process has taken some: a test can show that every
process works without depending on timing.
"""

from __future__ import annotations

import os
import time

from durable_core import App, Context, on_event

app = App("processes")


def _pids() -> set[str]:
    with open(os.environ["DURABLE_PIDS_FILE"], encoding="utf-8") as f:
        return set(f.read().split())


def note_pid() -> int:
    """Record this process, then wait for the others (see the module docstring)."""
    with open(os.environ["DURABLE_PIDS_FILE"], "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    wanted = int(os.environ.get("DURABLE_WAIT_FOR_PIDS", "0"))
    deadline = time.monotonic() + 30
    while len(_pids()) < wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


@app.function(id="note", trigger=on_event("proc/go"))
async def note(ctx: Context) -> int:
    return await ctx.step.run("pid", note_pid)
