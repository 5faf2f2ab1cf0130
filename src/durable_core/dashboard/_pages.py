"""What the dashboard's pages show, built from store records and journals.

Everything here is synchronous and reads the store only: the server calls these functions
from a worker thread (a blocking store must not stall the event loop). Bad input from a
query string or a form raises :class:`BadRequest` with a message meant for the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from durable_core.base._durations import from_ms, parse_instant, to_ms
from durable_core.base._errors import DurableError, RunNotFoundError
from durable_core.base._events import Event
from durable_core.base._serde import MAX_JSON_DEPTH
from durable_core.core._function import App
from durable_core.core._lifecycle import SYSTEM_EVENTS
from durable_core.core._model import (
    TERMINAL_STATUSES,
    JournalEntry,
    JournalOp,
    RunStatus,
    StepKind,
)
from durable_core.engine._views import run_view
from durable_core.store import RunRecord, Store, StoredEvent

STATUSES = tuple(s.value for s in RunStatus)
"""The run statuses a filter accepts."""

PAGE_SIZE = 50
"""Runs per page of the runs list."""

SCAN_LIMIT = 10_000
"""The most runs one page looks through for what the store contract cannot list directly
(the function ids and the events seen among the newest runs)."""

MAX_PAGE = SCAN_LIMIT // PAGE_SIZE


class BadRequest(Exception):
    """Input the page cannot use: shown as a 400 page with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(Exception):
    """Nothing at this address: shown as a 404 page with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- formatting


def fmt_time(ms: int | None) -> str:
    """``2026-11-30 18:40:12.345 UTC`` (or ``""``)."""
    if ms is None:
        return ""
    try:
        return from_ms(ms).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    except (OverflowError, ValueError):
        return f"{ms} ms"


def fmt_iso(ms: int | None) -> str:
    """ISO 8601 UTC, for ``<time datetime=...>`` (or ``""``)."""
    if ms is None:
        return ""
    try:
        return from_ms(ms).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError):
        return ""


def fmt_span(ms: int | None) -> str:
    """A duration for people: ``250ms``, ``4.2s``, ``3m 05s``, ``2h 01m``, ``3d 4h``."""
    if ms is None:
        return ""
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    if ms < 1000:
        return f"{sign}{ms}ms"
    if ms < 60_000:
        return f"{sign}{ms / 1000:.1f}s"
    s = ms // 1000
    if s < 3600:
        return f"{sign}{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{sign}{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{sign}{s // 86400}d {s % 86400 // 3600}h"


MAX_SHOWN_CHARS = 100_000
"""The most characters of one output or payload a page shows (an output may be 4 MiB)."""


def pretty_json(value: Any) -> str:
    """Indented JSON text of a decoded value, cut after :data:`MAX_SHOWN_CHARS`."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    if len(text) > MAX_SHOWN_CHARS:
        more = len(text) - MAX_SHOWN_CHARS
        text = text[:MAX_SHOWN_CHARS] + f"\n… ({more} more characters not shown)"
    return text


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return {"$undecodable": f"stored text of {len(text)} characters"}


# --------------------------------------------------------------------------- filters


@attrs.frozen
class RunFilter:
    """The runs list's filters, from its query string."""

    function: str | None = None
    status: str | None = None
    since: int | None = None
    until: int | None = None
    page: int = 1

    def query(self, **change: Any) -> str:
        """The query string of these filters with ``change`` applied (for links)."""
        from urllib.parse import urlencode

        values = attrs.asdict(self) | change
        pairs = []
        for key in ("function", "status"):
            if values[key]:
                pairs.append((key, values[key]))
        for key in ("since", "until"):
            if values[key] is not None:
                pairs.append((key, fmt_iso(values[key])))
        if values["page"] != 1:
            pairs.append(("page", str(values["page"])))
        return urlencode(pairs)


