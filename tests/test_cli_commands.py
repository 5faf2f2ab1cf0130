"""The ``durable`` command as users run it: the installed console script in a subprocess,
against a SQLite file and a PostgreSQL schema, checking what people read (rich tables and
timelines) and what programs read (``--json``: every time ISO 8601 in UTC)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import stores
from durable_core import BackgroundWorker, Client, Event, RunFailedError, Store

HERE = pathlib.Path(__file__).parent
_SCRIPT = pathlib.Path(sys.executable).parent / "durable"
DURABLE = ([str(_SCRIPT)] if _SCRIPT.exists() else
           [sys.executable, "-c", "import sys; from durable_core.cli import main; "
                                  "sys.exit(main())"])
APP = "cli_show_app:app"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DURABLE_STORE", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def durable(*args: str, code: int = 0) -> tuple[str, str]:
    """Run ``durable args...``; check its exit code; its stdout and stderr."""
    done = subprocess.run([*DURABLE, *args], capture_output=True, text=True, cwd=HERE,
                          env=_env(), timeout=120, check=False)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    return done.stdout, done.stderr


def as_json(*args: str) -> Any:
    out, _ = durable(*args, "--json")
    doc = json.loads(out)
    check_times(doc)
    return doc


_TIME_KEYS = ("created_at", "ended_at", "started_at", "received_at", "ts")


def check_times(doc: Any) -> None:
    """Every time in a JSON output is ISO 8601 in UTC (never epoch milliseconds). Values
    of the user's (an event's ``payload``, ``data``, an ``output``: a waited-for event as
    the code received it) are shown as they are stored."""
    if isinstance(doc, list):
        for item in doc:
            check_times(item)
    elif isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("payload", "data", "output"):
                continue
            if key in _TIME_KEYS and value is not None:
                assert isinstance(value, str), (key, value)
                assert dt.datetime.fromisoformat(value).utcoffset() == dt.timedelta(0)
            elif key == "duplicates":
                for value_ in value:
                    assert dt.datetime.fromisoformat(value_).utcoffset() == dt.timedelta(0)
            else:
                check_times(value)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    pg_url = request.getfixturevalue("pg_url")
    return f"{pg_url}?schema={request.getfixturevalue('pg_schema')}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = stores.open(url)
    yield s
    s.close()


def shop() -> Any:
    return __import__("cli_show_app").app


def until(what: str, check: Any, timeout: float = 60) -> None:
    """Wait (polling the store) until ``check()`` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_events_list_and_show(url: str, store: Store) -> None:
    client = Client(store, app=shop())
    [paid] = client.send(Event("shop/order", {"amount": 12}))
    [typo] = client.send(Event("shop/ordr", {"amount": 12}))
    client.send(Event("shop/order", {"amount": 0}, id="free"))
    client.send(Event("shop/order", {"amount": 0}, id="free"))  # a duplicate
    [run] = client.runs_of(paid)
    with BackgroundWorker(shop(), store, poll_interval=0.05):
        run.result(timeout=60)

    everything = as_json("events", "list", "--store", url)
    # The run's end is an event too (its system event, durable/function.finished).
    assert [e["name"] for e in everything if e["name"].startswith("durable/")] == [
        "durable/function.finished"]
    listed = [e for e in everything if not e["name"].startswith("durable/")]
    assert [(e["id"], e["duplicate"], e["runs_started"]) for e in listed] == [
        ("free", True, None), ("free", False, 0), (typo, False, 0), (paid, False, 1)]
    assert listed[-1]["data"] == {"amount": 12} and listed[-1]["name"] == "shop/order"
    out, _ = durable("events", "list", "--store", url)
    head, *rows = out.splitlines()
    assert head.split() == ["SEQ", "EVENT", "NAME", "RECEIVED", "(UTC)", "DUPLICATE", "RUNS",
                            "DATA"]
    rows = [r for r in rows if "durable/" not in r]
    assert "duplicate" in rows[0] and rows[0].split()[1] == "free"
    assert rows[3].split()[1:3] == [paid, "shop/order"]

    # Filters and pages.
    assert [e["id"] for e in as_json("events", "list", "--name", "shop/ordr", "--store",
                                     url)] == [typo]
    first = as_json("events", "list", "--limit", "2", "--store", url)
    out, _ = durable("events", "list", "--limit", "2", "--store", url)
    assert f"--before {first[-1]['seq']}" in out
    rest = as_json("events", "list", "--before", str(first[-1]["seq"]), "--store", url)
    assert [e["seq"] for e in first + rest] == [e["seq"] for e in everything]
    assert as_json("events", "list", "--since", "2999-01-01T00:00:00Z", "--store", url) == []
    assert len(as_json("events", "list", "--since", "1h", "--store", url)) == len(everything)

    # One event: payload, the runs it started; or why it started none.
    shown = as_json("events", "show", paid, "--store", url)
    assert [r["id"] for r in shown["runs"]] == [run.id]
    assert shown["runs"][0]["status"] == "completed" and shown["why_no_runs"] is None
    assert shown["payload"]["data"] == {"amount": 12}
    out, _ = durable("events", "show", paid, "--store", url)
    assert "started 1 run(s)" in out and run.id in out and '"amount": 12' in out

    shown = as_json("events", "show", typo, "--app", APP, "--store", url)
    assert shown["runs"] == []
    assert shown["why_no_runs"] == ("no function of app 'shop' has a trigger for 'shop/ordr' "
                                    "(did you mean 'shop/order'?)")
    out, _ = durable("events", "show", typo, "--store", url)
    assert "started no run: no function's trigger accepted it" in out

    shown = as_json("events", "show", "free", "--app", APP, "--store", url)
    assert shown["why_no_runs"].startswith("filtered out") and "event.data.amount > 0" in (
        shown["why_no_runs"])
    assert len(shown["duplicates"]) == 1
    out, _ = durable("events", "show", "free", "--app", APP, "--store", url)
    assert "sent again 1 time(s)" in out and "filtered out" in out

    # No worker has read this one yet (a Client without the app does not route).
    [waiting] = Client(store).send(Event("shop/order", {"amount": 5}))
    shown = as_json("events", "show", waiting, "--store", url)
    assert shown["why_no_runs"].startswith("not routed yet")

    _, err = durable("events", "show", "nope", "--store", url, code=2)
    assert err.strip().startswith("durable: error: no event with id 'nope'")


