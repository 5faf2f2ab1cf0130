"""Value classes that cross the boundary between the pure core and its drivers.

The records created once per step (``JournalEntry``, ``StepCompleted``, ``StepFailed``,
``ExecuteStep``, ``AppendJournal``) are ``NamedTuple``s: immutable like the attrs classes
used elsewhere, and three times cheaper to build (130-190 ns against 430 ns for a frozen
attrs class of seven fields), which matters on the per-step hot path.

*Inputs* are facts fed to a :class:`~durable_core.RunMachine`, named in the past tense, each
carrying ``now`` (milliseconds since the epoch). *Commands* are what the machine asks the
outside world to do, named in the imperative. *Records* are what stores keep. All of them are
immutable; don't subclass them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import traceback as _traceback
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import attrs

from durable_core.base._redact import redact_url

__all__ = [
    "MAX_TRACEBACK_BYTES",
    "TERMINAL_STATUSES",
    "TRACEBACK_CUT",
    "AppendJournal",
    "CancelRequested",
    "CancelRun",
    "ClearWait",
    "Command",
    "CompleteRun",
    "EmitEvents",
    "ErrorInfo",
    "ExecuteStep",
    "FailRun",
    "Input",
    "JournalEntry",
    "JournalOp",
    "RegisterWait",
    "RunStarted",
    "RunStatus",
    "SendSignal",
    "SetRunState",
    "Signal",
    "SignalKind",
    "SignalReceived",
    "StartRun",
    "StepCompleted",
    "StepFailed",
    "StepKind",
    "TimerFired",
    "bound_traceback",
    "derive_id",
]

class RunStatus(enum.StrEnum):
    """A run's status, as stored and shown. Str-valued: JSON and the stores keep the text."""

    QUEUED = "queued"
    """Created, not yet started by a worker."""
    RUNNING = "running"
    """Its code or a step body is running (or it is ready to run)."""
    SLEEPING = "sleeping"
    """Parked until a deadline: a sleep, a step's or the run's retry backoff."""
    WAITING = "waiting"
    """Parked on a ``wait_for_event`` or an ``invoke`` (and its timeout)."""
    COMPLETED = "completed"
    """Returned; ``output`` holds the value (terminal)."""
    FAILED = "failed"
    """Failed for good; ``error`` says why (terminal)."""
    CANCELLED = "cancelled"
    """Cancelled on request; ``error`` is a ``Cancelled`` with the reason (terminal)."""


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
"""The statuses a run never leaves."""


class StepKind(enum.StrEnum):
    """The kind of a step, as journalled and shown in timelines (one step machine each)."""

    RUN = "run"
    """``ctx.step.run``: a body executed by the driver, retried on failure."""
    SLEEP = "sleep"
    """``ctx.step.sleep`` / ``sleep_until``: a durable timer."""
    WAIT_FOR_EVENT = "wait_for_event"
    """``ctx.step.wait_for_event``: an event matching a filter, or ``None`` at the timeout."""
    INVOKE = "invoke"
    """``ctx.step.invoke``: a child run's output (its failure, or a timeout, is an error)."""
    SEND_EVENT = "send_event"
    """``ctx.step.send_event``: events appended to the event log; returns their ids."""


