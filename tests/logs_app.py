"""The app of the ``durable worker --log-format json`` test (loaded as ``logs_app:app``)."""

from __future__ import annotations

from durable_core import App, Context, NonRetriableError, on_event

app = App("logs")


@app.function(id="greet", trigger=on_event("logs/greet"))
async def greet(ctx: Context) -> str:
    name = ctx.event.data["name"]
    ctx.logger.info("greeting %s", name)
    return await ctx.step.run("greet", lambda: f"hello {name}")


def _refuse() -> None:
    raise NonRetriableError("no, thanks")


@app.function(id="refuse", trigger=on_event("logs/refuse"), retries=0)
async def refuse(ctx: Context) -> None:
    await ctx.step.run("refuse", _refuse)
