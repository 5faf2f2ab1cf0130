"""The step machines' transition tables, driven row by row and with Hypothesis.

Each step machine is driven through a recording host (the part of the run machine a step
machine uses). Every input is fed through the machine's real input method, and what it did
to the host is read back as :class:`Effect` values, in order: a transition must do exactly
what its table row lists, and an input the table has no row for must raise
:class:`StepTransitionError` and change nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable_core import App, Context, Event, NonRetriableError, on_event
from durable_core.core._context import (
    InvokeRequest,
    RunRequest,
    SendRequest,
    SleepRequest,
    StepRequest,
    WaitRequest,
)
from durable_core.core._journal import (
    JournalFold,
    StepMemo,
    entry_from_dict,
    entry_to_dict,
)
from durable_core.core._machine import RunMachine
from durable_core.core._model import (
    CancelRequested,
    CancelRun,
    ClearWait,
    EmitEvents,
    ExecuteStep,
    FailRun,
    JournalEntry,
    JournalOp,
    RegisterWait,
    RunStarted,
    RunStatus,
    StartRun,
    StepKind,
)
from durable_core.core._steps import (
    MACHINES,
    Effect,
    InvokeStep,
    RunStep,
    SendStep,
    SleepStep,
    StepInput,
    StepMachine,
    StepTransitionError,
    WaitStep,
)

NOW = 1_700_000_000_000
app = App("step-machines")


@app.function(id="child", trigger=on_event("t/child"))
async def child(ctx: Context) -> int:
    return 1


# --------------------------------------------------------------------------- recording host


class _Log(list[Any]):
    def __init__(self, log: list[Effect], effect_of: Callable[[Any], Effect | None]) -> None:
        super().__init__()
        self._log = log
        self._effect_of = effect_of

    def append(self, item: Any) -> None:
        effect = self._effect_of(item)
        if effect is not None:
            self._log.append(effect)
        super().append(item)


class _Timers(dict[int, int]):
    def __init__(self, log: list[Effect]) -> None:
        super().__init__()
        self._log = log

    def __setitem__(self, key: int, value: int) -> None:
        self._log.append(Effect.ARM_TIMER)
        super().__setitem__(key, value)

    def pop(self, key: int, default: Any = None) -> Any:
        self._log.append(Effect.DISARM_TIMER)
        return super().pop(key, default)


class _Dispatched(dict[int, Any]):
    def __init__(self, log: list[Effect]) -> None:
        super().__init__()
        self._log = log

    def __delitem__(self, key: int) -> None:
        self._log.append(Effect.FORGET_BODY)
        super().__delitem__(key)


_JOURNAL_EFFECT = {
    JournalOp.SCHEDULED: Effect.JOURNAL_SCHEDULED,
    JournalOp.ATTEMPT_FAILED: Effect.JOURNAL_ATTEMPT_FAILED,
    JournalOp.COMPLETED: Effect.JOURNAL_COMPLETED,
}
_COMMAND_EFFECT: dict[type, Effect] = {
    RegisterWait: Effect.REGISTER_WAIT,
    ClearWait: Effect.CLEAR_WAIT,
    StartRun: Effect.START_CHILD,
    EmitEvents: Effect.EMIT_EVENTS,
    ExecuteStep: Effect.EXECUTE_BODY,
}


class Host:
    """What a step machine sees of the run machine, recording what is done to it."""

    def __init__(self) -> None:
        self.log: list[Effect] = []
        self.run_id = "r1"
        self.entries: list[JournalEntry] = _Log(self.log, lambda e: _JOURNAL_EFFECT[e.op])
        self.clock_ms = 0
        self._new: list[JournalEntry] = []
        self._persist: list[Any] = _Log(self.log, lambda c: _COMMAND_EFFECT[type(c)])
        self._execute: list[Any] = _Log(self.log, lambda c: _COMMAND_EFFECT[type(c)])
        self._timers: dict[int, int] = _Timers(self.log)
        self._dispatched: dict[int, Any] = _Dispatched(self.log)
        self._steps: dict[int, Any] = {}
        self._memos: dict[int, StepMemo] = {}
        self._children: dict[str, int] = {}
        self._state_bytes = 0
        self._parked: Any = None
        self._retries = 10**6
        self._converter = app.converter

    def _trigger(self) -> str:
        return Event("t/go", {}).to_json()

    def _settle(self, step: Any, now: int) -> None:
        self.log.append(Effect.RESUME)

    def _over_state_limit(self, now: int) -> bool:
        return False


def _request(kind: str) -> StepRequest:
    if kind == StepKind.RUN:
        return RunRequest("s", lambda: 1, (), {})
    if kind == StepKind.SLEEP:
        return SleepRequest("s", dt.timedelta(seconds=60), None)
    if kind == StepKind.WAIT_FOR_EVENT:
        return WaitRequest("s", "t/ev", dt.timedelta(seconds=60), None, None, None)
    if kind == StepKind.INVOKE:
        return InvokeRequest("s", child, {}, dt.timedelta(seconds=60))
    return SendRequest("s", (Event("t/sent", {}),))


def _make(kind: str) -> tuple[StepMachine, Host]:
    host = Host()
    step = MACHINES[kind](host, 0, "s", _request(kind))  # type: ignore[arg-type]
    host._steps[0] = step
    return step, host


def _memo(kind: str, *, retry: bool) -> StepMemo:
    memo = StepMemo(0, "s", kind, NOW - 10)
    if retry:
        memo.failures = 1
        memo.retry_at = NOW + 500
    else:
        memo.sched = {"until": NOW + 500, "event": "t/ev", "if": None,
                      "child": "r_child", "function": "child"}
    return memo


# How each input reaches a machine: through the machine's own input methods.
FEED: dict[StepInput, Callable[[Any], None]] = {
    StepInput.START: lambda s: s.start(None, NOW),
    StepInput.RETRY_LATER: lambda s: s.start(_memo(s.KIND, retry=True), NOW),
    StepInput.RESUME: lambda s: s.start(_memo(s.KIND, retry=False), NOW),
    StepInput.DEADLINE: lambda s: s.deadline_reached(NOW),
    StepInput.SUCCEEDED: lambda s: s.succeeded(7, NOW),
    StepInput.FAILED: lambda s: s.failed(RuntimeError("again"), NOW),
    StepInput.FAILED_FOR_GOOD: lambda s: s.failed(NonRetriableError("no"), NOW),
    StepInput.EVENT: lambda s: s.event(Event("t/ev", {"a": 1}, id="e1", ts=NOW).to_json(), NOW),
    StepInput.CHILD_SUCCEEDED: lambda s: s.child_ended('{"output":{"x":1}}', NOW),
    StepInput.CHILD_FAILED: lambda s: s.child_ended(
        '{"error":{"type":"Boom","message":"m"}}', NOW
    ),
    StepInput.RUN_ENDED: lambda s: s.run_ended(NOW),
}

# The inputs each kind has a method for.
INPUTS: dict[str, tuple[StepInput, ...]] = {
    kind: tuple(sorted({i for (_, i) in cls.TABLE}, key=lambda i: i.value))
    for kind, cls in MACHINES.items()
}
ROWS = [(kind, state, inp) for kind, cls in MACHINES.items() for (state, inp) in cls.TABLE]


def _feed(step: StepMachine, host: Host, inp: StepInput) -> None:
    """Feed ``inp``; check the outcome against the table (row taken, or rejected)."""
    row = step.TABLE.get((step.state, inp))
    before = step.state
    host.log.clear()
    if row is None:
        with pytest.raises(StepTransitionError) as info:
            FEED[inp](step)
        assert info.value.state is before and info.value.input is inp
        assert step.state is before
        assert host.log == [], f"a rejected {inp.name} in {before.name} did {host.log}"
        return
    FEED[inp](step)
    assert step.state is row[0], f"{step.KIND} {before.name} --{inp.name}--> {step.state.name}"
    assert host.log == list(row[1]), (
        f"{step.KIND} {before.name} --{inp.name}-->: table says {row[1]}, did {host.log}"
    )
    _check_consistent(step, host)


def _check_consistent(step: StepMachine, host: Host) -> None:
    """What a machine's state says agrees with what the host holds."""
    pos = step.position
    if step.done:
        assert step.output is not None or step.error is not None
        assert host.entries[-1].op == JournalOp.COMPLETED
        assert pos not in host._timers
    if isinstance(step, RunStep):
        assert (pos in host._dispatched) == (step.state.name == "RUNNING")
        assert (pos in host._timers) == (step.state.name == "BACKING_OFF")
    elif not isinstance(step, SendStep):
        live = step.state.name in ("SLEEPING", "WAITING")
        assert (pos in host._timers) == live
        assert host._timers.get(pos, step.deadline) == step.deadline
    memos = [e for e in host.entries if e.op == JournalOp.COMPLETED]
    assert len(memos) <= 1, "a step's memo is written once"


