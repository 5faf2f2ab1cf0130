"""The app the crash and multi-worker tests run in separate processes.

Every step body appends a line ``run_id step_id token pid`` to the side-effect log (fsynced) and
returns the token, so a test can tell which execution's result was recorded and whether a
step ran again after its memo was committed.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from durable_core import App, Context, on_event

app = App("crash")


def effect(run_id: str, step_id: str, value: int) -> dict[str, Any]:
    """A side effect that leaves a trace, then returns a value derived from the input."""
    token = uuid.uuid4().hex
    with open(os.environ["DURABLE_EFFECT_LOG"], "a", encoding="utf-8") as f:
        f.write(f"{run_id} {step_id} {token} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return {"token": token, "value": value * 2}


@app.function(id="crashy", trigger=on_event("crash/go"), max_steps=200)
async def crashy(ctx: Context) -> dict[str, int]:
    """``steps`` steps with short sleeps between some of them."""
    total = 0
    for i in range(ctx.event.data["steps"]):
        result = await ctx.step.run(f"s{i}", effect, ctx.run_id, f"s{i}", i)
        total += result["value"]
        if i % 4 == 3:
            await ctx.step.sleep(f"nap{i}", "20ms")
    return {"total": total}


def expected_total(steps: int) -> int:
    """The output of a crash-free run."""
    return sum(2 * i for i in range(steps))
