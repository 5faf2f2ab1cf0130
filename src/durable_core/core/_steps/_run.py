"""The ``run`` step machine: a body executed by the driver, retried with backoff.

::

    NEW ──START──▶ RUNNING ──SUCCEEDED──▶ COMPLETED
     │               │  ▲  └─FAILED_FOR_GOOD──▶ FAILED
     │            FAILED  DEADLINE
     │               ▼  │
     └─RETRY_LATER─▶ BACKING_OFF

The per-step hot path lives here: :meth:`RunStep.dispatch` takes row ``(NEW, START)`` for a
step the journal knows nothing of, and :meth:`RunStep.succeeded` row ``(RUNNING, SUCCEEDED)``,
handing the value straight to the code parked on it. Both take their rows without looking
them up (pinned at import, below); every other transition goes through the table.
"""

from __future__ import annotations

import enum
from typing import Any

from durable_core.base._backoff import retry_at_ms
from durable_core.base._errors import (
    LimitExceededError,
    NonRetriableError,
    SerializationError,
    ValidationError,
)
from durable_core.base._serde import HINT_CACHE, dumps, encode_output, return_hint
from durable_core.core._context import RunRequest
from durable_core.core._journal import (
    MAX_RUN_STATE_BYTES,
    MAX_STEP_OUTPUT_BYTES,
    StepMemo,
    attempt_failed_data,
    utf8_len,
)
from durable_core.core._model import ErrorInfo, ExecuteStep, JournalOp, StepKind
from durable_core.core._steps._base import (
    _UNSET,
    Effect,
    StepHost,
    StepInput,
    StepMachine,
    StepTransitionError,
    Table,
    _Identity,
)

__all__ = ["RunState", "RunStep"]

_tuple_new = tuple.__new__
_SCALARS = (str, int, float, bool, type(None))
"""The annotations under which a recorded scalar comes back as it is (see serde.loads)."""
_hints_get = HINT_CACHE.get
_MISSING: Any = object()


class RunState(_Identity):
    """The states of a ``run`` step."""

    NEW = enum.auto()
    """Made for the code's request; not started yet."""
    RUNNING = enum.auto()
    """An attempt's body was dispatched (:class:`ExecuteStep`); waiting for its answer."""
    BACKING_OFF = enum.auto()
    """An attempt failed; the next one starts at the deadline."""
    COMPLETED = enum.auto()
    """The body's value is the memo."""
    FAILED = enum.auto()
    """The step failed for good: the memo is the error (a ``StepError`` for the code)."""
    ABANDONED = enum.auto()
    """The run ended first; nothing more happens."""


S, In, E = RunState, StepInput, Effect

RUN_TABLE: Table = {
    (S.NEW, In.START): (S.RUNNING, (E.EXECUTE_BODY,)),
    (S.NEW, In.RETRY_LATER): (S.BACKING_OFF, (E.ARM_TIMER,)),
    (S.BACKING_OFF, In.DEADLINE): (S.RUNNING, (E.DISARM_TIMER, E.EXECUTE_BODY)),
    (S.RUNNING, In.SUCCEEDED): (S.COMPLETED, (E.FORGET_BODY, E.JOURNAL_COMPLETED, E.RESUME)),
    (S.RUNNING, In.FAILED): (
        S.BACKING_OFF, (E.FORGET_BODY, E.JOURNAL_ATTEMPT_FAILED, E.ARM_TIMER)
    ),
    (S.RUNNING, In.FAILED_FOR_GOOD): (
        S.FAILED, (E.FORGET_BODY, E.JOURNAL_COMPLETED, E.RESUME)
    ),
    (S.RUNNING, In.RUN_ENDED): (S.ABANDONED, (E.FORGET_BODY,)),
    (S.BACKING_OFF, In.RUN_ENDED): (S.ABANDONED, (E.DISARM_TIMER,)),
}

# The hot path takes these two rows without a look-up; if the table changes, so must it.
assert RUN_TABLE[S.NEW, In.START] == (S.RUNNING, (E.EXECUTE_BODY,))
assert RUN_TABLE[S.RUNNING, In.SUCCEEDED] == (
    S.COMPLETED, (E.FORGET_BODY, E.JOURNAL_COMPLETED, E.RESUME)
)
_RUNNING = S.RUNNING
_RUN = StepKind.RUN
_COMPLETED = S.COMPLETED
del S, In, E