def _path_to(cls: type[StepMachine], target: Any) -> list[StepInput]:
    """The shortest input sequence from the initial state to ``target`` (BFS on the table)."""
    seen = {cls.INITIAL: []}
    todo = deque([cls.INITIAL])
    while todo:
        state = todo.popleft()
        for (src, inp), (dst, _) in cls.TABLE.items():
            if src is state and dst not in seen:
                seen[dst] = [*seen[state], inp]
                todo.append(dst)
    return seen[target]


# --------------------------------------------------------------------------- table-driven


@pytest.mark.parametrize(("kind", "state", "inp"), ROWS,
                         ids=[f"{k}-{s.name}-{i.name}" for k, s, i in ROWS])
def test_every_row_does_what_the_table_says(kind: str, state: Any, inp: StepInput) -> None:
    step, host = _make(kind)
    for earlier in _path_to(type(step), state):
        _feed(step, host, earlier)
    assert step.state is state
    _feed(step, host, inp)


@pytest.mark.parametrize("kind", list(MACHINES))
def test_inputs_without_a_row_are_rejected_in_every_state(kind: str) -> None:
    cls = MACHINES[kind]
    states = {cls.INITIAL} | {s for s, _ in cls.TABLE} | {d for d, _ in cls.TABLE.values()}
    rejected = 0
    for state in states:
        for inp in INPUTS[kind]:
            if (state, inp) in cls.TABLE:
                continue
            step, host = _make(kind)
            for earlier in _path_to(cls, state):
                _feed(step, host, earlier)
            _feed(step, host, inp)
            rejected += 1
    assert rejected > 0