class JournalOp(enum.StrEnum):
    """What a journal entry records (its ``op``). ``data`` is a JSON object whose keys each op
    fixes; :mod:`durable_core.core._journal` builds and folds every one of them."""

    SCHEDULED = "scheduled"
    """A sleep, wait or invoke started. ``data``: ``until`` (deadline, ms); a wait adds
    ``event`` and ``if``; an invoke adds ``child`` (the child run id) and ``function``.
    Replays wait for the same instant and the same child."""
    ATTEMPT_FAILED = "attempt_failed"
    """An attempt of a ``run`` step failed and will be retried. ``data``: ``attempt``
    (0-based), ``error`` (``type``, ``message`` and ``traceback`` when there is one),
    ``retry_at`` (ms) and ``started_at`` (ms: when the attempt's body started, if not at
    the previous entry's ``ts``). A later attempt may record another step id at the same
    position (the code asked for another step: ``if ctx.attempt > 2``)."""
    COMPLETED = "completed"
    """The step's memo, written once: ``data`` holds ``output`` (any JSON) or ``error``
    (``type``, ``message``, ``traceback``) when it failed for good; a ``run`` step adds
    ``started_at`` (ms) when the body of its last attempt did not start at the previous
    entry's ``ts``."""
    RUN_ATTEMPT_FAILED = "run_attempt_failed"
    """Orchestration code raised outside any step (``position`` -1, ``kind`` ""): ``data``:
    ``attempt``, ``error``, ``retry_at``; the code is re-entered from the top then."""
    RUN_ENDED = "run_ended"
    """The run ended (``position`` -1, ``kind`` ""), the last entry. ``data``: ``status``
    (completed, failed or cancelled) with ``output`` or ``error``. A machine rebuilt from a
    journal that holds it replays the run to its end without telling anybody again."""
    PATCHED = "patched"
    """A patch marker: the code first asked ``ctx.patched(id)`` (or ``ctx.deprecate_patch``)
    past the end of the journal, so the run takes the patched branch. ``position`` -1 and
    ``kind`` "" (a marker holds no step position, so it shifts none); ``step_id`` is the
    patch id; ``ts`` the run's clock (``ctx.now()``) then. ``data``: ``at`` (the position of
    the next step the code asked for: the marker sits before it) and ``deprecated``
    (recorded by ``deprecate_patch``)."""
    STARTED = "started"
    """The run's first attempt began (``position`` -1, ``kind`` ""): written once, before
    its first step, for a function with ``timeouts=``; ``ts`` is when. ``data``: ``{}``.
    ``timeouts.finish`` counts from it, also after the run's machine was rebuilt."""


class SignalKind(enum.StrEnum):
    """What a :class:`Signal` to a run carries."""

    EVENT = "event"
    """An event matched the wait at ``position``; ``payload`` is the event's JSON."""
    INVOKE = "invoke"
    """The child run ``key`` ended; ``payload`` holds ``output`` or ``error``."""
    CANCEL = "cancel"
    """Cancel the run; ``payload`` is the reason."""


def derive_id(prefix: str, *parts: str | int) -> str:
    """A stable id from its parts (sha-256), e.g. a child run id or a sent event's id."""
    h = hashlib.sha256()
    for part in parts:
        b = str(part).encode("utf-8")
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return prefix + h.hexdigest()[:26]


def derive_uuid(*parts: str | int) -> uuid.UUID:
    """A stable version-4 shaped UUID from its parts."""
    h = hashlib.sha256()
    for part in parts:
        b = str(part).encode("utf-8")
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return uuid.UUID(bytes=h.digest()[:16], version=4)


def _storable(text: str) -> str:
    if not text.isascii():
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


MAX_TRACEBACK_BYTES = 16 * 1024
"""The largest traceback an :class:`ErrorInfo` keeps (UTF-8 bytes). A longer one keeps its
first 2 KiB and its last ~14 KiB, with :data:`TRACEBACK_CUT` (saying how much was cut)
between them: the outermost frames say where the call came from, the innermost ones and the
exception line say what went wrong."""
TRACEBACK_CUT = "\n... [{cut} bytes of traceback cut: tracebacks are kept up to 16 KiB] ...\n"
"""The marker left where a long traceback was cut (``{cut}`` is the number of bytes cut)."""
_TB_HEAD = 2 * 1024


