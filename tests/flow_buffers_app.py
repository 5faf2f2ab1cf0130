"""The app of the multi-worker flow-buffer tests (tests/test_flow_buffers_workers.py): a
debounced function and a batched one, both keyed, each returning the ids of its events."""

from __future__ import annotations

from typing import Any

from durable_core import App, Batch, Context, Debounce, on_event

app = App("flow-buffers")

PERIOD_S = 10
BATCH_SIZE = 7


@app.function(id="deb", trigger=on_event("deb"),
              debounce=Debounce(f"{PERIOD_S}s", key="event.data.k"))
async def deb(ctx: Context) -> Any:
    return [e.id for e in ctx.events]


@app.function(id="bat", trigger=on_event("bat"),
              batch_events=Batch(BATCH_SIZE, "5s", key="event.data.k"))
async def bat(ctx: Context) -> Any:
    return await ctx.step.run("ids", lambda: [e.id for e in ctx.events])
