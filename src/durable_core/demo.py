"""The demo app behind ``durable demo``: an order workflow that shows every basic feature.

A card charge that fails once and is retried (``RetryAfterError``), a durable sleep, a wait
for a shipping event, and an event sent on completion. Durations are seconds so the demo
finishes quickly; in production they would be hours or days.
"""

from __future__ import annotations

from typing import Any

from durable_core import App, Context, Event, RetryAfterError, on_event

__all__ = ["app", "charge_card", "process_order"]

app = App("demo")
"""The demo's app (one function, ``process-order``)."""

_charge_attempts: dict[int, int] = {}


def charge_card(order_id: int, amount: float) -> dict[str, Any]:
    """A flaky payment call: the first attempt for each order times out."""
    n = _charge_attempts[order_id] = _charge_attempts.get(order_id, 0) + 1
    if n == 1:
        raise RetryAfterError("card network timeout", after=1)
    return {"charge_id": f"ch_{order_id}", "amount": amount}


@app.function(
    id="process-order",
    trigger=on_event("order/created", if_="event.data.amount > 100"),
    retries=3,
)
async def process_order(ctx: Context) -> dict[str, Any]:
    """Charge, cool off, wait for shipping, announce completion."""
    order = ctx.event.data
    charge = await ctx.step.run("charge-card", charge_card, order["orderId"], order["amount"])
    await ctx.step.sleep("cool-off", "2s")
    shipped = await ctx.step.wait_for_event(
        "wait-for-shipment",
        event="order/shipped",
        timeout="30s",
        if_="async.data.orderId == event.data.orderId",
    )
    carrier = shipped.data["carrier"] if shipped is not None else None
    await ctx.step.send_event(
        "announce", Event("order/completed", {"orderId": order["orderId"], "carrier": carrier})
    )
    return {"orderId": order["orderId"], "charge": charge["charge_id"], "carrier": carrier}