def bound_traceback(text: str) -> str:
    """``text`` cut to :data:`MAX_TRACEBACK_BYTES` (see there), with the cut marker."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= MAX_TRACEBACK_BYTES:
        return text
    marker_room = len(TRACEBACK_CUT) + 12
    tail_len = MAX_TRACEBACK_BYTES - _TB_HEAD - marker_room
    head, tail = raw[:_TB_HEAD], raw[len(raw) - tail_len:]
    cut = len(raw) - len(head) - len(tail)
    return (head.decode("utf-8", "ignore") + TRACEBACK_CUT.format(cut=cut)
            + tail.decode("utf-8", "ignore"))


def _format_traceback(exc: BaseException) -> str | None:
    """The traceback of a raised exception (with its chained causes), bounded and with any
    password in a URL redacted; None for an exception that was never raised."""
    if exc.__traceback__ is None and exc.__cause__ is None and exc.__context__ is None:
        extra = getattr(exc, "traceback_text", None)  # e.g. a StepError's step's traceback
        return extra if isinstance(extra, str) else None
    try:
        text = "".join(_traceback.format_exception(exc))
    except Exception as error:  # a broken exception (its __str__, say) must not stop anything
        text = f"<the traceback could not be formatted: {type(error).__name__}>\n"
    extra = getattr(exc, "traceback_text", None)
    if isinstance(extra, str) and extra:
        text += "\nThe step's own error:\n\n" + extra
    return bound_traceback(redact_url(_storable(text)))


@attrs.frozen
class ErrorInfo:
    """A failure as stored: the exception's type name, its message and, for an exception
    that was raised, its traceback (``None`` otherwise; at most :data:`MAX_TRACEBACK_BYTES`,
    cut in the middle with :data:`TRACEBACK_CUT`, passwords in URLs redacted).

    Two errors are equal when their type and message are: tracebacks differ between
    processes and code versions (line numbers), and replays compare errors."""

    type: str
    message: str
    traceback: str | None = attrs.field(default=None, eq=False)

    def to_dict(self) -> dict[str, str]:
        """The JSON form (``traceback`` only when there is one)."""
        if self.traceback is None:
            return {"type": self.type, "message": self.message}
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ErrorInfo:
        """Rebuild from the JSON form (written with or without ``traceback``)."""
        tb = raw.get("traceback")
        return cls(type=str(raw["type"]), message=str(raw["message"]),
                   traceback=None if tb is None else str(tb))

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe an exception. Text a database cannot store (lone surrogates, NUL
        characters) is replaced by U+FFFD, so recording any failure always succeeds."""
        try:
            message = str(exc)
        except Exception as error:  # a broken __str__ must not stop the run from failing
            message = f"<str() of the exception failed: {type(error).__name__}>"
        return cls(type=_storable(type(exc).__name__), message=_storable(message),
                   traceback=_format_traceback(exc))


# --------------------------------------------------------------------------- journal


class JournalEntry(NamedTuple):
    """One record of a run's journal: a memo or a decision. Entries never change once written.

    ``seq`` is the entry's dense index in the journal. ``op`` is a :class:`JournalOp`
    (``scheduled``, ``attempt_failed``, ``completed``, ``run_attempt_failed``, ``run_ended``,
    ``patched``; each member documents its ``data``); ``kind`` a :class:`StepKind` (``""``
    for run-level entries).

    ``position`` is the step's place in discovery order; ``step_id`` includes the counter
    suffix of repeated ids (``fetch:1``); ``ts`` is the ``now`` (ms) of the input that led
    to the entry; ``data`` is JSON text.
    """

    seq: int
    op: str
    position: int
    step_id: str
    kind: str
    ts: int
    data: str

    def payload(self) -> dict[str, Any]:
        """``data`` parsed."""
        out: dict[str, Any] = json.loads(self.data)
        return out


# --------------------------------------------------------------------------- signals


@attrs.frozen
class Signal:
    """A durable message to a run, kept with its signals until the run consumes it.

    ``kind`` is a :class:`SignalKind`: ``"event"`` (an event matched the wait at
    ``position``), ``"invoke"`` (the child run ``key`` ended; ``payload`` holds ``output`` or
    ``error``) or ``"cancel"``. ``payload`` is JSON text (the reason, for a cancel).
    """

    kind: str
    key: str
    payload: str
    position: int = -1


