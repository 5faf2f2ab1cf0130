"""Events: validation at construction (typed errors naming the field), JSON forms, the
512 KiB size limit, and event-id deduplication (same id within 24 h starts nothing new)."""

from __future__ import annotations

import datetime as dt
import json

import attrs
import pytest

from durable_core import (
    App,
    DurableError,
    Event,
    InvalidEventError,
    ValidationError,
    on_event,
)
from durable_core.testing import TestEngine

MAX_EVENT_BYTES = 512 * 1024
DAY = dt.timedelta(hours=24)


def _field_error(excinfo: pytest.ExceptionInfo[InvalidEventError], field: str) -> None:
    assert isinstance(excinfo.value, InvalidEventError)
    assert excinfo.value.field == field
    assert field.split(".")[-1] in str(excinfo.value)


# --------------------------------------------------------------------------- construction


def test_event_defaults() -> None:
    e = Event("order/created")
    assert e.name == "order/created"
    assert e.data == {}
    assert e.id is None
    assert e.ts is None


def test_event_keeps_given_fields() -> None:
    e = Event("a/b", {"x": [1, 2, {"y": None}]}, id="evt-1", ts=1_767_225_600_000)
    assert (e.name, e.data, e.id, e.ts) == ("a/b", {"x": [1, 2, {"y": None}]}, "evt-1",
                                            1_767_225_600_000)


def test_event_errors_are_validation_errors() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event("")
    assert isinstance(excinfo.value, ValidationError)
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, DurableError)


@pytest.mark.parametrize("name", ["", None, 5, b"bytes"])
def test_event_name_must_be_non_empty_string(name: object) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event(name)  # type: ignore[arg-type]
    _field_error(excinfo, "event.name")


@pytest.mark.parametrize("name", ["a" * 512, "é" * 256, "€" * 170 + "ab"])
def test_event_name_of_512_bytes_is_accepted(name: str) -> None:
    assert len(name.encode("utf-8")) == 512
    assert Event(name).name == name


@pytest.mark.parametrize("name", ["a" * 513, "é" * 256 + "a", "€" * 171])
def test_event_name_over_512_bytes_is_rejected(name: str) -> None:
    assert len(name.encode("utf-8")) > 512
    with pytest.raises(InvalidEventError) as excinfo:
        Event(name)
    _field_error(excinfo, "event.name")


@pytest.mark.parametrize("data", [[1, 2], "text", 3, None, (("a", 1),)])
def test_event_data_must_be_a_dict(data: object) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event("x", data)  # type: ignore[arg-type]
    _field_error(excinfo, "event.data")


@pytest.mark.parametrize(
    "data",
    [{"o": object()}, {"n": float("nan")}, {"inf": float("inf")}, {"s": {1, 2}},
     {"nested": {"deep": [dt.datetime(2020, 1, 1)]}}],
)
def test_event_data_must_be_json_serializable(data: dict[str, object]) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event("x", data)
    _field_error(excinfo, "event.data")


@pytest.mark.parametrize("event_id", ["", 5, b"id"])
def test_event_id_must_be_non_empty_string_or_none(event_id: object) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event("x", id=event_id)  # type: ignore[arg-type]
    _field_error(excinfo, "event.id")


@pytest.mark.parametrize("ts", [True, "1767225600000", 1.5e12, 1_767_225_600, -1])
def test_event_ts_must_be_int_milliseconds(ts: object) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event("x", ts=ts)  # type: ignore[arg-type]
    _field_error(excinfo, "event.ts")


def test_event_data_is_copied_from_the_callers_dict() -> None:
    data = {"a": 1}
    e = Event("x", data)
    data["a"] = 2
    data["b"] = 3
    assert e.data == {"a": 1}


def test_event_is_immutable() -> None:
    e = Event("x", {"a": 1})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        e.name = "y"  # type: ignore[misc]


# --------------------------------------------------------------------------- size


def _overhead() -> int:
    return len(Event("n", {"b": ""}).to_json().encode("utf-8"))


def test_event_of_exactly_512_kib_is_accepted() -> None:
    blob = "x" * (MAX_EVENT_BYTES - _overhead())
    e = Event("n", {"b": blob})
    assert len(e.to_json().encode("utf-8")) == MAX_EVENT_BYTES


def test_event_over_512_kib_is_rejected() -> None:
    blob = "x" * (MAX_EVENT_BYTES - _overhead() + 1)
    with pytest.raises(InvalidEventError) as excinfo:
        Event("n", {"b": blob})
    assert excinfo.value.field == "event"
    assert str(MAX_EVENT_BYTES) in str(excinfo.value)


def test_event_size_is_measured_in_utf8_bytes() -> None:
    # Fewer characters than the limit, but more bytes.
    chars = (MAX_EVENT_BYTES - _overhead()) // 2 + 1
    blob = "é" * chars
    assert len(blob) < MAX_EVENT_BYTES
    with pytest.raises(InvalidEventError) as excinfo:
        Event("n", {"b": blob})
    assert excinfo.value.field == "event"


# --------------------------------------------------------------------------- JSON forms


def test_event_json_round_trip() -> None:
    e = Event("a/b", {"k": ["v", 1, 2.5, None, True]}, id="i", ts=1_767_225_600_000)
    assert json.loads(e.to_json()) == {"name": "a/b", "data": e.data, "id": "i",
                                       "ts": 1_767_225_600_000}
    assert Event.from_json(e.to_json()) == e
    assert Event.from_dict(e.to_dict()) == e


