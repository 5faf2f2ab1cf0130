"""Tests for durable_core.base._durations: duration strings, instants and ms conversion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_core.base._durations import (
    format_duration,
    from_ms,
    parse_duration,
    parse_instant,
    to_ms,
)
from durable_core.base._errors import InvalidDurationError, ValidationError

FIELD = "step.sleep.duration"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300ms", timedelta(milliseconds=300)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2.5d", timedelta(days=2, hours=12)),
        ("1w2d", timedelta(days=9)),
        ("15s", timedelta(seconds=15)),
        ("  15s\n", timedelta(seconds=15)),
        ("0s", timedelta(0)),
        ("1.5s", timedelta(seconds=1, milliseconds=500)),
        (".5s", timedelta(milliseconds=500)),
        ("1.s", timedelta(seconds=1)),
        ("250us", timedelta(microseconds=250)),
        ("250\u00b5s", timedelta(microseconds=250)),
        ("250\u03bcs", timedelta(microseconds=250)),
        ("1500ns", timedelta(microseconds=2)),  # rounded to the microsecond
        ("400ns", timedelta(0)),
        ("1m1s1ms", timedelta(minutes=1, seconds=1, milliseconds=1)),
        ("1h1h", timedelta(hours=2)),  # components add up, as in Go
        ("0.000001s", timedelta(microseconds=1)),
        ("366d", timedelta(days=366)),
    ],
)
def test_parse_duration_strings(text: str, expected: timedelta) -> None:
    assert parse_duration(text, field=FIELD) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, timedelta(0)),
        (30, timedelta(seconds=30)),
        (1.25, timedelta(seconds=1, milliseconds=250)),
        (timedelta(minutes=5), timedelta(minutes=5)),
        (timedelta(0), timedelta(0)),
    ],
)
def test_parse_duration_numbers_and_timedeltas(
    value: float | timedelta, expected: timedelta
) -> None:
    assert parse_duration(value, field=FIELD) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("5", "has no unit"),
        ("1h30", "has no unit"),
        ("5x", "unknown unit 'x'"),
        ("5sec", "unknown unit"),
        ("1H", "unknown unit 'H'"),
        ("-5s", "negative"),
        ("1h 30m", "unexpected ' '"),
        ("s", "unexpected 's'"),
        ("+5s", "unexpected '+'"),
        ("1e3s", "unknown unit 'e'"),
        (-1, "negative"),
        (-0.5, "negative"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (float("-inf"), "not a finite number"),
        (True, "bool"),
        (timedelta(seconds=-1), "negative"),
        (None, "NoneType"),
        ([1], "list"),
    ],
)
def test_parse_duration_rejects(value: object, fragment: str) -> None:
    with pytest.raises(InvalidDurationError) as info:
        parse_duration(value, field=FIELD)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"{FIELD}: ")
    assert fragment in message
    assert info.value.field == FIELD
    assert isinstance(info.value, ValidationError)
    assert isinstance(info.value, ValueError)


def test_invalid_duration_message_says_how_to_fix() -> None:
    with pytest.raises(InvalidDurationError) as info:
        parse_duration("10 minutes", field="sleep[0]")
    message = str(info.value)
    assert "'10 minutes'" in message
    assert "'1h30m'" in message  # an example of the accepted syntax
    assert "units:" in message


@pytest.mark.parametrize(
    "value",
    [
        "367d",
        "53w",
        366 * 86400 + 1,
        timedelta(days=366, microseconds=1),
        1e300,
        "1" + "0" * 30 + "d",
    ],
)
def test_parse_duration_enforces_the_default_maximum(value: str | float | timedelta) -> None:
    with pytest.raises(InvalidDurationError) as info:
        parse_duration(value, field=FIELD)
    message = str(info.value)
    assert FIELD in message
    assert "shorter duration" in message


def test_parse_duration_maximum_is_configurable() -> None:
    assert parse_duration("400d", field=FIELD, maximum=None) == timedelta(days=400)
    assert parse_duration(10**9, field=FIELD, maximum=None) == timedelta(seconds=10**9)
    with pytest.raises(InvalidDurationError, match="maximum of 1h"):
        parse_duration("61m", field=FIELD, maximum=timedelta(hours=1))
    assert parse_duration("60m", field=FIELD, maximum=timedelta(hours=1)) == timedelta(hours=1)


def test_parse_duration_overflow_without_maximum_is_a_validation_error() -> None:
    with pytest.raises(InvalidDurationError, match="too large"):
        parse_duration("9" * 40 + "w", field=FIELD, maximum=None)
    with pytest.raises(InvalidDurationError, match="too large"):
        parse_duration(1e300, field=FIELD, maximum=None)


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=15), "15s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(days=2, hours=12), "2d12h"),
        (timedelta(days=14), "14d"),
        (timedelta(seconds=1, microseconds=5), "1s5us"),
        (timedelta(seconds=-90), "-1m30s"),
    ],
)
def test_format_duration(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_format_parse_round_trip_whole_milliseconds(ms: int) -> None:
    td = timedelta(milliseconds=ms)
    text = format_duration(td)
    assert parse_duration(text, field=FIELD, maximum=None) == td


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10**6)))
def test_format_parse_round_trip_any_non_negative_timedelta(td: timedelta) -> None:
    assert parse_duration(format_duration(td), field=FIELD, maximum=None) == td


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "h", "d", "w"])),
        min_size=1,
        max_size=5,
    )
)
def test_components_add_up(components: list[tuple[int, str]]) -> None:
    unit = {
        "ms": timedelta(milliseconds=1),
        "s": timedelta(seconds=1),
        "m": timedelta(minutes=1),
        "h": timedelta(hours=1),
        "d": timedelta(days=1),
        "w": timedelta(weeks=1),
    }
    text = "".join(f"{n}{u}" for n, u in components)
    expected = sum((n * unit[u] for n, u in components), timedelta(0))
    assert parse_duration(text, field=FIELD, maximum=None) == expected


@given(st.floats(min_value=0, max_value=366 * 86400, allow_nan=False))
def test_seconds_match_timedelta(seconds: float) -> None:
    assert parse_duration(seconds, field=FIELD) == timedelta(seconds=seconds)


# --- instants ---------------------------------------------------------------------------------


def test_parse_instant_converts_aware_datetimes_to_utc() -> None:
    paris = datetime(2024, 7, 1, 14, 0, tzinfo=ZoneInfo("Europe/Paris"))
    result = parse_instant(paris, field="wait.timeout")
    assert result == datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
    assert result.utcoffset() == timedelta(0)
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01 12:00:00.250+00:00", datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ("  2024-05-01T12:00:00-05:30 ", datetime(2024, 5, 1, 17, 30, tzinfo=UTC)),
    ],
)
def test_parse_instant_strings(text: str, expected: datetime) -> None:
    result = parse_instant(text, field="f")
    assert result == expected
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [datetime(2024, 5, 1, 12), "2024-05-01T12:00:00", "2024-05-01"],
)
def test_parse_instant_rejects_naive_values_and_explains(value: str | datetime) -> None:
    with pytest.raises(InvalidDurationError) as info:
        parse_instant(value, field="step.sleep_until")
    message = str(info.value)
    assert message.startswith("step.sleep_until: ")
    assert "tzinfo=timezone.utc" in message
    assert "'Z'" in message
    assert info.value.field == "step.sleep_until"


@pytest.mark.parametrize("value", ["tomorrow", "", "2024-13-01T00:00:00Z", 1714564800, None])
def test_parse_instant_rejects_garbage(value: object) -> None:
    with pytest.raises(InvalidDurationError, match=r"^f: "):
        parse_instant(value, field="f")  # type: ignore[arg-type]


def test_to_ms_and_from_ms() -> None:
    assert to_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert to_ms(datetime(2024, 5, 1, 12, tzinfo=UTC)) == 1_714_564_800_000
    assert to_ms(datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))) == (
        1_714_564_800_000
    )
    assert to_ms(datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)) == -1  # floored
    assert from_ms(1_714_564_800_123) == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert from_ms(0).tzinfo is UTC


def test_to_ms_rejects_naive() -> None:
    with pytest.raises(InvalidDurationError, match="naive"):
        to_ms(datetime(2024, 1, 1))


@given(st.integers(min_value=-(10**13), max_value=10**14))
def test_ms_round_trip(ms: int) -> None:
    assert to_ms(from_ms(ms)) == ms


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, ZoneInfo("Europe/Paris"), ZoneInfo("Asia/Kolkata")]),
    )
)
def test_to_ms_floors_to_the_millisecond(dt: datetime) -> None:
    ms = to_ms(dt)
    assert from_ms(ms) <= dt < from_ms(ms + 1)
    assert abs(ms / 1000 - dt.timestamp()) < 0.002


# --- the pure core stays pure -----------------------------------------------------------------

FORBIDDEN_MODULES = {
    "trio",
    "sqlite3",
    "psycopg",
    "socket",
    "threading",
    "asyncio",
    "random",
    "time",
}
PURE_MODULES = ["_durations", "_cron", "_cel", "_cel_compile", "_backoff"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_nothing_impure_and_never_read_the_clock(module: str) -> None:
    import ast
    import importlib

    path = importlib.import_module(f"durable_core.base.{module}").__file__
    assert path is not None
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute):
            assert node.attr not in {"now", "utcnow", "today", "monotonic", "perf_counter"}
    assert not imported & FORBIDDEN_MODULES
