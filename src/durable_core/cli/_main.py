"""The ``durable`` command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import durable_core.cli._render as _render
from durable_core.base._durations import from_ms
from durable_core.base._errors import DurableError
from durable_core.base._events import Event
from durable_core.base._redact import redact, redact_url
from durable_core.base._serde import MAX_JSON_DEPTH
from durable_core.core._function import App
from durable_core.drivers._loading import (
    DEFAULT_STORE,
    import_stores,
    load_app,
    open_store,
    store_url,
)
from durable_core.engine._views import RunView


def _open_store(url: str, *, existing: bool = False) -> Any:
    """Open the store at ``url``. ``existing``: the command only reads, so a SQLite path
    where no database exists is an error naming the path looked at, not a new empty store
    answering "no runs"."""
    if existing and url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].partition("?")[0]
        if path and path != ":memory:" and not os.path.exists(path):
            raise DurableError(
                f"no store at {os.path.abspath(path)} (--store {url}): check the path, or "
                "set --store / DURABLE_STORE to the store your workers use; a worker "
                "creates the file when it first opens it")
    return open_store(url)


class _UsageExit(SystemExit):
    """Ends the command with exit code 2 after a one-line error (already printed)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _load_app(spec: str) -> App:
    """:func:`load_app`, with a mistake (no colon, a misspelled module, no such attribute,
    an import that fails) as one line on stderr and exit code 2, not a traceback."""
    try:
        return load_app(spec)
    except SystemExit as exc:
        message = str(exc.code)
    except ModuleNotFoundError as exc:
        message = (f"durable: error: cannot import {spec.partition(':')[0]!r}: {exc} (run "
                   "from the directory that holds it, or put it on PYTHONPATH)")
    except Exception as exc:
        message = (f"durable: error: importing {spec!r} raised {type(exc).__name__}: {exc}")
    if not message.startswith("durable: "):
        message = f"durable: error: {message}"
    print(message, file=sys.stderr)
    raise _UsageExit(message)


def _cmd_demo(args: argparse.Namespace) -> int:
    import trio

    from durable_core.demo import app
    from durable_core.drivers._worker import Worker

    store = _open_store(args.store)
    worker = Worker(app, store, poll_interval=0.1)

    async def main() -> list[str]:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            print(f"durable demo: worker started on {redact_url(args.store)}")
            await worker.send(
                [
                    Event("order/created", {"orderId": 1, "amount": 150.0}),
                    Event("order/created", {"orderId": 2, "amount": 40.0}),
                    Event("order/created", {"orderId": 3, "amount": 999.0}),
                ]
            )
            print("sent 3 orders (order 2 is below the amount filter and starts no run)")
            run_ids = await _wait_for(store, "waiting", 2)
            print("both runs charged the card (one retry each), slept, and now wait to ship")
            await worker.send(Event("order/shipped", {"orderId": 1, "carrier": "DHL"}))
            await worker.send(Event("order/shipped", {"orderId": 3, "carrier": "UPS"}))
            print("sent the two shipping events")
            await _wait_for(store, "completed", 2, run_ids)
            worker.stop()
            return run_ids

    async def _wait_for(
        store: Any, status: str, count: int, ids: list[str] | None = None
    ) -> list[str]:
        with trio.fail_after(60):
            while True:
                runs = [
                    r for r in store.list_runs(function_id="process-order", limit=1000)
                    if ids is None or r.id in ids
                ]
                runs = runs[:count] if ids is None else runs
                if len(runs) == count and all(r.status == status for r in runs):
                    return [r.id for r in runs]
                await trio.sleep(0.1)

    started = time.monotonic()
    run_ids = trio.run(main)
    from durable_core.drivers._client import Client

    client = Client(store)
    print()
    out = _render.console()
    for run_id in reversed(run_ids):
        out.print(_render.run_timeline(client.get_run(run_id), _now_ms()))
        print()
    print(f"done in {time.monotonic() - started:.1f}s; runs are stored in "
          f"{redact_url(args.store)}")
    store.close()
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from durable_core.drivers._logs import configure_logging
    from durable_core.drivers._processes import run_worker

    configure_logging(args.log_level, args.log_format)
    app = _load_app(args.app)
    if args.processes != 1:
        return _worker_processes(args, app)
    run_worker(app, args.store, max_runs=args.max_runs, poll_interval=args.poll_interval,
               announce=True)
    return 0


