"""A run's lifecycle events: the system events a run emits when it ends, the rule that keeps
them from looping, and the ids that make each one unique (pure: no I/O, no clock).

Every run that ends emits ``durable/function.finished``; a run that failed for good also
emits ``durable/function.failed``, and a cancelled one ``durable/function.cancelled``. Their
ids derive from the run id (:func:`system_event_id`), so two finalizers of one run cannot
emit one twice (event dedupe), and the engine commits them with the run's end (a store
appends them only if that end is accepted), so a crash cannot lose them either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from durable_core.base._errors import InvalidEventError
from durable_core.base._events import Event
from durable_core.core._model import ErrorInfo, RunStatus

__all__ = [
    "CANCELLED_EVENT",
    "CANCEL_REASONS",
    "FAILED_EVENT",
    "FAILURE_SUFFIX",
    "FINISHED_EVENT",
    "SYSTEM_EVENTS",
    "idempotency_text",
    "starts_nothing",
    "system_event_id",
    "system_events",
]

FINISHED_EVENT = "durable/function.finished"
"""Emitted by every run that ends (completed, failed or cancelled)."""
FAILED_EVENT = "durable/function.failed"
"""Emitted by a run that failed for good (its retries exhausted, or a non-retriable error)."""
CANCELLED_EVENT = "durable/function.cancelled"
"""Emitted by a run that was cancelled."""
SYSTEM_EVENTS = frozenset({FINISHED_EVENT, FAILED_EVENT, CANCELLED_EVENT})
"""The names only the engine emits: sending one is an error."""
CANCEL_REASONS = ("request", "cancel_on", "timeout")
"""Why a run was cancelled (``data.reason`` of ``durable/function.cancelled``): a request
(``Client.cancel_run``, ``TestEngine.cancel_run``), a ``cancel_on`` event, or a timeout."""
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
