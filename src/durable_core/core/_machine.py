"""The per-run state machine: inputs in, commands out. Pure: no I/O, no clock, no entropy.

A :class:`RunMachine` owns one run's orchestration coroutine and advances it with
``send``/``throw``. ``ctx.step.*`` awaitables yield requests; the machine gives each step a
position and checks it against the journal (determinism). A request whose memo is in the
journal is answered at once (that is replay); a new one gets a step machine of its kind
(:mod:`durable_core.core._steps`), which turns it into commands, and the coroutine is parked
until the step's answer arrives as an input, which the machine routes to that step machine.
Live runs keep their machine between steps, so a run of n steps costs O(n); a machine
rebuilt from a journal replays it without side effects.

The machine keeps: the coroutine and what it is parked on, positions and step keys, the
determinism checks, run-level retries and the run's end. The run's status is derived in one
place (:attr:`RunMachine.status`); the journal is folded in one place
(:class:`~durable_core.core._journal.JournalFold`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any

from durable_core.base._backoff import retry_at_ms
from durable_core.base._errors import (
    DeterminismError,
    DurableError,
    LimitExceededError,
    NonRetriableError,
    SerializationError,
    StepError,
    UsageError,
    ValidationError,
)
from durable_core.base._events import Event
from durable_core.base._serde import encode_output, return_hint
from durable_core.core._context import (
    Context,
    GatherRequest,
    RunRequest,
    StepRequest,
)
from durable_core.core._function import Function
from durable_core.core._journal import (
    MAX_RUN_STATE_BYTES,
    MAX_STEP_OUTPUT_BYTES,
    JournalFold,
    StepMemo,
    attempt_failed_data,
    error_data,
    output_payload,
    patched_data,
    run_ended_data,
    utf8_len,
)
from durable_core.core._lifecycle import (
    cancel_cause,
    cancel_position,
    parent_reason,
    timeout_reason,
)
from durable_core.core._model import (
    AppendJournal,
    CancelRequested,
    CancelRun,
    ClearWait,
    Command,
    CompleteRun,
    ErrorInfo,
    ExecuteStep,
    FailRun,
    Input,
    JournalEntry,
    JournalOp,
    RegisterWait,
    RunStarted,
    RunStatus,
    SendSignal,
    SetRunState,
    Signal,
    SignalKind,
    SignalReceived,
    StepCompleted,
    StepFailed,
    TimerFired,
)
from durable_core.core._sandbox import (
    ACTIVE,
    foreign_call,
    foreign_error,
    register_driver,
    violation,
)
from durable_core.core._steps import (
    MACHINES,
    InvokeStep,
    RunState,
    RunStep,
    StepMachine,
    WaitStep,
    decode_memo,
)

_new = object.__new__
_tuple_new = tuple.__new__
_enter = ACTIVE.append
_leave = ACTIVE.pop
"""Orchestration code runs between the two (see ``core._sandbox``): one C call each per
turn. Only the list's truthiness is read elsewhere, so a pop need not take this machine."""
"""Builds the hot path's NamedTuples without their Python-level ``__new__`` (one frame less
per record; the fields are passed in declaration order)."""

__all__ = ["MAX_RUN_STATE_BYTES", "MAX_STEP_OUTPUT_BYTES", "RunMachine"]

_RUN_TIMER = -1  # timer key of a run-level retry
_FINISH_TIMER = -2  # timer key of timeouts.finish
_REPORTED_RUNNING = (RunStatus.RUNNING, None)
"""What ``_flush`` reported last when the run is running with no deadline (the usual
state between steps): one object, so the hot path checks it by identity."""

# Errors that fail the run at once when orchestration code lets them escape.
_FATAL = (StepError, NonRetriableError, DeterminismError, ValidationError)


class _Parked:
    pass


_PARKED = _Parked()


class _Gather:
    """The code is parked on a ``ctx.gather``: each member is a step machine, or the memo of
    a step the journal answered."""

    __slots__ = ("members", "req")

    def __init__(self, req: GatherRequest, members: list[StepMachine | StepMemo]) -> None:
        self.req = req
        self.members = members


