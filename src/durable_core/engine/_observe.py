"""What the engine reports about runs: log lines through :mod:`logging`, and the hooks that
tracing (:mod:`durable_core.otel`) plugs into.

Every line goes to the logger ``durable_core.runs`` and carries, as ``extra`` fields,
``run_id``, ``function_id``, ``step_id`` (None for a line about the whole run) and
``attempt`` (0-based), so a handler or formatter can filter and index by them, and
``action`` (``run.started``, ``step.retrying``, ...: which line it is):

- ``run started`` (INFO): a new run's code was entered for the first time;
- ``step retrying`` (WARNING): a step attempt raised; ``error`` and ``retry_at`` (ISO 8601
  UTC) say why and when the next attempt is due; ``run retrying`` the same for
  orchestration code that raised outside a step;
- ``step failed`` (WARNING): a step failed for good (its error goes to the code);
- ``run completed`` (INFO), ``run failed`` (ERROR), ``run cancelled`` (WARNING), with
  ``duration_ms`` (from the run's creation) and ``error``.

``run started`` is written as the code is first entered; the other lines once their facts
are committed (never for a commit that failed), and never for a step replayed from the
journal. Nothing here may stop a run or a worker: a handler,
filter or formatter that raises is ignored, and when the level is off no record (and no
``extra`` dict) is built at all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "RUN_LOG", "Note", "Tracing", "emit", "iso_ms", "notes_for", "publish", "run_started",
    "tracing", "with_trace",
]

RUN_LOG = logging.getLogger("durable_core.runs")

_INFO = logging.INFO
_WARNING = logging.WARNING
_ERROR = logging.ERROR


class Tracing(Protocol):
    """What the engine and drivers call when tracing is on (see :mod:`durable_core.otel`).
    Every method must be cheap and must not raise (callers guard anyway)."""

    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` of the current context (stored with a sent event)."""

    def run_resumed(self, run_id: str, function_id: str, attempt: int,
                    traceparent: str | None) -> None:
        """An engine began driving a run (a claim): open its span if none is open."""

    def run_left(self, run_id: str, status: str, error: dict[str, Any] | None) -> None:
        """An engine stopped driving a run (it ended, parked or was let go): end its span
        with the run's status (and error)."""

    def step_started(self, run_id: str, function_id: str, step_id: str,
                     attempt: int) -> Any:
        """A step body is about to run: open its span, current while the body runs."""

    def step_ended(self, token: Any, error: BaseException | None) -> None:
        """The body of ``step_started``'s step returned (``error`` None) or raised."""

    def bind(self, call: Callable[[], Any]) -> Callable[[], Any]:
        """``call`` made to run in the current trace context when called in another
        context (an asyncio task on the bodies' loop)."""

    def log_ids(self, run_id: str | None) -> dict[str, str] | None:
        """``trace_id``/``span_id`` (hex) to put on a log record about ``run_id`` (None:
        of the current span)."""


tracing: Tracing | None = None
"""The tracing in use (set by :func:`durable_core.otel.instrument`), or None."""


def emit(logger: logging.Logger | logging.LoggerAdapter[Any], level: int, msg: str,
         args: tuple[Any, ...], extra: dict[str, Any]) -> None:
    """Log one line; never raises (logging must never stop a run or a worker).

    A plain :class:`logging.Logger` gets its record built directly, as ``logger.log``
    would build it, without looking up the caller's frame (the record names this function,
    as it did): two lines per run at the default level make that lookup a measurable part
    of a short run's cost."""
    # (Errors of a filter or a broken logger object; a handler's own go to its handleError.)
    with contextlib.suppress(Exception):
        if type(logger) is logging.Logger:
            logger.handle(logger.makeRecord(logger.name, level, __file__, _EMIT_LINE, msg, args,
                                            None, "emit", extra))
        else:
            logger.log(level, msg, *args, extra=extra)


_EMIT_LINE = emit.__code__.co_firstlineno


def with_trace(text: str) -> str:
    """An event's JSON text with the ``traceparent`` of the current context (tracing on),
    so the runs it starts join the sender's trace."""
    t = tracing
    if t is None:
        return text
    try:
        parent = t.traceparent()
    except Exception:
        return text
    if not parent or not text.endswith("}"):
        return text
    return f"{text[:-1]},\"traceparent\":{json.dumps(parent)}}}"


