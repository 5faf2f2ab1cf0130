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


def format_timeline(run: RunView) -> str:
    """A run's step timeline as text: each step's start (from the run's creation), duration,
    attempts with their errors, and what a sleep or wait waits for."""
    t0 = run.created_at

    def at(ms: int) -> str:
        return from_ms(ms).isoformat()

    took = "" if run.ended_at is None else f" in {(run.ended_at - t0) / 1000:.1f}s"
    lines = [f"run {run.id}  {run.function_id}  {run.status}{took}"]
    if run.rerun_of is not None:
        lines.append(f"  rerun of {run.rerun_of}")
    for s in run.steps:
        start = f"+{((s.started_at or t0) - t0) / 1000:6.1f}s"
        took_s = "" if s.duration_ms is None else f"  ({s.duration_ms / 1000:.1f}s)"
        detail = ""
        if s.error is not None:
            detail = f"  {s.error.type}: {s.error.message}"
        elif s.output is not None:
            detail = "  -> " + json.dumps(s.output, ensure_ascii=False)[:80]
        tries = f"  attempts={s.attempts}" if s.kind == "run" else ""
        lines.append(f"  {start}  {s.id:<20} {s.kind:<15} {s.status:<10}{tries}{took_s}"
                     f"{detail}")
        if s.waiting_for is not None:
            lines.append("      waits for " + ", ".join(
                f"{k}={v}" for k, v in s.waiting_for.items() if v is not None))
        if s.until is not None and s.ended_at is None:
            lines.append(f"      until {at(s.until)}")
        for a in s.attempt_log:
            if a.error is not None:
                again = "" if a.retry_at is None else f" (next attempt {at(a.retry_at)})"
                lines.append(f"      attempt {a.attempt} {a.step_id}: {a.error.type}: "
                             f"{a.error.message}{again}")
    for a in run.attempt_log:
        if a.error is not None:
            lines.append(f"  code attempt {a.attempt} raised {a.error.type}: "
                         f"{a.error.message} at {at(a.ended_at)}")
    if run.next_attempt_at is not None:
        lines.append(f"  next attempt: {at(run.next_attempt_at)}")
    if run.error is not None:
        lines.append(f"  error: {run.error.type}: {run.error.message}")
        if run.error.traceback:
            lines.extend("    " + line for line in run.error.traceback.rstrip().splitlines())
    elif run.status == "completed":
        lines.append("  output: " + json.dumps(run.output, ensure_ascii=False))
    return "\n".join(lines)


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
    for run_id in reversed(run_ids):
        print(format_timeline(client.get_run(run_id)))
        print()
    print(f"done in {time.monotonic() - started:.1f}s; runs are stored in "
          f"{redact_url(args.store)}")
    store.close()
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from durable_core.drivers._logs import configure_logging
    from durable_core.drivers._processes import run_worker

    configure_logging(args.log_level, args.log_format)
    app = load_app(args.app)
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
    app = None if args.app is None else load_app(args.app)
    client = Client(_open_store(args.store), app=app)
    ids = client.send(event)
    # With an app the event is routed at once: say which runs it was folded into.
    folded = [_folded(s) for i in ids for s in client.skipped_triggers(event_id=i)]
    folded_text = "".join(
        f"\nevent {f['event_id']} folded into run {f['run_id']} ({f['function_id']}, "
        f"idempotency key {f['key']!r})" for f in folded)
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
    """A trigger folded into a run by an idempotency key, as JSON."""
    return {"event_id": skip.event_id, "function_id": skip.function_id, "key": skip.key,
            "run_id": skip.run_id, "at": skip.at}


def _with_folded(client: Any, run: Any) -> dict[str, Any]:
    """A run's JSON with ``folded``: the triggers its idempotency key folded into it."""
    out: dict[str, Any] = run.to_dict()
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
    app = load_app(args.app)
    rows: list[dict[str, Any]] = []
    for fn in app.functions.values():
        triggers: list[dict[str, Any]] = []
        for t in fn.event_triggers:
            triggers.append({"event": t.event, "if": t.if_})
        for c in fn.cron_triggers:
            triggers.append({"cron": c.cron})
        rows.append({"id": fn.id, "triggers": triggers, "retries": fn.retries,
                     "max_steps": fn.max_steps})
    lines = []
    for r in rows:
        shown = ", ".join(
            (f"event {t['event']}" + (f" if {t['if']}" if t["if"] else "")) if "event" in t
            else f"cron {t['cron']}" for t in r["triggers"]) or "no trigger (invoke only)"
        lines.append(f"{r['id']:<24} {shown}  retries={r['retries']}")
    _print({"app": app.id, "functions": rows}, args.json,
           "\n".join(lines) or f"app {app.id!r} has no functions")
    return 0


def _cmd_runs_list(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    unclaimable_by = None
    if args.unclaimable:
        if args.app is None:
            raise DurableError("--unclaimable needs --app package.module:app (the app whose "
                               "workers would claim the runs)")
        unclaimable_by = load_app(args.app)
    elif args.app is not None:
        raise DurableError("--app is used only with --unclaimable")
    client = Client(_open_store(args.store, existing=True))
    runs = client.list_runs(args.function, args.status, args.event, limit=args.limit,
                            unclaimable_by=unclaimable_by)
    text = "\n".join(
        f"{r.id}  {r.function_id:<24} {r.status:<10} steps={len(r.steps)}" for r in runs
    ) or "no runs"
    _print([_with_folded(client, r) for r in runs] if args.json else [], args.json, text)
    return 0


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from durable_core.drivers._client import Client

    client = Client(_open_store(args.store, existing=True))
    run = client.get_run(args.run_id)
    _print(_with_folded(client, run) if args.json else {}, args.json, format_timeline(run))
    return 0


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

    findings = lint(load_app(args.app))
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
    app = None if args.app is None else load_app(args.app)
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
    sp.add_argument("--json", action="store_true")
    store_arg(sp)
    sp.set_defaults(func=_cmd_runs_list)
    sp = rsub.add_parser("show", help="show a run's step timeline")
    sp.add_argument("run_id")
    sp.add_argument("--json", action="store_true")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
