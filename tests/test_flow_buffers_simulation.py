"""Debounce and batching under the simulator's fault plans: crashes before and after
commits (buffer adds and takes included), failed and unknown-outcome writes, duplicated
events, results, timers and signals (a buffer add or take delivered twice), clock jumps.
No batched event is lost or repeated, each debounced run has the last event of its key's
quiet period (the simulator's invariants), and the outcomes equal the fault-free ones."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from durable_core import App, Batch, Context, Debounce, Event, on_event
from durable_core.testing import InvariantViolation
from durable_core.testing._simulation import FaultPlan, Simulation, fault_plans

EXAMPLES = {"ci": 40, "thorough": 1000}[os.environ.get("DURABLE_SIM_PROFILE", "ci")]


def build_app() -> App:
    app = App("buffers")

    @app.function(id="deb", trigger=on_event("d"),
                  debounce=Debounce("10s", key="event.data.k", timeout="1m"))
    async def deb(ctx: Context) -> list[str]:
        return [str(e.id) for e in ctx.events]

    @app.function(id="bat", trigger=on_event("b"),
                  batch_events=Batch(3, "5s", key="event.data.k"))
    async def bat(ctx: Context) -> list[str]:
        return await ctx.step.run("ids", lambda: [str(e.id) for e in ctx.events])

    return app


APP = build_app()


def wave(w: int) -> list[Event]:
    out = []
    for i, k in enumerate("aabab"):
        out += [Event("d", {"k": k}, id=f"d{w}{i}"), Event("b", {"k": k}, id=f"b{w}{i}")]
    return out


def simulate(plan: FaultPlan | None) -> Simulation:
    sim = Simulation(APP, faults=plan)
    sim.send(wave(0))
    sim.run("2m")
    sim.send(wave(1))
    sim.run("1d")
    return sim


def test_the_fault_free_execution() -> None:
    sim = simulate(None)
    sim.check()
    assert sim.outcomes() == sorted([
        ("deb", "completed", ["d03"]), ("deb", "completed", ["d04"]),
        ("deb", "completed", ["d13"]), ("deb", "completed", ["d14"]),
        ("bat", "completed", ["b00", "b01", "b03"]), ("bat", "completed", ["b02", "b04"]),
        ("bat", "completed", ["b10", "b11", "b13"]), ("bat", "completed", ["b12", "b14"]),
    ], key=lambda t: __import__("json").dumps(t, sort_keys=True))


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(plan=fault_plans(40, 10))
def test_buffers_survive_random_faults(plan: FaultPlan) -> None:
    expected = simulate(None).outcomes()
    sim = simulate(plan)
    sim.check(expected)


@pytest.mark.parametrize("at", range(0, 24, 2))
def test_no_event_lost_or_repeated_under_crashes_and_unknown_outcomes(at: int) -> None:
    expected = simulate(None).outcomes()
    plan = FaultPlan(seed=at, crash_before_commit=frozenset({at}),
                     crash_after_commit=frozenset({at + 1}), unknown_writes=frozenset({at + 2}),
                     duplicate_results=frozenset({0, 1}), duplicate_events=True,
                     duplicate_timers=True, duplicate_signals=True)
    sim = simulate(plan)
    sim.check(expected)
    assert sim.stats["crashes"] + sim.stats["unknown_writes"] >= 1


def test_the_invariant_catches_a_repeated_event() -> None:
    """The invariant is live: an event handed off in two batches fails the check."""
    sim = simulate(None)
    from durable_core.store import CommitBatch, NewRun

    run = next(r for r in sim.inner.list_runs() if r.function_id == "bat")
    sim.inner.commit(CommitBatch(now=sim.now, runs=(NewRun(
        "r_again", "bat", run.events[:1], run.event_ids[:1], sim.now),)))
    with pytest.raises(InvariantViolation, match="is in two runs"):
        sim.check()


def test_the_invariant_catches_a_lost_event() -> None:
    """The invariant is live: a batched event dropped from its buffer fails the check."""
    sim = Simulation(APP)
    sim.send(Event("b", {"k": "z"}, id="lonely"))
    sim._tick()  # routed into its batch, which is not full
    store: Any = sim.inner
    assert [s.key for s in store.buffer_states("bat")] == ["z"]
    store._buffers.clear()  # a store that loses a buffered event
    store._buffered.clear()
    sim.run("1d")
    with pytest.raises(InvariantViolation, match=r"lonely .* was lost"):
        sim.check()
