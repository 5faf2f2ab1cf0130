"""The per-run state machine: inputs in, commands out. Pure: no I/O, no clock, no entropy.

A :class:`RunMachine` owns one run's orchestration coroutine and advances it with
``send``/``throw``. ``ctx.step.*`` awaitables yield requests; a request whose memo is in the
journal is answered at once (that is replay), a new one becomes commands, and the coroutine
is parked until the answer arrives as an input. Live runs keep their machine between steps,
so a run of n steps costs O(n); a machine rebuilt from a journal replays it without side
effects.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Coroutine, Sequence
from typing import Any

from durable_core.base._backoff import retry_after_delay, retry_delay
from durable_core.base._durations import from_ms, to_ms
from durable_core.base._errors import (
    DeterminismError,
    DurableError,
    LimitExceededError,
    NonRetriableError,
    RetryAfterError,
    SerializationError,
    StepError,
    ValidationError,
)
from durable_core.base._events import Event
from durable_core.base._serde import dumps, loads, return_hint, roundtrip
from durable_core.core._context import (
    Context,
    GatherRequest,
    InvokeRequest,
    RunRequest,
    SendRequest,
    SleepRequest,
    StepRequest,
    WaitRequest,
)
from durable_core.core._function import Function
from durable_core.core._model import (
    AppendJournal,
    CancelRequested,
    ClearWait,
    Command,
    CompleteRun,
    EmitEvents,
    ErrorInfo,
    ExecuteStep,
    FailRun,
    Input,
    JournalEntry,
    RegisterWait,
    RunStarted,
    SendSignal,
    SetRunState,
    Signal,
    SignalReceived,
    StartRun,
    StepCompleted,
    StepFailed,
    TimerFired,
    derive_id,
)

_tuple_new = tuple.__new__
"""Builds the hot path's NamedTuples without their Python-level ``__new__`` (one frame less
per record; the fields are passed in declaration order)."""

__all__ = ["MAX_RUN_STATE_BYTES", "MAX_STEP_OUTPUT_BYTES", "RunMachine"]

MAX_STEP_OUTPUT_BYTES = 4 * 1024 * 1024
MAX_RUN_STATE_BYTES = 32 * 1024 * 1024
INVOKED_EVENT = "durable/function.invoked"
_RUN_TIMER = -1  # timer key of a run-level retry

# Errors that fail the run at once when orchestration code lets them escape.
_FATAL = (StepError, NonRetriableError, DeterminismError, ValidationError)


def _utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (cheap for ASCII, the common case)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class _Parked:
    pass


_PARKED = _Parked()
_DONE = _Parked()  # a step that finished as soon as it started
_UNSET: Any = object()


class _Step:
    """What the machine knows about the step at one position (built from the journal).

    Defaults live on the class so that creating a record (once per step) sets three
    attributes, not twelve.
    """

    done = False
    done_ts = 0
    output: str | None = None
    error: ErrorInfo | None = None
    failures = 0
    retry_at: int | None = None
    sched: dict[str, Any] | None = None
    journaled = False
    live: Any = _UNSET  # the value handed to code on the live path

    def __init__(self, position: int, step_id: str, kind: str) -> None:
        self.position = position
        self.step_id = step_id
        self.kind = kind


class RunMachine:
    """One run's state machine.

    Build it with the run's function, id, triggering events, start time (ms) and journal
    (empty for a new run); feed it inputs with :meth:`handle`, which returns the commands to
    carry out, in order. Persistence commands come before :class:`ExecuteStep` commands, and a
    driver must make them durable before it starts the steps. :meth:`next_deadline` says when
    to feed :class:`TimerFired`.
    """

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
        self.run_id = run_id
        self.events = tuple(events)
        self.started_at = started_at
        self.parent_run_id = parent_run_id
        self.status = "queued"
        self._ended = False
        self.output: str | None = None
        self.error: ErrorInfo | None = None
        self.failure: BaseException | None = None
        """The exception that failed the run, when it failed in this process."""
        self.entries: list[JournalEntry] = []
        self._steps: dict[int, _Step] = {}
        self._children: dict[str, int] = {}
        self._run_failures = 0
        self._run_retry_at: int | None = None
        self._ended_entry: JournalEntry | None = None
        self._state_bytes = 0
        for entry in journal:
            self._apply(entry)
        self._trigger_json: str | None = None
        self._coro: Coroutine[Any, Any, Any] | None = None
        self._ctx: Context | None = None
        self._timers: dict[int, int] = {}
        self._dispatched: dict[int, ExecuteStep] = {}
        self._requests: dict[int, StepRequest] = {}
        self._parked: tuple[Any, tuple[int, ...]] | None = None
        self._next_pos = 0
        self._horizon = 0
        self._id_counts: dict[str, int] = {}
        self.clock_ms = started_at
        self._new: list[JournalEntry] = []
        self._persist: list[Command] = []
        self._execute: list[Command] = []
        self._reported: tuple[str, int | None] = ("queued", None)

    # ------------------------------------------------------------------ public API

    @property
    def run_attempt(self) -> int:
        """0-based attempt of the orchestration code (re-entries after it raised)."""
        return self._run_failures

    @property
    def replaying(self) -> bool:
        """True while the code is re-running through steps recorded in the journal."""
        return self._next_pos < self._horizon

    @property
    def done(self) -> bool:
        """True once the run completed, failed or was cancelled."""
        return self._ended

    def next_deadline(self) -> int | None:
        """When (ms) the machine next needs :class:`TimerFired`, or None."""
        return min(self._timers.values()) if self._timers else None

    def is_current(self, step: ExecuteStep) -> bool:
        """Whether ``step`` is a body this machine is waiting for (not one dispatched by an
        earlier incarnation of the run, e.g. before its machine was rebuilt)."""
        return self._dispatched.get(step.position) is step

    def running_steps(self) -> dict[int, int]:
        """Positions of step bodies being executed, with their attempt numbers."""
        return {pos: cmd.attempt for pos, cmd in self._dispatched.items()}

    def handle(self, inp: Input) -> list[Command]:
        """Feed one input; returns the commands to carry out, persistence first."""
        if not self._ended:
            if type(inp) is StepCompleted:
                self._on_step_completed(inp)
            elif type(inp) is StepFailed:
                self._on_step_failed(inp)
            elif type(inp) is TimerFired:
                self._on_timer(inp.now)
            elif type(inp) is SignalReceived:
                self._on_signal(inp.signal, inp.now)
            elif type(inp) is RunStarted:
                self._on_start(inp.now)
            elif type(inp) is CancelRequested:
                self._cancel(inp.reason, inp.now)
            else:
                raise TypeError(f"not an input: {inp!r}")
        return self._flush()

    # ------------------------------------------------------------------ journal

    def _apply(self, e: JournalEntry) -> None:
        """Fold one journal entry into the step table (on load and when appending)."""
        self.entries.append(e)
        if e.op == "run_attempt_failed":
            data = e.payload()
            self._run_failures += 1
            self._run_retry_at = int(data["retry_at"])
            return
        if e.op == "run_ended":
            self._ended_entry = e
            return
        rec = self._steps.get(e.position)
        if rec is None:
            rec = self._steps[e.position] = _Step(e.position, e.step_id, e.kind)
        rec.journaled = True
        if e.op == "completed":
            data = e.payload()
            rec.done = True
            rec.done_ts = e.ts
            if "error" in data:
                rec.error = ErrorInfo.from_dict(data["error"])
            else:
                rec.output = json.dumps(data["output"], separators=(",", ":"))
                self._state_bytes += _utf8_len(rec.output)
        elif e.op == "attempt_failed":
            data = e.payload()
            rec.failures = int(data["attempt"]) + 1
            rec.retry_at = int(data["retry_at"])
        elif e.op == "scheduled":
            rec.sched = e.payload()
            child = rec.sched.get("child")
            if child:
                self._children[child] = e.position

    def _refold(self) -> None:
        """Rebuild the step table from the journal. Records are dropped once the code has
        consumed their memo (so a long live run keeps no per-step objects alive for the
        garbage collector to rescan); re-entering the code from the top needs them again."""
        entries = self.entries
        self.entries = []
        self._steps = {}
        self._children = {}
        self._run_failures = 0
        self._run_retry_at = None
        self._ended_entry = None
        self._state_bytes = 0
        for entry in entries:
            self._apply(entry)

    def _journal(self, rec: _Step, op: str, now: int, data: str) -> JournalEntry:
        entry = JournalEntry(
            seq=len(self.entries), op=op, position=rec.position, step_id=rec.step_id,
            kind=rec.kind, ts=now, data=data,
        )
        self.entries.append(entry)
        self._new.append(entry)
        rec.journaled = True
        return entry

    def _complete(
        self,
        rec: _Step,
        now: int,
        *,
        output: str | None = None,
        error: ErrorInfo | None = None,
        live: Any = _UNSET,
    ) -> None:
        if error is not None:
            data = json.dumps({"error": error.to_dict()}, separators=(",", ":"))
        else:
            assert output is not None
            data = '{"output":' + output + "}"
            self._state_bytes += _utf8_len(output)
        self._journal(rec, "completed", now, data)
        rec.done = True
        rec.done_ts = now
        rec.output = output
        rec.error = error
        rec.live = live
        self._timers.pop(rec.position, None)
        self._requests.pop(rec.position, None)
        self._dispatched.pop(rec.position, None)
        if rec.kind == "wait_for_event":
            self._persist.append(ClearWait(self.run_id, rec.position))

    # ------------------------------------------------------------------ driving the code

    def _on_start(self, now: int) -> None:
        if self._coro is not None:
            return
        if self._run_retry_at is not None and self._run_retry_at > now:
            self._timers[_RUN_TIMER] = self._run_retry_at
            return
        self._begin_attempt(now)

    def _begin_attempt(self, now: int) -> None:
        self._timers.pop(_RUN_TIMER, None)
        self._ctx = Context(self, self.events)
        self._next_pos = 0
        self._id_counts = {}
        self._requests = {}
        self._parked = None
        self._refold()
        self._horizon = max(self._steps, default=-1) + 1
        if self._ended_entry is not None:
            self._horizon = self.function.max_steps + 1  # the whole run is a replay
        self.clock_ms = max(self.started_at, self._run_retry_at or 0)
        self.status = "running"
        self._coro = self.function.fn(self._ctx)
        self._drive(now, None, None)

    def _drive(self, now: int, value: Any, exc: BaseException | None) -> None:
        coro = self._coro
        assert coro is not None
        while True:
            try:
                req = coro.send(value) if exc is None else coro.throw(exc)
            except StopIteration as stop:
                self._finish_ok(stop.value, now)
                return
            except Exception as err:
                self._finish_err(err, now)
                return
            if type(req) is RunRequest and self._next_pos not in self._steps:
                # The hot path: a new ``run`` step past the end of the journal.
                key = self._key(req.id)
                pos = self._next_pos
                if pos >= self._max_steps:
                    value, exc = None, self._too_many_steps(key, pos)
                    continue
                self._next_pos = pos + 1
                # No _Step record and no _requests entry: the code is parked on this very
                # request (see _run_record and _request_of).
                req.position = pos
                cmd = _tuple_new(
                    ExecuteStep, (self.run_id, pos, key, 0, req.fn, req.args, req.kwargs)
                )
                self._dispatched[pos] = cmd
                self._execute.append(cmd)
                self._parked = (req, (pos,))
                return
            try:
                res = self._on_request(req, now)
            except DurableError as err:
                value, exc = None, err
                continue
            if res is _PARKED:
                return
            value, exc = res

    def _on_request(self, req: Any, now: int) -> Any:
        if isinstance(req, StepRequest):
            rec = self._assign(req)
            if rec.done:
                return self._result(rec, req)
            res = self._begin_step(rec, req, now)
            if res is _DONE:  # finished at once (a send, a sleep already due)
                return self._result(rec, req)
            if res is _PARKED:
                self._parked = (req, (rec.position,))
            return res
        if isinstance(req, GatherRequest):
            recs = [self._assign(r) for r in req.requests]
            for rec, r in zip(recs, req.requests, strict=True):
                if not rec.done:
                    self._begin_step(rec, r, now)
            if all(rec.done for rec in recs):
                return self._gather_result(req)
            self._parked = (req, tuple(rec.position for rec in recs))
            return _PARKED
        raise DeterminismError(
            f"run {self.run_id}: orchestration code awaited {req!r}, which is not a ctx.step "
            "primitive; do I/O and waiting inside ctx.step.run(...) bodies, and use "
            "ctx.step.sleep / wait_for_event instead of trio or asyncio sleeps",
            run_id=self.run_id,
            position=self._next_pos,
            requested=repr(req),
        )

    def _key(self, step_id: str) -> str:
        """The step's unique key: its id, then ``id:1``, ``id:2``... for repeats. A key that
        is already taken (an explicit id ``fetch:1`` next to a repeated ``fetch``) is skipped,
        so keys never collide."""
        counts = self._id_counts
        count = counts.get(step_id, 0)
        if ":" not in step_id:
            # The common cases, decided at once: a first sighting of an id without ":" can't
            # collide with a repeat's key, and a repeat's next key is free unless an explicit
            # id took it.
            if not count:
                counts[step_id] = 1
                return step_id
            key = f"{step_id}:{count}"
            if key not in counts:
                counts[step_id] = count + 1
                return key
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
        return key

    def _assign(self, req: StepRequest) -> _Step:
        key = self._key(req.id)
        pos = self._next_pos
        if pos >= self.function.max_steps:
            raise self._too_many_steps(key, pos)
        self._next_pos = pos + 1
        rec = self._steps.get(pos)
        if rec is None:
            rec = self._steps[pos] = _Step(pos, key, req.kind)
        elif rec.step_id != key or rec.kind != req.kind:
            raise DeterminismError(
                f"run {self.run_id}: at step position {pos} the journal recorded step "
                f"{rec.step_id!r} ({rec.kind}) but the code asked for {key!r} ({req.kind}); "
                "the function's code changed in a way that running runs cannot follow "
                "(a step was added, removed or reordered before this point)",
                run_id=self.run_id,
                position=pos,
                recorded=f"{rec.step_id} ({rec.kind})",
                requested=f"{key} ({req.kind})",
            )
        self._requests[pos] = req
        req.position = pos
        return rec

    def _too_many_steps(self, key: str, pos: int) -> LimitExceededError:
        return LimitExceededError(
            f"run {self.run_id}: step {key!r} would be step {pos + 1} of the run, over the "
            f"limit of {self.function.max_steps}; raise max_steps (up to 10,000) or split "
            "the work with ctx.step.invoke",
            field="max_steps",
        )

    def _result(self, rec: _Step, req: StepRequest) -> tuple[Any, BaseException | None]:
        """The memo handed to the code (the record is then no longer needed: see _refold)."""
        del self._steps[rec.position]
        if rec.done_ts > self.clock_ms:
            self.clock_ms = rec.done_ts
        if rec.error is not None:
            return None, StepError(rec.step_id, rec.error.type, rec.error.message)
        if rec.live is not _UNSET:
            value, rec.live = rec.live, _UNSET
            return value, None
        assert rec.output is not None
        if rec.kind == "run":
            assert isinstance(req, RunRequest)
            return loads(rec.output, return_hint(req.fn)), None
        raw = json.loads(rec.output)
        if rec.kind == "wait_for_event" and raw is not None:
            return Event.from_dict(raw), None
        return raw, None

    def _gather_result(self, req: GatherRequest) -> tuple[Any, BaseException | None]:
        values = []
        first_error: BaseException | None = None
        for r in req.requests:
            rec = self._steps[r.position]
            value, err = self._result(rec, r)
            if err is not None and first_error is None:
                first_error = err
            values.append(value)
        if first_error is not None:
            return None, first_error
        return tuple(values), None

    def _settle(self, pos: int, now: int) -> None:
        """A step finished; resume the code if it was waiting on it (and its siblings)."""
        parked = self._parked
        if parked is None or pos not in parked[1]:
            return
        req, positions = parked
        if len(positions) > 1 and not all(self._steps[p].done for p in positions):
            return
        self._parked = None
        if isinstance(req, GatherRequest):
            value, exc = self._gather_result(req)
        else:
            value, exc = self._result(self._steps[pos], req)
        self._drive(now, value, exc)

    # ------------------------------------------------------------------ starting steps

    def _begin_step(self, rec: _Step, req: StepRequest, now: int) -> Any:
        kind = rec.kind
        if kind == "run":
            if rec.retry_at is not None and rec.retry_at > now:
                self._timers[rec.position] = rec.retry_at
            else:
                self._start_body(rec, req)
            return _PARKED
        if kind == "sleep":
            assert isinstance(req, SleepRequest)
            if rec.sched is None:
                if req.until is not None:
                    until = to_ms(req.until)
                else:
                    assert req.duration is not None
                    until = now + _ms(req.duration)
                self._schedule(rec, now, {"until": until})
            return self._park_until(rec, now)
        if kind == "wait_for_event":
            assert isinstance(req, WaitRequest)
            if rec.sched is None:
                if req.timeout_at is not None:
                    until = to_ms(req.timeout_at)
                else:
                    assert req.timeout is not None
                    until = now + _ms(req.timeout)
                self._schedule(rec, now, {"until": until, "event": req.event, "if": req.if_})
            assert rec.sched is not None
            if rec.sched["until"] > now:
                self._persist.append(
                    RegisterWait(
                        run_id=self.run_id,
                        position=rec.position,
                        event=rec.sched["event"],
                        if_=rec.sched["if"],
                        trigger_event=self._trigger(),
                        expires_at=rec.sched["until"],
                    )
                )
            return self._park_until(rec, now)
        if kind == "invoke":
            assert isinstance(req, InvokeRequest)
            if rec.sched is None:
                child = derive_id("r_", self.run_id, rec.step_id)
                until = now + _ms(req.timeout)
                self._schedule(
                    rec, now, {"until": until, "child": child, "function": req.function.id}
                )
                self._children[child] = rec.position
                event = Event(
                    INVOKED_EVENT, req.data, id=derive_id("e_", self.run_id, rec.step_id), ts=now
                )
                self._persist.append(
                    StartRun(child, req.function.id, event.to_json(), parent_run_id=self.run_id)
                )
            return self._park_until(rec, now)
        if kind == "send_event":
            assert isinstance(req, SendRequest)
            texts, ids = [], []
            for i, e in enumerate(req.events):
                eid = e.id or derive_id("e_", self.run_id, rec.step_id, i)
                ids.append(eid)
                texts.append(Event(e.name, e.data, id=eid, ts=e.ts or now).to_json())
            self._persist.append(EmitEvents(tuple(texts)))
            self._complete(rec, now, output=json.dumps(ids), live=ids)
            return _DONE
        raise AssertionError(kind)  # pragma: no cover

    def _schedule(self, rec: _Step, now: int, sched: dict[str, Any]) -> None:
        rec.sched = sched
        self._journal(rec, "scheduled", now, json.dumps(sched, separators=(",", ":")))

    def _park_until(self, rec: _Step, now: int) -> Any:
        assert rec.sched is not None
        until = int(rec.sched["until"])
        if until > now:
            self._timers[rec.position] = until
            return _PARKED
        self._expire(rec, now)
        return _DONE

    def _expire(self, rec: _Step, now: int) -> None:
        """A sleep, wait or invoke reached its deadline."""
        if rec.kind == "invoke":
            self._complete(
                rec,
                now,
                error=ErrorInfo(
                    "InvokeTimeoutError",
                    "timed out waiting for invoked function "
                    f"{rec.sched and rec.sched['function']!r} to finish",
                ),
            )
        else:
            self._complete(rec, now, output="null", live=None)

    def _start_body(self, rec: _Step, req: StepRequest) -> None:
        assert isinstance(req, RunRequest)
        cmd = ExecuteStep(
            run_id=self.run_id,
            position=rec.position,
            step_id=rec.step_id,
            attempt=rec.failures,
            fn=req.fn,
            args=req.args,
            kwargs=req.kwargs,
        )
        self._dispatched[rec.position] = cmd
        self._execute.append(cmd)

    def _trigger(self) -> str:
        if self._trigger_json is None:
            self._trigger_json = self.events[0].to_json()
        return self._trigger_json

    # ------------------------------------------------------------------ inputs

    def step_completed(self, position: int, attempt: int, value: Any, now: int) -> list[Command]:
        """Same as ``handle(StepCompleted(position, attempt, value, now))``, without building
        the input: drivers call it once per step."""
        if not self._ended:
            self._completed(position, attempt, value, now)
        return self._flush()

    def _on_step_completed(self, inp: StepCompleted) -> None:
        self._completed(inp.position, inp.attempt, inp.value, inp.now)

    def _completed(self, pos: int, attempt: int, value: Any, now: int) -> None:
        # This is the per-step hot path: it is written flat on purpose.
        cmd = self._dispatched.get(pos)
        if cmd is None or cmd.attempt != attempt:
            return  # a duplicate or stale delivery: the memo, once written, never changes
        t = type(value)
        if t is int:
            text = int.__repr__(value)  # JSON and ASCII
            live = value
            size = len(text)
        elif (t is str or value is None or t is bool) and not (
            t is str and (len(value) > MAX_STEP_OUTPUT_BYTES // 4 or not value.isascii())
        ):
            text = dumps(value, what="")
            live = value
            size = _utf8_len(text)
        else:
            rec = self._run_record(pos, cmd)
            req = self._request_of(pos)
            assert isinstance(req, RunRequest)
            try:
                text = dumps(value, what=f"step {rec.step_id!r} output")
            except SerializationError as exc:
                self._complete(rec, now, error=ErrorInfo.from_exception(exc))
                self._settle(pos, now)
                return
            size = _utf8_len(text)
            if size > MAX_STEP_OUTPUT_BYTES:
                err = LimitExceededError(
                    f"step {rec.step_id!r} output is {size} bytes of JSON, over the limit of "
                    f"{MAX_STEP_OUTPUT_BYTES}; store large data elsewhere and return a reference",
                    field="output",
                )
                self._complete(rec, now, error=ErrorInfo.from_exception(err))
                self._settle(pos, now)
                return
            live = roundtrip(value, text, return_hint(req.fn))
        # Inlined _complete() for a successful ``run`` step.
        entry = _tuple_new(JournalEntry, (
            len(self.entries), "completed", pos, cmd.step_id, "run", now, f'{{"output":{text}}}'
        ))
        self.entries.append(entry)
        self._new.append(entry)
        if self._requests:
            self._requests.pop(pos, None)
        del self._dispatched[pos]  # (also: no longer running)
        self._state_bytes += size
        if self._state_bytes > MAX_RUN_STATE_BYTES:
            self._fail(
                LimitExceededError(
                    f"run {self.run_id}: recorded state is {self._state_bytes} bytes, over the "
                    f"limit of {MAX_RUN_STATE_BYTES}; return smaller step outputs",
                    field="run state",
                ),
                now,
            )
            return
        parked = self._parked
        if (parked is not None and type(parked[0]) is RunRequest
                and parked[0].position == pos):
            # Inlined _settle()/_result() for the awaited step: the code takes the value at
            # once, so the record is dropped without being filled in.
            self._parked = None
            self._steps.pop(pos, None)
            if now > self.clock_ms:
                self.clock_ms = now
            self._drive(now, live, None)
            return
        rec = self._run_record(pos, cmd)
        rec.journaled = rec.done = True
        rec.done_ts = now
        rec.output = text
        rec.live = live
        self._settle(pos, now)

    def _request_of(self, pos: int) -> StepRequest | None:
        """The request the code made at ``pos``: recorded in ``_requests``, except for a new
        ``run`` step dispatched by the hot path, which is the request the code is parked on."""
        req = self._requests.get(pos)
        if req is None:
            parked = self._parked
            if (parked is not None and type(parked[0]) is RunRequest
                    and parked[0].position == pos):
                req = parked[0]
        return req

    def _run_record(self, pos: int, cmd: ExecuteStep) -> _Step:
        """The record of the ``run`` step dispatched as ``cmd`` (made on first need: the
        hot path dispatches new steps without one)."""
        rec = self._steps.get(pos)
        if rec is None:
            rec = self._steps[pos] = _Step(pos, cmd.step_id, "run")
        return rec

    def _on_step_failed(self, inp: StepFailed) -> None:
        pos, now, exc = inp.position, inp.now, inp.error
        cmd = self._dispatched.get(pos)
        if cmd is None or cmd.attempt != inp.attempt:
            return
        del self._dispatched[pos]
        rec = self._run_record(pos, cmd)
        if isinstance(exc, NonRetriableError) or inp.attempt >= self.function.retries:
            self._complete(rec, now, error=ErrorInfo.from_exception(exc))
            self._settle(pos, now)
            return
        if isinstance(exc, RetryAfterError):
            try:
                delay = retry_after_delay(exc.after, from_ms(now))
            except ValidationError as bad:
                # A bug in the step's code: retrying cannot fix it. Fail the step, clearly.
                self._complete(rec, now, error=ErrorInfo.from_exception(bad))
                self._settle(pos, now)
                return
        else:
            delay = retry_delay(self.run_id, rec.step_id, inp.attempt)
        retry_at = now + _ms(delay)
        info = ErrorInfo.from_exception(exc)
        self._journal(
            rec,
            "attempt_failed",
            now,
            json.dumps(
                {"attempt": inp.attempt, "error": info.to_dict(), "retry_at": retry_at},
                separators=(",", ":"),
            ),
        )
        rec.failures = inp.attempt + 1
        rec.retry_at = retry_at
        self._timers[pos] = retry_at

    def _on_timer(self, now: int) -> None:
        due = sorted((t, p) for p, t in self._timers.items() if t <= now)
        for t, pos in due:
            if self.done or self._timers.get(pos) != t:
                continue
            del self._timers[pos]
            if pos == _RUN_TIMER:
                self._begin_attempt(now)
                continue
            rec = self._steps[pos]
            if rec.kind == "run":
                req = self._request_of(pos)
                assert req is not None
                self._start_body(rec, req)
            else:
                self._expire(rec, now)
                self._settle(pos, now)

    def _on_signal(self, signal: Signal, now: int) -> None:
        if signal.kind == "cancel":
            self._cancel(signal.payload, now)
            return
        if signal.kind == "event":
            rec = self._steps.get(signal.position)
            if rec is None or rec.done or rec.kind != "wait_for_event":
                return  # late, duplicate, or for a wait that already timed out
            self._complete(rec, now, output=signal.payload)
            self._settle(rec.position, now)
            return
        if signal.kind == "invoke":
            pos = self._children.get(signal.key)
            rec = self._steps.get(pos) if pos is not None else None
            if rec is None or rec.done:
                return
            data = json.loads(signal.payload)
            if "error" in data:
                self._complete(rec, now, error=ErrorInfo.from_dict(data["error"]))
            else:
                self._complete(
                    rec, now, output=json.dumps(data["output"], separators=(",", ":"))
                )
            self._settle(rec.position, now)

    # ------------------------------------------------------------------ ending

    def _finish_ok(self, value: Any, now: int) -> None:
        try:
            text = dumps(value, what=f"run {self.run_id} output")
        except SerializationError as exc:
            self._fail(exc, now)
            return
        if _utf8_len(text) > MAX_STEP_OUTPUT_BYTES:
            self._fail(
                LimitExceededError(
                    f"run {self.run_id}: output is {_utf8_len(text)} bytes of JSON, over the "
                    "limit of "
                    f"{MAX_STEP_OUTPUT_BYTES}",
                    field="output",
                ),
                now,
            )
            return
        self._end()
        self.status = "completed"
        self.output = text
        first = self._record_end(now, '{"status":"completed","output":' + text + "}")
        self._persist.append(CompleteRun(self.run_id, text, now))
        if self.parent_run_id is not None and first:
            payload = '{"output":' + text + "}"
            self._persist.append(
                SendSignal(self.parent_run_id, Signal("invoke", self.run_id, payload))
            )

    def _finish_err(self, err: BaseException, now: int) -> None:
        if isinstance(err, _FATAL) or self._run_failures >= self.function.retries:
            self._fail(err, now)
            return
        if isinstance(err, RetryAfterError):
            try:
                delay = retry_after_delay(err.after, from_ms(now))
            except ValidationError as bad:
                self._fail(bad, now)
                return
        else:
            delay = retry_delay(self.run_id, "<run>", self._run_failures)
        retry_at = now + _ms(delay)
        info = ErrorInfo.from_exception(err)
        entry = JournalEntry(
            seq=len(self.entries), op="run_attempt_failed", position=_RUN_TIMER, step_id="",
            kind="", ts=now,
            data=json.dumps(
                {"attempt": self._run_failures, "error": info.to_dict(), "retry_at": retry_at},
                separators=(",", ":"),
            ),
        )
        self.entries.append(entry)
        self._new.append(entry)
        self._run_failures += 1
        self._run_retry_at = retry_at
        self._coro = None
        self._timers[_RUN_TIMER] = retry_at

    def _fail(self, err: BaseException, now: int, status: str = "failed") -> None:
        info = ErrorInfo.from_exception(err)
        self._end()
        self.status = status
        self.error = info
        self.failure = _without_frames(err)
        first = self._record_end(
            now, json.dumps({"status": status, "error": info.to_dict()}, separators=(",", ":"))
        )
        self._persist.append(FailRun(self.run_id, info, now, status=status))
        if self.parent_run_id is not None and first:
            payload = json.dumps({"error": info.to_dict()}, separators=(",", ":"))
            self._persist.append(
                SendSignal(self.parent_run_id, Signal("invoke", self.run_id, payload))
            )

    def _cancel(self, reason: str, now: int) -> None:
        coro, self._coro = self._coro, None
        if coro is not None:
            # RuntimeError: the code awaited a step in a finally block; nothing more will run.
            with contextlib.suppress(RuntimeError):
                coro.close()
        self._fail(_Cancelled(reason or "run cancelled"), now, status="cancelled")

    def _record_end(self, now: int, data: str) -> bool:
        """Journal the run's end. Returns False when replaying a run that already ended:
        then nothing is written and nobody is told again."""
        if self._ended_entry is not None:
            return False
        entry = JournalEntry(len(self.entries), "run_ended", -1, "", "", now, data)
        self.entries.append(entry)
        self._new.append(entry)
        self._ended_entry = entry
        return True

    def _end(self) -> None:
        self._ended = True
        # Let go of the run's code: the machine <-> context cycle (and a suspended
        # coroutine's frame) would otherwise keep the whole run in memory until a full
        # garbage collection, which a worker with tuned thresholds rarely runs.
        coro, self._coro, self._ctx = self._coro, None, None
        if (coro is not None and coro.cr_frame is not None  # type: ignore[attr-defined]
                and not coro.cr_running):  # type: ignore[attr-defined]
            # Still suspended (the run failed on a limit): run its finally blocks now, as
            # a cancel does. RuntimeError: it awaited a step in one; nothing more will run.
            with contextlib.suppress(RuntimeError):
                coro.close()
        for pos, rec in self._steps.items():
            if rec.kind == "wait_for_event" and not rec.done and pos in self._timers:
                self._persist.append(ClearWait(self.run_id, pos))
        self._timers.clear()
        self._dispatched.clear()
        self._parked = None

    # ------------------------------------------------------------------ output

    def _flush(self) -> list[Command]:
        new, execute = self._new, self._execute
        if (len(new) == 1 and len(execute) == 1 and not self._persist and not self._timers
                and self._reported[0] == "running"):
            # The hot path: one memo, then the next step's body.
            out: list[Command] = [_tuple_new(AppendJournal, (self.run_id, (new[0],))), execute[0]]
            new.clear()
            execute.clear()
            return out
        out = []
        if self._new:
            out.append(AppendJournal(self.run_id, tuple(self._new)))
            self._new.clear()
        if self._persist:
            out.extend(self._persist)
            self._persist = []
        if self._dispatched and not self._timers and self._reported[0] == "running":
            pass  # the hot path: a step finished and the next one started
        elif not self._ended:
            state = (self._current_status(), self.next_deadline())
            if state != self._reported:
                self._reported = state
                self.status = state[0]
                out.append(SetRunState(self.run_id, state[0], state[1]))
        if self._execute:
            out += self._execute
            self._execute.clear()
        return out

    def _current_status(self) -> str:
        if self._dispatched:
            return "running"
        parked = self._parked
        if parked is not None:
            for pos in parked[1]:
                rec = self._steps[pos]
                if not rec.done and rec.kind in ("wait_for_event", "invoke"):
                    return "waiting"
        if self._timers:
            return "sleeping"
        return "running" if self._coro is not None else self.status


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


def _ms(td: Any) -> int:
    return int(td.total_seconds() * 1000)
