"""Throttle, rate limit and singleton under the simulator's fault plans: crashes before and
after commits, unknown commit outcomes, duplicated results, events, timers and signals,
clock jumps. Whatever happens: no throttled run starts before its GCRA slot, every created
rate-limited run was within its limit, no two runs of a singleton key are active at once
(their lifetimes, from first step to end, never overlap), every run ends, and no slot
leaks (afterwards a newcomer of every key starts)."""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from durable_core import App, Context, Event, RateLimit, Singleton, Throttle, on_event
from durable_core.store import TERMINAL_STATUSES, gcra_rate_limit, gcra_throttle
from durable_core.testing._simulation import FaultPlan, Simulation, fault_plans

EXAMPLES = {"ci": 40, "thorough": 1000}[os.environ.get("DURABLE_SIM_PROFILE", "ci")]
THROTTLE = Throttle(1, "1m", key="event.data.k")
RATE = RateLimit(2, "1h", key="event.data.k")


def build_app() -> App:
    app = App("flow-sim")

    async def body(ctx: Context) -> Any:
        await ctx.step.run("first", lambda: ctx.event.data["i"])
        await ctx.step.sleep("work", "5m")
        return await ctx.step.run("last", lambda: ctx.event.data["i"])

    app.function(id="thr", trigger=on_event("go"), throttle=THROTTLE)(body)
    app.function(id="rl", trigger=on_event("go"), rate_limit=RATE)(body)
    app.function(id="skip", trigger=on_event("go"),
                 singleton=Singleton(key="event.data.k", mode="skip"))(body)
    app.function(id="swap", trigger=on_event("go"),
                 singleton=Singleton(key="event.data.k", mode="cancel"))(body)
    return app


APP = build_app()


def simulate(plan: FaultPlan | None) -> Simulation:
    sim = Simulation(APP, faults=plan)
    sim.send([Event("go", {"i": i, "k": "ab"[i % 2]}, id=f"go-{i}") for i in range(4)])
    sim.run("2m")
    sim.send([Event("go", {"i": i, "k": "ab"[i % 2]}, id=f"go-{i}") for i in range(4, 8)])
    sim.run("1d")
    return sim


def _key(run: Any) -> str:
    return str(json.loads(run.events[0])["data"]["k"])


def check_limits(sim: Simulation) -> None:
    store = sim.inner
    by_fn: dict[str, list[Any]] = defaultdict(list)
    for r in reversed(store.list_runs(limit=10_000)):  # creation order
        by_fn[r.function_id].append(r)
    assert all(r.status in TERMINAL_STATUSES for rs in by_fn.values() for r in rs)
    assert len(by_fn["thr"]) == 8  # lossless
    tat: dict[str, int | None] = defaultdict(lambda: None)
    for r in by_fn["thr"]:
        slot, tat[_key(r)] = gcra_throttle(tat[_key(r)], r.created_at, 60_000, 1, 1)
        journal = store.load_journal(r.id)
        assert journal and journal[0].ts >= slot, (r.id, slot)
    rate: dict[str, int | None] = defaultdict(lambda: None)
    for r in by_fn["rl"]:
        rate[_key(r)] = gcra_rate_limit(rate[_key(r)], r.created_at, 3_600_000, 2)
        assert rate[_key(r)] is not None, f"run {r.id} was over its rate limit"
    for fn in ("skip", "swap"):
        lives: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for r in by_fn[fn]:
            journal = store.load_journal(r.id)
            if journal:  # it started
                assert r.ended_at is not None
                lives[_key(r)].append((journal[0].ts, r.ended_at))
        for k, spans in lives.items():
            spans.sort()
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert start >= end, (fn, k, spans)


def check_no_leak(sim: Simulation) -> None:
    before = len(sim.inner.list_runs(limit=10_000))
    sim.send([Event("go", {"i": 100 + i, "k": k}, id=f"late-{k}") for i, k in enumerate("ab")])
    sim.run("1d")
    runs = sim.inner.list_runs(limit=10_000)
    late = [r for r in runs[: len(runs) - before] if r.function_id != "rl"]  # (its hour)
    assert sorted(r.function_id for r in late) == sorted(["thr", "skip", "swap"] * 2)
    assert all(r.status == "completed" for r in late)


def test_the_fault_free_execution() -> None:
    sim = simulate(None)
    sim.check()
    check_limits(sim)
    skips = sim.inner.skipped_triggers(limit=1000)
    assert {s.reason for s in skips} == {"rate_limit", "singleton"}
    assert any(r.status == "cancelled" for r in sim.inner.list_runs(function_id="swap"))
    check_no_leak(sim)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(plan=fault_plans(60, 20))
def test_start_limits_survive_random_faults(plan: FaultPlan) -> None:
    sim = simulate(plan)
    sim.check()
    check_limits(sim)
    check_no_leak(sim)


@pytest.mark.parametrize("at", range(0, 30, 3))
def test_no_slot_leaks_under_crashes_and_unknown_outcomes(at: int) -> None:
    plan = FaultPlan(seed=at, crash_before_commit=frozenset({at}),
                     crash_after_commit=frozenset({at + 1}), unknown_writes=frozenset({at + 2}),
                     duplicate_results=frozenset({0, 1, 2, 3}), duplicate_events=True,
                     duplicate_timers=True, duplicate_signals=True)
    sim = simulate(plan)
    sim.check()
    check_limits(sim)
    check_no_leak(sim)
    assert sim.stats["crashes"] + sim.stats["unknown_writes"] >= 1