@pytest.mark.parametrize("kind", list(MACHINES))
def test_every_state_is_reachable_and_done_states_are_final(kind: str) -> None:
    cls = MACHINES[kind]
    states = {d for d, _ in cls.TABLE.values()}
    for state in states:
        _path_to(cls, state)  # raises KeyError if unreachable
    for state, _ in cls.TABLE:
        assert state not in cls.DONE, f"{kind}: a done state has a transition"
    assert states >= cls.DONE


def test_tables_cover_the_kinds() -> None:
    assert set(MACHINES) == set(StepKind)
    for kind, cls in MACHINES.items():
        assert kind == cls.KIND
        for (state, inp), (new, effects) in cls.TABLE.items():
            assert type(state) is type(cls.INITIAL) and type(new) is type(cls.INITIAL)
            assert isinstance(inp, StepInput) and all(isinstance(e, Effect) for e in effects)


_PAST = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("cls", "req", "memo", "first_effects"),
    [
        (SleepStep, SleepRequest("s", None, _PAST), None,
         [Effect.JOURNAL_SCHEDULED, Effect.ARM_TIMER]),
        (WaitStep, WaitRequest("s", "t/ev", None, _PAST, None, None), None,
         [Effect.JOURNAL_SCHEDULED, Effect.ARM_TIMER]),
        (SleepStep, _request("sleep"), _memo("sleep", retry=False), [Effect.ARM_TIMER]),
    ],
)
def test_a_deadline_already_passed_ends_the_step_at_once(
    cls: type[StepMachine], req: StepRequest, memo: StepMemo | None, first_effects: list[Effect]
) -> None:
    host = Host()
    step = cls(host, 0, "s", req)  # type: ignore[arg-type]
    step.start(memo, NOW + 10**9)
    assert step.done
    # START (or RESUME), then DEADLINE at once: no RegisterWait for a wait that is over.
    assert host.log[: len(first_effects)] == first_effects
    assert host.log[len(first_effects):][:2] == [Effect.DISARM_TIMER, Effect.JOURNAL_COMPLETED]
    assert Effect.REGISTER_WAIT not in host.log
    assert step.result() == (None, None)


def test_invoke_memos() -> None:
    step, host = _make("invoke")
    step.start(None, NOW)
    assert host._children == {step.sched["child"]: 0}  # type: ignore[index]
    assert isinstance(step, InvokeStep)
    step.child_ended('{"output":1}', NOW + 5)  # (child is `-> int`: rebuilt as an int)
    assert step.result() == (1, None)
    timed_out, _ = _make("invoke")
    timed_out.start(None, NOW)
    timed_out.deadline_reached(NOW + 60_000)
    value, err = timed_out.result()
    assert value is None and "InvokeTimeoutError" in str(err)


