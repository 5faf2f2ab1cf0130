"""The app of the multi-worker lifecycle tests (tests/test_lifecycle_workers.py): a function
with an idempotency key, one that fails with a failure handler, and a listener of every
``durable/function.finished`` event."""

from __future__ import annotations

from typing import Any

from durable_core import App, Context, NonRetriableError, on_event

app = App("lifecycle")


@app.function(id="checkout", trigger=on_event("cart/checkout"), idempotency="event.data.cart")
async def checkout(ctx: Context) -> Any:
    return await ctx.step.run("charge", lambda: ctx.event.data["cart"])


async def refund(ctx: Context) -> str:
    """The failure handler of ``pay``."""
    return await ctx.step.run("refund", lambda: str(ctx.event.data["run_id"]))


@app.function(id="pay", trigger=on_event("pay"), retries=0, on_failure=refund)
async def pay(ctx: Context) -> None:
    await ctx.step.run("try", lambda: None)
    raise NonRetriableError("declined")


@app.function(id="audit", trigger=on_event("durable/function.finished"))
async def audit(ctx: Context) -> str:
    return str(ctx.event.data["run_id"])
