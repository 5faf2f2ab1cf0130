"""What every step machine shares: the inputs, the effects, the table check and the memo.

Theory of operation
-------------------

Each step a run's code asks for (``ctx.step.run``, ``sleep``, ``wait_for_event``, ``invoke``,
``send_event``) gets a small machine of its kind, made when the code first asks for the step
and dropped when the code has taken its memo. A machine has a state (an enum of its kind)
and a transition table in the h11 style: ``TABLE[state, input] = (new state, effects)``.
The inputs (:class:`StepInput`) are facts about the step; the effects (:class:`Effect`) are
what the transition does to the run, carried out by the machine's code in the order the
table lists them, through its host (the :class:`~durable_core.core._machine.RunMachine`):
journal entries, timers, commands, and resuming the code.

House rules:

1. A machine changes state only through its table (:meth:`StepMachine._to`); an input the
   table has no row for is a bug in the caller and raises :class:`StepTransitionError`.
   Inputs that may legitimately arrive late (a duplicate event, a stale timer) are filtered
   by the run machine before they reach a step machine, which it no longer has once the
   step is done and taken, or have an explicit row that does nothing.
2. A step with a memo in the journal has no machine: the run machine answers it from the
   journal fold (:mod:`durable_core.core._journal`). A machine starts from the journal
   only for what is unfinished (a ``scheduled`` sleep, a ``run`` step waiting to retry).
3. The per-step hot path (a new ``run`` step whose value goes straight to the waiting code)
   lives in :mod:`._run` and takes the table's rows without looking them up; an
   import-time check pins those rows, and tests/test_step_machines.py drives every row.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from durable_core.base._errors import DurableError, SerializationError, StepError
from durable_core.base._events import Event
from durable_core.base._serde import loads, return_hint
from durable_core.core._context import InvokeRequest, RunRequest, StepRequest
from durable_core.core._journal import (
    StepMemo,
    error_data,
    scheduled_data,
    utf8_len,
)
from durable_core.core._model import (
    Command,
    ErrorInfo,
    JournalEntry,
    JournalOp,
    StepKind,
)

__all__ = [
    "Effect",
    "StepHost",
    "StepInput",
    "StepMachine",
    "StepTransitionError",
    "Table",
    "decode_memo",
]

_UNSET: Any = object()
_tuple_new = tuple.__new__
_COMPLETED = JournalOp.COMPLETED


class _Identity(enum.Enum):
    """Enum members hash by identity (they are singletons), which keeps table look-ups in C."""

    __hash__ = object.__hash__


class StepInput(_Identity):
    """What can happen to a step (an input of its machine)."""

    START = enum.auto()
    """The code asked for the step and the journal holds nothing for it: begin."""
    RESUME = enum.auto()
    """The code asked for the step again (after a restart) and the journal says it is under
    way: a ``scheduled`` sleep, wait or invoke. Re-arm without journalling again."""
    RETRY_LATER = enum.auto()
    """(``run``) The code asked for the step and the journal says its next attempt is not
    due yet."""
    DEADLINE = enum.auto()
    """The step's timer is due: a sleep ends, a wait or invoke times out, a retry starts."""
    SUCCEEDED = enum.auto()
    """(``run``) The current attempt's body returned a value that could be recorded."""
    FAILED = enum.auto()
    """(``run``) The current attempt's body raised, and another attempt is allowed."""
    FAILED_FOR_GOOD = enum.auto()
    """(``run``) The body raised and no attempt is left, or its value cannot be recorded."""
    EVENT = enum.auto()
    """(``wait_for_event``) A matching event arrived."""
    CHILD_SUCCEEDED = enum.auto()
    """(``invoke``) The child run completed."""
    CHILD_FAILED = enum.auto()
    """(``invoke``) The child run failed or was cancelled."""
    RUN_ENDED = enum.auto()
    """The run ended (failed, cancelled) while the step was unfinished."""


class Effect(_Identity):
    """What a transition does, in the order a table row lists them."""

    JOURNAL_SCHEDULED = enum.auto()
    """Append a ``scheduled`` entry fixing the deadline (and the child, for an invoke)."""
    JOURNAL_ATTEMPT_FAILED = enum.auto()
    """Append an ``attempt_failed`` entry with the retry time."""
    JOURNAL_COMPLETED = enum.auto()
    """Append the step's ``completed`` memo (its ``output`` or ``error``)."""
    ARM_TIMER = enum.auto()
    """Ask to be woken at the step's deadline (the run machine's ``next_deadline``)."""
    DISARM_TIMER = enum.auto()
    """Forget the step's deadline."""
    EXECUTE_BODY = enum.auto()
    """Emit :class:`~durable_core.core._model.ExecuteStep` for the next attempt."""
    FORGET_BODY = enum.auto()
    """The dispatched body has answered: it is no longer running."""
    REGISTER_WAIT = enum.auto()
    """Emit :class:`~durable_core.core._model.RegisterWait` (route matching events here)."""
    CLEAR_WAIT = enum.auto()
    """Emit :class:`~durable_core.core._model.ClearWait` (stop routing events here)."""
    START_CHILD = enum.auto()
    """Emit :class:`~durable_core.core._model.StartRun` for the invoked child run."""
    EMIT_EVENTS = enum.auto()
    """Emit :class:`~durable_core.core._model.EmitEvents` with the events to send."""
    RESUME = enum.auto()
    """Hand the memo to the code, if it is parked on this step (and its gather is done)."""


