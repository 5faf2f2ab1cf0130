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

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import attrs

__all__ = [
    "AppendJournal",
    "CancelRequested",
    "ClearWait",
    "Command",
    "CompleteRun",
    "EmitEvents",
    "ErrorInfo",
    "ExecuteStep",
    "FailRun",
    "Input",
    "JournalEntry",
    "RegisterWait",
    "RunStarted",
    "SendSignal",
    "SetRunState",
    "Signal",
    "SignalReceived",
    "StartRun",
    "StepCompleted",
    "StepFailed",
    "TimerFired",
    "derive_id",
]

# Step kinds, as shown in timelines and stored in journals.
STEP_KINDS = ("run", "sleep", "wait_for_event", "invoke", "send_event")

# Run statuses.
RUN_STATUSES = ("queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


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


@attrs.frozen
class ErrorInfo:
    """A failure as stored: the exception's type name and message."""

    type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """The JSON form."""
        return {"type": self.type, "message": self.message}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ErrorInfo:
        """Rebuild from the JSON form."""
        return cls(type=str(raw["type"]), message=str(raw["message"]))

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe an exception. Text a database cannot store (lone surrogates, NUL
        characters) is replaced by U+FFFD, so recording any failure always succeeds."""
        try:
            message = str(exc)
        except Exception as error:  # a broken __str__ must not stop the run from failing
            message = f"<str() of the exception failed: {type(error).__name__}>"
        return cls(type=_storable(type(exc).__name__), message=_storable(message))


# --------------------------------------------------------------------------- journal


class JournalEntry(NamedTuple):
    """One record of a run's journal: a memo or a decision. Entries never change once written.

    ``seq`` is the entry's dense index in the journal. ``op`` is one of:

    - ``"scheduled"``: a sleep, wait or invoke was started; ``data`` fixes its deadline (and
      the child run id of an invoke), so replays wait for the same instant.
    - ``"attempt_failed"``: an attempt of a ``run`` step failed and will be retried at
      ``data["retry_at"]``.
    - ``"completed"``: the step's memo: ``data`` holds ``output`` or ``error``.
    - ``"run_attempt_failed"``: orchestration code raised outside any step (``position`` -1).

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
    """A message to a run, kept in its durable inbox until the run consumes it.

    ``kind`` is ``"event"`` (an event matched the wait at ``position``), ``"invoke"`` (the
    child run ``key`` ended; ``payload`` holds ``output`` or ``error``) or ``"cancel"``.
    ``payload`` is JSON text.
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
    """A signal arrived in the run's inbox."""

    signal: Signal
    now: int


@attrs.frozen
class CancelRequested:
    """Someone asked to cancel the run."""

    reason: str
    now: int


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
    status: str
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
    """Put ``signal`` in the inbox of run ``run_id`` and wake it."""

    run_id: str
    signal: Signal


@attrs.frozen
class CompleteRun:
    """The run returned; ``output`` is JSON text."""

    run_id: str
    output: str
    now: int


@attrs.frozen
class FailRun:
    """The run failed for good (or was cancelled, with ``status="cancelled"``)."""

    run_id: str
    error: ErrorInfo
    now: int
    status: str = "failed"


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
)
