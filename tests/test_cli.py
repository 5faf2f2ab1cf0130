"""The ``durable`` command line, against a SQLite file."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

import stores
from durable_core import Client, Event
from durable_core.cli import main
from durable_core.testing import TestEngine, replay


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_send_list_show_export(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    import stores
    from durable_core.demo import app

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    tricky = "o'; DROP TABLE runs; -- ✓"
    code, out, _ = run_cli(capsys, "send", "order/created", "--data",
                           json.dumps({"orderId": 1, "amount": 500.0}), "--id", tricky,
                           "--store", url, "--json")
    assert code == 0 and json.loads(out) == {"ids": [tricky]}
    # Run the function on that store (a TestEngine drives the same engine).
    store = stores.open(url)
    engine = TestEngine(app, store=store)
    engine.advance("1m")
    engine.send(Event("order/shipped", {"orderId": 1, "carrier": "DHL"}))
    [run] = Client(store).list_runs(event_id=tricky)
    assert run.status == "completed"
    store.close()

    code, out, _ = run_cli(capsys, "runs", "list", "--store", url, "--event", tricky, "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [run.id]
    code, out, _ = run_cli(capsys, "runs", "list", "--store", url, "--status", "failed")
    assert code == 0 and out.strip() == "no runs"
    code, out, _ = run_cli(capsys, "runs", "show", run.id, "--store", url)
    assert code == 0 and "charge-card" in out and "completed" in out
    target = tmp_path / "run.json"
    code, _, _ = run_cli(capsys, "export", run.id, "--store", url, "-o", str(target))
    assert code == 0
    assert replay(app, target).status == "completed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "", "--data", "{}"], "event.name"),
        (["send", "a", "--data", "[1]"], "event.data"),
        (["send", "a", "--data", "{nope"], "--data: invalid JSON"),
        (["runs", "show", "missing"], "no run with id 'missing'"),
        (["runs", "list", "--store", "mysql://x"], "unsupported scheme"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                    args: list[str], message: str) -> None:
    if "--store" not in args:
        url = f"sqlite:///{tmp_path / 'e.db'}"
        stores.open(url).close()  # an existing, empty store
        args = [*args, "--store", url]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err


@pytest.mark.parametrize("command", [
    ["runs", "list"], ["runs", "show", "r_x"], ["runs", "cancel", "r_x"], ["export", "r_x"],
])
def test_reading_commands_refuse_a_path_with_no_store(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """A mistyped path is an error naming the path looked at; it creates nothing."""
    missing = tmp_path / "typo.db"
    code, out, err = run_cli(capsys, *command, "--store", f"sqlite:///{missing}")
    assert code == 2
    assert f"no store at {missing}" in err
    assert "DURABLE_STORE" in err
    assert out == ""
    assert not missing.exists()


def test_durable_store_variable_is_the_default(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("DURABLE_STORE", url)
    code, out, _ = run_cli(capsys, "send", "env/event", "--json")
    assert code == 0
    [event_id] = json.loads(out)["ids"]
    store = stores.open(url)
    try:
        assert store.get_event(event_id).name == "env/event"
    finally:
        store.close()
    monkeypatch.delenv("DURABLE_STORE")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2
    assert f"no store at {tmp_path / 'durable.db'}" in err


def test_worker_requires_a_module_and_an_app(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match=r"package\.module:app"):
        main(["worker", "nocolon", "--store", "memory://"])
    with pytest.raises(SystemExit, match=r"not a durable_core\.App"):
        main(["worker", "json:dumps", "--store", "memory://"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import durable_core

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"durable-core {durable_core.__version__}"


def test_functions_lists_triggers_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "functions", "cli_app:app", "--json")
    assert code == 0
    listed = json.loads(out)
    assert listed["app"] == "cli"
    def options(retries: int) -> dict[str, object]:
        return {"retries": retries, "max_steps": 1000, "sandbox": True}

    assert listed["functions"] == [
        {"id": "double", "triggers": [{"event": "cli/double", "if": "event.data.n > 0"}],
         "retries": 2, "max_steps": 1000, "options": options(2)},
        {"id": "refuse", "triggers": [{"event": "cli/refuse", "if": None}], "retries": 0,
         "max_steps": 1000, "options": options(0)},
        {"id": "nap", "triggers": [{"event": "cli/nap", "if": None},
                                   {"cron": "TZ=Europe/Paris 0 9 * * 1", "catch_up": "latest"}],
         "retries": 4, "max_steps": 1000, "options": options(4)},
    ]
    code, out, _ = run_cli(capsys, "functions", "cli_app:app")
    lines = out.splitlines()
    assert lines[0].split() == ["FUNCTION", "TRIGGERS", "OPTIONS"]
    assert lines[1].split() == ["double", "event", "cli/double", "if", "event.data.n", ">", "0",
                                "retries=2"]
    assert "cron TZ=Europe/Paris 0 9 * * 1 (catch_up=latest)" in out
    assert "max_steps=1000" in out and "sandbox=True" in out


def test_send_wait_and_runs_wait(tmp_path: pathlib.Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``send --wait`` prints the outcome of each run the event started; ``runs wait`` waits
    for one run; the exit code says how they ended."""
    from durable_core import BackgroundWorker

    cli_app = __import__("cli_app").app
    url = f"sqlite:///{tmp_path / 'wait.db'}"
    store = stores.open(url)
    try:
        with BackgroundWorker(cli_app, store, poll_interval=0.05):
            code, out, _ = run_cli(capsys, "send", "cli/double", "--data", '{"n": 21}',
                                   "--app", "cli_app:app", "--wait", "--timeout", "60",
                                   "--store", url, "--json")
            assert code == 0
            sent = json.loads(out)
            [run] = sent["runs"]
            assert run["status"] == "completed" and run["output"] == 42
            code, out, _ = run_cli(capsys, "runs", "wait", run["run_id"], "--store", url)
            assert code == 0 and out.split()[1:] == ["completed", "42"]

            # A filter that does not match: the event starts no run, and says so.
            code, out, _ = run_cli(capsys, "send", "cli/double", "--data", '{"n": 0}',
                                   "--app", "cli_app:app", "--wait", "--store", url)
            assert code == 0 and "the event started no run" in out

            code, out, _ = run_cli(capsys, "send", "cli/refuse", "--app", "cli_app:app",
                                   "--wait", "--timeout", "60", "--store", url)
            assert code == 1
            assert "failed  StepError: step 'refuse' failed: NonRetriableError: no, thanks" in out

            code, out, _ = run_cli(capsys, "send", "cli/nap", "--app", "cli_app:app",
                                   "--wait", "--timeout", "0.01", "--store", url, "--json")
            assert code == 124
            [napping] = json.loads(out)["runs"]
            assert napping["timed_out"] is True
    finally:
        store.close()


