"""A typed durable function using every primitive; ``mypy --strict`` checks it
(tests/test_typing.py), and the test runs it too, so the types it states are what the engine
returns.

Each result is bound to an annotated name (``x: int = await ...``): mypy reports an error if
the inferred type does not fit, so no ``reveal_type`` is needed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from durable_core import App, Context, Event, Function, Step, on_event

app = App("typed")


@dataclasses.dataclass
class Quote:
    """A price quote: a value that is not plain JSON, rebuilt from the return annotation."""

    sku: str
    cents: int


def quote(sku: str, quantity: int = 1) -> Quote:
    """A sync step body."""
    return Quote(sku, 250 * quantity)


async def reserve(sku: str, *, quantity: int) -> bool:
    """An async step body with a keyword-only parameter."""
    return quantity > 0


def label(sku: str) -> str:
    """A sync step body returning a str."""
    return f"SKU-{sku}"


@app.function(id="typed-tax")
async def tax(ctx: Context) -> int:
    """The invoked child: its output type (int) carries to the parent's ``invoke``."""
    cents: int = ctx.event.data["cents"]
    return cents // 5


@app.function(id="typed-order", trigger=on_event("typed/order"))
async def order(ctx: Context) -> dict[str, Any]:
    """A realistic order flow: every ``ctx.step`` primitive, and ``ctx.gather``."""
    sku: str = ctx.event.data["sku"]

    q: Quote = await ctx.step.run("quote", quote, sku, 2)
    ok: bool = await ctx.step.run("reserve", reserve, sku, quantity=2)
    name: str = await ctx.step.run("label", lambda: f"order of {sku}")

    # Two steps in parallel keep their own types.
    both: tuple[str, Quote] = await ctx.gather(
        ctx.step.run("label-1", label, sku), ctx.step.run("quote-1", quote, sku)
    )
    tag, single = both
    # A list of steps of one type gathers into a homogeneous tuple.
    steps: list[Step[str]] = [ctx.step.run(f"label-{i}", label, s) for i, s in enumerate("ab")]
    labels: tuple[str, ...] = await ctx.gather(steps)

    # Sleeps return None (mypy rejects using their value: see typed_errors.py).
    await ctx.step.sleep("cool-off", "1h")
    await ctx.step.sleep_until(
        "next-morning", ctx.now().replace(hour=9) + dt.timedelta(days=1)
    )
    paid: Event | None = await ctx.step.wait_for_event(
        "payment", event="typed/paid", timeout="1d", if_="event.data.sku == async.data.sku"
    )
    amount: int = 0 if paid is None else paid.data["cents"]

    child: Function[int] = tax
    tax_cents: int = await ctx.step.invoke("tax", function=child, data={"cents": q.cents})
    by_id: Any = await ctx.step.invoke("tax-by-id", function="typed-tax", data={"cents": 10})
    sent: list[str] = await ctx.step.send_event("shipped", Event("typed/shipped", {"sku": sku}))

    return {
        "quote": q.cents, "reserved": ok, "name": name, "tag": tag, "single": single.cents,
        "labels": list(labels), "paid": amount,
        "tax": tax_cents, "tax_by_id": by_id, "sent": len(sent),
        "random": ctx.random() < 1.0, "uuid": len(str(ctx.uuid4())), "attempt": ctx.attempt,
    }