def test_run_step_retries_with_the_next_attempt() -> None:
    step, host = _make("run")
    assert isinstance(step, RunStep)
    step.start(None, NOW)
    first = host._execute[-1]
    step.failed(RuntimeError("flaky"), NOW)
    assert step.failures == 1 and host.entries[-1].op == JournalOp.ATTEMPT_FAILED
    assert json.loads(host.entries[-1].data)["attempt"] == 0
    step.deadline_reached(NOW + 10**6)
    assert (first.attempt, host._execute[-1].attempt) == (0, 1)
    step.succeeded("ok", NOW + 10**6)
    assert step.result() == ("ok", None)


# --------------------------------------------------------------------------- Hypothesis


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(MACHINES)), st.data())
def test_random_input_sequences_follow_the_table(kind: str, data: st.DataObject) -> None:
    step, host = _make(kind)
    taken = []
    for _ in range(data.draw(st.integers(0, 8))):
        inp = data.draw(st.sampled_from(INPUTS[kind]))
        if (step.state, inp) in step.TABLE:
            taken.append((step.state, inp))
        _feed(step, host, inp)
    # The step's history is a path in the table from its initial state.
    state = step.INITIAL
    for src, inp in taken:
        assert src is state
        state = step.TABLE[src, inp][0]
    assert state is step.state


# --------------------------------------------------------------------------- journal fold


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
))
def test_a_memo_is_json_of_the_output(value: Any) -> None:
    step, host = _make("run")
    assert isinstance(step, RunStep)
    step.start(None, NOW)
    step.succeeded(value, NOW)
    assert json.loads(host.entries[-1].data) == {"output": value, "started_at": NOW}
    assert step.result() == (value, None)


def test_fold_and_entry_dicts_round_trip() -> None:
    from durable_core.engine._views import step_views

    @app.function(id="folded", trigger=on_event("t/folded"))
    async def folded(ctx: Context) -> str:
        await ctx.step.sleep("nap", "1s")
        return "done"

    m = RunMachine(folded, "r1", [Event("t/folded", {})], 0)
    m.handle(RunStarted(0))
    assert m.status == RunStatus.SLEEPING
    from durable_core.core._model import TimerFired

    m.handle(TimerFired(1000))
    assert m.status == "completed" and m.done
    fold = JournalFold(m.entries)
    assert fold.ended is not None and json.loads(fold.ended.data) == {
        "status": "completed", "output": "done"
    }
    (memo,) = fold.steps.values()
    assert (memo.kind, memo.status, memo.done_ts, memo.output) == ("sleep", "completed", 1000,
                                                                   "null")
    assert [entry_from_dict(entry_to_dict(e)) for e in m.entries] == m.entries
    (view,) = step_views(m.entries)
    assert (view.kind, view.status, view.started_at, view.ended_at) == (
        "sleep", "completed", 0, 1000
    )


def test_cancel_is_its_own_command() -> None:
    @app.function(id="cancelled", trigger=on_event("t/cancelled"))
    async def waits(ctx: Context) -> None:
        await ctx.step.wait_for_event("w", event="t/never", timeout="1h")

    m = RunMachine(waits, "r1", [Event("t/cancelled", {})], 0)
    m.handle(RunStarted(0))
    assert m.status == RunStatus.WAITING
    cmds = m.handle(CancelRequested("no longer needed", 5))
    assert [type(c) for c in cmds][-2:] == [ClearWait, CancelRun]
    assert not any(isinstance(c, FailRun) for c in cmds)
    assert cmds[-1] == CancelRun("r1", cmds[-1].error)
    assert (cmds[-1].error.type, cmds[-1].error.message) == ("Cancelled", "no longer needed")
    assert m.status == "cancelled" and m.entries[-1].op == JournalOp.RUN_ENDED


def test_enums_keep_their_text() -> None:
    assert json.dumps([RunStatus.WAITING, StepKind.SEND_EVENT, JournalOp.RUN_ENDED]) == (
        '["waiting", "send_event", "run_ended"]'
    )
    assert {RunStatus.COMPLETED: 1}["completed"] == 1
    assert f"{RunStatus.FAILED}" == "failed"