@pytest.mark.parametrize(("args", "message"), [
    (["send", "cli/double", "--wait"], "--wait needs --app"),
    (["runs", "wait", "r_missing"], "no run with id 'r_missing'"),
])
def test_wait_bad_input(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                        args: list[str], message: str) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    stores.open(url).close()
    code, _, err = run_cli(capsys, *args, "--store", url)
    assert code == 2 and message in err
    with pytest.raises(SystemExit):
        main(["runs", "wait", "r_x", "--timeout", "-1", "--store", url])
    assert "--timeout must be more than 0" in capsys.readouterr().err


def test_folded_triggers_are_shown(tmp_path: pathlib.Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """With ``--app`` the event is routed at once: ``send`` says which run an idempotency
    key folded it into; ``runs list --json`` and ``runs show --json`` list a run's folded
    triggers under ``folded``."""
    url = f"sqlite:///{tmp_path / 'folded.db'}"
    send = ("send", "cart/checkout", "--data", json.dumps({"cart": "c1"}), "--app",
            "lifecycle_app:app", "--store", url)
    code, out, _ = run_cli(capsys, *send, "--id", "first", "--json")
    assert code == 0 and json.loads(out) == {"ids": ["first"], "folded": []}
    code, out, _ = run_cli(capsys, *send, "--id", "second", "--json")
    shown = json.loads(out)
    [folded] = shown["folded"]
    assert (folded["event_id"], folded["function_id"], folded["key"]) == (
        "second", "checkout", "c1")
    code, out, _ = run_cli(capsys, *send, "--id", "third")
    assert code == 0
    assert f"event third folded into run {folded['run_id']} (checkout, idempotency key 'c1')" \
        in out
    code, out, _ = run_cli(capsys, "runs", "list", "--store", url, "--json")
    [run] = json.loads(out)
    assert run["id"] == folded["run_id"]
    assert [f["event_id"] for f in run["folded"]] == ["third", "second"]
    code, out, _ = run_cli(capsys, "runs", "show", folded["run_id"], "--store", url, "--json")
    assert [f["event_id"] for f in json.loads(out)["folded"]] == ["third", "second"]


def test_the_readme_demo_runs_to_the_end(tmp_path: pathlib.Path) -> None:
    """`durable demo` (the README's first command) on the embedded SQLite default: both
    orders charge after one retry, sleep, wait for shipping and complete."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import sys; from durable_core.cli import main; sys.exit(main())",
         "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "300"},  # wide enough that no table cell wraps
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "sent 3 orders (order 2 is below the amount filter and starts no run)" in text
    assert text.count("process-order  completed") == 2
    assert text.count("RetryAfterError: card network timeout") >= 2
    assert '"carrier": "DHL"' in text and '"carrier": "UPS"' in text
    assert "runs are stored in sqlite:///durable.db" in text
    assert (tmp_path / "durable.db").exists()