def iso_ms(ms: int) -> str:
    """``ms`` since the epoch as ISO 8601 UTC with milliseconds (``...T10:00:00.000Z``)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type', '?')}: {error.get('message', '')}"
    return str(error)


class Note:
    """One fact to report about a run once its commit succeeded."""

    __slots__ = ("args", "extra", "level", "msg", "run_id", "span_status")

    def __init__(self, run_id: str, level: int, msg: str, args: tuple[Any, ...],
                 extra: dict[str, Any], span_status: str | None = None) -> None:
        self.run_id = run_id
        self.level = level
        self.msg = msg
        self.args = args
        self.extra = extra
        self.span_status = span_status  # the run's span ends with this status, if set


def run_started(run_id: str, function_id: str) -> None:
    """A new run's code is about to be entered for the first time."""
    if RUN_LOG.isEnabledFor(_INFO):
        extra = {"run_id": run_id, "function_id": function_id, "step_id": None,
                 "attempt": 0, "action": "run.started"}
        t = tracing
        if t is not None:
            with contextlib.suppress(Exception):
                extra.update(t.log_ids(run_id) or {})
        emit(RUN_LOG, _INFO, "run %s of %s started", (run_id, function_id), extra)


_FAILED_STEP = '{"error":'


def notes_for(run_id: str, function_id: str, run_attempt: int, started_at: int,
              entries: tuple[Any, ...], end: tuple[str, Any] | None,
              parked: str | None, now: int) -> list[Note]:
    """The notes of one run's part of a plan: its new journal ``entries``, ``end``
    (status, error info) if it ended, ``parked`` (its status) if the engine lets go of it
    without it ending."""
    notes: list[Note] = []
    if entries and RUN_LOG.isEnabledFor(_WARNING):
        for e in entries:
            op = e.op
            if op == "attempt_failed" or op == "run_attempt_failed":
                data = json.loads(e.data)
                retry_at = data.get("retry_at")
                what = "run" if op == "run_attempt_failed" else "step"
                step_id = None if what == "run" else e.step_id
                label = "" if step_id is None else f" step {step_id!r}"
                when = iso_ms(retry_at) if isinstance(retry_at, int) else None
                notes.append(Note(
                    run_id, _WARNING,
                    "run %s%s: attempt %d failed: %s; retrying at %s",
                    (run_id, label, data.get("attempt", 0) + 1,
                     _error_text(data.get("error")), when),
                    {"run_id": run_id, "function_id": function_id, "step_id": step_id,
                     "attempt": data.get("attempt", 0), "error": data.get("error"),
                     "retry_at": when, "action": f"{what}.retrying"}))
            elif op == "completed" and e.data.startswith(_FAILED_STEP):
                # A step that failed for good is journaled as {"error": ...} (error_data);
                # a successful one as {"output": ...}: a prefix test, never a scan of the
                # (up to 4 MiB) output.
                data = json.loads(e.data)
                if "error" in data:
                    notes.append(Note(
                        run_id, _WARNING, "run %s step %r failed for good: %s",
                        (run_id, e.step_id, _error_text(data["error"])),
                        {"run_id": run_id, "function_id": function_id,
                         "step_id": e.step_id, "attempt": None, "error": data["error"],
                         "action": "step.failed"}))
    if end is not None:
        status, error = end
        level = {"completed": _INFO, "failed": _ERROR}.get(status, _WARNING)
        if tracing is None and not RUN_LOG.isEnabledFor(level):
            return notes
        extra = {"run_id": run_id, "function_id": function_id, "step_id": None,
                 "attempt": run_attempt, "status": status,
                 "duration_ms": max(0, now - started_at),
                 "error": error, "action": f"run.{status}"}
        if error is None:
            notes.append(Note(run_id, level, "run %s of %s %s in %.3fs",
                              (run_id, function_id, status, extra["duration_ms"] / 1000),
                              extra, status))
        else:
            notes.append(Note(run_id, level, "run %s of %s %s in %.3fs: %s",
                              (run_id, function_id, status, extra["duration_ms"] / 1000,
                               _error_text(error)), extra, status))
    elif parked is not None and (tracing is not None or RUN_LOG.isEnabledFor(logging.DEBUG)):
        notes.append(Note(run_id, logging.DEBUG, "run %s of %s is %s; released",
                          (run_id, function_id, parked),
                          {"run_id": run_id, "function_id": function_id, "step_id": None,
                           "attempt": run_attempt, "status": parked, "action": "run.released"},
                          parked))
    return notes


def publish(notes: list[Note], skip: Any = ()) -> None:
    """Write the notes of a successful commit (but those of runs in ``skip``: fenced)."""
    t = tracing
    for n in notes:
        if n.run_id in skip:
            continue
        if t is not None:
            try:
                ids = t.log_ids(n.run_id)
                if ids:
                    n.extra.update(ids)
                if n.span_status is not None:
                    t.run_left(n.run_id, n.span_status, n.extra.get("error"))
            except Exception:
                pass
        if RUN_LOG.isEnabledFor(n.level):
            emit(RUN_LOG, n.level, n.msg, n.args, n.extra)