def _worker_processes(args: argparse.Namespace, app: App) -> int:
    from durable_core.drivers._processes import Supervisor

    supervisor = Supervisor(args.app, args.store, processes=args.processes,
                            max_runs=args.max_runs, poll_interval=args.poll_interval,
                            log_level=args.log_level, log_format=args.log_format)
    # Open the store once here: a bad URL fails now, with one message, and a new database
    # is migrated before the processes open it.
    _open_store(args.store).close()
    print(f"durable worker: {args.processes} processes for app {app.id!r} on "
          f"{redact_url(args.store)} (Ctrl-C to stop)", flush=True)

    def started(index: int, pid: int) -> None:
        print(f"durable worker: process {index} started (pid {pid})", flush=True)

    def exited(index: int, pid: int, code: int) -> None:
        print(f"durable worker: process {index} (pid {pid}) exited with code {code}",
              flush=True)

    supervisor.run(on_start=started, on_exit=exited)
    print("durable worker: stopped", flush=True)
    return 0


def _print(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False) if as_json else text)


def _cmd_send(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise DurableError(f"--data: invalid JSON ({exc})") from None
    except RecursionError:
        raise DurableError(
            f"--data: the JSON is nested more than {MAX_JSON_DEPTH} levels deep (the limit)"
        ) from None
    event = Event(args.name, data, id=args.id)
    if args.wait and args.app is None:
        raise DurableError("--wait needs --app package.module:app: the event is routed with "
                           "the app's functions, to know which runs it starts")
    app = None if args.app is None else _load_app(args.app)
    client = Client(_open_store(args.store), app=app)
    ids = client.send(event)
    # With an app the event is routed at once: say which runs it was folded into.
    folded = [_folded(s) for i in ids for s in client.skipped_triggers(event_id=i)]
    folded_text = "".join(_folded_line(f) for f in folded)
    if not args.wait:
        # Without an app, workers route the event later: nothing is known yet.
        shown = {"ids": ids, "folded": folded} if app is not None else {"ids": ids}
        _print(shown, args.json, "\n".join(ids) + folded_text)
        return 0
    handles = [h for i in ids for h in client.runs_of(i)]
    outcomes = [_await_run(h, args.timeout) for h in handles]
    if args.json:
        print(json.dumps({"ids": ids, "runs": [o for o, _ in outcomes], "folded": folded},
                         indent=2, ensure_ascii=False))
    else:
        print("\n".join(ids) + folded_text)
        if not handles and not folded:
            print("the event started no run")
        for (o, _), h in zip(outcomes, handles, strict=True):
            print(f"{h.id}  {o['status']}  {_outcome_text(o)}")
    return max((code for _, code in outcomes), default=0)


def _folded(skip: Any) -> dict[str, Any]:
    """A trigger that started no run (folded into a run by an idempotency key, or skipped
    by a rate limit or a singleton: ``reason``), as JSON (``at`` ISO 8601 UTC)."""
    return {"event_id": skip.event_id, "function_id": skip.function_id, "key": skip.key,
            "run_id": skip.run_id, "at": _render.iso(skip.at),
            "reason": getattr(skip, "reason", "idempotency")}


def _folded_line(f: dict[str, Any]) -> str:
    """One line of ``events send`` for a trigger that started no run."""
    if f["reason"] == "rate_limit":
        return (f"\nevent {f['event_id']} started no run of {f['function_id']}: over its "
                f"rate limit (key {f['key']!r})")
    if f["reason"] == "singleton":
        return (f"\nevent {f['event_id']} started no run of {f['function_id']}: run "
                f"{f['run_id']} holds its singleton key {f['key']!r}")
    return (f"\nevent {f['event_id']} folded into run {f['run_id']} ({f['function_id']}, "
            f"idempotency key {f['key']!r})")


def _with_folded(client: Any, run: Any) -> dict[str, Any]:
    """A run's JSON (:func:`_render.run_json`) with ``folded``: the triggers its idempotency
    key folded into it."""
    out: dict[str, Any] = _render.run_json(run)
    out["folded"] = [_folded(s) for s in client.skipped_triggers(run_id=run.id,
                                                                   limit=10_000)]
    return out


_EXIT_FAILED = 1
_EXIT_TIMEOUT = 124  # as timeout(1)


def _await_run(handle: Any, timeout: float | None) -> tuple[dict[str, Any], int]:
    """Wait for a run; its outcome as JSON and the exit code it stands for."""
    from durable_core.base._errors import RunFailedError, RunTimeoutError

    try:
        output = handle.result(timeout=timeout)
    except RunFailedError as exc:
        return {"run_id": handle.id, "status": exc.status,
                "error": {"type": exc.error_type, "message": exc.error_message}}, _EXIT_FAILED
    except RunTimeoutError as exc:
        return {"run_id": handle.id, "status": exc.status, "timed_out": True}, _EXIT_TIMEOUT
    return {"run_id": handle.id, "status": "completed", "output": output}, 0


def _outcome_text(outcome: dict[str, Any]) -> str:
    if "output" in outcome:
        return json.dumps(outcome["output"], ensure_ascii=False)
    if "error" in outcome:
        return f"{outcome['error']['type']}: {outcome['error']['message']}"
    return "still going (timed out waiting)"


def _cmd_runs_wait(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    handle = Client(_open_store(args.store, existing=True)).handle(args.run_id)
    outcome, code = _await_run(handle, args.timeout)
    _print(outcome, args.json, f"{handle.id}  {outcome['status']}  {_outcome_text(outcome)}")
    return code


def _cmd_functions(args: argparse.Namespace) -> int:
    app = _load_app(args.app)
    described = [fn.describe() for fn in app.functions.values()]
    if args.json:
        # ``retries`` and ``max_steps`` stay at the top level too, as before ``options``.
        rows = [{**d, "retries": d["options"]["retries"],
                 "max_steps": d["options"]["max_steps"]} for d in described]
        _print({"app": app.id, "functions": rows}, True, "")
    elif described:
        _render.console().print(_render.functions_table(described))
    else:
        print(f"app {app.id!r} has no functions")
    return 0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _cmd_runs_list(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    unclaimable_by = None
    if args.unclaimable:
        if args.app is None:
            raise DurableError("--unclaimable needs --app package.module:app (the app whose "
                               "workers would claim the runs)")
        unclaimable_by = _load_app(args.app)
    elif args.app is not None:
        raise DurableError("--app is used only with --unclaimable")
    client = Client(_open_store(args.store, existing=True))
    runs = client.list_runs(
        args.function, args.status, args.event, limit=args.limit,
        unclaimable_by=unclaimable_by, before=args.before,
        since=None if args.since is None else from_ms(args.since),
        until=None if args.until is None else from_ms(args.until))
    if args.json:
        print(json.dumps([_with_folded(client, r) for r in runs], indent=2,
                         ensure_ascii=False))
        return 0
    if not runs:
        print("no runs")
        return 0
    out = _render.console()
    out.print(_render.runs_table(runs, _now_ms()))
    if len(runs) == args.limit:
        out.print(f"(the {args.limit} newest; older ones: --before {runs[-1].id})",
                  style="dim")
    return 0


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    store = _open_store(args.store, existing=True)
    client = Client(store)
    run = client.get_run(args.run_id)
    if not args.follow:
        if args.json:
            print(json.dumps(_with_folded(client, run), indent=2, ensure_ascii=False))
        else:
            _render.console().print(_render.run_timeline(run, _now_ms()))
        return 0
    return _follow(client, run, args.json)


_FOLLOW_S = 1.0
"""``runs show --follow`` looks at the run at least this often (a step's end writes only the
journal, which notifies nobody); a run's end wakes it at once."""


def _follow(client: Any, run: RunView, as_json: bool) -> int:
    """Show ``run`` again whenever it changes, until it ends. On a terminal, in place;
    else (a pipe, a file) each change once more, after a blank line; with ``--json``, one
    JSON line per change."""
    from durable_core.core._model import TERMINAL_STATUSES
    from durable_core.drivers._notify import notifications

    out = _render.console()
    hub = notifications(client.store)
    seen = None if hub is None else hub.subscribe()
    live = None
    if out.is_terminal and not as_json:
        from rich.live import Live

        live = Live(_render.run_timeline(run, _now_ms()), console=out, auto_refresh=False)
        live.start()
    try:
        last = None
        while True:
            shown = _render.run_json(run)
            if live is not None:
                live.update(_render.run_timeline(run, _now_ms()), refresh=True)
            elif shown != last:
                if as_json:
                    print(json.dumps(shown, ensure_ascii=False), flush=True)
                else:
                    if last is not None:
                        out.print()
                    out.print(_render.run_timeline(run, _now_ms()))
                    out.file.flush()
            last = shown
            if run.status in TERMINAL_STATUSES:
                return 0
            if hub is None or seen is None:
                time.sleep(_FOLLOW_S)
            else:
                seen = hub.wait(seen, _FOLLOW_S)
            run = client.get_run(run.id)
    finally:
        if live is not None:
            live.stop()
        if hub is not None:
            hub.unsubscribe()


def _cmd_runs_cancel(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    client = Client(_open_store(args.store, existing=True))
    bulk = args.function is not None or args.if_ is not None
    if args.run_id is not None:
        if bulk or args.since is not None or args.until is not None:
            raise DurableError("runs cancel: give a RUN_ID, or --function/--if (with "
                               "--since/--until) for a bulk cancel, not both")
        client.cancel_run(args.run_id, reason=args.reason)
        _print({"cancel_requested": args.run_id}, args.json,
               f"cancel requested for {args.run_id}; a worker ends the run")
        return 0
    if not bulk:
        raise DurableError("runs cancel: give a RUN_ID, or --function and/or --if for a bulk "
                           "cancel")
    ids = client.cancel_runs(args.function, since=args.since, until=args.until, if_=args.if_,
                             reason=args.reason)
    _print({"cancel_requested": ids}, args.json,
           "\n".join([*ids, f"cancel requested for {len(ids)} run(s); workers end them"]))
    return 0


def _cmd_runs_rerun(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    handle = Client(_open_store(args.store, existing=True)).rerun(args.run_id)
    _print({"run_id": handle.id, "rerun_of": args.run_id}, args.json,
           f"{handle.id} reruns {args.run_id}; a worker runs it")
    return 0


def _cmd_events_list(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    client = Client(_open_store(args.store, existing=True))
    events = client.list_events(
        args.name, limit=args.limit, before=args.before,
        since=None if args.since is None else from_ms(args.since),
        until=None if args.until is None else from_ms(args.until))
    started = {ev.id: len(client.store.list_runs(event_id=ev.id, limit=10_000))
               for ev in events if not ev.duplicate}
    if args.json:
        rows = []
        for ev in events:
            row = _render.event_json(ev)
            row["runs_started"] = None if ev.duplicate else started[ev.id]
            rows.append(row)
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not events:
        print("no events")
        return 0
    out = _render.console()
    out.print(_render.events_table(events, started))
    if len(events) == args.limit:
        out.print(f"(the {args.limit} newest; older ones: --before {events[-1].seq})",
                  style="dim")
    return 0


def _cmd_events_show(args: argparse.Namespace) -> int:
    from rich.text import Text

    from durable_core.drivers._client import Client

    app = None if args.app is None else _load_app(args.app)
    client = Client(_open_store(args.store, existing=True))
    store = client.store
    ev = store.get_event(args.event_id)
    if ev is None:
        raise DurableError(
            f"no event with id {args.event_id!r} in this store (durable events list shows "
            "the events it holds)")
    duplicates = [d for d in store.list_events(name=ev.name, since=ev.received_at,
                                               limit=1000)
                  if d.id == ev.id and d.duplicate]
    runs = client.list_runs(event_id=ev.id, limit=1000)
    resumed = _resumed_runs(client, ev)
    skipped = [_folded(k) for k in client.skipped_triggers(event_id=ev.id, limit=1000)]
    why = None if runs else _why_no_runs(store, ev, app)
    if args.json:
        doc = _render.event_json(ev)
        doc["payload"] = json.loads(ev.data)
        doc["runs"] = [_render.run_json(r, steps=False) for r in runs]
        doc["runs_resumed"] = [_render.run_json(r, steps=False) for r in resumed]
        doc["duplicates"] = [_render.iso(d.received_at) for d in duplicates]
        doc["why_no_runs"] = why
        doc["skipped"] = skipped  # triggers that started no run (idempotency, limits)
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    out = _render.console()
    head = Text()
    head.append(f"event {ev.id}", style="bold")
    head.append(f"  {ev.name}  seq {ev.seq}\nreceived {_render.when(ev.received_at)}  "
                f"ts {_render.when(ev.ts)}")
    out.print(head)
    if duplicates:
        out.print(f"sent again {len(duplicates)} time(s) since, as duplicates (ignored): "
                  + ", ".join(_render.when(d.received_at) for d in duplicates[:5]))
    payload = json.dumps(json.loads(ev.data), indent=2, ensure_ascii=False)
    out.print(Text("payload:", style="bold"))
    out.print(Text(_render.clip(payload, 4000)))
    if runs:
        out.print(Text(f"started {len(runs)} run(s):", style="bold"))
        out.print(_render.runs_table(runs, _now_ms()))
    else:
        out.print(Text(f"started no run: {why}", style="yellow"))
    for line in (_folded_line(k) for k in skipped):
        out.print(Text(line.strip(), style="yellow"))
    if resumed:
        out.print(Text(f"resumed {len(resumed)} waiting run(s):", style="bold"))
        out.print(_render.runs_table(resumed, _now_ms()))
    return 0


_RESUMED_SCAN = 500
"""``events show`` looks for the runs an event resumed among this many runs created before
it (newest first): a wait only matches events sent after it started."""


def _resumed_runs(client: Any, ev: Any) -> list[RunView]:
    """The runs whose ``wait_for_event`` the event ended, among the :data:`_RESUMED_SCAN`
    newest runs created before it was received: their journals record the event."""
    found = []
    for record in client.store.list_runs(until=ev.received_at + 1, limit=_RESUMED_SCAN):
        for entry in client.store.load_journal(record.id):
            if entry.kind != "wait_for_event" or entry.op != "completed":
                continue
            try:
                got = json.loads(entry.data).get("output")
            except (ValueError, RecursionError):
                continue
            if isinstance(got, dict) and got.get("id") == ev.id and got.get("name") == ev.name:
                found.append(client.get_run(record.id))
                break
    return found


def _why_no_runs(store: Any, ev: Any, app: App | None) -> str:
    """Why an event (not a duplicate) started no run, as precisely as the store and, with
    ``app``, its functions' triggers can tell."""
    import difflib

    if any(u.seq == ev.seq for u in store.unrouted_events(10_000)):
        return ("not routed yet: no worker has read it so far (is a worker running on this "
                "store?)")
    if app is None:
        return ("no function's trigger accepted it (pass --app package.module:app to see "
                "which triggers it missed and why)")
    named = [(fn, t) for fn in app.functions.values() for t in fn.event_triggers
             if t.event == ev.name]
    if not named:
        names = sorted({t.event for fn in app.functions.values() for t in fn.event_triggers})
        close = difflib.get_close_matches(ev.name, names, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        return f"no function of app {app.id!r} has a trigger for {ev.name!r}{hint}"
    raw = json.loads(ev.data)
    filtered = [f"{fn.id} (if {t.if_})" for fn, t in named if not t.matches(raw)]
    accepted = [fn.id for fn, t in named if t.matches(raw)]
    if not accepted:
        return f"filtered out: the trigger condition is false for it: {', '.join(filtered)}"
    return (f"the trigger of {', '.join(accepted)} accepts it, but no run holds it: it was "
            "routed by workers of another version of the app, or a flow-control option "
            "(batching, debounce, rate limit, idempotency) let it start none")


def _cmd_export(args: argparse.Namespace) -> int:
    from durable_core.testing import export_run

    store = _open_store(args.store, existing=True)
    text = json.dumps(export_run(store, args.run_id), indent=2, ensure_ascii=False)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


def _cmd_lint(args: argparse.Namespace) -> int:
    from durable_core.testing import lint

    findings = lint(_load_app(args.app))
    if args.json:
        print(json.dumps([{"function_id": f.function_id, "file": f.file, "line": f.line,
                           "call": f.call, "category": f.category,
                           "replacement": f.replacement, "skipped": f.skipped}
                          for f in findings], indent=2, ensure_ascii=False))
    else:
        for f in findings:
            print(f, file=sys.stderr if f.skipped else sys.stdout)
    return 1 if any(not f.skipped for f in findings) else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    import datetime as dt

    from durable_core.base._durations import parse_duration
    from durable_core.testing import check_deploy

    since = None
    if args.ended_within is not None:
        window = parse_duration(args.ended_within, field="--ended-within", maximum=None)
        since = int(time.time() * 1000) - window // dt.timedelta(milliseconds=1)
    store = _open_store(args.store, existing=True)  # (a SQLite path with no store: an error)
    try:
        # Processes share only a store they can each open (not memory://).
        jobs = args.jobs if import_stores().shareable(args.store) else 1
        report = check_deploy(args.app, args.store if jobs > 1 else store,
                              include_ended_since_ms=since, jobs=jobs)
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(report.format())
    return 0 if report.ok else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from durable_core.dashboard import serve
    except ImportError as exc:
        raise DurableError(f"the dashboard needs the 'dashboard' extra ({exc}): pip install "
                           "'durable-core[dashboard]'") from None
    app = None if args.app is None else _load_app(args.app)
    store = _open_store(args.store, existing=True)

    def ready(urls: list[str]) -> None:
        print(f"durable serve: dashboard on {', '.join(urls)} for "
              f"{redact_url(args.store)} (Ctrl-C to stop)", flush=True)

    try:
        serve(store, app=app, host=args.host, port=args.port, on_ready=ready)
    except OSError as exc:
        raise DurableError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    finally:
        store.close()
    print("durable serve: stopped", flush=True)
    return 0


def _int_in(name: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], or a usage error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, got {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be between {low} and {high}, got {text}"
            )
        return value

    return parse


def _seconds(name: str, low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds in (low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a number of seconds, got {text!r}"
            ) from None
        if not (math.isfinite(value) and low < value <= high):
            raise argparse.ArgumentTypeError(
                f"{name} must be more than {low:g} and at most {high:g} seconds, got {text}"
            )
        return value

    return parse


def _instant(name: str) -> Callable[[str], int]:
    """An argparse type: a point in time, as epoch ms: an ISO 8601 time with an offset
    (``2026-01-02T03:04:05Z``) or a duration meaning that long ago (``90m``, ``1d``)."""

    def parse(text: str) -> int:
        import datetime as dt

        from durable_core.base._durations import parse_duration, parse_instant, to_ms

        try:
            if text[:1].isdigit() and ("T" in text or "-" in text[1:]):
                return to_ms(parse_instant(text, field=name))
            ago = parse_duration(text, field=name, maximum=None)
        except DurableError as exc:
            raise argparse.ArgumentTypeError(
                f"{name} takes an ISO 8601 time with an offset (2026-01-02T03:04:05Z) or a "
                f"duration meaning that long ago (90m, 1d); got {text!r} ({exc})") from None
        return int(time.time() * 1000) - ago // dt.timedelta(milliseconds=1)

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``durable`` command."""
    p = argparse.ArgumentParser(prog="durable", description="durable-core command line")
    p.add_argument("--version", action="version",
                   version=f"durable-core {importlib.metadata.version('durable-core')}")
    sub = p.add_subparsers(dest="command", required=True)

    def store_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", default=store_url(),
                        help=f"store URL (default: $DURABLE_STORE, else {DEFAULT_STORE} in "
                             "the current directory; also memory://, "
                             "postgresql://user@host:port/db)")

    def time_range_args(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--since", type=_instant("--since"), default=None, metavar="TIME",
                        help=f"only those {what} at or after TIME: ISO 8601 with an offset "
                             "(2026-01-02T03:04:05Z) or a duration ago (90m, 1d)")
        sp.add_argument("--until", type=_instant("--until"), default=None, metavar="TIME",
                        help=f"only those {what} before TIME (same forms)")

    def timeout_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--timeout", type=_seconds("--timeout", 0, 10 ** 9), default=None,
                        help="seconds to wait at most (default: no limit)")

    sp = sub.add_parser("demo", help="run the order-workflow demo")
    store_arg(sp)
    sp.set_defaults(func=_cmd_demo)

    sp = sub.add_parser("worker", help="run a worker for an app until SIGINT/SIGTERM")
    sp.add_argument("app", help="package.module:app")
    sp.add_argument("--max-runs", type=_int_in("--max-runs", 1, 1_000_000), default=1000,
                    help="runs with step bodies in flight, per process (default 1000)")
    sp.add_argument("--processes", type=_int_in("--processes", 1, 1024), default=1,
                    help="worker processes on the store, to use more than one core "
                         "(default 1; needs a SQLite file or PostgreSQL)")
    sp.add_argument("--poll-interval", type=_seconds("--poll-interval", 0, 3600), default=0.5,
                    help="seconds an idle worker waits before looking at the store again "
                         "(default 0.5; PostgreSQL and SQLite files also wake workers at once "
                         "when another process creates work)")
    sp.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                    default="info", help="the least severe log lines shown (default info: "
                    "runs started, retried and ended, and what the app logs)")
    sp.add_argument("--log-format", choices=("text", "json"), default="text",
                    help="log lines on stderr as text for people (default) or one JSON "
                         "object per line, for log collectors")
    store_arg(sp)
    sp.set_defaults(func=_cmd_worker)

    sp = sub.add_parser("send", help="send an event")
    sp.add_argument("name")
    sp.add_argument("--data", default="{}", help="event data as a JSON object")
    sp.add_argument("--id", default=None, help="dedupe id")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--app", default=None,
                    help="package.module:app: route the event with its functions at once")
    sp.add_argument("--wait", action="store_true",
                    help="wait for the runs the event starts and print their outcomes "
                         "(needs --app; exit 1 if one failed, 124 on --timeout)")
    timeout_arg(sp)
    store_arg(sp)
    sp.set_defaults(func=_cmd_send)

    sp = sub.add_parser("functions", help="list an app's functions, triggers and options")
    sp.add_argument("app", help="package.module:app")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_cmd_functions)

    runs = sub.add_parser("runs", help="list, show or cancel runs")
    rsub = runs.add_subparsers(dest="runs_command", required=True)
    sp = rsub.add_parser("list", help="list runs, newest first")
    sp.add_argument("--function", default=None)
    sp.add_argument("--status", default=None)
    sp.add_argument("--event", default=None, help="runs started by this event id")
    sp.add_argument("--limit", type=_int_in("--limit", 1, 100_000), default=50,
                    help="at most this many runs (1-100000, default 50)")
    sp.add_argument("--unclaimable", action="store_true",
                    help="only runs of functions that --app does not define: no worker of "
                         "that app claims them (with --status queued: runs left waiting)")
    sp.add_argument("--app", default=None, help="package.module:app, for --unclaimable")
    time_range_args(sp, "created")
    sp.add_argument("--before", "--cursor", default=None, metavar="RUN_ID",
                    help="the next page: runs created before this one (the last run listed)")
    sp.add_argument("--json", action="store_true")
    store_arg(sp)
    sp.set_defaults(func=_cmd_runs_list)
    sp = rsub.add_parser("show", help="show a run's step timeline")
    sp.add_argument("run_id")
    sp.add_argument("--follow", "-f", action="store_true",
                    help="show it again as it changes, until the run ends")
    sp.add_argument("--json", action="store_true",
                    help="JSON (with --follow: one JSON line per change)")
    store_arg(sp)
    sp.set_defaults(func=_cmd_runs_show)
    sp = rsub.add_parser("cancel", help="cancel a run (Client.cancel_run), or runs in bulk "
                                        "(Client.cancel_runs: --function, --since/--until, "
                                        "--if)")
    sp.add_argument("run_id", nargs="?", default=None)
    sp.add_argument("--function", default=None, help="bulk: runs of this function")
    sp.add_argument("--since", default=None,
                    help="bulk: runs created at or after this ISO-8601 time (with offset)")
    sp.add_argument("--until", default=None, help="bulk: runs created before this time")
    sp.add_argument("--if", dest="if_", default=None,
                    help="bulk: runs whose triggering event makes this CEL expression true "
                         "(over event)")
    sp.add_argument("--reason", default="cancelled by request",
                    help="recorded in the run's error (default 'cancelled by request')")
    sp.add_argument("--json", action="store_true")
    store_arg(sp)
    sp.set_defaults(func=_cmd_runs_cancel)
    sp = rsub.add_parser("rerun", help="run an ended run again with the same event "
                                       "(Client.rerun); the new run links to it")
    sp.add_argument("run_id")
    sp.add_argument("--json", action="store_true")
    store_arg(sp)
    sp.set_defaults(func=_cmd_runs_rerun)
    sp = rsub.add_parser("wait", help="wait for a run to end and print its output (exit 0 "
                                      "completed, 1 failed or cancelled, 124 on --timeout)")
    sp.add_argument("run_id")
    sp.add_argument("--json", action="store_true")
    timeout_arg(sp)
    store_arg(sp)
    sp.set_defaults(func=_cmd_runs_wait)

    events = sub.add_parser("events", help="list events, or show one and the runs it started")
    esub = events.add_subparsers(dest="events_command", required=True)
    sp = esub.add_parser("list", help="list the events the store received, newest first")
    sp.add_argument("--name", default=None, help="only events with this name")
    time_range_args(sp, "received")
    sp.add_argument("--limit", type=_int_in("--limit", 1, 100_000), default=50,
                    help="at most this many events (1-100000, default 50)")
    sp.add_argument("--before", "--cursor", type=_int_in("--before", 1, 2**63 - 1),
                    default=None, metavar="SEQ",
                    help="the next page: events before this seq (the last event listed)")
    sp.add_argument("--json", action="store_true")
    store_arg(sp)
    sp.set_defaults(func=_cmd_events_list)
    sp = esub.add_parser("show", help="an event's payload, the runs it started, or why "
                                      "it started none")
    sp.add_argument("event_id")
    sp.add_argument("--app", default=None,
                    help="package.module:app: say which trigger missed an event that "
                         "started no run, and why")
    sp.add_argument("--json", action="store_true")
    store_arg(sp)
    sp.set_defaults(func=_cmd_events_show)

    sp = sub.add_parser("export", help="export a run's journal as JSON (for replay tests)")
    sp.add_argument("run_id")
    sp.add_argument("-o", "--output", default=None)
    store_arg(sp)
    sp.set_defaults(func=_cmd_export)

    sp = sub.add_parser("lint", help="find calls that break replay in orchestration code "
                                     "(exit 1 if any)")
    sp.add_argument("app", help="package.module:app")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_cmd_lint)

    sp = sub.add_parser("replay", help="check a deploy: replay live runs against new code")
    sp.add_argument("--app", required=True, help="package.module:app (the new code)")
    sp.add_argument("--ended-within", default=None, metavar="DURATION",
                    help="also replay runs that ended this long ago or less (e.g. 1h)")
    sp.add_argument("--jobs", type=_int_in("--jobs", 1, 1024), default=os.cpu_count() or 1,
                    help="replay in this many processes (default: one per CPU)")
    sp.add_argument("--json", action="store_true")
    store_arg(sp)
    sp.set_defaults(func=_cmd_replay)

    sp = sub.add_parser("serve", help="serve the web dashboard (runs, events, functions)")
    sp.add_argument("--app", default=None,
                    help="package.module:app: show its functions, triggers and options, and "
                         "route events sent from the dashboard at once")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=_int_in("--port", 0, 65535), default=8288,
                    help="port to listen on (default 8288; 0 picks a free one)")
    store_arg(sp)
    sp.set_defaults(func=_cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``durable`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DurableError as exc:
        store = getattr(args, "store", None)
        print(f"durable: error: {redact(str(exc), store)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``durable runs list | head``): exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except ImportError as exc:  # durable-core's stores shadowed, a missing extra
        print(f"durable: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A path that is not there (a missing output directory), not writable...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"durable: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