def test_runs_list_times_durations_and_pages(url: str, store: Store) -> None:
    client = Client(store, app=shop())
    with BackgroundWorker(shop(), store, poll_interval=0.05):
        done = [client.run("charge", {"amount": n}) for n in (1, 2, 3)]
        for h in done:
            h.result(timeout=60)
        failed = client.run("decline")
        with pytest.raises(RunFailedError):
            failed.result(timeout=60)
        napping = client.run("nap")
        until("the nap", lambda: napping.status == "sleeping")

    runs = as_json("runs", "list", "--store", url)
    assert [r["id"] for r in runs] == [napping.id, failed.id, *(h.id for h in reversed(done))]
    assert [r["status"] for r in runs] == ["sleeping", "failed", *["completed"] * 3]
    assert runs[0]["duration_ms"] is None and runs[0]["ended_at"] is None
    assert all(isinstance(r["duration_ms"], int) and r["duration_ms"] >= 0 for r in runs[1:])
    out, _ = durable("runs", "list", "--store", url)
    head, *rows = out.splitlines()
    assert head.split() == ["RUN", "FUNCTION", "STATUS", "CREATED", "(UTC)", "DURATION",
                            "STEPS"]
    assert rows[0].split()[:3] == [napping.id, "nap", "sleeping"] and "so far" in rows[0]
    assert rows[1].split()[:3] == [failed.id, "decline", "failed"]

    # Pages: --limit, then --before the last one listed (also spelled --cursor).
    out, _ = durable("runs", "list", "--limit", "2", "--store", url)
    assert f"(the 2 newest; older ones: --before {failed.id})" in out
    page2 = as_json("runs", "list", "--limit", "2", "--cursor", failed.id, "--store", url)
    page3 = as_json("runs", "list", "--limit", "2", "--before", page2[-1]["id"], "--store",
                    url)
    assert [r["id"] for r in page2 + page3] == [r["id"] for r in runs[2:]]

    # Time range, and the other filters with it.
    assert as_json("runs", "list", "--until", "2000-01-01T00:00:00Z", "--store", url) == []
    created = runs[1]["created_at"]
    assert [r["id"] for r in as_json("runs", "list", "--since", created, "--function",
                                     "decline", "--store", url)] == [failed.id]
    assert len(as_json("runs", "list", "--since", "1d", "--status", "completed", "--store",
                       url)) == 3
    out, _ = durable("runs", "list", "--since", "2999-01-01T00:00:00Z", "--store", url)
    assert out.strip() == "no runs"
    _, err = durable("runs", "list", "--since", "yesterday", "--store", url, code=2)
    assert "--since takes an ISO 8601 time" in err


