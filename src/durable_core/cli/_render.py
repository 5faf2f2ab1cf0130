"""What the ``durable`` command prints: ``rich`` tables and timelines for people, and JSON for
programs, where every time is ISO 8601 in UTC and every duration a whole ``*_ms`` number."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from durable_core.base._durations import from_ms
from durable_core.core._model import TERMINAL_STATUSES
from durable_core.engine._views import RunView, StepView
from durable_core.store import StoredEvent

__all__ = [
    "ABANDONED",
    "clip",
    "console",
    "duration_text",
    "event_json",
    "events_table",
    "iso",
    "run_json",
    "run_timeline",
    "runs_table",
    "step_status",
    "when",
]

MAX_CELL = 100
"""A value longer than this (characters) is cut in tables, with a mark saying so."""

ABANDONED = "abandoned"
"""The status shown for a step that had not finished when its run ended (it never will)."""

_OPEN_STEP_STATUSES = frozenset({"running", "retrying", "sleeping", "waiting"})
_BAR = 24  # width of the timeline bars
_DETAIL = 60  # a step's output or error in the timeline table is cut beyond this


def console(file: Any = None) -> Console:
    """A console for the command's output: a terminal's width, else (a pipe, a file) 200
    columns or ``$COLUMNS``, so tables are not squeezed to 80 columns in logs."""
    out = sys.stdout if file is None else file
    width = None
    if not out.isatty() and not os.environ.get("COLUMNS"):
        width = 200
    return Console(file=out, width=width, highlight=False, soft_wrap=False, emoji=False)


def iso(ms: int | None) -> str | None:
    """A time for JSON: ISO 8601 in UTC (None stays None)."""
    return None if ms is None else from_ms(ms).isoformat()


def when(ms: int | None) -> str:
    """A time for people: ``2026-01-02 03:04:05.678Z`` (UTC)."""
    if ms is None:
        return "-"
    return from_ms(ms).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def duration_text(ms: int | None) -> str:
    """A duration for people: ``312ms``, ``8.0s``, ``2m05s``, ``3h04m``, ``2d05h``."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def clip(text: str, limit: int = MAX_CELL, *, short: bool = False) -> str:
    """``text``, or its first ``limit`` characters and a mark saying how much was cut
    (``short``: a brief mark, for a table cell)."""
    if len(text) <= limit:
        return text
    if short:
        return f"{text[:limit]}…[+{len(text) - limit} chars]"
    return f"{text[:limit]}… [{len(text) - limit} more characters; --json shows all]"


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def step_status(run: RunView, step: StepView) -> str:
    """A step's status as shown: a step that had not finished when its run ended is
    :data:`ABANDONED` (a sleep inside a failed run is not still sleeping)."""
    if run.status in TERMINAL_STATUSES and step.status in _OPEN_STEP_STATUSES:
        return ABANDONED
    return step.status


def _step_duration(step: StepView) -> int | None:
    return step.duration_ms


def _run_duration(run: RunView) -> int | None:
    return None if run.ended_at is None else max(run.ended_at - run.created_at, 0)


def run_json(run: RunView, *, steps: bool = True) -> dict[str, Any]:
    """A run for ``--json``: its view's JSON form (times ISO 8601 UTC) with ``duration_ms``
    (None until it ends) and the steps' shown status and ``duration_ms``."""
    out = run.to_dict()
    out["duration_ms"] = _run_duration(run)
    if steps:
        for shown, step in zip(out["steps"], run.steps, strict=True):
            shown["status"] = step_status(run, step)
            shown["duration_ms"] = _step_duration(step)
    else:
        out["steps"] = len(run.steps)
    return out


def event_json(ev: StoredEvent) -> dict[str, Any]:
    """An event for ``--json``: times ISO 8601 UTC, its ``data`` decoded."""
    try:
        data = json.loads(ev.data).get("data")
    except (ValueError, RecursionError, AttributeError):
        data = None
    return {"seq": ev.seq, "id": ev.id, "name": ev.name, "ts": iso(ev.ts),
            "received_at": iso(ev.received_at), "duplicate": ev.duplicate, "data": data}


def _status_text(status: str) -> Text:
    style = {"completed": "green", "failed": "red", "cancelled": "yellow",
             ABANDONED: "dim"}.get(status, "cyan")
    return Text(status, style=style)


def functions_table(described: list[dict[str, Any]]) -> Table:
    """An app's functions (:meth:`~durable_core.Function.describe`): id, triggers, options."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("FUNCTION", "TRIGGERS", "OPTIONS"):
        table.add_column(name, overflow="fold")
    for d in described:
        triggers = "\n".join(
            (f"event {t['event']}" + (f" if {t['if']}" if t["if"] else "")) if "event" in t
            else f"cron {t['cron']} (catch_up={t['catch_up']})" for t in d["triggers"]
        ) or "no trigger (invoke only)"
        options = "\n".join(f"{k}={_option(v)}" for k, v in d["options"].items())
        table.add_row(d["id"], triggers, options)
    return table


def _option(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(_option(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items() if v is not None)
    return str(value)


def runs_table(runs: list[RunView], now: int) -> Table:
    """Runs as a table: id, function, status, created, duration (so far, for a run that
    has not ended), steps."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("RUN", "FUNCTION", "STATUS", "CREATED (UTC)", "DURATION", "STEPS"):
        table.add_column(name, no_wrap=True)
    for r in runs:
        took = _run_duration(r)
        shown = duration_text(took) if took is not None else (
            f"{duration_text(max(now - r.created_at, 0))} so far")
        table.add_row(r.id, r.function_id, _status_text(r.status), when(r.created_at), shown,
                      str(len(r.steps)))
    return table


