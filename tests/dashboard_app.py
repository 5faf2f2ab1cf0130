"""The app the dashboard tests (and the docs screenshot) load as ``dashboard_app:app``."""

from __future__ import annotations

from typing import Any

from durable_core import App, Context, on_event

app = App("shop")


def _charge(amount: float) -> dict[str, Any]:
    if amount > 500:
        raise ValueError(f"card declined: amount {amount} is over the limit <500>")
    return {"charge_id": "ch_1", "amount": amount}


@app.function(id="charge", trigger=on_event("shop/order", if_="event.data.amount > 0"),
              retries=1)
async def charge(ctx: Context) -> dict[str, Any]:
    order = ctx.event.data
    receipt = await ctx.step.run("reserve", lambda: {"reserved": order["id"]})
    paid = await ctx.step.run("charge-card", _charge, order["amount"])
    await ctx.step.sleep("cool-off", "2h")
    shipped = await ctx.step.wait_for_event("shipped", event="shop/shipped",
                                            if_="async.data.id == event.data.id",
                                            timeout="3d")
    return {"receipt": receipt, "paid": paid, "shipped": shipped is not None}


@app.function(id="greet", trigger=on_event("shop/greet"), retries=0)
async def greet(ctx: Context) -> str:
    name = await ctx.step.run("name", lambda: ctx.event.data.get("name", "world"))
    return f"hello {name}"


def populate(store: Any) -> dict[str, str]:
    """Fill ``store`` through a TestEngine starting at the wall clock: a failed run (its
    card declined, twice), a run sleeping in its cool-off, a run waiting for its shipping
    event and a completed one. Returns their ids by name, and the engine as ``engine``."""
    import datetime as dt

    from durable_core import Event
    from durable_core.testing import TestEngine

    te = TestEngine(app, start=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3),
                    store=store)
    [waiting] = te.send(Event("shop/order", {"id": 1, "amount": 40.0})).runs
    te.advance("2h")
    [failed] = te.send(Event("shop/order", {"id": 2, "amount": 900.0})).runs
    te.advance("1m")
    [greeted] = te.send(Event("shop/greet", {"name": "Ada <b>"})).runs
    [sleeping] = te.send(Event("shop/order", {"id": 3, "amount": 25.5})).runs
    assert (failed.status, sleeping.status, waiting.status, greeted.status) == (
        "failed", "sleeping", "waiting", "completed"), te.runs
    populate.engine = te  # type: ignore[attr-defined]
    return {"failed": failed.id, "sleeping": sleeping.id, "waiting": waiting.id,
            "completed": greeted.id}