Table = Mapping[tuple[Any, StepInput], tuple[Any, tuple[Effect, ...]]]
"""A transition table: ``(state, input) -> (new state, effects)``."""


class StepTransitionError(DurableError, AssertionError):
    """A step machine got an input its table has no row for: a bug in the run machine (or
    in a driver feeding it), never in user code. Names the kind, position, state and input."""

    def __init__(self, kind: str, position: int, state: Any, inp: StepInput) -> None:
        super().__init__(
            f"{kind} step at position {position}: no transition from {state.name} on "
            f"{inp.name}; this is a bug in the run machine or its driver, please report it"
        )
        self.kind = kind
        self.position = position
        self.state = state
        self.input = inp


class StepHost(Protocol):
    """What a step machine uses of the run machine that routes inputs to it."""

    run_id: str
    entries: list[JournalEntry]
    clock_ms: int
    _new: list[JournalEntry]
    _persist: list[Command]
    _execute: list[Command]
    _timers: dict[int, int]
    _dispatched: dict[int, Any]
    _steps: dict[int, Any]
    _memos: dict[int, StepMemo]
    _children: dict[str, int]
    _state_bytes: int
    _parked: Any
    _retries: int
    _converter: Any

    def _trigger(self) -> str: ...
    def _settle(self, step: Any, now: int) -> None: ...
    def _over_state_limit(self, now: int) -> bool: ...


def decode_memo(
    kind: str,
    step_id: str,
    output: str | None,
    error: ErrorInfo | None,
    req: StepRequest,
    conv: Any = None,
) -> tuple[Any, BaseException | None]:
    """What the code gets for a memo: its value, or the :class:`StepError` to raise.

    A ``run`` step's output is rebuilt into its body's return annotation by ``conv`` (the
    run's app's converter); an ``invoke`` step's into the invoked function's, by that
    function's app's converter."""
    if error is not None:
        err = StepError(step_id, error.type, error.message)
        err.traceback_text = error.traceback  # (in the run's traceback, if it fails of it)
        return None, err
    assert output is not None
    try:
        if kind == StepKind.RUN:
            assert isinstance(req, RunRequest)
            return loads(output, return_hint(req.fn), conv), None
        if kind == StepKind.INVOKE and isinstance(req, InvokeRequest):
            function = req.function
            return loads(output, return_hint(function.fn), function.app.converter), None
    except SerializationError as exc:
        # The recorded JSON no longer fits the annotation (the code changed since): the
        # code gets the error where it awaits the step, like a step's failure.
        return None, SerializationError(
            f"step {step_id!r}: {exc}; the annotation changed since the step was recorded? "
            "keep the old type readable (a union, or a structure hook) until such runs end",
            field="output",
        )
    raw = json.loads(output)
    if kind == StepKind.WAIT_FOR_EVENT and raw is not None:
        return Event.from_dict(raw), None
    return raw, None