def test_runs_show_timeline_ended_steps_and_long_outputs(url: str, store: Store) -> None:
    client = Client(store, app=shop())
    with BackgroundWorker(shop(), store, poll_interval=0.05):
        charged = client.run("charge", {"amount": 7})
        charged.result(timeout=60)
        declined = client.run("decline")
        with pytest.raises(RunFailedError):
            declined.result(timeout=60)
        napping = client.run("nap")
        until("the nap", lambda: napping.status == "sleeping")
        durable("runs", "cancel", napping.id, "--store", url)
        with pytest.raises(RunFailedError):
            napping.result(timeout=60)

    shown = as_json("runs", "show", charged.id, "--store", url)
    assert [(s["id"], s["status"]) for s in shown["steps"]] == [
        ("charge-card", "completed"), ("long-note", "completed")]
    assert shown["steps"][1]["output"] == "x" * 500  # JSON is never cut
    assert all(isinstance(s["duration_ms"], int) for s in shown["steps"])
    assert isinstance(shown["duration_ms"], int)
    out, _ = durable("runs", "show", charged.id, "--store", url)
    assert out.splitlines()[0].split() == ["run", charged.id, "charge", "completed"]
    assert "took" in out and "STEP" in out and "DURATION" in out and "TIMELINE" in out
    # A long output is cut for people, with a mark that says so (not mid-string silently).
    assert '"' + "x" * 59 + "… [442 more characters; --json shows all]" in out
    assert 'output: {"receipt": "charged 7", "note_length": 500}' in out

    out, _ = durable("runs", "show", declined.id, "--store", url)
    assert "failed" in out
    assert "error: StepError: step 'charge-card' failed: NonRetriableError: the card was " \
           "declined" in out

    # An ended run shows ended steps: the sleep of a cancelled run is abandoned.
    shown = as_json("runs", "show", napping.id, "--store", url)
    assert shown["status"] == "cancelled"
    assert [(s["id"], s["status"]) for s in shown["steps"]] == [("nap", "abandoned")]
    out, _ = durable("runs", "show", napping.id, "--store", url)
    step_row = next(line for line in out.splitlines() if line.startswith("nap "))
    assert step_row.split()[:3] == ["nap", "sleep", "abandoned"]
    assert "sleeping" not in out


def _read_until(proc: subprocess.Popen[str], needle: str) -> str:
    """Lines of ``proc``'s stdout up to the first that holds ``needle``."""
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never came; got {seen!r}")


