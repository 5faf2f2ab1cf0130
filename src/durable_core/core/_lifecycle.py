"""A run's lifecycle events: the system events a run emits when it ends, the rule that keeps
them from looping, and the ids that make each one unique (pure: no I/O, no clock).

Every run that ends emits ``durable/function.finished``; a run that failed for good also
emits ``durable/function.failed``, and a cancelled one ``durable/function.cancelled``. Their
ids derive from the run id (:func:`system_event_id`), so two finalizers of one run cannot
emit one twice (event dedupe), and the engine commits them with the run's end (a store
appends them only if that end is accepted), so a crash cannot lose them either.

Cancel-on events and timeouts: the run-lifecycle options of ``@app.function``, and the
cancel reasons the engine records. Pure: no I/O, no clock.

``cancel_on=[CancelOn(event, if_=..., timeout=...)]`` (at most 5) cancels a run when a
matching event arrives; it is routed through the same wait index as ``wait_for_event``: each
entry is a wait registered for the run at a reserved negative position
(:func:`cancel_position`), from the run's creation to its end.

``timeouts=Timeouts(start=..., finish=...)`` cancels a run that does not start, or finish,
in time.

A cancelled run's error is a ``Cancelled`` whose message says why; :func:`cancel_cause`
reads it back (``{"by": "event" | "timeout" | "request", ...}``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from durable_core.base._cel import Expression, compile_expression
from durable_core.base._durations import format_duration, parse_duration
from durable_core.base._errors import FunctionConfigError, InvalidEventError, ValidationError
from durable_core.base._events import (
    _MAX_TS,
    _MIN_TS,
    MAX_EVENT_BYTES,
    MAX_EVENT_NAME_BYTES,
    Event,
)
from durable_core.base._serde import MAX_JSON_DEPTH, check_text
from durable_core.core._model import ErrorInfo, RunStatus

__all__ = [
    "CANCELLED_EVENT",
    "CANCEL_BY_REQUEST",
    "CANCEL_POSITION_BASE",
    "CANCEL_REASONS",
    "DEFAULT_CANCEL_TIMEOUT",
    "FAILED_EVENT",
    "FAILURE_SUFFIX",
    "FINISHED_EVENT",
    "MAX_CANCEL_ON",
    "SYSTEM_EVENTS",
    "CancelOn",
    "Timeouts",
    "bind_cancel_on",
    "bind_timeouts",
    "cancel_cause",
    "cancel_index",
    "cancel_position",
    "event_reason",
    "idempotency_text",
    "parent_reason",
    "singleton_reason",
    "starts_nothing",
    "system_event_id",
    "system_events",
    "timeout_reason",
]

FINISHED_EVENT = "durable/function.finished"
"""Emitted by every run that ends (completed, failed or cancelled)."""
FAILED_EVENT = "durable/function.failed"
"""Emitted by a run that failed for good (its retries exhausted, or a non-retriable error)."""
CANCELLED_EVENT = "durable/function.cancelled"
"""Emitted by a run that was cancelled."""
SYSTEM_EVENTS = frozenset({FINISHED_EVENT, FAILED_EVENT, CANCELLED_EVENT})
"""The names only the engine emits: sending one is an error."""
CANCEL_REASONS = ("request", "cancel_on", "timeout", "parent", "singleton")
"""Why a run was cancelled (``data.reason`` of ``durable/function.cancelled``): a request
(``Client.cancel_run``, ``cancel_runs``, ``TestEngine.cancel_run``), a ``cancel_on`` event,
a timeout, its parent's cancel (an invoked child), or a newer run of its
``Singleton(mode="cancel")`` key. The error's message says more (:func:`cancel_cause`)."""
FAILURE_SUFFIX = "-failure"
"""``@app.function(id=X, on_failure=handler)`` registers ``handler`` as function
``X-failure``."""

