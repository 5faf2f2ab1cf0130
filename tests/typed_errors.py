"""Code that ``mypy --strict`` must reject: tests/test_typing.py checks that each line marked
``# error: CODE`` gets exactly that error and that no other line gets one. Never imported.
"""

from __future__ import annotations

from durable_core import App, Context, Event
from typed_example import label, quote, reserve, tax

app = App("typed-errors")


@app.function(id="bad")
async def bad(ctx: Context) -> None:
    """Each statement misuses one primitive."""
    await ctx.step.run("a", quote, 42)  # error: call-overload
    await ctx.step.run("b", reserve, "sku")  # error: call-overload
    await ctx.step.run("c", reserve, "sku", quantity="2")  # error: arg-type
    # A str result bound to an int: mypy solves T from the annotation first, so no overload
    # of run fits (the message lists label's type, Callable[[str], str]).
    n: int = await ctx.step.run("d", label, "sku")  # error: call-overload
    s: str = await ctx.step.invoke("e", function=tax)  # error: arg-type
    e: Event = await ctx.step.wait_for_event("f", event="x", timeout="1h")  # error: assignment
    ids: str = await ctx.step.send_event("g", Event("x"))  # error: assignment
    pair: tuple[int, int] = await ctx.gather(  # error: assignment
        ctx.step.run("h", label, "sku"), ctx.step.run("i", len, "sku")
    )
    await ctx.gather(reserve("sku", quantity=1))  # error: call-overload
    slept: int = await ctx.step.sleep("j", "1h")  # error: func-returns-value, assignment
    del n, s, e, ids, pair, slept