def parse_instant_param(name: str, text: str) -> int:
    """An instant from a query parameter: ISO 8601 with an offset, or without one (then
    UTC, as a ``datetime-local`` input sends it)."""
    text = text.strip()
    if len(text) > 64:
        raise BadRequest(f"{name}: {text[:64]!r}... is too long for a timestamp")
    candidate = text
    if "T" in text or " " in text:
        tail = text.split("T", 1)[-1] if "T" in text else text.split(" ", 1)[-1]
        if not (text.endswith(("Z", "z")) or "+" in tail or "-" in tail):
            candidate = text + "+00:00"
    elif len(text) == 10:  # a bare date
        candidate = text + "T00:00:00+00:00"
    try:
        return to_ms(parse_instant(candidate, field=name))
    except DurableError:
        raise BadRequest(
            f"{name}: {text!r} is not a timestamp; use ISO 8601 like 2026-11-30T18:00:00Z "
            "(without an offset it is taken as UTC) or a date like 2026-11-30") from None


def parse_run_filter(params: Mapping[str, str]) -> RunFilter:
    """The runs list's filters from a query string; :class:`BadRequest` names a bad one."""
    unknown = sorted(set(params) - {"function", "status", "since", "until", "page"})
    if unknown:
        raise BadRequest(
            f"unknown filter {unknown[0]!r}: the runs list takes function, status, since, "
            "until and page")
    function = params.get("function", "").strip() or None
    if function is not None and not _storable_id(function, 512):
        raise BadRequest("function: a function id is 1 to 512 characters of text, with no "
                         "NUL character")
    status = params.get("status", "").strip() or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: {status!r} is not a run status; use one of "
                         f"{', '.join(STATUSES)}")
    since = until = None
    if params.get("since", "").strip():
        since = parse_instant_param("since", params["since"])
    if params.get("until", "").strip():
        until = parse_instant_param("until", params["until"])
    if since is not None and until is not None and since > until:
        raise BadRequest("since: the time range is empty (since is after until)")
    page_text = params.get("page", "1").strip() or "1"
    try:
        page = int(page_text)
    except ValueError:
        raise BadRequest(f"page: {page_text[:32]!r} is not a page number") from None
    if not 1 <= page <= MAX_PAGE:
        raise BadRequest(f"page: must be between 1 and {MAX_PAGE}, got {page}")
    return RunFilter(function, status, since, until, page)


# --------------------------------------------------------------------------- runs list


def run_row(r: RunRecord, now: int) -> dict[str, Any]:
    """One run as a row of a list."""
    end = r.ended_at if r.ended_at is not None else now
    return {
        "id": r.id,
        "function_id": r.function_id,
        "status": r.status,
        "created": fmt_time(r.created_at),
        "created_iso": fmt_iso(r.created_at),
        "ended": fmt_time(r.ended_at),
        "duration": fmt_span(end - r.created_at),
        "ended_flag": r.ended_at is not None,
        "error": None if r.error is None else f"{r.error.type}: {r.error.message}",
    }


def list_runs_page(store: Store, f: RunFilter, now: int) -> dict[str, Any]:
    """One page of the runs list, newest first."""
    first = (f.page - 1) * PAGE_SIZE
    # The store filters by time (its ``until`` excludes the bound; the page's includes it).
    records = store.list_runs(
        function_id=f.function, status=f.status, limit=first + PAGE_SIZE + 1,
        since=f.since, until=None if f.until is None else f.until + 1)
    rows = [run_row(r, now) for r in records[first:first + PAGE_SIZE]]
    return {
        "rows": rows,
        "has_next": len(records) > first + PAGE_SIZE and f.page < MAX_PAGE,
        "has_prev": f.page > 1,
        "truncated": False,
    }


# --------------------------------------------------------------------------- one run


def _error_fields(raw: Any) -> dict[str, Any]:
    """An error as the journal keeps it: ``type``, ``message`` and any further field (a
    traceback, if the store keeps one), all as text."""
    if not isinstance(raw, dict):
        return {"type": "Error", "message": str(raw), "extra": []}
    extra = [(str(k), v if isinstance(v, str) else pretty_json(v))
             for k, v in raw.items() if k not in ("type", "message")]
    return {"type": str(raw.get("type", "Error")), "message": str(raw.get("message", "")),
            "extra": extra}