_KIND = {FINISHED_EVENT: "finished", FAILED_EVENT: "failed", CANCELLED_EVENT: "cancelled"}


def system_event_id(name: str, run_id: str) -> str:
    """The id of a run's system event ``name``: one per run and name, so the store's event
    dedupe drops a second emission."""
    return f"{_KIND[name]}:{run_id}"


def _trigger(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None  # a stored event that is not valid any more (the run was poisoned)


def system_events(
    function_id: str,
    run_id: str,
    events: Sequence[str],
    status: str,
    now: int,
    *,
    output: str | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
) -> list[str]:
    """The system events (JSON texts) of a run of ``function_id`` that ended with ``status``
    at ``now``: ``durable/function.finished``, then ``durable/function.failed`` or
    ``durable/function.cancelled``. ``events`` are the run's triggering events (JSON
    texts); ``output`` the JSON text of its return value (completed), ``error`` its error
    (failed, cancelled); ``reason`` why it was cancelled (one of :data:`CANCEL_REASONS`).

    Each event's ``data``: ``function_id``, ``run_id``, ``event`` (the first triggering
    event), ``events`` (all of them) and ``status``; then ``result`` (completed) or
    ``error`` (failed, cancelled: ``{type, message, ...}``), and ``reason`` (cancelled). An
    event over the 512 KiB event limit keeps its ids and status but drops, in turn,
    ``events``, ``result``, ``event`` and the error's details (``trimmed`` lists what)."""
    triggers = [_trigger(t) for t in events]
    base: dict[str, Any] = {
        "function_id": function_id, "run_id": run_id,
        "event": triggers[0] if triggers else None, "events": triggers, "status": status,
    }
    if status == RunStatus.COMPLETED:
        base["result"] = None if output is None else _trigger(output)
    elif error is not None:
        base["error"] = error.to_dict()
    names = [FINISHED_EVENT]
    if status == RunStatus.FAILED:
        names.append(FAILED_EVENT)
    elif status == RunStatus.CANCELLED:
        names.append(CANCELLED_EVENT)
        base["reason"] = reason or "request"
    return [_fit(name, system_event_id(name, run_id), base, now) for name in names]


def _fit(name: str, event_id: str, data: dict[str, Any], now: int) -> str:
    """The event as JSON, valid as any event must be (size, nesting, Unicode text): trimmed
    if not (see system_events), so a run that ends always emits storable events."""
    fast = _fits_at_once(name, event_id, data, now)
    if fast is not None:
        return fast
    data = dict(data)
    trimmed: list[str] = []
    for drop in ("events", "result", "event", "error"):
        try:
            return Event(name, data, id=event_id, ts=now).to_json()
        except (InvalidEventError, RecursionError):
            pass
        if drop in data:
            if drop == "error":
                err = data["error"]
                data["error"] = {"type": _plain(err.get("type"), 200),
                                 "message": _plain(err.get("message"), 2000)}
            else:
                data[drop] = [] if drop == "events" else None
            trimmed.append(drop)
            data["trimmed"] = trimmed
    try:
        return Event(name, data, id=event_id, ts=now).to_json()
    except (InvalidEventError, RecursionError):
        data = {k: data.get(k) for k in ("function_id", "run_id", "status", "reason")}
        data["trimmed"] = [*trimmed, "error"]
        return json.dumps({"name": name, "data": data, "id": event_id, "ts": now},
                          separators=(",", ":"))


def _fits_at_once(name: str, event_id: str, data: dict[str, Any], now: int) -> str | None:
    """The event's JSON text, as ``Event(name, data, ...).to_json()`` gives it, if it is
    surely valid without building the event (which serializes it twice and walks it): valid
    Unicode (it encodes), within the size limit, and with fewer brackets than the nesting
    limit (so it cannot nest deeper). None when unsure: then the event is built and
    checked (a run's end is on every short run's path)."""
    if type(now) is not int or not _MIN_TS <= now < _MAX_TS:
        return None  # Event refuses the time: the slow path says how
    try:
        text = json.dumps({"name": name, "data": data, "id": event_id, "ts": now},
                          separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if text.count("{") + text.count("[") > MAX_JSON_DEPTH:
            return None
        if len(text.encode("utf-8")) > MAX_EVENT_BYTES:
            return None
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    return text


def _plain(value: Any, limit: int) -> str:
    """``value`` as text of at most ``limit`` characters, lone surrogates replaced."""
    text = str(value)[:limit]
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def starts_nothing(event: Mapping[str, Any]) -> bool:
    """The loop rule: a system event about a run that a system event started triggers no
    function (it is stored, listed and resumes waits as usual). So a function triggered by
    ``durable/function.finished`` cannot retrigger itself, and a failure handler that fails
    starts no other: a chain of runs started by system events is one run long."""
    if event.get("name") not in SYSTEM_EVENTS:
        return False
    data = event.get("data")
    trigger = data.get("event") if isinstance(data, Mapping) else None
    return isinstance(trigger, Mapping) and trigger.get("name") in SYSTEM_EVENTS


def idempotency_text(value: Any) -> str | None:
    """The idempotency key of a function's evaluated ``idempotency`` expression: a string as
    it is, ``None`` (null) as no key, any other value as its compact JSON text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------- cancel-on and timeouts

MAX_CANCEL_ON = 5
"""At most this many ``CancelOn`` entries per function (Inngest's ``MaxCancellations``)."""
DEFAULT_CANCEL_TIMEOUT = dt.timedelta(days=365)
"""How long a ``CancelOn`` listens without a ``timeout`` (Inngest's ``CancelTimeout``)."""
MAX_CANCEL_TIMEOUT = dt.timedelta(days=366)
MAX_TIMEOUT = dt.timedelta(days=366)
CANCEL_POSITION_BASE = -1000
"""``cancel_on[i]`` is registered as a wait at position ``CANCEL_POSITION_BASE - i``:
negative, so it never collides with a step's position."""
CANCEL_BY_REQUEST = "cancelled by request"
"""The default reason of ``Client.cancel_run``."""


def cancel_position(index: int) -> int:
    """The wait position of ``cancel_on[index]``."""
    return CANCEL_POSITION_BASE - index


def cancel_index(position: int) -> int | None:
    """The ``cancel_on`` index of a wait position, or None for a step's wait."""
    if CANCEL_POSITION_BASE - MAX_CANCEL_ON < position <= CANCEL_POSITION_BASE:
        return CANCEL_POSITION_BASE - position
    return None


@attrs.frozen
class CancelOn:
    """Cancel the run when an event named ``event`` arrives for which the CEL expression
    ``if_`` is true. ``if_`` sees the run's triggering event as ``event`` and the incoming
    one as ``async`` (``"event.data.order_id == async.data.order_id"``), as in
    ``wait_for_event``. ``timeout`` (a duration: seconds, ``"30m"``, a timedelta; at most
    366 days, default 365 days) is how long after the run was created it listens.

    Checked when the function is registered: a bad name, expression or timeout raises a
    :class:`~durable_core.FunctionConfigError` (an
    :class:`~durable_core.InvalidExpressionError` for the expression) naming the field."""

    event: str
    if_: str | None = None
    timeout: str | float | dt.timedelta | None = None


@attrs.frozen
class Timeouts:
    """Cancel runs that take too long. ``start``: the longest time from the trigger (the
    run's creation) to the run's first attempt (a worker first running its code, up to its
    first step); time spent queued counts. ``finish``: the longest time from that first
    attempt to the run's end. Durations as elsewhere (seconds, ``"5m"``, a timedelta),
    more than 0 and at most 366 days; either may be None.

    Both are inclusive: a run that starts exactly ``start`` after its trigger, or ends
    exactly ``finish`` after its first attempt, is on time; one millisecond later it is
    cancelled (at its next step boundary: a step body already running finishes)."""

    start: str | float | dt.timedelta | None = None
    finish: str | float | dt.timedelta | None = None


@attrs.frozen
class BoundCancelOn:
    """A checked ``CancelOn``: its expression compiled, its timeout in ms."""

    index: int
    event: str
    if_: str | None
    timeout_ms: int
    expression: Expression | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BoundTimeouts:
    """Checked ``Timeouts``, in ms (None: unbounded)."""

    start_ms: int | None
    finish_ms: int | None
    start_text: str | None = None
    finish_text: str | None = None


def _ms(td: dt.timedelta) -> int:
    return int(td.total_seconds() * 1000)


def bind_cancel_on(value: Any, function_id: str) -> tuple[BoundCancelOn, ...]:
    """``cancel_on=`` of ``@app.function`` checked; errors name the function and field."""
    if value is None:
        return ()
    if isinstance(value, CancelOn):
        items: Sequence[Any] = (value,)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        items = value
    else:
        raise FunctionConfigError(
            f"function {function_id!r}: cancel_on: expected a list of CancelOn(...), got "
            f"{type(value).__name__}",
            field="cancel_on",
        )
    if len(items) > MAX_CANCEL_ON:
        raise FunctionConfigError(
            f"function {function_id!r}: cancel_on: {len(items)} entries is over the limit of "
            f"{MAX_CANCEL_ON}; combine conditions with || in one if_",
            field="cancel_on",
        )
    out: list[BoundCancelOn] = []
    for i, c in enumerate(items):
        field = f"cancel_on[{i}]"
        if not isinstance(c, CancelOn):
            raise FunctionConfigError(
                f"function {function_id!r}: {field}: expected CancelOn(event, if_=..., "
                f"timeout=...), got {c!r}",
                field=field,
            )
        if not isinstance(c.event, str) or not c.event:
            raise FunctionConfigError(
                f"function {function_id!r}: {field}.event: must be a non-empty event name, "
                f"got {c.event!r}",
                field=f"{field}.event",
            )
        check_text(c.event, what=f"function {function_id!r}: {field}.event",
                   error=FunctionConfigError, nul=True)
        if len(c.event.encode("utf-8")) > MAX_EVENT_NAME_BYTES:
            raise FunctionConfigError(
                f"function {function_id!r}: {field}.event: over {MAX_EVENT_NAME_BYTES} bytes, "
                "so no event could ever match; use a shorter name",
                field=f"{field}.event",
            )
        expr = None
        if c.if_ is not None:
            if not isinstance(c.if_, str):
                raise FunctionConfigError(
                    f"function {function_id!r}: {field}.if_: must be a CEL expression string "
                    f"over event and async, got {c.if_!r}",
                    field=f"{field}.if_",
                )
            try:
                expr = compile_expression(c.if_, field=f"{field}.if_",
                                          variables=("event", "async"))
            except ValidationError as exc:
                raise type(exc)(f"function {function_id!r}: {exc}",
                                field=f"{field}.if_") from None
        if c.timeout is None:
            timeout_ms = _ms(DEFAULT_CANCEL_TIMEOUT)
        else:
            try:
                td = parse_duration(c.timeout, field=f"{field}.timeout",
                                    maximum=MAX_CANCEL_TIMEOUT)
            except ValidationError as exc:
                raise FunctionConfigError(f"function {function_id!r}: {exc}",
                                          field=f"{field}.timeout") from None
            timeout_ms = _ms(td)
            if timeout_ms <= 0:
                raise FunctionConfigError(
                    f"function {function_id!r}: {field}.timeout: must be more than 0 "
                    "(leave it out to listen for 365 days)",
                    field=f"{field}.timeout",
                )
        out.append(BoundCancelOn(i, c.event, c.if_, timeout_ms, expr))
    return tuple(out)


def bind_timeouts(value: Any, function_id: str) -> BoundTimeouts | None:
    """``timeouts=`` of ``@app.function`` checked; errors name the function and field."""
    if value is None:
        return None
    if not isinstance(value, Timeouts):
        raise FunctionConfigError(
            f"function {function_id!r}: timeouts: expected Timeouts(start=..., finish=...), "
            f"got {value!r}",
            field="timeouts",
        )
    parts: dict[str, tuple[int | None, str | None]] = {}
    for name in ("start", "finish"):
        raw = getattr(value, name)
        if raw is None:
            parts[name] = (None, None)
            continue
        field = f"timeouts.{name}"
        try:
            td = parse_duration(raw, field=field, maximum=MAX_TIMEOUT)
        except ValidationError as exc:
            raise FunctionConfigError(f"function {function_id!r}: {exc}", field=field) from None
        ms = _ms(td)
        if ms <= 0:
            raise FunctionConfigError(
                f"function {function_id!r}: {field}: must be more than 0 (leave it out, or "
                "None, for no bound)",
                field=field,
            )
        parts[name] = (ms, format_duration(td))
    if parts["start"][0] is None and parts["finish"][0] is None:
        return None
    return BoundTimeouts(parts["start"][0], parts["finish"][0], parts["start"][1],
                         parts["finish"][1])


# --------------------------------------------------------------------------- reasons

_EVENT_RE = re.compile(r"^cancel_on\[(\d)\]: event (.*) \(id (.*)\) matched$", re.S)
_TIMEOUT_RE = re.compile(r"^timeouts\.(start|finish): ", re.S)
_PARENT_RE = re.compile(r"^parent run (\S+) was cancelled: ", re.S)
_SINGLETON_RE = re.compile(r"^singleton: run (\S+) replaces it$", re.S)


def event_reason(index: int, event_name: str, event_id: str) -> str:
    """The reason recorded when ``cancel_on[index]`` matched an event."""
    return f"cancel_on[{index}]: event {event_name!r} (id {event_id}) matched"


def timeout_reason(which: str, text: str | None) -> str:
    """The reason recorded when ``timeouts.<which>`` (``start`` or ``finish``) expired."""
    if which == "start":
        return f"timeouts.start: the run did not start within {text} of its trigger"
    return f"timeouts.finish: the run did not finish within {text} of its first attempt"


def parent_reason(parent_run_id: str, reason: str) -> str:
    """The reason recorded for an invoked child cancelled with its parent."""
    return f"parent run {parent_run_id} was cancelled: {reason}"


def singleton_reason(new_run_id: str) -> str:
    """The reason recorded for a run cancelled by a newer run of its singleton key
    (``Singleton(mode="cancel")``)."""
    return f"singleton: run {new_run_id} replaces it"


def cancel_cause(reason: str) -> dict[str, Any]:
    """What cancelled a run, from its ``Cancelled`` error message: ``{"by": "event",
    "cancel_on": i, "event_name": ..., "event_id": ...}``, ``{"by": "timeout", "timeout":
    "start" | "finish"}``, ``{"by": "parent", "run_id": ...}`` (an invoked child cancelled
    with its parent) or ``{"by": "request", "reason": reason}``."""
    m = _EVENT_RE.match(reason)
    if m is not None:
        name = m.group(2)
        if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
            name = name[1:-1]
        return {"by": "event", "cancel_on": int(m.group(1)), "event_name": name,
                "event_id": m.group(3)}
    m = _TIMEOUT_RE.match(reason)
    if m is not None:
        return {"by": "timeout", "timeout": m.group(1)}
    m = _PARENT_RE.match(reason)
    if m is not None:
        return {"by": "parent", "run_id": m.group(1)}
    m = _SINGLETON_RE.match(reason)
    if m is not None:
        return {"by": "singleton", "run_id": m.group(1)}
    return {"by": "request", "reason": reason}
