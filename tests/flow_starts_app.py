"""The app of the multi-worker start-limit tests (tests/test_flow_starts_workers.py): a
throttled function, a singleton that skips and one that cancels, all keyed by
``event.data.k``."""

from __future__ import annotations

from typing import Any

from durable_core import App, Context, Singleton, Throttle, on_event

app = App("flow-starts")

THROTTLE = Throttle(5, "10s", burst=2, key="event.data.k")


async def _body(ctx: Context) -> Any:
    await ctx.step.run("first", lambda: None)  # its journal time: when the run started
    await ctx.step.sleep("work", "3s")  # active while it sleeps
    return ctx.event.data["i"]


async def _one_step(ctx: Context) -> Any:
    return await ctx.step.run("first", lambda: ctx.event.data["i"])


app.function(id="thr", trigger=on_event("go"), throttle=THROTTLE)(_one_step)
app.function(id="one", trigger=on_event("go"),
             singleton=Singleton(key="event.data.k", mode="skip"))(_body)
app.function(id="swap", trigger=on_event("go"),
             singleton=Singleton(key="event.data.k", mode="cancel"))(_body)
