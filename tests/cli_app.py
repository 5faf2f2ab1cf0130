"""The app the command-line tests load by its ``cli_app:app`` path."""

from __future__ import annotations

from durable_core import App, Context, NonRetriableError, on_cron, on_event

app = App("cli")


@app.function(id="double", trigger=on_event("cli/double", if_="event.data.n > 0"), retries=2)
async def double(ctx: Context) -> int:
    n = ctx.event.data["n"]
    return await ctx.step.run("double", lambda: n * 2)


def _refuse() -> None:
    raise NonRetriableError("no, thanks")


@app.function(id="refuse", trigger=on_event("cli/refuse"), retries=0)
async def refuse(ctx: Context) -> None:
    await ctx.step.run("refuse", _refuse)


@app.function(id="nap", trigger=[on_event("cli/nap"), on_cron("TZ=Europe/Paris 0 9 * * 1")])
async def nap(ctx: Context) -> str:
    await ctx.step.sleep("nap", "1d")
    return "rested"
