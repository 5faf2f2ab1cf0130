"""Log output for ``durable worker``: ``--log-format text`` (one line per record, for people)
and ``--log-format json`` (one JSON object per line, for log collectors), on stderr.

Both show the time (ISO 8601 UTC), level, logger, message and the ids a record carries as
``extra`` fields (``run_id``, ``function_id``, ``step_id``, ``attempt``; ``trace_id`` and
``span_id`` when tracing is on). A formatter never raises: a value that cannot be shown is
shown as its ``repr``, and anything else that goes wrong is left to the handler's
``handleError`` (one report on stderr, the worker goes on).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

from durable_core.base._errors import ValidationError
from durable_core.engine import _observe

__all__ = ["FORMATS", "LEVELS", "JsonLogFormatter", "TextLogFormatter", "configure_logging"]

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

IDS = ("run_id", "function_id", "step_id", "attempt")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


def _time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _trace_ids(record: logging.LogRecord) -> dict[str, str]:
    """The record's trace ids, or those of the current span when tracing is on."""
    trace_id = getattr(record, "trace_id", None)
    if trace_id is not None:
        return {"trace_id": trace_id, "span_id": getattr(record, "span_id", "")}
    t = _observe.tracing
    if t is not None:
        try:
            return t.log_ids(None) or {}
        except Exception:
            return {}
    return {}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record (what is not a standard LogRecord attribute)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextLogFormatter(logging.Formatter):
    """``2026-01-01T10:00:00.000Z WARNING durable_core.runs: message run_id=r_... step_id=fetch
    attempt=0``: the ids a record carries follow its message."""

    def format(self, record: logging.LogRecord) -> str:
        """One line (plus the traceback of ``exc_info``, if any)."""
        parts = [_time(record), record.levelname, f"{record.name}:", record.getMessage()]
        for key in IDS:
            value = getattr(record, key, None)
            if value is not None:
                parts.append(f"{key}={value}")
        for key, value in _trace_ids(record).items():
            parts.append(f"{key}={value}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601 UTC), ``level``, ``logger``,
    ``message``, then ``run_id``, ``function_id``, ``step_id``, ``attempt`` (null when the
    record has none), ``trace_id``/``span_id`` when tracing is on, the record's other
    ``extra`` fields, and ``exception`` (the formatted traceback) if it has one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "time": _time(record), "level": record.levelname, "logger": record.name,
            "message": record.getMessage(),
        }
        for key in IDS:
            out[key] = getattr(record, key, None)
        out.update(_trace_ids(record))
        for key, value in extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=repr)


def configure_logging(level: str | int = "info", format: str = "text",
                      stream: TextIO | None = None) -> logging.Handler:
    """Send log records at ``level`` and above (``debug``, ``info``, ``warning``,
    ``error``) to ``stream`` (default stderr) in ``format`` (``text`` or ``json``), as
    ``durable worker`` does: one handler on the root logger, so the app's own loggers
    (``App(logger=...)``, ``logging.getLogger(__name__)`` in step bodies) come out the same
    way, and so do Python warnings (``warnings.warn``, on the ``py.warnings`` logger).
    Replaces a handler this function installed before. Returns the handler."""
    if format not in FORMATS:
        raise ValidationError(f"log format must be one of {', '.join(FORMATS)}, got {format!r}",
                              field="log_format")
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValidationError(
                f"log level must be one of {', '.join(LEVELS)}, got {level!r}",
                field="log_level")
        level = getattr(logging, level.upper())
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonLogFormatter() if format == "json" else TextLogFormatter())
    handler._durable = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_durable", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn(...) too, with a time and a level
    return handler
