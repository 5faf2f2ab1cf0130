"""Cancel-on events, timeouts and cancelled children under the simulator's fault plans:
crashes before and after commits, unknown commit outcomes, duplicated results, events,
timers and signals, clock jumps. A run is cancelled at most once (it ends once), the
outcomes equal the fault-free execution's, and the simulator's lifecycle invariants hold
(a cancel-on cancel names a stored event the function listens for; no run ends past its
finish timeout or is cancelled before a timeout expired)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from durable_core import App, CancelOn, Context, Event, Timeouts, on_event
from durable_core.testing import InvariantViolation
from durable_core.testing._simulation import FaultPlan, Simulation, fault_plans

EXAMPLES = {"ci": 60, "thorough": 1000}[os.environ.get("DURABLE_SIM_PROFILE", "ci")]


def build_app() -> App:
    app = App("life")

    @app.function(id="slow")
    async def slow(ctx: Context) -> str:
        await ctx.step.sleep("settle", "1m")
        if ctx.event.data["stop"]:
            # The parent's cancel-on event, sent while the parent waits on this child.
            await ctx.step.send_event("stop", Event("life/stop", {"key": ctx.event.data["key"]}))
        await ctx.step.sleep("long", "2h")
        return "slow"

    @app.function(id="guarded", trigger=on_event("life/go"),
                  cancel_on=[CancelOn("life/stop", if_="async.data.key == event.data.key")],
                  timeouts=Timeouts(start="1d", finish="20d"))
    async def guarded(ctx: Context) -> str:
        await ctx.step.run("a", lambda: "a")
        await ctx.step.invoke("child", function="slow", data=dict(ctx.event.data),
                              timeout="1d")
        await ctx.step.sleep("nap", "1h")
        return await ctx.step.run("b", lambda: "done")

    @app.function(id="timed", trigger=on_event("life/go"), timeouts=Timeouts(finish="3h"))
    async def timed(ctx: Context) -> str:
        await ctx.step.sleep("one", "2h")
        await ctx.step.run("x", lambda: "x")
        await ctx.step.sleep("two", "2h")
        return "late"

    @app.function(id="ontime", trigger=on_event("life/go"), timeouts=Timeouts(finish="20d"))
    async def ontime(ctx: Context) -> str:
        await ctx.step.sleep("one", "1h")
        return "ok"

    return app


APP = build_app()
EVENTS = [Event("life/go", {"key": "a", "stop": True}),
          Event("life/go", {"key": "b", "stop": False})]


def simulate(plan: FaultPlan | None) -> Simulation:
    sim = Simulation(APP, faults=plan)
    sim.send(EVENTS)
    sim.run("30d")
    return sim


def test_the_fault_free_execution() -> None:
    sim = simulate(None)
    sim.check()
    assert sim.outcomes() == sorted([
        ("guarded", "cancelled", "Cancelled"), ("guarded", "completed", "done"),
        ("ontime", "completed", "ok"), ("ontime", "completed", "ok"),
        ("slow", "cancelled", "Cancelled"), ("slow", "completed", "slow"),
        ("timed", "cancelled", "Cancelled"), ("timed", "cancelled", "Cancelled"),
    ], key=lambda t: __import__("json").dumps(t, sort_keys=True))


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(plan=fault_plans(60, 20))
def test_cancel_on_and_timeouts_survive_random_faults(plan: FaultPlan) -> None:
    expected = simulate(None).outcomes()
    sim = simulate(plan)
    sim.check(expected)


@pytest.mark.parametrize("at", range(0, 18, 2))  # the fault-free run commits 18 times
def test_cancelled_once_under_crashes_and_unknown_outcomes(at: int) -> None:
    expected = simulate(None).outcomes()
    plan = FaultPlan(seed=at, crash_before_commit=frozenset({at}),
                     crash_after_commit=frozenset({at + 1}), unknown_writes=frozenset({at + 2}),
                     duplicate_results=frozenset({0, 1, 2, 3}), duplicate_events=True,
                     duplicate_timers=True, duplicate_signals=True)
    sim = simulate(plan)
    sim.check(expected)
    assert sim.stats["crashes"] + sim.stats["unknown_writes"] >= 1


def test_the_lifecycle_invariants_catch_a_run_that_overran_its_finish_timeout() -> None:
    """The invariant is live: a run recorded as completed past its finish timeout fails."""
    sim = simulate(None)
    [rec] = [r for r in sim.inner.list_runs() if r.function_id == "ontime"][:1]
    app = App("life")

    @app.function(id="ontime", trigger=on_event("life/go"), timeouts=Timeouts(finish="1m"))
    async def ontime(ctx: Context) -> Any:
        return None

    for fid, fn in APP.functions.items():
        if fid != "ontime":
            app._functions[fid] = fn
    sim.app = app
    with pytest.raises(InvariantViolation, match="after its finish timeout"):
        sim.check()
    assert rec.status == "completed"