def test_event_from_dict_missing_data_means_empty() -> None:
    assert Event.from_dict({"name": "x"}).data == {}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"data": {}}, "event.name"),
        ({"name": "x", "extra": 1}, "event"),
        ({"name": "x", "data": [1]}, "event.data"),
        ({"name": ""}, "event.name"),
        ("not a mapping", "event"),
    ],
)
def test_event_from_dict_validates(raw: object, field: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event.from_dict(raw)  # type: ignore[arg-type]
    assert excinfo.value.field == field


def test_event_from_json_rejects_invalid_json() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        Event.from_json("{not json")
    assert excinfo.value.field == "event"


# --------------------------------------------------------------------------- engine: ids, ts


def _counter_app() -> tuple[App, list[dict[str, object]]]:
    app = App("events")
    seen: list[dict[str, object]] = []

    @app.function(id="count", trigger=on_event("thing/happened"))
    async def count(ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.event.to_dict())
        return ctx.event.data

    return app, seen


def test_engine_fills_in_event_id_and_ts() -> None:
    app, seen = _counter_app()
    eng = TestEngine(app, start="2026-01-01T00:00:00Z")
    [run] = eng.send(Event("thing/happened", {"n": 1})).runs
    assert run.status == "completed"
    [ev] = seen
    assert isinstance(ev["id"], str) and ev["id"]
    assert ev["ts"] == int(eng.now.timestamp() * 1000)


def test_engine_keeps_explicit_event_id_and_ts() -> None:
    app, seen = _counter_app()
    eng = TestEngine(app, start="2026-01-01T00:00:00Z")
    eng.send(Event("thing/happened", {"n": 1}, id="mine", ts=1_700_000_000_000))
    [ev] = seen
    assert ev["id"] == "mine"
    assert ev["ts"] == 1_700_000_000_000


def test_events_without_ids_are_never_deduplicated() -> None:
    app, seen = _counter_app()
    eng = TestEngine(app)
    runs = eng.send([Event("thing/happened", {"n": 1}), Event("thing/happened", {"n": 1})]).runs
    assert len(runs) == 2
    assert len(seen) == 2
    assert seen[0]["id"] != seen[1]["id"]


# --------------------------------------------------------------------------- dedupe


def test_same_event_id_within_24h_starts_nothing_new() -> None:
    app, seen = _counter_app()
    eng = TestEngine(app)
    first = eng.send(Event("thing/happened", {"n": 1}, id="dup")).runs
    assert len(first) == 1
    assert eng.send(Event("thing/happened", {"n": 2}, id="dup")).runs == []
    eng.advance(DAY - dt.timedelta(milliseconds=1))
    assert eng.send(Event("thing/happened", {"n": 3}, id="dup")).runs == []
    assert len(eng.runs) == 1
    assert [e["data"] for e in seen] == [{"n": 1}]


def test_duplicate_in_the_same_batch_starts_one_run() -> None:
    app, seen = _counter_app()
    eng = TestEngine(app)
    runs = eng.send([Event("thing/happened", {"n": 1}, id="same"),
                     Event("thing/happened", {"n": 2}, id="same")]).runs
    assert len(runs) == 1
    assert len(eng.runs) == 1
    assert [e["data"] for e in seen] == [{"n": 1}]


def test_different_event_ids_each_start_a_run() -> None:
    app, seen = _counter_app()
    eng = TestEngine(app)
    assert len(eng.send(Event("thing/happened", id="a")).runs) == 1
    assert len(eng.send(Event("thing/happened", id="b")).runs) == 1
    assert len(eng.runs) == 2
    assert len(seen) == 2


def test_same_event_id_after_24h_starts_a_new_run() -> None:
    app, seen = _counter_app()
    eng = TestEngine(app)
    eng.send(Event("thing/happened", {"n": 1}, id="dup"))
    eng.advance(DAY + dt.timedelta(seconds=1))
    eng.send(Event("thing/happened", {"n": 2}, id="dup"))
    assert len(eng.runs) == 2
    assert [e["data"] for e in seen] == [{"n": 1}, {"n": 2}]


def test_send_returns_only_runs_started_by_this_send_after_dedupe_window() -> None:
    app, _seen = _counter_app()
    eng = TestEngine(app)
    [old] = eng.send(Event("thing/happened", {"n": 1}, id="dup")).runs
    eng.advance(DAY + dt.timedelta(seconds=1))
    runs = eng.send(Event("thing/happened", {"n": 2}, id="dup")).runs
    assert len(runs) == 1
    assert runs[0] != old
    assert runs[0].output == {"n": 2}


def test_duplicate_event_does_not_resolve_a_wait() -> None:
    app = App("dupwait")

    @app.function(id="waiter", trigger=on_event("start"))
    async def waiter(ctx):  # type: ignore[no-untyped-def]
        await ctx.step.sleep("pause", "1m")
        got = await ctx.step.wait_for_event("w", event="pay", timeout="1h")
        return None if got is None else got.data

    eng = TestEngine(app)
    [run] = eng.send(Event("start")).runs
    eng.send(Event("pay", {"first": True}, id="p-1"))  # before the wait: ignored
    eng.advance("1m")
    assert run.status == "waiting"
    eng.send(Event("pay", {"again": True}, id="p-1"))  # a duplicate: routes nowhere
    assert run.status == "waiting"
    eng.advance("1h")
    assert run.status == "completed"
    assert run.output is None
