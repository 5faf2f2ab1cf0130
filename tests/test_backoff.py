"""Tests for durable_core.base._backoff: the backoff table, jitter, RetryAfter delays."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_core.base._backoff import (
    BACKOFF_TABLE,
    retry_after_delay,
    retry_delay,
    stable_unit,
)
from durable_core.base._errors import InvalidDurationError

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ids = st.text(max_size=40)


def test_backoff_table_is_inngests() -> None:
    expected = (
        timedelta(seconds=15),
        timedelta(seconds=30),
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=5),
        timedelta(minutes=10),
        timedelta(minutes=20),
        timedelta(minutes=40),
        timedelta(hours=1),
        timedelta(hours=2),
    )
    assert expected == BACKOFF_TABLE


def test_stable_unit_is_a_pure_function() -> None:
    assert stable_unit("run", "step", 3) == stable_unit("run", "step", 3)
    assert stable_unit("run", "step", 3) != stable_unit("run", "step", 4)
    assert stable_unit() == stable_unit()


def _reference_stable_unit(*parts: str | int) -> float:
    """The documented encoding: type tag, byte length, ':', UTF-8 payload; top 53 bits."""
    digest = hashlib.sha256()
    for part in parts:
        tag = b"s" if isinstance(part, str) else b"i"
        payload = str(part).encode("utf-8", "surrogatepass")
        digest.update(tag + str(len(payload)).encode() + b":" + payload)
    return (int.from_bytes(digest.digest()[:8], "big") >> 11) / 2**53


def test_stable_unit_known_values() -> None:
    # Pinned: changing the encoding would change every replayed ctx.random() and jitter.
    assert stable_unit("run-1", "step-a", 0) == 0.12653162087472059
    assert retry_delay("run-1", "step-a", 0) == timedelta(seconds=18, milliseconds=795)


@given(st.lists(st.one_of(st.text(st.characters(), max_size=20), st.integers()), max_size=4))
def test_stable_unit_matches_reference_encoding(parts: list[str | int]) -> None:
    assert stable_unit(*parts) == _reference_stable_unit(*parts)


def test_stable_unit_is_the_same_in_another_process() -> None:
    # hash() is salted per process; stable_unit must not be.
    code = (
        "from durable_core.base._backoff import stable_unit;"
        "print(repr(stable_unit('run-1', 'step-a', 7, 'x')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert float(out.stdout) == stable_unit("run-1", "step-a", 7, "x")


def test_stable_unit_parts_are_unambiguous() -> None:
    assert stable_unit("ab", "c") != stable_unit("a", "bc")
    assert stable_unit("abc") != stable_unit("ab", "c")
    assert stable_unit("1") != stable_unit(1)
    assert stable_unit("a", "") != stable_unit("a")
    assert stable_unit(12, 3) != stable_unit(1, 23)


@pytest.mark.parametrize("bad", [1.5, None, b"x", True])
def test_stable_unit_rejects_other_types(bad: object) -> None:
    with pytest.raises(TypeError, match="str or int"):
        stable_unit("run", bad)  # type: ignore[arg-type]


@given(st.lists(st.one_of(ids, st.integers()), max_size=5))
def test_stable_unit_in_unit_interval(parts: list[str | int]) -> None:
    value = stable_unit(*parts)
    assert 0.0 <= value < 1.0


def test_stable_unit_looks_uniform() -> None:
    values = [stable_unit("run", i) for i in range(4000)]
    buckets = [0] * 10
    for value in values:
        buckets[int(value * 10)] += 1
    assert all(300 <= count <= 500 for count in buckets), buckets
    assert len(set(values)) == len(values)


@given(ids, ids, st.integers(min_value=0, max_value=1000))
def test_retry_delay_within_table_plus_jitter(run_id: str, step_id: str, attempt: int) -> None:
    delay = retry_delay(run_id, step_id, attempt)
    base = BACKOFF_TABLE[min(attempt, 9)]
    assert base <= delay < base + timedelta(seconds=30)
    assert delay.microseconds % 1000 == 0  # millisecond resolution
    assert delay == retry_delay(run_id, step_id, attempt)  # reproducible


def test_retry_delay_uses_the_last_entry_beyond_the_table() -> None:
    for attempt in (9, 10, 50):
        delay = retry_delay("run", "step", attempt)
        assert timedelta(hours=2) <= delay < timedelta(hours=2, seconds=30)


def test_retry_delay_jitter_comes_from_stable_unit() -> None:
    unit = stable_unit("run-9", "charge", 2)
    expected = timedelta(minutes=1, milliseconds=int(unit * 30_000))
    assert retry_delay("run-9", "charge", 2) == expected


def test_retry_delay_jitter_varies_between_runs() -> None:
    delays = {retry_delay(f"run-{i}", "step", 0) for i in range(50)}
    assert len(delays) > 40


@pytest.mark.parametrize("attempt", [-1, True, 1.0])
def test_retry_delay_rejects_bad_attempts(attempt: object) -> None:
    with pytest.raises(ValueError, match="attempt"):
        retry_delay("run", "step", attempt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (30, timedelta(seconds=30)),
        (2.5, timedelta(seconds=2.5)),
        (0, timedelta(seconds=1)),
        (0.2, timedelta(seconds=1)),
        (-10, timedelta(seconds=1)),
        (10**9, timedelta(hours=24)),
        (float("inf"), timedelta(hours=24)),
        (timedelta(minutes=5), timedelta(minutes=5)),
        (timedelta(days=3), timedelta(hours=24)),
        (timedelta(seconds=-5), timedelta(seconds=1)),
        ("30s", timedelta(seconds=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(seconds=1)),
        ("2d", timedelta(hours=24)),
        ("400d", timedelta(hours=24)),  # no one-year maximum here, only the clamp
        (NOW + timedelta(minutes=10), timedelta(minutes=10)),
        (NOW - timedelta(minutes=10), timedelta(seconds=1)),
        (NOW + timedelta(days=2), timedelta(hours=24)),
        (datetime(2024, 5, 1, 14, 10, tzinfo=timezone(timedelta(hours=2))), timedelta(minutes=10)),
    ],
)
def test_retry_after_delay(after: float | timedelta | str | datetime, expected: timedelta) -> None:
    assert retry_after_delay(after, NOW) == expected


@pytest.mark.parametrize(
    ("after", "fragment"),
    [
        ("soon", "invalid duration 'soon'"),
        ("5 sec", "unexpected ' '"),
        ("-5s", "negative"),
        (datetime(2024, 5, 1, 12, 10), "naive"),
        (float("nan"), "finite"),
        (True, "bool"),
        (None, "NoneType"),
    ],
)
def test_retry_after_delay_rejects(after: object, fragment: str) -> None:
    with pytest.raises(InvalidDurationError) as info:
        retry_after_delay(after, NOW)  # type: ignore[arg-type]
    assert str(info.value).startswith("RetryAfterError.after: ")
    assert fragment in str(info.value)
    assert info.value.field == "RetryAfterError.after"


@given(
    st.one_of(
        st.floats(allow_nan=False),
        st.integers(),
        st.timedeltas(),
        st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
    )
)
def test_retry_after_delay_always_clamped(after: float | timedelta | datetime) -> None:
    delay = retry_after_delay(after, NOW)
    assert timedelta(seconds=1) <= delay <= timedelta(hours=24)