def _step_details(journal: Sequence[JournalEntry]) -> tuple[
        dict[int, dict[str, Any]], list[dict[str, Any]], dict[int, int]]:
    """Per position: the scheduled data and each failed attempt; the run-level failed
    attempts; per position, the ts of the journal entry just before its first one."""
    details: dict[int, dict[str, Any]] = {}
    run_attempts: list[dict[str, Any]] = []
    before: dict[int, int] = {}
    last_ts: int | None = None
    for e in journal:
        data = _loads(e.data)
        if not isinstance(data, dict):
            data = {}
        if e.op == JournalOp.RUN_ATTEMPT_FAILED:
            run_attempts.append({
                "attempt": int(data.get("attempt", len(run_attempts))) + 1,
                "at": fmt_time(e.ts), "error": _error_fields(data.get("error")),
                "retry_at": fmt_time(data.get("retry_at")),
            })
        elif e.op != JournalOp.RUN_ENDED:
            d = details.setdefault(e.position, {"sched": None, "attempts": []})
            if e.position not in before and last_ts is not None:
                before[e.position] = last_ts
            if e.op == JournalOp.SCHEDULED:
                d["sched"] = data
            elif e.op == JournalOp.ATTEMPT_FAILED:
                d["attempts"].append({
                    "attempt": int(data.get("attempt", len(d["attempts"]))) + 1,
                    "at": fmt_time(e.ts), "error": _error_fields(data.get("error")),
                    "retry_at": fmt_time(data.get("retry_at")),
                })
        last_ts = e.ts
    return details, run_attempts, before


def _waits_for(kind: str, sched: Mapping[str, Any] | None, done: bool) -> str | None:
    """What a sleep, wait or invoke waits (or waited) for, in words."""
    if sched is None:
        return None
    until = sched.get("until")
    when = fmt_time(until) if isinstance(until, int) else "?"
    if kind == StepKind.SLEEP:
        return f"{'slept' if done else 'sleeps'} until {when}"
    if kind == StepKind.WAIT_FOR_EVENT:
        cond = f" where {sched['if']}" if sched.get("if") else ""
        return (f"{'waited' if done else 'waits'} for event {sched.get('event')!r}{cond}, "
                f"until {when} at most (then None)")
    if kind == StepKind.INVOKE:
        return (f"{'waited' if done else 'waits'} for run {sched.get('child')} of function "
                f"{sched.get('function')!r}, until {when} at most")
    return None


