"""The app the command-line tests (tests/test_cli_commands.py) and docs/operating.md run."""

from __future__ import annotations

from typing import Any

from durable_core import App, Context, NonRetriableError, on_event

app = App("shop")


@app.function(id="charge", trigger=on_event("shop/order", if_="event.data.amount > 0"))
async def charge(ctx: Context) -> dict[str, Any]:
    amount = ctx.event.data["amount"]
    receipt = await ctx.step.run("charge-card", lambda: f"charged {amount}")
    note = await ctx.step.run("long-note", lambda: "x" * 500)
    return {"receipt": receipt, "note_length": len(note)}


def _decline() -> None:
    raise NonRetriableError("the card was declined")


@app.function(id="decline", trigger=on_event("shop/decline"), retries=0)
async def decline(ctx: Context) -> None:
    await ctx.step.run("charge-card", _decline)


@app.function(id="ship", trigger=on_event("shop/ship"))
async def ship(ctx: Context) -> str:
    await ctx.step.run("pack", lambda: "packed")
    picked = await ctx.step.wait_for_event("picked-up", event="shop/picked", timeout="1d",
                                           if_="event.data.order == async.data.order")
    return "shipped" if picked is not None else "lost"


@app.function(id="nap", trigger=on_event("shop/nap"))
async def nap(ctx: Context) -> str:
    await ctx.step.sleep("nap", "1d")
    return "rested"