class RunMachine:
    """One run's state machine.

    Build it with the run's function, id, triggering events, start time (ms) and journal
    (empty for a new run); feed it inputs with :meth:`handle`, which returns the commands to
    carry out, in order. Persistence commands come before :class:`ExecuteStep` commands, and a
    driver must make them durable before it starts the steps. :meth:`next_deadline` says when
    to feed :class:`TimerFired`.
    """

    # Slots: the hot path reads and writes a dozen of these per step, and a run machine
    # has more attributes than CPython 3.11 keeps inline (30), so without slots every
    # attribute and method look-up on it goes through a dict. ("__dict__" keeps it open to
    # ad-hoc attributes, as before.)
    __slots__ = (
        "__dict__",
        "_adopt",
        "_cancel_pending",
        "_children",
        "_colon_ids",
        "_coro",
        "_ctx",
        "_dispatched",
        "_end_status",
        "_ended_entry",
        "_event_bytes",
        "_execute",
        "_first_attempt_at",
        "_horizon",
        "_id_counts",
        "_made",
        "_max_steps",
        "_memos",
        "_new",
        "_next_pos",
        "_parked",
        "_patch_answers",
        "_patches",
        "_persist",
        "_pos_limit",
        "_reported",
        "_retries",
        "_run_failures",
        "_run_retry_at",
        "_state_bytes",
        "_steps",
        "_timers",
        "_trigger_json",
        "clock_ms",
        "entries",
        "error",
        "events",
        "failure",
        "function",
        "output",
        "parent_run_id",
        "run_id",
        "started_at",
    )

    def __init__(
        self,
        function: Function,
        run_id: str,
        events: Sequence[Event],
        started_at: int,
        journal: Sequence[JournalEntry] = (),
        *,
        parent_run_id: str | None = None,
    ) -> None:
        if not events:
            raise ValidationError("a run needs at least one triggering event", field="events")
        self.function = function
        self._max_steps = function.max_steps
        self._retries = function.retries
        self._converter = function.app.converter
        self.run_id = run_id
        self.events = tuple(events)
        self.started_at = started_at
        self.parent_run_id = parent_run_id
        self._end_status: RunStatus | None = None
        self.output: str | None = None
        self.error: ErrorInfo | None = None
        self.failure: BaseException | None = None
        """The exception that failed the run, when it failed in this process."""
        self.entries: list[JournalEntry] = list(journal)
        self._event_bytes = sum(utf8_len(e.to_json()) for e in self.events)
        """The triggering events' JSON: part of the run's recorded state (its limit)."""
        self._first_attempt_at: int | None = None
        self._cancel_pending: str | None = None
        """A cancel that came while a step body ran: the run ends once no body runs."""
        self._fold(JournalFold(self.entries))
        self._trigger_json: str | None = None
        self._coro: Coroutine[Any, Any, Any] | None = None
        self._ctx: Context | None = None
        self._timers: dict[int, int] = {}
        self._steps: dict[int, StepMachine] = {}
        """Step machines the machine may have to find by position: timed ones (sleeps,
        waits, invokes, run steps backing off) and those not taken by the code yet. A new
        ``run`` step running straight into the code is found through ``_dispatched``."""
        self._dispatched: dict[int, RunStep] = {}
        self._parked: StepMachine | _Gather | None = None
        self._next_pos = 0
        self._horizon = 0
        self._id_counts: dict[str, int] = {}
        self._colon_ids = False  # whether the code used an id with ":" (see _assign)
        self._patch_answers: dict[str, bool] = {}
        self._pos_limit = self._max_steps
        self.clock_ms = started_at
        self._new: list[JournalEntry] = []
        self._persist: list[Command] = []
        self._execute: list[Command] = []
        self._reported: tuple[RunStatus, int | None] = (RunStatus.QUEUED, None)
        self._adopt: dict[int, StepMachine] | None = None
        """While the code is re-driven for a step's next attempt: the live machines of the
        other steps it was parked on (a gather's members), taken up again when the code asks
        for them (see ``_redrive``)."""
        self._made: list[Any] = []
        """Steps the code created this turn (``ctx.step.*`` appends them) and sandbox
        violations; checked at each step request (see ``_review``)."""

    def _fold(self, fold: JournalFold) -> None:
        """Take the run-level facts of a journal fold (on load and on each re-entry)."""
        self._memos = fold.steps
        self._children = fold.children
        self._run_failures = fold.run_failures
        self._run_retry_at = fold.run_retry_at
        self._ended_entry = fold.ended
        self._state_bytes = fold.state_bytes + self._event_bytes
        self._patches = fold.patches
        if fold.started is not None:
            self._first_attempt_at = fold.started
        elif self.entries and self._first_attempt_at is None:
            self._first_attempt_at = self.entries[0].ts  # (recorded before timeouts=)

    # ------------------------------------------------------------------ public API

    @property
    def run_attempt(self) -> int:
        """``ctx.attempt`` in orchestration code (0-based): the failed attempts the journal
        records for the step the code is heading for (the step at the next position), as in
        Inngest ("it tracks retries for the currently executing step": a step's next
        attempt re-drives the code up to it, see ``_redrive``), plus the orchestration
        code's own failures (re-entries after it raised outside a step). Without the
        latter, it is the step's attempt, as its body reads it.

        The step's part is read from the journal, so a replay sees what the attempt saw:
        code that picks other arguments (or another step) ``if ctx.attempt > 2`` replays
        the same way."""
        memos = self._memos
        if memos:
            memo = memos.get(self._next_pos)
            if memo is not None and memo.failures:
                return self._run_failures + memo.failures
        return self._run_failures

    @property
    def replaying(self) -> bool:
        """True while the code is re-running through steps recorded in the journal."""
        return self._next_pos < self._horizon

    @property
    def next_position(self) -> int:
        """The position of the next step the code asks for (the steps it asked for in this
        attempt): where it is, e.g. when it raised."""
        return self._next_pos

    @property
    def done(self) -> bool:
        """True once the run completed, failed or was cancelled."""
        return self._end_status is not None

    @property
    def status(self) -> RunStatus:
        """The run's status, derived here and nowhere else: its end, else ``running`` while
        a body runs, ``waiting`` while the code is parked on an unresolved wait or invoke,
        ``sleeping`` while a deadline is pending, ``running`` while the code can go on, and
        ``queued`` before it was first entered."""
        if self._end_status is not None:
            return self._end_status
        if self._dispatched:
            return RunStatus.RUNNING
        parked = self._parked
        if parked is not None:
            members = parked.members if type(parked) is _Gather else (parked,)
            for m in members:
                if isinstance(m, StepMachine) and m.WAITS and not m.done:
                    return RunStatus.WAITING
        if self._timers:
            return RunStatus.SLEEPING
        if self._coro is not None:
            return RunStatus.RUNNING
        return RunStatus.QUEUED

    def next_deadline(self) -> int | None:
        """When (ms) the machine next needs :class:`TimerFired`, or None."""
        return min(self._timers.values()) if self._timers else None

    def is_current(self, step: ExecuteStep) -> bool:
        """Whether ``step`` is a body this machine is waiting for (not one dispatched by an
        earlier incarnation of the run, e.g. before its machine was rebuilt)."""
        s = self._dispatched.get(step.position)
        return s is not None and s.cmd is step

    def running_steps(self) -> dict[int, int]:
        """Positions of step bodies being executed, with their attempt numbers."""
        return {pos: s.failures for pos, s in self._dispatched.items()}

    def handle(self, inp: Input) -> list[Command]:
        """Feed one input; returns the commands to carry out, persistence first."""
        if self._end_status is None:
            if type(inp) is StepCompleted:
                return self.step_completed(inp.position, inp.attempt, inp.value, inp.now)
            if type(inp) is StepFailed:
                self._on_step_failed(inp)
            elif type(inp) is TimerFired:
                self._on_timer(inp.now)
            elif type(inp) is SignalReceived:
                self._on_signal(inp.signal, inp.now)
            elif type(inp) is RunStarted:
                self._on_start(inp.now)
            elif type(inp) is CancelRequested:
                self._cancel(inp.reason, inp.now, boundary=inp.boundary)
            else:
                raise TypeError(f"not an input: {inp!r}")
            if self._cancel_pending is not None:
                self._cancel_if_idle(inp.now)
        return self._flush()

    def step_completed(self, position: int, attempt: int, value: Any, now: int) -> list[Command]:
        """Same as ``handle(StepCompleted(position, attempt, value, now))``, without building
        the input: drivers call it once per step."""
        step = self._dispatched.get(position)  # (empty once the run ended)
        if step is not None and step.failures == attempt:
            if self._timers:
                self._finish_due(now)
            step.succeeded(value, now)
            if self._cancel_pending is not None:
                self._cancel_if_idle(now)
        # else: a duplicate or stale delivery: the memo, once written, never changes
        return self._flush()

    # ------------------------------------------------------------------ driving the code

    def _on_start(self, now: int) -> None:
        if self._coro is not None:
            return
        if self._first_attempt_at is None and self._ended_entry is None:
            # The run's first attempt: cancel-on listeners, and timeouts.start.
            fn = self.function
            if fn.cancel_on and not self.entries:
                self._register_cancel_on(now)
            timeouts = fn.timeouts
            if timeouts is not None:
                if timeouts.start_ms is not None and now > self.started_at + timeouts.start_ms:
                    self._cancel(timeout_reason("start", timeouts.start_text), now)
                    return
                self._first_attempt_at = now
                self._append_run_entry(JournalOp.STARTED, now, "{}")
        timeouts = self.function.timeouts
        if (timeouts is not None and timeouts.finish_ms is not None
                and self._first_attempt_at is not None and self._ended_entry is None):
            # Inclusive: a run may end exactly ``finish`` after its first attempt.
            deadline = self._first_attempt_at + timeouts.finish_ms + 1
            if deadline <= now:  # (rebuilt past its deadline: no code runs again)
                self._cancel(timeout_reason("finish", timeouts.finish_text), now)
                return
            self._timers[_FINISH_TIMER] = deadline
        if self._run_retry_at is not None and self._run_retry_at > now:
            self._timers[_RUN_TIMER] = self._run_retry_at
            return
        self._begin_attempt(now)

    def _begin_attempt(self, now: int, *, refold: bool = True) -> None:
        self._timers.pop(_RUN_TIMER, None)
        self._ctx = Context(self, self.events)
        self._next_pos = 0
        self._id_counts = {}
        self._colon_ids = False
        self._patch_answers = {}
        self._parked = None
        self._steps = {}
        # The step table is rebuilt from the journal: memos are dropped once the code has
        # taken them (so a long live run keeps no per-step objects alive for the garbage
        # collector to rescan); re-entering the code from the top needs them again.
        if self.entries and refold:  # (a new run has nothing to fold again)
            self._fold(JournalFold(self.entries))
        self._horizon = max(self._memos, default=-1) + 1
        if self._ended_entry is not None:
            self._horizon = self._max_steps + 1  # the whole run is a replay
        self._pos_limit = self._patch_limit() if self._patches else self._max_steps
        self.clock_ms = max(self.started_at, self._run_retry_at or 0)
        self._made = self._ctx.step._made
        self._coro = self.function.fn(self._ctx)
        self._settle(None, now)
        # A body dispatched now, by the hot path, started at no journalled time: say when
        # (see StepMachine.started).
        for running in self._dispatched.values():
            if running.started is None:
                running.started = now

    def _on_request(self, req: Any, now: int) -> Any:
        if isinstance(req, StepRequest):
            step = self._step_for(req, now)
            if type(step) is StepMemo:
                return self._memo_result(step, req)
            assert isinstance(step, StepMachine)
            if step.done:  # finished at once (a send, a sleep already due)
                return step.result()
            self._parked = step
            return _PARKED
        if isinstance(req, GatherRequest):
            members = [self._step_for(r, now) for r in req.requests]
            if all(type(m) is StepMemo or m.done for m in members):
                return self._gather_result(req, members)
            self._parked = _Gather(req, members)
            return _PARKED
        # Something else than a ctx primitive (a trio or asyncio wait...) yielded to us.
        raise violation(self, foreign_call(self._coro, req), "wait", verb="awaited")

    def _step_for(self, req: StepRequest, now: int) -> StepMachine | StepMemo:
        """Position the request; its memo if the journal answered it, else its step machine,
        started."""
        key = self._assign(req)
        pos = req.position
        memo = self._memos.get(pos)
        if memo is not None and memo.done:
            return memo
        if self._adopt is not None:
            old = self._adopt.pop(pos, None)
            if old is not None and old.step_id == key and old.kind == req.kind:
                old.req = req
                self._steps[pos] = old
                return old
        step = MACHINES[req.kind](self, pos, key, req)
        self._steps[pos] = step
        step.start(memo, now)
        return step

    def _assign(self, req: StepRequest) -> str:
        """Give the request the next position (``req.position``) and its unique key, checked
        against the journal's memo at that position. Returns the key.

        The key is the step's id, then ``id:1``, ``id:2``... for repeats. A key that is
        already taken (an explicit id ``fetch:1`` next to a repeated ``fetch``) is skipped, so
        keys never collide."""
        step_id = req.id
        counts = self._id_counts
        count = counts.get(step_id, 0)
        if ":" in step_id or (count and self._colon_ids):
            # An explicit id with ":" may equal a repeat's key, and once the run used one, a
            # repeat's next key may be taken: look for the first free key.
            self._colon_ids = True
            while True:
                key = step_id if count == 0 else f"{step_id}:{count}"
                count += 1
                if count == 1:
                    # A first sighting: taken only if it equals an earlier repeat's key.
                    base, sep, n = key.rpartition(":")
                    if not (sep and n.isdigit() and counts.get(base, 0) > int(n)):
                        break
                elif key not in counts:  # a repeat: taken only by an explicit id
                    break
            counts[step_id] = count
        elif count:  # a repeat, and no key can be taken
            key = f"{step_id}:{count}"
            counts[step_id] = count + 1
        else:  # a first sighting of an id without ":"
            key = step_id
            counts[step_id] = 1
        pos = self._next_pos
        if pos >= self._pos_limit:  # over max_steps, or past a patch marker not asked for
            raise self._past_limit(key, req.kind, pos)
        self._next_pos = pos + 1
        if self._memos and (memo := self._memos.get(pos)) is not None and (
            memo.step_id != key or memo.kind != req.kind
        ) and (memo.done or memo.sched is not None):
            # (A step with failed attempts only may be asked for as another step on a later
            # attempt, ``if ctx.attempt > 2: ...``: no result of it was ever handed to the
            # code. The memo takes the new id: see JournalFold.)
            raise DeterminismError(
                f"run {self.run_id}: at step position {pos} the journal recorded step "
                f"{memo.step_id!r} ({memo.kind}) but the code asked for {key!r} ({req.kind}); "
                "the function's code changed in a way that running runs cannot follow "
                "(a step was added, removed or reordered before this point)",
                run_id=self.run_id,
                position=pos,
                recorded=f"{memo.step_id} ({memo.kind})",
                requested=f"{key} ({req.kind})",
            )
        req.position = pos
        return key

    def _past_limit(self, key: str, kind: str, pos: int) -> DurableError:
        """Why the code may not ask for a step at ``pos``: over ``max_steps``, or the journal
        recorded a patch marker before that position and this attempt did not ask for it."""
        if pos >= self._max_steps:
            return self._too_many_steps(key, pos)
        answers = self._patch_answers
        at, patch_id = min((at, pid) for pid, (at, deprecated) in self._patches.items()
                           if not deprecated and pid not in answers)
        return DeterminismError(
            f"run {self.run_id}: the journal recorded ctx.patched({patch_id!r}) before step "
            f"position {at}, but the code asked for step {key!r} ({kind}) at position {pos} "
            f"without asking for that patch first; this run took the patched branch, and "
            f"code without the patch cannot follow it (keep ctx.deprecate_patch({patch_id!r}) "
            "in the code until no run that recorded the patch is running)",
            run_id=self.run_id,
            position=pos,
            recorded=f"patch {patch_id!r}",
            requested=f"{key} ({kind})",
        )

    def _patch_limit(self) -> int:
        """The first position the code may not reach before asking for a recorded patch:
        the earliest marker (not deprecated) this attempt has not asked for, or max_steps."""
        answers = self._patch_answers
        return min([self._max_steps, *(at for pid, (at, deprecated) in self._patches.items()
                                      if not deprecated and pid not in answers)])

    def patch(self, patch_id: str, deprecated: bool) -> bool:
        """``ctx.patched(patch_id)`` (``deprecated`` False) or ``ctx.deprecate_patch``
        (True): whether the code takes the patched branch. The same id gets the same answer
        for the rest of the attempt. A journal holding the id's marker answers True; a run
        replaying steps it recorded without one answers False (it ran the old code there);
        otherwise the run is past the end of its journal: True, and the marker is recorded."""
        answers = self._patch_answers
        answer = answers.get(patch_id)
        if answer is not None:
            return answer
        if patch_id in self._patches:
            answer = True
        elif self._next_pos < self._horizon:
            answer = False
        else:
            answer = True
            at = self._next_pos
            self._patches[patch_id] = (at, deprecated)
            entry = JournalEntry(len(self.entries), JournalOp.PATCHED, -1, patch_id, "",
                                 self.clock_ms, patched_data(at, deprecated))
            self.entries.append(entry)
            self._new.append(entry)
        answers[patch_id] = answer
        if self._pos_limit < self._max_steps:
            self._pos_limit = self._patch_limit()
        return answer

    def _too_many_steps(self, key: str, pos: int) -> LimitExceededError:
        return LimitExceededError(
            f"run {self.run_id}: step {key!r} would be step {pos + 1} of the run, over the "
            f"limit of {self._max_steps}; raise max_steps (up to 10,000) or split "
            "the work with ctx.step.invoke",
            field="max_steps",
        )

    # ------------------------------------------------------------------ results

    def _memo_result(self, memo: StepMemo, req: StepRequest) -> tuple[Any, BaseException | None]:
        """A journalled memo handed to the code (then no longer needed: see _begin_attempt)."""
        del self._memos[memo.position]
        if memo.done_ts > self.clock_ms:
            self.clock_ms = memo.done_ts
        return decode_memo(memo.kind, memo.step_id, memo.output, memo.error, req,
                           self._converter)

    def _gather_result(
        self, req: GatherRequest, members: list[StepMachine | StepMemo]
    ) -> tuple[Any, BaseException | None]:
        values = []
        first_error: BaseException | None = None
        for m, r in zip(members, req.requests, strict=True):
            if type(m) is StepMemo:
                value, err = self._memo_result(m, r)
            else:
                assert isinstance(m, StepMachine)
                value, err = m.result()
            if err is not None and first_error is None:
                first_error = err
            values.append(value)
        if first_error is not None:
            return None, first_error
        return tuple(values), None

    def _settle(self, step: StepMachine | None, now: int) -> None:
        """Resume the code. A step finished: the code takes its result if it is parked on
        it (in a gather, once every member is done). ``step`` None: a new attempt enters
        the code from the top. The code then runs until it parks on a step or the run ends.
        With a cancel pending, the code is not resumed (the run ends at this boundary).
        """
        if self._cancel_pending is not None:
            return
        spare = None
        if step is None:
            value = exc = None
        else:
            parked = self._parked
            if parked is step:
                self._parked = None
                value, exc = step.result()
                if type(step) is RunStep:
                    # The code took the memo and nothing refers to the machine any more:
                    # it is recycled as the next new run step, if any (RunStep.dispatch).
                    spare = step
            elif type(parked) is _Gather and step in parked.members:
                members = parked.members
                if not all(type(m) is StepMemo or m.done for m in members):
                    return
                self._parked = None
                value, exc = self._gather_result(parked.req, members)
            else:
                return
        coro = self._coro
        assert coro is not None
        made = self._made
        _enter(self)  # the sandbox is on in this thread (core._sandbox)
        try:
            while True:
                try:
                    req = coro.send(value) if exc is None else coro.throw(exc)
                except StopIteration as stop:
                    if made and self._review(None, now):
                        return
                    self._finish_ok(stop.value, now)
                    return
                except Exception as err:
                    if made:
                        err = self._review_error(err)
                    if type(err) is RuntimeError:  # trio or asyncio outside their loop?
                        err = foreign_error(self, err)
                    self._finish_err(err, now)
                    return
                # Usage checks: the request is the one step the code created since the
                # last one, unless it dropped a step unawaited or swallowed a sandbox error.
                if len(made) == 1 and made[0] is req:
                    made.clear()
                elif self._review(req, now):
                    return
                if self._ended_entry is not None and self._cancelled_here(req):
                    return
                try:
                    if type(req) is RunRequest and (
                        not self._memos or self._next_pos not in self._memos
                    ):
                        # The hot path: a new ``run`` step past the end of the journal.
                        # The run step machine takes row (NEW, START) itself: RunStep.dispatch.
                        self._parked = (spare if spare is not None else _new(RunStep)).dispatch(
                            self, self._next_pos, self._assign(req), req, 0
                        )
                        return
                    res = self._on_request(req, now)
                except DurableError as err:
                    value, exc = None, err
                    continue
                if res is _PARKED:
                    return
                value, exc = res
        finally:
            _leave()

    def _cancelled_here(self, req: Any) -> bool:
        """Replaying a run whose journal ends in ``cancelled``: if the code asks for a step
        the journal holds no result of, the run was cancelled there; it ends so again
        (nothing is written, nobody is told), and no code past that point runs."""
        ended = self._ended_entry
        assert ended is not None
        if type(req) is GatherRequest:
            n = len(req.requests)
        elif isinstance(req, StepRequest):
            n = 1
        else:
            return False
        memos = self._memos
        pos = self._next_pos
        if all((m := memos.get(p)) is not None and m.done for p in range(pos, pos + n)):
            return False
        data = ended.payload()
        if data.get("status") != RunStatus.CANCELLED:
            return False
        error = data.get("error") or {}
        self._cancel_now(str(error.get("message", "")), ended.ts)
        return True

    def _review(self, req: Any, now: int) -> bool:
        """The code asked for ``req`` (None: it returned): fail the run if it swallowed a
        sandbox error this turn, or dropped a step it created without awaiting it. Steps
        created and still referenced (``steps = [ctx.step.run(...) ...]``, awaited one by
        one later) are kept, weakly, and looked at again at each request. True if the run
        failed."""
        made = self._made
        current = req.requests if type(req) is GatherRequest else (req,)
        keep: list[Any] = []
        dropped: list[tuple[str, str]] = []
        found: DeterminismError | None = None
        for x in made:
            if type(x) is tuple:  # (id, kind, weak reference) of a step kept from before
                step = x[2]()
                if step is None:
                    dropped.append((x[0], x[1]))
                elif step.position < 0 and not any(step is c for c in current):
                    keep.append(x)
            elif isinstance(x, DeterminismError):
                found = found or x
            elif x.position < 0 and not any(x is c for c in current):
                keep.append((x.id, x.kind, weakref.ref(x)))
        made.clear()
        x = step = None  # (no strong reference left here)
        if found is not None:
            self._fail(found, now)
            return True
        for entry in keep:  # (our list no longer holds the steps: see who still does)
            if entry[2]() is None:
                dropped.append((entry[0], entry[1]))
            else:
                made.append(entry)
        if dropped:
            step_id, kind = dropped[0]
            self._fail(UsageError(
                f"run {self.run_id}: function {self.function.id!r}: step {step_id!r} "
                f"(ctx.step.{kind}) was created but never awaited; await it "
                f"(`await ctx.step.{kind}({step_id!r}, ...)`) or pass it to ctx.gather(...)"
            ), now)
            return True
        return False

    def _review_error(self, err: Exception) -> Exception:
        """The code raised ``err``: the sandbox error it swallowed this turn, if any, is
        what fails the run (else ``err``, also when it left steps unawaited)."""
        found = next((x for x in self._made if isinstance(x, DeterminismError)), None)
        self._made.clear()
        return found if found is not None and found is not err else err

    def _trigger(self) -> str:
        if self._trigger_json is None:
            self._trigger_json = self.events[0].to_json()
        return self._trigger_json

    # ------------------------------------------------------------------ inputs

    def _on_step_failed(self, inp: StepFailed) -> None:
        step = self._dispatched.get(inp.position)
        if step is None or step.failures != inp.attempt:
            return
        if self._timers:
            self._finish_due(inp.now)
        step.failed(inp.error, inp.now)

    def _finish_due(self, now: int) -> None:
        """A body's result arrives: if ``timeouts.finish`` has passed, the run ends at this
        boundary (the result is recorded, nothing after it starts). A run busy with steps
        back to back is never fed the timer, so its results are where it is seen."""
        deadline = self._timers.get(_FINISH_TIMER)
        if deadline is not None and deadline <= now and self._cancel_pending is None:
            del self._timers[_FINISH_TIMER]
            timeouts = self.function.timeouts
            assert timeouts is not None
            self._cancel(timeout_reason("finish", timeouts.finish_text), now, boundary=True)

    def _on_timer(self, now: int) -> None:
        # timeouts.finish first: a run fed its timers late (after a restart, say) ends at
        # its deadline rather than going on past it.
        due = sorted((p != _FINISH_TIMER, t, p) for p, t in self._timers.items() if t <= now)
        for _later, t, pos in due:
            if (self._end_status is not None or self._cancel_pending is not None
                    or self._timers.get(pos) != t):
                continue
            del self._timers[pos]
            if pos == _RUN_TIMER:
                self._begin_attempt(now)
                continue
            if pos == _FINISH_TIMER:
                timeouts = self.function.timeouts
                assert timeouts is not None
                self._cancel(timeout_reason("finish", timeouts.finish_text), now)
                continue
            step = self._steps[pos]
            if type(step) is RunStep and step.state is RunState.BACKING_OFF:
                self._redrive(step, now)
                continue
            step.deadline_reached(now)

    def _redrive(self, step: RunStep, now: int) -> None:
        """A ``run`` step's next attempt is due: re-drive the code from the top up to it (a
        replay: the journal answers every step before it), as Inngest re-runs the function
        for each attempt. So ``ctx.attempt`` reads the step's attempt in the code too, and
        code before the step can pass it other arguments, or ask for another step, on a
        later attempt. Retries are rare; the replay costs what a restart costs.

        Steps the code was parked on beside this one (members of a gather: a body still
        running, a sleep) keep their machines: the code takes them up again when it asks for
        them; any it no longer asks for are dropped (a late answer is stale then)."""
        pos = step.position
        self._timers.pop(pos, None)
        self._steps.pop(pos, None)  # (the step's machine is dropped: a new one takes over)
        others: dict[int, StepMachine] = {
            p: s for p, s in self._steps.items() if not s.done}
        others.update(self._dispatched)
        coro, self._coro = self._coro, None
        if coro is not None:
            _enter(self)  # its finally blocks are orchestration code too (as in _cancel)
            try:
                with contextlib.suppress(Exception):
                    coro.close()
            finally:
                _leave()
        self._adopt = others
        try:
            if others:
                # Keep the hot path (a new run step without a memo) from dispatching a
                # second body for a member still running: give each a placeholder memo, so
                # the code's request goes through _step_for, which takes the machine up.
                self._fold(JournalFold(self.entries))
                for p, s in others.items():
                    self._memos.setdefault(p, StepMemo(p, s.step_id, s.kind, now))
                self._begin_attempt(now, refold=False)
            else:
                self._begin_attempt(now)
        finally:
            left, self._adopt = self._adopt, None
        for p, s in left.items():  # not asked for again: dropped
            if self._dispatched.get(p) is s:
                del self._dispatched[p]
            if p not in self._steps:
                self._timers.pop(p, None)

    def _on_signal(self, signal: Signal, now: int) -> None:
        kind = signal.kind
        if kind == SignalKind.CANCEL:
            self._cancel(signal.payload, now)
        elif self._cancel_pending is not None:
            return  # the run ends at its next step boundary; nothing resumes before
        elif kind == SignalKind.EVENT:
            step = self._steps.get(signal.position)
            if type(step) is WaitStep and not step.done:
                step.event(signal.payload, now)
            # else: late, duplicate, or for a wait that already timed out
        elif kind == SignalKind.INVOKE:
            pos = self._children.get(signal.key)
            child = self._steps.get(pos) if pos is not None else None
            if type(child) is InvokeStep and not child.done:
                child.child_ended(signal.payload, now)

    def _over_state_limit(self, now: int) -> bool:
        """Fail the run if its recorded state is over the limit; True if it did."""
        if self._state_bytes <= MAX_RUN_STATE_BYTES:
            return False
        self._fail(
            LimitExceededError(
                f"run {self.run_id}: recorded state (the triggering events' data, the "
                f"step outputs and the run's output) is {self._state_bytes} bytes of JSON, "
                f"over the limit of {MAX_RUN_STATE_BYTES}; return smaller step outputs "
                "(store large data elsewhere and return a reference)",
                field="run state",
            ),
            now,
        )
        return True

    # ------------------------------------------------------------------ ending

    def _finish_ok(self, value: Any, now: int) -> None:
        try:
            text = encode_output(value, return_hint(self.function.fn), self._converter,
                                 what=f"run {self.run_id} output", owner="function")[0]
        except SerializationError as exc:
            self._fail(exc, now)
            return
        if utf8_len(text) > MAX_STEP_OUTPUT_BYTES:
            self._fail(
                LimitExceededError(
                    f"run {self.run_id}: output is {utf8_len(text)} bytes of JSON, over the "
                    "limit of "
                    f"{MAX_STEP_OUTPUT_BYTES}",
                    field="output",
                ),
                now,
            )
            return
        self._state_bytes += utf8_len(text)
        if self._over_state_limit(now):
            return
        self.output = text
        first = self._end(RunStatus.COMPLETED, now, run_ended_data(RunStatus.COMPLETED,
                                                                   output=text))
        self._persist.append(CompleteRun(self.run_id, text))
        if self.parent_run_id is not None and first:
            self._persist.append(
                SendSignal(self.parent_run_id,
                           Signal(SignalKind.INVOKE, self.run_id, output_payload(text)))
            )

    def _finish_err(self, err: BaseException, now: int) -> None:
        if isinstance(err, _FATAL) or self._run_failures >= self._retries:
            self._fail(err, now)
            return
        try:
            retry_at = retry_at_ms(err, now, self.run_id, "<run>", self._run_failures)
        except ValidationError as bad:  # a RetryAfterError with a value that is no delay
            self._fail(bad, now)
            return
        info = ErrorInfo.from_exception(err)
        self._append_run_entry(
            JournalOp.RUN_ATTEMPT_FAILED, now,
            attempt_failed_data(self._run_failures, info, retry_at),
        )
        self._run_failures += 1
        self._run_retry_at = retry_at
        self._coro = None
        self._timers[_RUN_TIMER] = retry_at

    def _fail(self, err: BaseException, now: int) -> None:
        info = ErrorInfo.from_exception(err)
        self.error = info
        self.failure = _without_frames(err)
        first = self._end(RunStatus.FAILED, now, run_ended_data(RunStatus.FAILED, error=info))
        self._persist.append(FailRun(self.run_id, info))
        self._tell_parent(first, info)

    def _register_cancel_on(self, now: int) -> None:
        """Listen for the function's cancel-on events (idempotent: the engine registers
        them when it creates the run, and the first registration is kept)."""
        for c in self.function.cancel_on:
            expires = self.started_at + c.timeout_ms
            if expires > now:
                self._persist.append(RegisterWait(
                    run_id=self.run_id, position=cancel_position(c.index), event=c.event,
                    if_=c.if_, trigger_event=self._trigger(), expires_at=expires,
                ))

    def _cancel(self, reason: str, now: int, *, boundary: bool = False) -> None:
        """Cancel the run. A cancel-on event or a timeout cancels it at its next step
        boundary: while a step body runs, at the body's end (its result is recorded, and
        nothing after it starts). A cancel on request ends it at once (a running body is
        not interrupted, but its result is dropped: a body that hangs cannot keep a run
        from being cancelled). ``boundary``: the cancel was found as a body's result
        arrived: it waits for that result, whatever its cause."""
        if self._dispatched and (boundary or self._cancel_pending is not None
                                 or cancel_cause(reason)["by"] != "request"):
            if self._cancel_pending is None:
                self._cancel_pending = reason or "run cancelled"
            return
        self._cancel_now(reason, now)

    def _cancel_if_idle(self, now: int) -> None:
        """End the run for its pending cancel once no step body runs any more."""
        reason = self._cancel_pending
        if reason is not None and not self._dispatched and self._end_status is None:
            self._cancel_now(reason, now)

    def _cancel_now(self, reason: str, now: int) -> None:
        children = self._waiting_children()
        coro, self._coro = self._coro, None
        if coro is not None:
            # RuntimeError: the code awaited a step in a finally block; nothing more will run.
            # Any other error of a finally block (a sandbox error, say) is the code's, and the
            # run ends anyway: it must not escape into the driver.
            _enter(self)  # its finally blocks are orchestration code too
            try:
                with contextlib.suppress(Exception):
                    coro.close()
            finally:
                _leave()
        err = _Cancelled(reason or "run cancelled")
        info = ErrorInfo.from_exception(err)
        self.error = info
        self.failure = err
        first = self._end(RunStatus.CANCELLED, now,
                          run_ended_data(RunStatus.CANCELLED, error=info))
        self._persist.append(CancelRun(self.run_id, info))
        self._tell_parent(first, info)
        if first and children:
            # Invoked children still running are cancelled with their parent.
            why = parent_reason(self.run_id, info.message)
            for child in children:
                self._persist.append(SendSignal(child, Signal(SignalKind.CANCEL, self.run_id,
                                                              why)))

    def _waiting_children(self) -> list[str]:
        """The child runs this run invoked and may still wait for (a child that already
        ended drops the cancel sent to it)."""
        out = []
        for child, pos in self._children.items():
            memo = self._memos.get(pos)
            step = self._steps.get(pos)
            if (memo is not None and memo.done) or (step is not None and step.done):
                continue
            out.append(child)
        return out

    def _tell_parent(self, first: bool, info: ErrorInfo) -> None:
        if self.parent_run_id is not None and first:
            self._persist.append(
                SendSignal(self.parent_run_id,
                           Signal(SignalKind.INVOKE, self.run_id, error_data(info)))
            )

    def _append_run_entry(self, op: JournalOp, now: int, data: str) -> JournalEntry:
        entry = JournalEntry(len(self.entries), op, -1, "", "", now, data)
        self.entries.append(entry)
        self._new.append(entry)
        return entry

    def _end(self, status: RunStatus, now: int, data: str) -> bool:
        """The run ends with ``status``: unfinished steps are told (RUN_ENDED), and the end
        is journalled. Returns False when replaying a run that already ended: then nothing
        is written and nobody is told again."""
        self._end_status = status
        # Let go of the run's code: the machine <-> context cycle (and a suspended
        # coroutine's frame) would otherwise keep the whole run in memory until a full
        # garbage collection, which a worker with tuned thresholds rarely runs.
        coro, self._coro, self._ctx = self._coro, None, None
        if (coro is not None and coro.cr_frame is not None  # type: ignore[attr-defined]
                and not coro.cr_running):  # type: ignore[attr-defined]
            # Still suspended (the run failed on a limit): run its finally blocks now, as
            # a cancel does. RuntimeError: it awaited a step in one; nothing more will run
            # (nor may any other error of the code escape: the run ends anyway).
            _enter(self)
            try:
                with contextlib.suppress(Exception):
                    coro.close()
            finally:
                _leave()
        if self._steps or self._dispatched:
            steps = list(self._steps.values())
            steps += [s for p, s in self._dispatched.items() if p not in self._steps]
            for step in steps:
                if not step.done and step.state is not step.INITIAL:
                    step.run_ended(now)
        self._timers.clear()
        self._dispatched.clear()
        self._parked = None
        self._cancel_pending = None
        if self._ended_entry is not None:
            return False
        for c in self.function.cancel_on:
            self._persist.append(ClearWait(self.run_id, cancel_position(c.index)))
        self._ended_entry = self._append_run_entry(JournalOp.RUN_ENDED, now, data)
        return True

    # ------------------------------------------------------------------ output

    def _flush(self) -> list[Command]:
        new, execute = self._new, self._execute
        if (len(new) == 1 and len(execute) == 1 and not self._persist and not self._timers
                and self._reported is _REPORTED_RUNNING):
            # The hot path: one memo, then the next step's body (the run stays running).
            # (Indexing and clear() rather than pop(): a list emptied by pop() reallocates.)
            out: list[Command] = [_tuple_new(AppendJournal, (self.run_id, (new[0],))), execute[0]]
            new.clear()
            execute.clear()
            return out
        out = []
        if new:
            out.append(AppendJournal(self.run_id, tuple(new)))
            new.clear()
        if self._persist:
            out.extend(self._persist)
            self._persist = []
        if self._dispatched and not self._timers and self._reported is _REPORTED_RUNNING:
            pass  # a step finished and the next one started: still running, no deadline
        elif self._end_status is None:
            state = (self.status, self.next_deadline())
            if state != self._reported:
                # (Running without a deadline is kept as the one tuple the checks above
                # compare by identity.)
                self._reported = _REPORTED_RUNNING if state == _REPORTED_RUNNING else state
                out.append(SetRunState(self.run_id, state[0], state[1]))
        if execute:
            out += execute
            execute.clear()
        return out


register_driver(RunMachine._settle.__code__, RunMachine._cancel_now.__code__,
                RunMachine._end.__code__)


def _without_frames(err: BaseException) -> BaseException:
    """``err`` (and the exceptions chained to it) without tracebacks: kept on a finished
    machine, their frames (this machine's own, the run's code holding ``ctx``) would keep the
    whole run in memory in a reference cycle. The type and message are what the run records."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        stack += [c for c in (e.__cause__, e.__context__) if c is not None]
    return err


class _Cancelled(Exception):
    """Why a run was cancelled (shown as the run's error, type ``Cancelled``)."""


_Cancelled.__name__ = "Cancelled"