class RunStep(StepMachine):
    """The machine of one ``run`` step. ``failures`` is the number of failed attempts (the
    next attempt's number); ``cmd`` the body dispatched for the current attempt."""

    KIND = StepKind.RUN
    TABLE = RUN_TABLE
    INITIAL = RunState.NEW
    DONE = frozenset({RunState.COMPLETED, RunState.FAILED})

    failures = 0
    cmd: ExecuteStep | None = None
    req: RunRequest
    _hint_fn: Any = None
    """The body whose return hint ``_hint`` is (this object is recycled step after step)."""
    _hint: Any = None

    def dispatch(
        self, host: StepHost, position: int, step_id: str, req: RunRequest, attempt: int
    ) -> RunStep:
        """Dispatch the body of ``attempt`` (the EXECUTE_BODY effect) and be RUNNING. It is
        also how a new step past the end of the journal is started, the hot path:
        ``RunStep.__new__(RunStep).dispatch(host, ..., 0)`` takes row ``(NEW, START)``
        without a table look-up and without a place in the host's step table (the host finds
        a running body through ``_dispatched``).

        The run machine also recycles a run step whose memo the code has taken (nothing
        refers to it any more) as the next new run step: one object per run rather than
        per step. So this sets every attribute a ``run`` step's transitions read, clearing
        the memo of an earlier use. (Set on the instance also because CPython 3.11 reads
        an instance attribute several times faster than a class default through an
        instance.)"""
        self.host = host
        self.position = position
        self.step_id = step_id
        self.kind = _RUN
        self.req = req
        self.failures = attempt
        self.state = _RUNNING
        self.output = self.error = None
        self.live = _UNSET
        cmd = _tuple_new(
            ExecuteStep,
            (host.run_id, position, step_id, attempt, req.fn, req.args, req.kwargs),
        )
        self.cmd = cmd
        host._dispatched[position] = self
        host._execute.append(cmd)
        return self

    # ---------------------------------------------------------------- inputs

    def start(self, memo: StepMemo | None, now: int) -> None:
        """START, or RETRY_LATER when the journal says the next attempt is not due yet."""
        if memo is not None and memo.retry_at is not None and memo.retry_at > now:
            self._expect(StepInput.RETRY_LATER)
            self.failures = memo.failures
            self.deadline = memo.retry_at
            self._fire(StepInput.RETRY_LATER, now)
            return
        self._expect(StepInput.START)
        if memo is not None:
            self.failures = memo.failures
        self._fire(StepInput.START, now)

    def succeeded(self, value: Any, now: int) -> None:
        """The body returned ``value``: SUCCEEDED, or FAILED_FOR_GOOD when the value cannot
        be recorded (not JSON-serializable, or too large)."""
        if self.state is not _RUNNING:
            raise StepTransitionError(self.KIND, self.position, self.state, StepInput.SUCCEEDED)
        t = type(value)
        # An int, str, bool or None needs no round trip when the body's annotation (if
        # any) is a JSON scalar type, as a replay then hands back the JSON value as it is.
        # (Under ``-> datetime`` or ``-> MyEnum`` a str is structured on replay: the same
        # must happen now, so it takes the general path.)
        fn = self.req.fn
        if fn is self._hint_fn:  # the body of the previous step this object ran: a loop
            hint = self._hint
        else:
            try:
                hint = _hints_get(fn, _MISSING)  # return_hint(fn)'s cache, inlined
            except TypeError:
                hint = _MISSING
            if hint is _MISSING:
                hint = return_hint(fn)
            self._hint_fn = fn
            self._hint = hint
        if t is int and (hint is None or hint in _SCALARS):
            text = repr(value)  # JSON and ASCII (an exact int: repr is int's own)
            live = value
            size = len(text)
        elif (t is str or value is None or t is bool) and (
            hint is None or hint in _SCALARS
        ) and not (
            t is str and (len(value) > MAX_STEP_OUTPUT_BYTES // 4 or not value.isascii())
        ):
            text = dumps(value, what="")
            live = value
            size = len(text)  # ASCII
        else:
            try:
                text, live = encode_output(
                    value, hint, self.host._converter, what=f"step {self.step_id!r} output",
                )
            except SerializationError as exc:
                self._give_up(exc, now)
                return
            size = utf8_len(text)
            if size > MAX_STEP_OUTPUT_BYTES:
                self._give_up(
                    LimitExceededError(
                        f"step {self.step_id!r} output is {size} bytes of JSON, over the "
                        f"limit of {MAX_STEP_OUTPUT_BYTES}; store large data elsewhere and "
                        "return a reference",
                        field="output",
                    ),
                    now,
                )
                return
        # Row (RUNNING, SUCCEEDED), pinned above: FORGET_BODY, JOURNAL_COMPLETED, RESUME.
        self.state = _COMPLETED
        self.output = text
        self.live = live
        host = self.host
        del host._dispatched[self.position]
        self._do_journal_completed(now, size)
        if host._state_bytes > MAX_RUN_STATE_BYTES:
            host._over_state_limit(now)  # the run fails: its recorded state is too large
            return
        host._settle(self, now)  # RESUME

    def failed(self, exc: BaseException, now: int) -> None:
        """The body raised ``exc``: FAILED (a retry is scheduled) or FAILED_FOR_GOOD."""
        attempt = self.failures
        if isinstance(exc, NonRetriableError) or attempt >= self.host._retries:
            self._give_up(exc, now)
            return
        self._expect(StepInput.FAILED)
        try:
            self.deadline = retry_at_ms(exc, now, self.host.run_id, self.step_id, attempt)
        except ValidationError as bad:
            # A RetryAfterError whose value is no delay: a bug in the step's code that
            # retrying cannot fix. Fail the step, clearly.
            self._give_up(bad, now)
            return
        self.error = ErrorInfo.from_exception(exc)
        self._fire(StepInput.FAILED, now)
        self.error = None

    def _give_up(self, exc: BaseException, now: int) -> None:
        self._expect(StepInput.FAILED_FOR_GOOD)
        self.error = ErrorInfo.from_exception(exc)
        self._fire(StepInput.FAILED_FOR_GOOD, now)

    # ---------------------------------------------------------------- effects

    def _do_execute_body(self, now: int) -> None:
        self.dispatch(self.host, self.position, self.step_id, self.req, self.failures)
        self.started = now  # (off the hot path: journalled, see StepMachine.started)

    def _do_forget_body(self, now: int) -> None:
        del self.host._dispatched[self.position]

    def _do_journal_attempt_failed(self, now: int) -> None:
        assert self.error is not None and self.deadline is not None
        self._append(
            JournalOp.ATTEMPT_FAILED, now,
            attempt_failed_data(self.failures, self.error, self.deadline, self.started),
        )
        self.failures += 1