def _storable_id(text: str, limit: int) -> bool:
    """Whether ``text`` can be an id a store holds (a NUL or a lone surrogate cannot: a
    database would refuse the query rather than find nothing)."""
    if not text or len(text) > limit or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def run_page(store: Store, run_id: str, now: int) -> dict[str, Any]:
    """Everything the run page shows; :class:`NotFound` for an unknown run."""
    if not _storable_id(run_id, 512):
        raise NotFound(f"no run {run_id[:64]!r}")
    try:
        record = store.get_run(run_id)
    except RunNotFoundError:
        raise NotFound(f"no run {run_id!r} in this store") from None
    journal = store.load_journal(run_id)
    view = run_view(record, journal)
    try:
        details, run_attempts, before = _step_details(journal)
    except RecursionError:  # pragma: no cover - _loads guards each entry
        details, run_attempts, before = {}, [], {}
    ended = record.status in TERMINAL_STATUSES
    positions = sorted(details)
    steps = []
    for i, s in enumerate(view.steps):
        d = details.get(positions[i], {"sched": None, "attempts": []}) if i < len(
            positions) else {"sched": None, "attempts": []}
        pos = positions[i] if i < len(positions) else -1
        started = s.started_at
        estimated = False
        if s.kind == StepKind.RUN and not d["attempts"]:
            # A run step's journal has no start record: its body started after the entry
            # before its first one (or the run's creation).
            started = before.get(pos, record.created_at)
            estimated = True
        end = s.ended_at if s.ended_at is not None else (None if ended else now)
        status = s.status
        if ended and s.ended_at is None:
            status = "abandoned"  # the run ended while the step was in progress
        steps.append({
            "id": s.id,
            "kind": s.kind,
            "status": status,
            "attempts": s.attempts,
            "offset": "" if started is None else "+" + fmt_span(started - record.created_at),
            "started": fmt_time(started),
            "estimated": estimated,
            "ended": fmt_time(s.ended_at),
            "duration": "" if started is None or end is None else fmt_span(end - started),
            "running": s.ended_at is None and not ended,
            "output": None if s.status != "completed" or (
                s.output is None and s.kind == StepKind.SLEEP) else pretty_json(s.output),
            "error": None if s.error is None else _error_fields(s.error.to_dict()),
            "failed_attempts": d["attempts"],
            "waits_for": _waits_for(s.kind, d["sched"], s.ended_at is not None),
            "child": (d["sched"] or {}).get("child") if s.kind == StepKind.INVOKE else None,
        })
    events = []
    for eid, text in zip(record.event_ids, record.events, strict=False):
        events.append({"id": eid, "payload": pretty_json(_loads(text))})
    cancel_pending = False
    if not ended:
        try:
            cancel_pending = bool(store.cancel_requested([run_id]))
        except Exception:  # a read that only decorates the page never breaks it
            cancel_pending = False
    return {
        "id": record.id,
        "function_id": record.function_id,
        "status": record.status,
        "ended": ended,
        "created": fmt_time(record.created_at),
        "ended_at": fmt_time(record.ended_at),
        "updated": fmt_time(record.updated_at),
        "duration": fmt_span((record.ended_at if ended and record.ended_at is not None
                              else now) - record.created_at),
        "wake_at": None if ended or record.wake_at is None else fmt_time(record.wake_at),
        "lease_owner": None if ended else record.lease_owner,
        "lease_expires": fmt_time(record.lease_expires),
        "parent_run_id": record.parent_run_id,
        "rerun_of": record.rerun_of,
        "events": events,
        "output": pretty_json(view.output) if record.status == RunStatus.COMPLETED else None,
        "error": None if record.error is None else _error_fields(record.error.to_dict()),
        "steps": steps,
        "run_attempts": run_attempts,
        "cancel_pending": cancel_pending,
    }


# --------------------------------------------------------------------------- functions


