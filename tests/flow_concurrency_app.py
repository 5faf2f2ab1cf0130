"""The app of tests/test_flow_concurrency_workers.py: runs limited to LIMIT step bodies at
once per key; each body notes its start and end (CLOCK_MONOTONIC, system-wide, so the notes
of several processes compare) in the file named by FLOW_LOG, one append per line."""

from __future__ import annotations

import os
import time
from typing import Any

import trio

from durable_core import App, Concurrency, on_event

LIMIT = 2
app = App("flow-workers", async_bodies="trio")


def note(key: str, run_id: str, what: str) -> None:
    line = f"{key} {run_id} {what} {time.monotonic_ns()}\n".encode()
    fd = os.open(os.environ["FLOW_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one write of a short line to an O_APPEND file: never interleaved
    finally:
        os.close(fd)


async def body(key: str, run_id: str) -> None:
    note(key, run_id, "start")
    await trio.sleep(0.002)  # long enough for bodies of other runs to overlap, if allowed
    note(key, run_id, "end")


@app.function(id="limited", trigger=on_event("work"),
              concurrency=Concurrency(LIMIT, key="event.data.k"))
async def limited(ctx: Any) -> None:
    key = ctx.event.data["k"]
    await ctx.step.run("a", body, key, ctx.run_id)
    await ctx.step.sleep("nap", "10ms")  # holds no slot meanwhile; needs one again after
    await ctx.step.run("b", body, key, ctx.run_id)
    await ctx.step.run("c", body, key, ctx.run_id)
