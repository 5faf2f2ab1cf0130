"""``concurrency`` under the simulator's fault plans (issue 13): crashes before and after
commits, unknown commit outcomes, hung bodies, duplicated results, events, timers and
signals, clock jumps. As each step body starts no slot key is held by more runs than its
limit (the store's count), once every run has ended no slot is held (no leak: a crashed
worker's slots come back when its leases expire), and the outcomes equal the fault-free
execution's."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings

from durable_core import App, Concurrency, Context, Event, Priority, on_event
from durable_core.testing import InvariantViolation
from durable_core.testing._simulation import FaultPlan, Simulation, fault_plans

EXAMPLES = {"ci": 60, "thorough": 1000}[os.environ.get("DURABLE_SIM_PROFILE", "ci")]


def build_app() -> App:
    app = App("limited")

    @app.function(id="per-key", trigger=on_event("go"), retries=2,
                  concurrency=[Concurrency(3), Concurrency(1, key="event.data.k")],
                  priority=Priority(run="event.data.p"))
    async def per_key(ctx: Context) -> str:
        a = await ctx.step.run("a", lambda: "a")
        await ctx.step.sleep("nap", "1m")
        b = await ctx.step.run("b", lambda: "b")
        return a + b + ctx.event.data["k"]

    @app.function(id="shared", trigger=on_event("go"),
                  concurrency=Concurrency(1, key="event.data.k", scope="app"))
    async def shared(ctx: Context) -> str:
        return await ctx.step.run("x", lambda: "x")

    return app


APP = build_app()
EVENTS = [Event("go", {"k": k, "p": p}) for k, p in
          (("a", 0), ("a", 60), ("b", 0), ("b", -60), ("c", 600))]


def simulate(plan: FaultPlan | None) -> Simulation:
    sim = Simulation(APP, faults=plan)
    sim.send(EVENTS)
    sim.run("30d")
    return sim


EXPECTED = sorted([("per-key", "completed", f"ab{k}") for k in "aabbc"]
                  + [("shared", "completed", "x")] * 5,
                  key=lambda t: __import__("json").dumps(t, sort_keys=True))


def test_the_fault_free_execution() -> None:
    sim = simulate(None)
    sim.check()
    assert sim.outcomes() == EXPECTED


def test_a_crashed_engine_holds_its_slots_until_its_leases_expire() -> None:
    # Crash right after the first claims were committed: the dead engine's runs keep their
    # slots (the limit holds meanwhile) until their leases expire, then finish.
    sim = simulate(FaultPlan(crash_after_commit=frozenset({1, 3}), hung_steps=frozenset({2})))
    sim.check(EXPECTED)
    assert sim.stats["crashes"] >= 2


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(plan=fault_plans(60, 40))
def test_limits_hold_and_slots_come_back_under_faults(plan: FaultPlan) -> None:
    sim = simulate(plan)
    sim.check(EXPECTED)


def test_the_simulator_sees_a_limit_exceeded() -> None:
    """The invariant is live: a store that ignores slots is caught."""
    from stores import MemoryStore

    class Careless(MemoryStore):
        def claim_limited_runs(self, owner: str, now: int, lease_ms: int, limit: int,
                               function_ids: Any) -> Any:
            return self.claim_runs(owner, now, lease_ms, limit, function_ids)

    sim = Simulation(APP, store=Careless())
    sim.send(EVENTS)
    try:
        sim.run("30d")
    except InvariantViolation as exc:
        assert "concurrency limits exceeded" in str(exc)
    else:
        raise AssertionError("a store ignoring concurrency limits went unnoticed")