def _bar(start: int, end: int, t0: int, span: int) -> str:
    if span <= 0:
        return "━" * _BAR
    a = min(int((start - t0) * _BAR / span), _BAR - 1)
    b = max(min(int((end - t0) * _BAR / span + 0.999), _BAR), a + 1)
    return " " * a + "━" * (b - a) + " " * (_BAR - b)


def run_timeline(run: RunView, now: int) -> RenderableType:
    """A run's header and step timeline: each step's start (from the run's creation),
    duration, attempts, a bar on the run's time line, and its output or error."""
    t0 = run.created_at
    end = run.ended_at if run.ended_at is not None else now
    span = max(end - t0, 1)
    took = _run_duration(run)
    head = Text()
    head.append(f"run {run.id}", style="bold")
    head.append(f"  {run.function_id}  ")
    head.append_text(_status_text(run.status))
    head.append(f"\ncreated {when(run.created_at)}")
    if run.ended_at is not None:
        head.append(f"  ended {when(run.ended_at)}  took {duration_text(took)}")
    else:
        head.append(f"  running for {duration_text(max(now - t0, 0))} so far")
    if run.event_ids:
        head.append(f"\nevents {', '.join(run.event_ids)}")
    if run.parent_run_id is not None:
        head.append(f"  parent run {run.parent_run_id}")
    if run.rerun_of is not None:
        head.append(f"\nrerun of {run.rerun_of}")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("STEP", "KIND", "STATUS", "START", "DURATION", "ATTEMPTS", "TIMELINE",
                 "OUTPUT / ERROR"):
        table.add_column(name, no_wrap=name != "OUTPUT / ERROR", overflow="fold")
    for s in run.steps:
        status = step_status(run, s)
        start = None if s.started_at is None else s.started_at - t0
        duration = _step_duration(s)
        if s.error is not None:
            detail = Text(clip(f"{s.error.type}: {s.error.message}", _DETAIL), style="red")
        elif s.output is not None or s.status == "completed":
            detail = Text(clip(_value(s.output), _DETAIL))
        else:
            detail = Text("")
        notes: list[str] = []
        if s.waiting_for is not None:
            notes.append("waits for " + ", ".join(
                f"{k}={v}" for k, v in s.waiting_for.items() if v is not None))
        if s.until is not None and s.ended_at is None and status != ABANDONED:
            notes.append(f"until {when(s.until)}")
        for a in s.attempt_log:
            if a.error is not None:
                again = "" if a.retry_at is None else f" (next attempt {when(a.retry_at)})"
                notes.append(clip(f"attempt {a.attempt + 1} {a.step_id}: {a.error.type}: "
                                  f"{a.error.message}", _DETAIL) + again)
        for note in notes:
            detail.append(("\n" if detail.plain else "") + note, style="dim")
        bar = ""
        if s.started_at is not None:
            stop = s.ended_at if s.ended_at is not None else (
                end if status not in (ABANDONED,) else s.started_at)
            bar = _bar(s.started_at, stop, t0, span)
        table.add_row(s.id, s.kind, _status_text(status),
                      "-" if start is None else f"+{duration_text(start)}",
                      duration_text(duration), str(s.attempts) if s.kind == "run" else "",
                      bar, detail)
    parts: list[RenderableType] = [head]
    if run.steps:
        parts.append(table)
    else:
        parts.append(Text("no steps yet", style="dim"))
    for a in run.attempt_log:
        if a.error is not None:
            parts.append(Text(clip(f"code attempt {a.attempt + 1} raised {a.error.type}: "
                                   f"{a.error.message} at {when(a.ended_at)}", 2000),
                              style="yellow"))
    if run.next_attempt_at is not None:
        parts.append(Text(f"next attempt: {when(run.next_attempt_at)}", style="yellow"))
    if run.error is not None:
        parts.append(Text(clip(f"error: {run.error.type}: {run.error.message}", 2000),
                          style="red"))
        if run.error.traceback:
            parts.append(Text(run.error.traceback.rstrip(), style="dim"))
    elif run.status == "completed":
        parts.append(Text(clip("output: " + _value(run.output), 2000)))
    return Group(*parts)


def events_table(events: list[StoredEvent], runs: dict[str, int] | None = None) -> Table:
    """Events as a table: seq, id, name, received, whether a duplicate, their data (cut
    with a mark) and, with ``runs``, how many runs each started."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ["SEQ", "EVENT", "NAME", "RECEIVED (UTC)", "DUPLICATE"]
    if runs is not None:
        columns.append("RUNS")
    columns.append("DATA")
    for name in columns:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for ev in events:
        row = [str(ev.seq), ev.id, ev.name, when(ev.received_at),
               "duplicate" if ev.duplicate else ""]
        if runs is not None:
            row.append(str(runs.get(ev.id, 0)) if not ev.duplicate else "-")
        row.append(clip(_value(event_json(ev)["data"]), 48, short=True))
        table.add_row(*row)
    return table