class StepMachine:
    """Base of the step machines (one subclass per kind; don't subclass otherwise).

    ``state`` is a member of the kind's ``State`` enum; ``TABLE`` its transitions;
    ``INITIAL`` the state a new machine starts in; ``DONE`` the states in which the memo is
    recorded (``output`` / ``error`` set, ``done_ts`` when). ``WAITS`` says whether the run
    counts as *waiting* (rather than sleeping) while its code is parked on such a step.
    """

    # No __slots__: the defaults live on the class, so making a machine (once per step)
    # sets the few attributes that differ. (The run step's hot path sets what it reads on
    # the instance: see RunStep.dispatch.)
    deadline: int | None = None
    sched: dict[str, Any] | None = None
    output: str | None = None
    error: ErrorInfo | None = None
    done_ts = 0
    started: int | None = None
    """When the body of a ``run`` step's current attempt started (ms), when that is not the
    time of the journal entry before its memo: the body started when the code was resumed,
    and the code is resumed by an input that journals an entry at its time (a step's
    memo, a sleep's end...), except when it is entered from the top (a start, a restart, a
    retry of the code) or a step is started by its table (a retry, a gather's members).
    Then this is set, and journalled with the memo (``started_at``); readers take the
    entry before's time otherwise (JournalFold). The hot path writes nothing more."""
    live: Any = _UNSET

    KIND: ClassVar[StepKind]
    TABLE: ClassVar[Table]
    INITIAL: ClassVar[Any]
    DONE: ClassVar[frozenset[Any]]
    WAITS: ClassVar[bool] = False

    def __init__(self, host: StepHost, position: int, step_id: str, req: StepRequest) -> None:
        self.host = host
        self.position = position
        self.step_id = step_id
        self.req = req
        self.kind: str = self.KIND
        self.state: Any = self.INITIAL

    # ---------------------------------------------------------------- the table

    def _to(self, inp: StepInput) -> tuple[Effect, ...]:
        """Take the table's row for ``inp``: set the new state, return the effects."""
        row = self.TABLE.get((self.state, inp))
        if row is None:
            raise StepTransitionError(self.KIND, self.position, self.state, inp)
        self.state = row[0]
        return row[1]

    def _expect(self, inp: StepInput) -> None:
        """Raise :class:`StepTransitionError` now if the table has no row for ``inp``
        (called before an input's payload is stored, so a rejected input changes nothing)."""
        if (self.state, inp) not in self.TABLE:
            raise StepTransitionError(self.KIND, self.position, self.state, inp)

    def _fire(self, inp: StepInput, now: int) -> None:
        """Take the row for ``inp`` and carry out its effects in order."""
        for effect in self._to(inp):
            self._effect(effect, now)

    def _effect(self, effect: Effect, now: int) -> None:
        handler: Callable[[int], None] = getattr(self, _HANDLERS[effect])
        handler(now)

    @property
    def done(self) -> bool:
        """Whether the memo is recorded."""
        return self.state in self.DONE

    # ---------------------------------------------------------------- inputs

    def start(self, memo: StepMemo | None, now: int) -> None:
        """The code asked for the step; ``memo`` is what the journal holds for it (unfinished)."""
        raise NotImplementedError

    def deadline_reached(self, now: int) -> None:
        """The step's timer is due."""
        self._fire(StepInput.DEADLINE, now)

    def _start_timed(self, memo: StepMemo | None, now: int, sched: Any) -> None:
        """START (journal ``sched()``) or RESUME (the journal has it), then DEADLINE at once
        when the deadline has passed already. For sleeps, waits and invokes."""
        if memo is not None and memo.sched is not None:
            self._expect(StepInput.RESUME)
            self.sched = memo.sched
            self.deadline = int(memo.sched["until"])
            self._fire(StepInput.RESUME, now)
        else:
            self._expect(StepInput.START)
            self.sched = sched()
            self.deadline = int(self.sched["until"])
            self._fire(StepInput.START, now)
        if self.deadline <= now:
            self.deadline_reached(now)

    def run_ended(self, now: int) -> None:
        """The run ended while the step was unfinished."""
        self._fire(StepInput.RUN_ENDED, now)

    def result(self) -> tuple[Any, BaseException | None]:
        """Hand the memo to the code (the step must be done): the host drops this machine,
        and the value (or the :class:`StepError` to raise) is returned."""
        host = self.host
        if host._steps:
            host._steps.pop(self.position, None)
        if host._memos:
            host._memos.pop(self.position, None)
        if self.done_ts > host.clock_ms:
            host.clock_ms = self.done_ts
        if self.live is not _UNSET:
            return self.live, None
        return decode_memo(self.KIND, self.step_id, self.output, self.error, self.req,
                           host._converter)

    # ---------------------------------------------------------------- shared effects

    def _append(self, op: JournalOp, now: int, data: str) -> None:
        host = self.host
        entry = _tuple_new(
            JournalEntry, (len(host.entries), op, self.position, self.step_id, self.kind, now,
                           data),
        )
        host.entries.append(entry)
        host._new.append(entry)

    def _do_journal_completed(self, now: int, size: int = -1) -> None:
        """Append the memo (``output`` or ``error``) and count the output's bytes in the
        run's state; ``size`` is the output's length in UTF-8 when the caller knows it."""
        self.done_ts = now
        host = self.host
        output = self.output
        entries = host.entries
        started = self.started
        if started is not None:  # (never on the hot path: see ``started``)
            self.started = None  # (a run step machine is recycled)
            if entries and entries[-1].ts == started:
                started = None
        if output is not None:
            host._state_bytes += size if size >= 0 else utf8_len(output)
            # The one place a memo's output is written: the serde's JSON text, as the value
            # of "output" (see durable_core.core._journal for why it is not re-encoded).
            data = (f'{{"output":{output}}}' if started is None
                    else f'{{"output":{output},"started_at":{started}}}')
        else:
            assert self.error is not None
            data = error_data(self.error, started)
        # _append, inlined: this is once per step.
        entry = _tuple_new(
            JournalEntry, (len(entries), _COMPLETED, self.position, self.step_id, self.kind,
                           now, data),
        )
        entries.append(entry)
        host._new.append(entry)

    def _do_journal_scheduled(self, now: int) -> None:
        assert self.sched is not None
        self._append(JournalOp.SCHEDULED, now, scheduled_data(self.sched))

    def _do_arm_timer(self, now: int) -> None:
        assert self.deadline is not None
        self.host._timers[self.position] = self.deadline
        self.host._steps[self.position] = self

    def _do_disarm_timer(self, now: int) -> None:
        self.host._timers.pop(self.position, None)

    def _do_resume(self, now: int) -> None:
        self.host._settle(self, now)


_HANDLERS = {effect: "_do_" + effect.name.lower() for effect in Effect}
"""The method of a step machine that carries out each effect."""