def _option_text(value: Any) -> str:
    """An option's value as shown: scalars as they are, lists and dicts compactly."""
    if isinstance(value, list):
        return "; ".join(_option_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return str(value)


def functions_page(store: Store, app: App | None) -> dict[str, Any]:
    """The app's functions with their triggers and options; without an app, the function
    ids seen among the newest runs."""
    if app is not None:
        rows = []
        for fn in sorted(app.functions.values(), key=lambda f: f.id):
            described = fn.describe()
            triggers = [
                ("event", t["event"] + (f"  if {t['if']}" if t["if"] else "")) if "event" in t
                else ("cron", f"{t['cron']}  (catch_up={t['catch_up']})")
                for t in described["triggers"]]
            rows.append({"id": fn.id, "triggers": triggers, "options": [
                (name, _option_text(value)) for name, value in described["options"].items()]})
        return {"app_id": app.id, "rows": rows, "seen": []}
    counts: dict[str, dict[str, int]] = {}
    for r in store.list_runs(limit=SCAN_LIMIT):
        by_status = counts.setdefault(r.function_id, {})
        by_status[r.status] = by_status.get(r.status, 0) + 1
    seen = [{"id": fid, "counts": sorted(c.items())} for fid, c in sorted(counts.items())]
    return {"app_id": None, "rows": [], "seen": seen}


# --------------------------------------------------------------------------- events


def event_row(ev: StoredEvent) -> dict[str, Any]:
    """One stored event as a row."""
    return {"id": ev.id, "name": ev.name, "seq": ev.seq, "ts": fmt_time(ev.ts),
            "received": fmt_time(ev.received_at), "duplicate": ev.duplicate}


def events_page(store: Store, sent_here: Iterable[str]) -> dict[str, Any]:
    """The newest events (the store's ``list_events``; duplicates and the runs' system
    events left out), those not yet
    routed, those that started one of the newest runs, and those sent from this server."""
    seen: dict[str, dict[str, Any]] = {}
    pending = [event_row(ev) for ev in store.unrouted_events(100)]
    for newest in store.list_events(limit=100):
        if not newest.duplicate and newest.name not in SYSTEM_EVENTS:
            seen.setdefault(newest.id, event_row(newest))
    for ev_id in sent_here:
        ev = store.get_event(ev_id)
        if ev is not None:
            seen.setdefault(ev.id, event_row(ev))
    run_counts: dict[str, int] = {}
    for r in store.list_runs(limit=SCAN_LIMIT):
        for eid in r.event_ids:
            run_counts[eid] = run_counts.get(eid, 0) + 1
    for eid in list(run_counts)[:500]:
        if eid in seen:
            continue
        ev = store.get_event(eid)
        if ev is not None:
            seen[eid] = event_row(ev)
    rows = sorted(seen.values(), key=lambda row: row["seq"], reverse=True)
    for row in rows:
        row["runs"] = run_counts.get(row["id"], 0)
    return {"pending": pending, "rows": rows}


def event_page(store: Store, event_id: str, app: App | None, now: int) -> dict[str, Any]:
    """One event: its payload and the runs it started; :class:`NotFound` if unknown."""
    if not _storable_id(event_id, 1024):
        raise NotFound(f"no event {event_id[:64]!r}")
    ev = store.get_event(event_id)
    runs = store.list_runs(event_id=event_id, limit=1000)
    if ev is None and not runs:
        raise NotFound(f"no event {event_id!r} in this store")
    payload: Any = None
    name: str | None = None
    if ev is not None:
        payload, name = _loads(ev.data), ev.name
    else:  # an event kept only with its runs (an invoke's)
        for r in runs:
            for eid, text in zip(r.event_ids, r.events, strict=False):
                if eid == event_id:
                    payload = _loads(text)
                    name = payload.get("name") if isinstance(payload, dict) else None
    triggered_by: list[str] | None = None
    if app is not None and name is not None:
        triggered_by = sorted(
            fn.id for fn in app.functions.values()
            if any(t.event == name for t in fn.event_triggers))
    pending = ev is not None and any(p.seq == ev.seq for p in store.unrouted_events(1000))
    return {
        "id": event_id, "name": name, "stored": None if ev is None else event_row(ev),
        "payload": pretty_json(payload), "runs": [run_row(r, now) for r in runs],
        "triggered_by": triggered_by, "app_id": None if app is None else app.id,
        "pending": pending,
    }


# --------------------------------------------------------------------------- send


def parse_event_form(form: Mapping[str, str]) -> Event:
    """An event from the send form; :class:`BadRequest` says what is wrong."""
    name = form.get("name", "").strip()
    if not name:
        raise BadRequest("name: the event needs a name, like order/created")
    text = form.get("data", "").strip() or "{}"
    try:
        data = json.loads(text)
    except RecursionError:
        raise BadRequest(f"data: the JSON is nested more than {MAX_JSON_DEPTH} levels "
                         "deep (the limit)") from None
    except ValueError as exc:
        raise BadRequest(f"data: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"data: must be a JSON object like {{\"orderId\": 1}}, got a "
                         f"{type(data).__name__} ({json.dumps(data)[:40]})")
    event_id = form.get("id", "").strip() or None
    try:
        return Event(name, data, id=event_id)
    except DurableError as exc:
        raise BadRequest(str(exc)) from None