@pytest.mark.parametrize("as_json_lines", [False, True])
def test_runs_show_follow_until_the_run_ends(url: str, store: Store,
                                             as_json_lines: bool) -> None:
    """``runs show --follow`` shows the run again as it changes and returns once it ends."""
    client = Client(store, app=shop())
    with BackgroundWorker(shop(), store, poll_interval=0.05) as bg:
        [sent] = client.send(Event("shop/ship", {"order": 4}))
        [run] = client.runs_of(sent)
        until("the wait", lambda: run.status == "waiting")
        proc = subprocess.Popen(
            [*DURABLE, "runs", "show", run.id, "--follow", "--store", url,
             *(["--json"] if as_json_lines else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE, env=_env())
        try:
            first = _read_until(proc, '"status": "waiting"' if as_json_lines else "waiting")
            bg.client.send(Event("shop/picked", {"order": 4}))
            rest, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    if as_json_lines:
        docs = [json.loads(line) for line in (first + rest).splitlines()]
        for doc in docs:
            check_times(doc)
        assert docs[0]["status"] == "waiting" and docs[-1]["status"] == "completed"
        assert docs[-1]["output"] == "shipped"
        assert [s["status"] for s in docs[-1]["steps"]] == ["completed", "completed"]
        # The event that ended the wait resumed the run (and started none).
        [picked] = as_json("events", "list", "--name", "shop/picked", "--store", url)
        shown = as_json("events", "show", picked["id"], "--store", url)
        assert shown["runs"] == [] and [r["id"] for r in shown["runs_resumed"]] == [run.id]
        out, _ = durable("events", "show", picked["id"], "--store", url)
        assert "resumed 1 waiting run(s):" in out and run.id in out
    else:
        assert f"run {run.id}" in first
        last = rest.split(f"run {run.id}")[-1]
        assert "completed" in last and 'output: "shipped"' in last


@pytest.mark.parametrize(("args", "message"), [
    (["worker", "no_such_module:app"], "cannot import 'no_such_module'"),
    (["functions", "cli_show_app:nope"], "'cli_show_app:nope' is not a durable_core.App"),
    (["events", "show", "x", "--app", "nocolon"], "expected 'package.module:app'"),
    (["runs", "list", "--store", "bogus://x"], "unsupported scheme"),
    (["events", "list", "--store", "sqlite:///no/such/dir/shop.db"], "no store at"),
])
def test_a_user_mistake_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    _, err = durable(*args, code=2)
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_output_file_in_a_missing_directory_is_one_line(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    store = stores.open(url)
    try:
        handle = Client(store, app=shop()).run("nap")
    finally:
        store.close()
    _, err = durable("export", handle.id, "--store", url, "-o",
                     str(tmp_path / "missing" / "run.json"), code=2)
    assert "No such file or directory" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- docs/operating.md

OPERATING = HERE.parent / "docs" / "operating.md"
_CONSOLE = re.compile(r"```console\n(.*?)```", re.S)
_LONG_RUNNING = ("durable worker", "durable serve")
_EXIT_CODES = {"durable runs wait <run id>": 1}  # the page: a cancelled run's wait exits 1


def operating_commands() -> list[tuple[str, list[str]]]:
    """The page's commands (``$ ...`` lines of its console blocks), in order, each with the
    output lines the page shows for it."""
    out: list[tuple[str, list[str]]] = []
    for block in _CONSOLE.findall(OPERATING.read_text(encoding="utf-8")):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif line.strip():
                out[-1][1].append(line)
    return out


def _shown(expected: list[str], got: str) -> None:
    """Each output line the page shows is a line of ``got`` (``...`` stands for lines left
    out; ``<worker id>`` for a generated id)."""
    lines = [ln.rstrip() for ln in got.splitlines()]
    for want in expected:
        if want == "...":
            continue
        pattern = re.escape(want).replace(re.escape("<worker id>"), r"\S+")
        assert any(re.fullmatch(pattern, ln) for ln in lines), (want, got)


def test_the_operating_page_runs(url: str, tmp_path: pathlib.Path) -> None:
    """Every command of docs/operating.md runs, in order, and prints what the page shows."""
    (tmp_path / "shop.py").write_text("from cli_show_app import app\n", encoding="utf-8")
    env = _env()
    background: list[subprocess.Popen[str]] = []
    commands = operating_commands()
    assert len(commands) >= 15
    store: Store | None = None

    def newest_run() -> str:
        assert store is not None
        return store.list_runs(limit=1)[0].id

    try:
        for command, expected in commands:
            if command.startswith("export DURABLE_STORE="):
                # The page's SQLite file, or the PostgreSQL schema of this test.
                env["DURABLE_STORE"] = ("sqlite:///shop.db" if url.startswith("sqlite")
                                        else url)
                continue
            assert command.startswith("durable "), command
            args = shlex.split(command.replace("<run id>", newest_run())
                               if "<run id>" in command else command)
            argv = [*DURABLE, *args[1:]]
            if command.startswith(_LONG_RUNNING):
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, cwd=tmp_path, env=env)
                background.append(proc)
                first = _read_until(proc, "(Ctrl-C to stop)")
                _shown([e.replace("sqlite:///shop.db", env["DURABLE_STORE"])
                        for e in expected], first)
                if command.startswith("durable serve"):
                    proc.send_signal(signal.SIGINT)
                    assert proc.wait(60) == 0
                if store is None:
                    store = stores.open(env["DURABLE_STORE"] if url.startswith("postgres")
                                        else f"sqlite:///{tmp_path / 'shop.db'}")
                continue
            done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env,
                                  timeout=120, check=False)
            assert done.returncode == _EXIT_CODES.get(command, 0), (
                command, done.stdout, done.stderr)
            _shown(expected, done.stdout)
    finally:
        for proc in background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if store is not None:
            store.close()
