"""Drivers check their own options (a typed error naming the field, at construction), and
run views survive outputs stored nested too deep to decode."""

from __future__ import annotations

import json
from typing import Any

import pytest

from durable_core import App, BackgroundWorker, Client, ValidationError, Worker
from durable_core.core._model import JournalEntry
from durable_core.engine._views import UNDECODABLE_KEY, run_view
from durable_core.store import RunWrite
from stores import MemoryStore, SQLiteStore
from stores.testing import T0, claim, create, entry, new_run, write

app = App("opts")
NAN, INF = float("nan"), float("inf")

BAD_WORKER_OPTIONS: list[tuple[str, Any]] = [
    ("max_runs", 0), ("max_runs", -1), ("max_runs", 1.5), ("max_runs", True),
    ("max_runs", "10"), ("max_runs", 10**7),
    ("poll_interval", 0), ("poll_interval", -1), ("poll_interval", NAN),
    ("poll_interval", INF), ("poll_interval", -INF), ("poll_interval", "1"),
    ("poll_interval", 3601), ("poll_interval", None),
    ("lease_ms", 0), ("lease_ms", -5), ("lease_ms", 1.0), ("lease_ms", NAN),
    ("batch_limit", 0), ("batch_limit", None),
    ("clock", 5), ("owner", ""), ("owner", 7),
]


@pytest.mark.parametrize(("field", "value"), BAD_WORKER_OPTIONS)
def test_worker_refuses_a_bad_option_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=rf"Worker\({field}=") as info:
        Worker(app, MemoryStore(), **{field: value})
    assert info.value.field == field


@pytest.mark.parametrize(("field", "value"), BAD_WORKER_OPTIONS[:14])
def test_background_worker_refuses_a_bad_option_before_starting(field: str,
                                                               value: Any) -> None:
    with pytest.raises(ValidationError, match=rf"Worker\({field}=") as info:
        BackgroundWorker(app, MemoryStore(), **{field: value})
    assert info.value.field == field


def test_background_worker_refuses_bad_timeouts() -> None:
    bg = BackgroundWorker(app, MemoryStore())
    for bad in (0, -1, NAN, INF):
        with pytest.raises(ValidationError, match=r"BackgroundWorker.start\(timeout=") as info:
            bg.start(timeout=bad)
        assert info.value.field == "timeout"
        with pytest.raises(ValidationError, match=r"BackgroundWorker.stop\(timeout="):
            bg.stop(timeout=bad)
    with bg:  # still startable: nothing was started by the refused calls
        assert bg.client.list_runs() == []


def test_good_options_are_kept() -> None:
    w = Worker(app, MemoryStore(), max_runs=1, poll_interval=0.01, lease_ms=366,
               batch_limit=1, owner="me")
    assert (w.max_runs, w.poll_interval, w.lease_ms, w.batch_limit, w.owner) == (
        1, 0.01, 366, 1, "me")
    assert Worker(app, MemoryStore(), poll_interval=3600).poll_interval == 3600.0


def test_worker_and_client_refuse_what_is_not_a_store_or_an_app() -> None:
    with pytest.raises(ValidationError, match=r"stores.open\(url\)") as info:
        Worker(app, "memory://")  # type: ignore[arg-type]
    assert info.value.field == "store"
    with pytest.raises(ValidationError, match=r"Client\(store=") as info:
        Client("sqlite:///x.db")  # type: ignore[arg-type]
    assert info.value.field == "store"
    with pytest.raises(ValidationError, match=r"Worker\(app=") as info:
        Worker("opts", MemoryStore())  # type: ignore[arg-type]
    assert info.value.field == "app"


def test_client_refuses_bad_options() -> None:
    for field in ("clock", "on_send"):
        with pytest.raises(ValidationError, match=rf"Client\({field}=") as info:
            Client(MemoryStore(), **{field: 3})
        assert info.value.field == field
    client = Client(MemoryStore())
    for limit in (-1, 1.5, "5", None):
        with pytest.raises(ValidationError, match=r"Client.list_runs\(limit=") as info:
            client.list_runs(limit=limit)  # type: ignore[arg-type]
        assert info.value.field == "limit"
    with pytest.raises(ValidationError, match=r"unclaimable_by=") as info:
        client.list_runs(unclaimable_by="opts")  # type: ignore[arg-type]
    assert info.value.field == "unclaimable_by"
    assert client.list_runs(limit=0) == []


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_run_view_of_an_output_too_deep_to_decode_is_a_placeholder(
    kind: str, tmp_path: Any
) -> None:
    """Stored by an older version or another writer (new outputs are limited to 64 levels):
    100,000 levels deep, in the run's output and a step's. The run stays viewable through
    the Client, with typed placeholders instead of an untyped RecursionError."""
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "deep.db")
    deep = "[" * 100_000 + "]" * 100_000
    create(store, new_run("r1", created_at=T0), new_run("r2", created_at=T0 + 1))
    for run_id, journal in (("r1", (entry(0),)), ("r2", (
            JournalEntry(seq=0, op="completed", position=0, step_id="b", kind="run", ts=T0,
                         data='{"output":' + deep + "}"),))):
        c = claim(store, run_id)
        assert write(store, RunWrite(run_id=run_id, epoch=c.run.epoch, entries=journal,
                                     status="completed", output=deep)) == set()
    client = Client(store)
    view = client.get_run("r1")
    assert view.status == "completed"
    assert set(view.output) == {UNDECODABLE_KEY}
    assert "run 'r1'" in view.output[UNDECODABLE_KEY]
    assert [s.output for s in view.steps] == [0]
    json.dumps(view.to_dict())  # printable (durable runs show --json)
    [step] = client.get_run("r2").steps
    assert (step.id, step.status) == (UNDECODABLE_KEY, "undecodable")
    assert step.error is not None and step.error.type == "SerializationError"
    assert "run 'r2'" in step.error.message
    assert [r.id for r in client.list_runs()] == ["r2", "r1"]
    assert run_view(store.get_run("r1"), store.load_journal("r1")) == view
