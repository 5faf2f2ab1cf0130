"""What the per-step hot path's shortcuts must keep: the same keys, memos and reports as the
general path (see docs/design.md, "Step machines").

The run machine recycles a ``run`` step whose memo the code took as the next new run step,
gives repeated ids their keys without a collision check until the code uses an id with
":", and reports "running, no deadline" by identity; the serde walks a value for its depth
only when its JSON has more brackets than the limit. Each shortcut is checked here against
what the general path does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable_core import App, Context, Event, NonRetriableError, StepError, on_event
from durable_core.base._errors import SerializationError
from durable_core.base._serde import MAX_JSON_DEPTH, dumps
from durable_core.core._machine import RunMachine
from durable_core.core._model import (
    AppendJournal,
    Command,
    ExecuteStep,
    JournalOp,
    RunStarted,
    RunStatus,
    SetRunState,
    StepFailed,
    TimerFired,
)


def _general_keys(ids: list[str]) -> list[str]:
    """The key rule, applied the long way for every id: the id, then ``id:1``, ``id:2``...
    for repeats, skipping keys an explicit id (or an earlier repeat) already took."""
    counts: dict[str, int] = {}
    keys = []
    for step_id in ids:
        count = counts.get(step_id, 0)
        while True:
            key = step_id if count == 0 else f"{step_id}:{count}"
            count += 1
            if count == 1:
                base, sep, n = key.rpartition(":")
                if not (sep and n.isdigit() and counts.get(base, 0) > int(n)):
                    break
            elif key not in counts:
                break
        counts[step_id] = count
        keys.append(key)
    return keys


def _drive(
    m: RunMachine, cmds: list[Command], fail: frozenset[str] = frozenset()
) -> list[Command]:
    """Carry out the machine's bodies until none is left; bodies whose key is in ``fail``
    raise NonRetriableError. Returns every command, in order."""
    out = list(cmds)
    pending = [c for c in cmds if type(c) is ExecuteStep]
    while pending:
        s = pending.pop(0)
        if s.step_id in fail:
            new = m.handle(StepFailed(s.position, s.attempt, NonRetriableError("no"), 0))
        else:
            new = m.step_completed(s.position, s.attempt, s.fn(*s.args), 0)
        out += new
        pending += [c for c in new if type(c) is ExecuteStep]
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "a:1", "a:2", "a:3", "b:1", "a:x", "a:1:1"]),
                max_size=12))
def test_step_keys_are_those_of_the_general_rule_and_never_collide(ids: list[str]) -> None:
    app = App("hot-keys")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> None:
        for sid in ids:
            await ctx.step.run(sid, lambda: 1)

    m = RunMachine(f, "r1", [Event("go", {})], 0)
    cmds = _drive(m, m.handle(RunStarted(0)))
    keys = [c.step_id for c in cmds if type(c) is ExecuteStep]
    assert keys == _general_keys(ids)
    assert len(set(keys)) == len(keys)
    assert m.status == RunStatus.COMPLETED


def test_a_recycled_run_step_records_its_own_outcome() -> None:
    # "a" succeeds; the step machine taken for "b" (recycled from "a") fails for good; "c"
    # (recycled again) succeeds. Each memo is its own: no value of an earlier step leaks.
    app = App("hot-recycle")
    seen: list[Any] = []

    @app.function(id="f", trigger=on_event("go"), retries=0)
    async def f(ctx: Context) -> list[Any]:
        seen.append(await ctx.step.run("a", lambda: 1))
        try:
            seen.append(await ctx.step.run("b", lambda: 2))
        except StepError as exc:
            seen.append(exc.error_type)
        seen.append(await ctx.step.run("c", lambda: 3))
        return seen

    m = RunMachine(f, "r1", [Event("go", {})], 0)
    _drive(m, m.handle(RunStarted(0)), fail=frozenset({"b"}))
    assert m.status == RunStatus.COMPLETED
    assert seen == [1, "NonRetriableError", 3]
    memos = {e.step_id: json.loads(e.data) for e in m.entries if e.op == JournalOp.COMPLETED}
    # (The first body's start is written; the others started when the entry before ended.)
    assert memos["a"] == {"output": 1, "started_at": 0} and memos["c"] == {"output": 3}
    assert memos["b"]["error"]["type"] == "NonRetriableError" and "output" not in memos["b"]
    assert json.loads(m.output or "null") == [1, "NonRetriableError", 3]


def test_running_without_a_deadline_is_reported_once_a_gathered_sleep_ends() -> None:
    # A body and a sleep in one gather: the run is running with the sleep's deadline. When
    # the sleep ends first, the deadline is gone and the store is told so, even though the
    # status stays "running" and the next steps take the hot path.
    app = App("hot-report")

    @app.function(id="f", trigger=on_event("go"))
    async def f(ctx: Context) -> int:
        await ctx.gather(ctx.step.run("body", lambda: 1), ctx.step.sleep("nap", "1s"))
        return await ctx.step.run("next", lambda: 2)

    m = RunMachine(f, "r1", [Event("go", {})], 0)
    first = m.handle(RunStarted(0))
    assert SetRunState("r1", RunStatus.RUNNING, 1000) in first
    [body] = [c for c in first if type(c) is ExecuteStep]
    after_nap = m.handle(TimerFired(1000))
    assert SetRunState("r1", RunStatus.RUNNING, None) in after_nap
    rest = m.step_completed(body.position, body.attempt, 1, 1000)
    assert [type(c) for c in rest] == [AppendJournal, ExecuteStep]  # the hot path, silent
    [nxt] = [c for c in rest if type(c) is ExecuteStep]
    m.step_completed(nxt.position, nxt.attempt, 2, 1000)
    assert m.status == RunStatus.COMPLETED


def _nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (_nest(MAX_JSON_DEPTH), True),
        (_nest(MAX_JSON_DEPTH + 1), False),
        ({"k": _nest(MAX_JSON_DEPTH - 1)}, True),
        ({"k": _nest(MAX_JSON_DEPTH)}, False),
        # Brackets inside strings count but do not nest: many of them, shallow value.
        (["[{" * 200, {"a": "]}" * 200}], True),
        ([[1, 2]] * 100, True),  # many brackets, 2 deep
    ],
)
def test_the_depth_check_refuses_exactly_the_values_nested_too_deep(value: Any, ok: bool) -> None:
    if ok:
        assert json.loads(dumps(value, what="out")) == json.loads(json.dumps(value))
    else:
        with pytest.raises(SerializationError, match="nested"):
            dumps(value, what="out")


def test_the_machine_cache_keeps_at_most_its_size_of_parked_runs() -> None:
    # Parked (sleeping, released) machines beyond cache_size are dropped, oldest first, and
    # rebuilt by replay when their run is claimed again; the runs end as if nothing happened.
    from durable_core.testing import TestEngine

    app = App("cache")

    def double(n: int) -> int:
        return 2 * n

    @app.function(id="nap", trigger=on_event("nap"))
    async def nap(ctx: Context) -> int:
        n: int = await ctx.step.run("double", double, ctx.event.data["n"])
        await ctx.step.sleep("nap", "1h")
        return n

    eng = TestEngine(app)
    eng.engine.cache_size = 3
    sent = eng.send([Event("nap", {"n": k}) for k in range(8)])
    eng.advance(0)
    parked = [r for r, live in eng.engine.live.items() if not live.leased]
    assert len(eng.engine.live) <= 3
    assert parked == [r.id for r in sent.runs[-len(parked):]]  # the newest stay
    eng.advance("1h")
    assert sorted(r.output for r in eng.runs) == [2 * k for k in range(8)]


def test_a_cache_full_of_leased_machines_is_not_rescanned_on_every_commit() -> None:
    # All machines leased (running): none can go, so the next scans wait until the cache
    # has grown by the slack; once some are parked, the next scan drops them.
    from durable_core.engine import _engine as engine_module
    from durable_core.testing import TestEngine

    eng = TestEngine(App("empty"))
    engine = eng.engine
    engine.cache_size = 2

    class Live:
        def __init__(self, leased: bool) -> None:
            self.leased = leased

    engine.live = {f"r{k}": Live(True) for k in range(5)}  # type: ignore[misc]
    engine._evict()
    assert len(engine.live) == 5
    assert engine._evict_floor == 5 + engine_module._EVICT_SLACK
    for k in range(3):
        engine.live[f"r{k}"].leased = False  # type: ignore[attr-defined]
    engine._evict()  # below the floor: not scanned
    assert len(engine.live) == 5
    for k in range(5, 5 + engine_module._EVICT_SLACK + 1):
        engine.live[f"r{k}"] = Live(True)  # type: ignore[assignment]
    engine._evict()
    kept = range(3, 5 + engine_module._EVICT_SLACK + 1)  # the three parked ones went
    assert sorted(engine.live) == sorted(f"r{k}" for k in kept)