# --------------------------------------------------------------------------- inputs


@attrs.frozen
class RunStarted:
    """The run's code should be (re-)entered: first start, or rebuilt after a restart."""

    now: int


class StepCompleted(NamedTuple):
    """The body of the ``run`` step at ``position`` returned ``value``."""

    position: int
    attempt: int
    value: Any
    now: int


class StepFailed(NamedTuple):
    """The body of the ``run`` step at ``position`` raised ``error``."""

    position: int
    attempt: int
    error: BaseException
    now: int


@attrs.frozen
class TimerFired:
    """Time has reached (at least) the machine's ``next_deadline()``."""

    now: int


@attrs.frozen
class SignalReceived:
    """A signal arrived among the run's signals."""

    signal: Signal
    now: int


@attrs.frozen
class CancelRequested:
    """Someone asked to cancel the run. ``boundary``: found at a step boundary (a body's
    result arriving), so the run ends after recording it, whatever the cause."""

    reason: str
    now: int
    boundary: bool = False


Input = RunStarted | StepCompleted | StepFailed | TimerFired | SignalReceived | CancelRequested


# --------------------------------------------------------------------------- commands


class AppendJournal(NamedTuple):
    """Persist ``entries`` at the end of the run's journal (fenced by the run's lease)."""

    run_id: str
    entries: tuple[JournalEntry, ...]


@attrs.frozen
class SetRunState:
    """Persist the run's (non-terminal) status and when it next needs waking (ms or None)."""

    run_id: str
    status: RunStatus
    wake_at: int | None


class ExecuteStep(NamedTuple):
    """Run a step body: ``fn(*args, **kwargs)``; answer with StepCompleted/StepFailed carrying
    the same ``position`` and ``attempt``. Never started before earlier persistence commands
    of the same batch are durable."""

    run_id: str
    position: int
    step_id: str
    attempt: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@attrs.frozen
class RegisterWait:
    """Route events named ``event`` (matching ``if_`` over ``event``/``async``) to the run's
    wait at ``position`` until ``expires_at``; idempotent."""

    run_id: str
    position: int
    event: str
    if_: str | None
    trigger_event: str  # JSON of the run's triggering event, the CEL ``event`` variable
    expires_at: int


@attrs.frozen
class ClearWait:
    """The wait at ``position`` is resolved; stop routing events to it."""

    run_id: str
    position: int


@attrs.frozen
class EmitEvents:
    """Append events (as sent by ``step.send_event``) to the event log."""

    events: tuple[str, ...]  # JSON texts, with ids and ts filled in


@attrs.frozen
class StartRun:
    """Create a run (idempotent by ``run_id``), e.g. the child of an invoke."""

    run_id: str
    function_id: str
    event: str  # JSON of the triggering event
    parent_run_id: str | None = None


@attrs.frozen
class SendSignal:
    """Store ``signal`` for run ``run_id`` (with its signals) and wake it."""

    run_id: str
    signal: Signal


@attrs.frozen
class CompleteRun:
    """The run returned; ``output`` is JSON text. Persist status ``completed``."""

    run_id: str
    output: str


@attrs.frozen
class FailRun:
    """The run failed for good. Persist status ``failed`` with ``error``."""

    run_id: str
    error: ErrorInfo


@attrs.frozen
class CancelRun:
    """The run was cancelled. Persist status ``cancelled`` with ``error`` (type
    ``Cancelled``, the reason as its message). ``reason`` says why, for the run's
    ``durable/function.cancelled`` event: ``"request"``, ``"cancel_on"`` or ``"timeout"``."""

    run_id: str
    error: ErrorInfo
    reason: str = "request"


Command = (
    AppendJournal
    | SetRunState
    | ExecuteStep
    | RegisterWait
    | ClearWait
    | EmitEvents
    | StartRun
    | SendSignal
    | CompleteRun
    | FailRun
    | CancelRun
)
