"""The exception hierarchy. Every error the engine raises derives from :class:`DurableError`.

Errors a user raises on purpose (:class:`NonRetriableError`, :class:`RetryAfterError`) and the
error the engine raises into orchestration code (:class:`StepError`) live here too, so that one
``except DurableError`` catches everything the library produces.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

__all__ = [
    "DeterminismError",
    "DurableError",
    "FunctionConfigError",
    "InvalidCronError",
    "InvalidDurationError",
    "InvalidEventError",
    "InvalidExpressionError",
    "LimitExceededError",
    "NonRetriableError",
    "RetryAfterError",
    "RunFailedError",
    "RunNotFoundError",
    "RunTimeoutError",
    "SerializationError",
    "StepError",
    "StoreError",
    "StoreLostError",
    "UnknownFunctionError",
    "UsageError",
    "ValidationError",
]


class DurableError(Exception):
    """Base class of every error raised by durable-core."""


class ValidationError(DurableError, ValueError):
    """Bad input, rejected before anything changed.

    ``field`` names the offending field (``"trigger[0].if_"``, ``"event.name"``, ...) so a
    caller can point at it; the message says what is wrong and how to fix it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidEventError(ValidationError):
    """An event is malformed (empty or over-long name, ``data`` not a JSON object, too large)."""


class InvalidDurationError(ValidationError):
    """A duration or point in time could not be parsed, or is out of range."""


class InvalidCronError(ValidationError):
    """A cron expression (or its ``TZ=`` prefix) is invalid."""


class InvalidExpressionError(ValidationError):
    """A CEL expression does not compile, or failed to evaluate."""


class FunctionConfigError(ValidationError):
    """A function definition is invalid (bad id, retries, trigger list, duplicate id...)."""


class UnknownFunctionError(ValidationError):
    """A function id was named that the app does not define."""


class LimitExceededError(ValidationError):
    """A documented limit was exceeded (steps per run, output size, run state, event size)."""


class SerializationError(ValidationError):
    """A value could not be converted to or from JSON."""


class DeterminismError(DurableError):
    """Orchestration code did something that cannot be replayed deterministically.

    Raised when, on replay, the code asks for a step that does not match the journal (another
    id or kind at that position), when orchestration code awaits something other than a
    ``ctx`` primitive, and by the sandbox, at the call, when orchestration code reads the
    clock, draws random values, blocks, starts a thread or does I/O (``requested`` is then
    the call, e.g. ``"random.random()"``). ``position``, ``recorded`` and ``requested`` say where
    and what. It fails the run at once (no retries).
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        position: int | None = None,
        recorded: str | None = None,
        requested: str | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.position = position
        self.recorded = recorded
        self.requested = requested


class NonRetriableError(DurableError):
    """Raise from a step (or orchestration code) to fail at once, without further retries."""


class UsageError(NonRetriableError):
    """A ``ctx`` primitive was used where it cannot work: a step created and never awaited
    (the run fails, naming the step), or a step called inside another step's body (that
    step fails for good, naming both). Never retried: the same code would do it again."""


class RetryAfterError(DurableError):
    """Raise from a step to retry it after a given delay instead of the backoff table.

    ``after`` is seconds (int or float), a :class:`datetime.timedelta`, a duration string such
    as ``"30s"``, or an aware :class:`datetime.datetime` (retry at that time). The delay is
    clamped to [1 s, 24 h].
    """

    def __init__(
        self, message: str, after: float | _dt.timedelta | str | _dt.datetime
    ) -> None:
        super().__init__(message)
        self.after = after


class StepError(DurableError):
    """Raised into orchestration code when a step failed for good.

    Catch it to write a fallback. ``step_id`` is the step (with its counter suffix, if any),
    ``error_type`` the original exception's type name and ``error_message`` its message.
    """

    def __init__(self, step_id: str, error_type: str, error_message: str) -> None:
        super().__init__(f"step {step_id!r} failed: {error_type}: {error_message}")
        self.step_id = step_id
        self.error_type = error_type
        self.error_message = error_message
        self.traceback_text: str | None = None
        """The traceback of the step's error (its last attempt's), when it was recorded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (StepError, (self.step_id, self.error_type, self.error_message))


class StoreError(DurableError):
    """A store could not carry out an operation."""


class StoreLostError(StoreError):
    """The store this process had open is gone: its file was deleted, replaced or truncated
    while open. Retrying cannot help (writes would go to a file no one else sees); a worker
    that meets it stops with this error."""


class RunNotFoundError(StoreError, KeyError):
    """No run has the given id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class RunFailedError(DurableError):
    """Raised by ``RunHandle.result()`` when the run failed or was cancelled.

    ``run_id`` and ``function_id`` name the run, ``status`` is ``"failed"`` or
    ``"cancelled"``, ``error_type`` and ``error_message`` are the run's stored error (the
    type name and message of what ended it)."""

    def __init__(self, run_id: str, function_id: str, status: str, error_type: str,
                 error_message: str) -> None:
        super().__init__(
            f"run {run_id} of {function_id!r} {status}: {error_type}: {error_message}")
        self.run_id = run_id
        self.function_id = function_id
        self.status = status
        self.error_type = error_type
        self.error_message = error_message

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunFailedError, (self.run_id, self.function_id, self.status,
                                 self.error_type, self.error_message))


class RunTimeoutError(DurableError, TimeoutError):
    """Raised by ``RunHandle.result(timeout=...)`` when the run had not ended in time. The
    run goes on; wait again, or cancel it. ``run_id`` and ``status`` say where it was."""

    def __init__(self, run_id: str, status: str, timeout: float) -> None:
        super().__init__(
            f"run {run_id} had not ended after {timeout:g} s (it is {status}); it goes on")
        self.run_id = run_id
        self.status = status
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunTimeoutError, (self.run_id, self.status, self.timeout))
