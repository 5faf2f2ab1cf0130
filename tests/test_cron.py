"""Tests for durable_core.base._cron: parsing, validation, next ticks and DST handling."""

from __future__ import annotations

import functools
import itertools
import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import attrs
import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from durable_core.base._cron import CronSchedule
from durable_core.base._errors import InvalidCronError, InvalidDurationError, ValidationError

FIELD = "trigger[0].cron"
PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type, misc]


def paris(*args: int, fold: int = 0) -> datetime:
    """A Paris wall time as a UTC datetime.

    (Aware datetimes at ambiguous wall times never compare equal across zones, PEP 495.)
    """
    return datetime(*args, tzinfo=PARIS, fold=fold).astimezone(UTC)  # type: ignore[arg-type, misc]


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tz", "spec"),
    [
        ("0 * * * *", "UTC", "0 * * * *"),
        ("  */15   9-17 * * mon-fri ", "UTC", "*/15 9-17 * * mon-fri"),
        ("TZ=Europe/Paris 30 2 * * *", "Europe/Paris", "30 2 * * *"),
        ("CRON_TZ=America/New_York @daily", "America/New_York", "@daily"),
        ("TZ=Asia/Kolkata\t0 9 * * 1", "Asia/Kolkata", "0 9 * * 1"),
        ("@hourly", "UTC", "@hourly"),
        ("@YEARLY", "UTC", "@yearly"),
        ("@annually", "UTC", "@annually"),
        ("@monthly", "UTC", "@monthly"),
        ("@weekly", "UTC", "@weekly"),
        ("@midnight", "UTC", "@midnight"),
        ("0 0 L * *", "UTC", "0 0 L * *"),
        ("0 12 1,15 jan,jul *", "UTC", "0 12 1,15 jan,jul *"),
        ("TZ=UTC 5 4 * * sun", "UTC", "5 4 * * sun"),
    ],
)
def test_parse(text: str, tz: str, spec: str) -> None:
    schedule = CronSchedule.parse(text, field=FIELD)
    assert schedule == CronSchedule(expression=text, tz=tz, spec=spec)


def test_schedule_is_frozen_and_hashable() -> None:
    schedule = CronSchedule.parse("0 * * * *", field=FIELD)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        schedule.tz = "Europe/Paris"  # type: ignore[misc]
    assert hash(schedule) == hash(CronSchedule.parse("0 * * * *", field=FIELD))


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("* * * * * *", ["6 fields", "seconds and years fields are not supported"]),
        ("0 0 * * * * 2030", ["7 fields", "not supported"]),
        ("* * * *", ["4 fields", "exactly 5"]),
        ("", ["has no fields"]),
        ("TZ=Europe/Paris", ["has no fields"]),
        ("TZ=Mars/Olympus_Mons 0 * * * *", ["unknown time zone 'Mars/Olympus_Mons'", "IANA"]),
        ("TZ=Europe 0 * * * *", ["unknown time zone 'Europe'"]),
        ("TZ=../../etc/passwd 0 * * * *", ["unknown time zone"]),
        ("TZ= 0 * * * *", ["names no zone"]),
        ("61 * * * *", ["invalid cron expression", "minute 0-59"]),
        ("0 24 * * *", ["invalid cron expression"]),
        ("0 0 32 * *", ["invalid cron expression"]),
        ("0 0 * 13 *", ["invalid cron expression"]),
        ("0 0 * * funday", ["invalid cron expression"]),
        ("every day at nine am", ["invalid cron expression"]),
        ("0 0 30 2 *", ["never fires"]),
        ("0 0 31 4,6,9,11 *", ["never fires"]),
        ("@every 5m", ["unknown cron descriptor", "@every"]),
        ("@reboot", ["unknown cron descriptor"]),
        ("R * * * *", ["hashed/random", "minute field"]),
        ("0 H * * *", ["hashed/random", "hour field"]),
        ("H/5 * * * *", ["hashed/random"]),
    ],
)
def test_parse_rejects(text: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidCronError) as info:
        CronSchedule.parse(text, field=FIELD)
    message = str(info.value)
    assert message.startswith(f"{FIELD}: ")
    for fragment in fragments:
        assert fragment in message
    assert info.value.field == FIELD
    assert isinstance(info.value, ValidationError)


def test_rejection_says_how_to_fix() -> None:
    with pytest.raises(InvalidCronError) as info:
        CronSchedule.parse("every day", field="functions[3].cron")
    message = str(info.value)
    assert "functions[3].cron" in message
    assert "minute hour day-of-month month day-of-week" in message
    assert "@daily" in message
    assert "TZ=" in message


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(InvalidCronError, match="must be a string"):
        CronSchedule.parse(5, field=FIELD)  # type: ignore[arg-type]


# --- next_after in UTC -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        ("0 * * * *", utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 11, 0)),  # strictly after a tick
        ("0 * * * *", utc(2024, 1, 1, 9, 59, 59, 999999), utc(2024, 1, 1, 10, 0)),
        ("* * * * *", utc(2024, 1, 1, 9, 59, 0, 1), utc(2024, 1, 1, 10, 0)),
        ("*/15 * * * *", utc(2024, 1, 1, 10, 7), utc(2024, 1, 1, 10, 15)),
        ("0 9 * * mon-fri", utc(2024, 5, 3, 9, 0), utc(2024, 5, 6, 9, 0)),  # Fri -> Mon
        ("0 0 29 2 *", utc(2024, 3, 1), utc(2028, 2, 29)),
        ("0 0 L * *", utc(2024, 2, 1), utc(2024, 2, 29)),
        ("@daily", utc(2024, 12, 31, 23, 59), utc(2025, 1, 1)),
        ("@hourly", utc(2024, 1, 1, 10, 30), utc(2024, 1, 1, 11, 0)),
        ("@weekly", utc(2024, 5, 1), utc(2024, 5, 5)),  # Sunday midnight
        ("@monthly", utc(2024, 1, 31, 12), utc(2024, 2, 1)),
        ("@yearly", utc(2024, 6, 1), utc(2025, 1, 1)),
        # day-of-month OR day-of-week when both are restricted (classic cron)
        ("0 0 13 * fri", utc(2024, 9, 1), utc(2024, 9, 6)),
    ],
)
def test_next_after_utc(text: str, after: datetime, expected: datetime) -> None:
    result = CronSchedule.parse(text, field=FIELD).next_after(after)
    assert result == expected
    assert result.tzinfo is UTC


def test_next_after_accepts_any_aware_input_zone() -> None:
    schedule = CronSchedule.parse("0 * * * *", field=FIELD)
    instant = utc(2024, 1, 1, 10, 30)
    tokyo = instant.astimezone(ZoneInfo("Asia/Tokyo"))
    offset = instant.astimezone(timezone(timedelta(hours=-3, minutes=-30)))
    assert schedule.next_after(instant) == schedule.next_after(tokyo) == utc(2024, 1, 1, 11)
    assert schedule.next_after(offset) == utc(2024, 1, 1, 11)


def test_next_after_rejects_naive() -> None:
    schedule = CronSchedule.parse("0 * * * *", field=FIELD)
    with pytest.raises(InvalidDurationError, match="timezone-aware"):
        schedule.next_after(datetime(2024, 1, 1))


def test_next_after_in_a_zone() -> None:
    schedule = CronSchedule.parse("TZ=Asia/Kolkata 0 9 * * *", field=FIELD)
    assert schedule.next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 3, 30)
    new_york = CronSchedule.parse("CRON_TZ=America/New_York 0 9 * * *", field=FIELD)
    assert new_york.next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 14)  # EST
    assert new_york.next_after(utc(2024, 7, 1)) == utc(2024, 7, 1, 13)  # EDT


# --- DST in Europe/Paris -----------------------------------------------------------------------
# 2024-03-31: 02:00 CET -> 03:00 CEST (01:00 UTC). 2024-10-27: 03:00 CEST -> 02:00 CET (01:00 UTC).


def ticks(text: str, start: datetime, count: int) -> list[datetime]:
    schedule = CronSchedule.parse(text, field=FIELD)
    out: list[datetime] = []
    current = start
    for _ in range(count):
        current = schedule.next_after(current)
        out.append(current)
    return out


def test_spring_forward_fixed_time_in_the_gap_fires_once_after_the_gap() -> None:
    result = ticks("TZ=Europe/Paris 30 2 * * *", utc(2024, 3, 30, 12), 3)
    assert result == [
        paris(2024, 3, 31, 3, 0),  # 02:30 does not exist: fires right after the gap
        paris(2024, 4, 1, 2, 30),
        paris(2024, 4, 2, 2, 30),
    ]
    assert result[0] == utc(2024, 3, 31, 1, 0)


def test_spring_forward_several_gap_times_fire_once() -> None:
    result = ticks("TZ=Europe/Paris */20 2 * * *", utc(2024, 3, 30, 12), 4)
    assert result == [
        paris(2024, 3, 31, 3, 0),  # 02:00, 02:20 and 02:40 all collapse onto 03:00
        paris(2024, 4, 1, 2, 0),
        paris(2024, 4, 1, 2, 20),
        paris(2024, 4, 1, 2, 40),
    ]


def test_spring_forward_wildcard_hour_skips_missing_times() -> None:
    result = ticks("TZ=Europe/Paris */30 * * * *", paris(2024, 3, 31, 1, 0), 4)
    assert result == [
        paris(2024, 3, 31, 1, 30),
        paris(2024, 3, 31, 3, 0),
        paris(2024, 3, 31, 3, 30),
        paris(2024, 3, 31, 4, 0),
    ]
    assert [t - s for s, t in itertools.pairwise(result)] == [timedelta(minutes=30)] * 3


def test_fall_back_fixed_time_fires_once() -> None:
    result = ticks("TZ=Europe/Paris 30 2 * * *", utc(2024, 10, 26, 12), 3)
    assert result == [
        paris(2024, 10, 27, 2, 30, fold=0),  # first 02:30 (CEST) only
        paris(2024, 10, 28, 2, 30),
        paris(2024, 10, 29, 2, 30),
    ]
    assert result[0] == utc(2024, 10, 27, 0, 30)
    assert result[1] - result[0] == timedelta(hours=25)


def test_fall_back_fixed_time_from_inside_the_repeated_hour() -> None:
    schedule = CronSchedule.parse("TZ=Europe/Paris 30 2 * * *", field=FIELD)
    # 02:10 CET (the second 02:10): today's 02:30 already fired at its first occurrence.
    assert schedule.next_after(paris(2024, 10, 27, 2, 10, fold=1)) == paris(2024, 10, 28, 2, 30)
    # 02:40 CEST (the first 02:40): the repeated 02:30 is not fired again either.
    assert schedule.next_after(paris(2024, 10, 27, 2, 40, fold=0)) == paris(2024, 10, 28, 2, 30)


def test_fall_back_wildcard_hour_follows_real_time() -> None:
    result = ticks("TZ=Europe/Paris 0 * * * *", paris(2024, 10, 27, 0, 30), 5)
    assert result == [
        paris(2024, 10, 27, 1, 0),
        paris(2024, 10, 27, 2, 0, fold=0),
        paris(2024, 10, 27, 2, 0, fold=1),
        paris(2024, 10, 27, 3, 0),
        paris(2024, 10, 27, 4, 0),
    ]
    assert all(t - s == timedelta(hours=1) for s, t in itertools.pairwise(result))


def test_fall_back_every_minute_in_a_restricted_hour() -> None:
    schedule = CronSchedule.parse("TZ=Europe/Paris * 2 * * *", field=FIELD)
    last_first_pass = paris(2024, 10, 27, 2, 59, fold=0)
    # The whole repeated hour is skipped (60 repeated ticks), then the next day.
    assert schedule.next_after(last_first_pass) == paris(2024, 10, 28, 2, 0)


def _wall_matches(spec: str, local: datetime) -> bool:
    return bool(croniter.match(spec, local.replace(tzinfo=None, fold=0)))


def _after_gap(tick: datetime, zone: ZoneInfo) -> bool:
    """True if local wall time jumped forward just before ``tick`` (a DST gap)."""
    before = (tick - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
    return tick.astimezone(zone).replace(tzinfo=None) - before > timedelta(minutes=1)


@functools.cache
def _reference_ticks(text: str, start: datetime, end: datetime) -> tuple[datetime, ...]:
    """All ticks in [start, end], by brute force over every UTC minute.

    Rules (classic cron): a minute whose wall time matches is a tick, except a repeated wall
    time (fold=1) when the hour field is restricted; the first minute after a DST gap is a
    tick if the hour field is restricted and a skipped wall time matched.
    """
    schedule = CronSchedule.parse(text, field=FIELD)
    zone = ZoneInfo(schedule.tz)
    hour_restricted = schedule.spec.split()[1] != "*"
    out = []
    minute = start
    while minute <= end:
        local = minute.astimezone(zone)
        previous_wall = (minute - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
        wall = local.replace(tzinfo=None)
        repeated = local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()
        if _wall_matches(schedule.spec, local) and not (hour_restricted and repeated):
            out.append(minute)
        elif hour_restricted and wall - previous_wall > timedelta(minutes=1):
            skipped = previous_wall + timedelta(minutes=1)
            while skipped < wall:
                if croniter.match(schedule.spec, skipped):
                    out.append(minute)
                    break
                skipped += timedelta(minutes=1)
        minute += timedelta(minutes=1)
    return tuple(out)


DST_WINDOWS = [
    (utc(2024, 3, 30, 20), utc(2024, 4, 1, 4)),
    (utc(2024, 10, 26, 20), utc(2024, 10, 28, 4)),
]
DST_SPECS = [
    "TZ=Europe/Paris 30 2 * * *",
    "TZ=Europe/Paris 0 * * * *",
    "TZ=Europe/Paris */20 * * * *",
    "TZ=Europe/Paris 15,45 1-3 * * *",
    "TZ=Europe/Paris 0 3 * * *",
    "TZ=Europe/Paris 59 1 * * *",
]


@pytest.mark.parametrize("text", DST_SPECS)
@pytest.mark.parametrize("window", DST_WINDOWS)
def test_paris_dst_windows_match_brute_force(text: str, window: tuple[datetime, datetime]) -> None:
    start, end = window
    expected = list(_reference_ticks(text, start, end))
    assert expected  # the reference is not vacuous
    got: list[datetime] = []
    schedule = CronSchedule.parse(text, field=FIELD)
    current = start - timedelta(microseconds=1)
    while (current := schedule.next_after(current)) <= end:
        got.append(current)
    assert got == expected


@settings(max_examples=150, deadline=None)
@given(
    text=st.sampled_from(DST_SPECS),
    window=st.sampled_from(DST_WINDOWS),
    offset=st.integers(min_value=0, max_value=30 * 3600 * 10**6),
)
def test_paris_dst_next_after_any_instant_matches_brute_force(
    text: str, window: tuple[datetime, datetime], offset: int
) -> None:
    start, end = window
    reference = _reference_ticks(text, start, end)
    dt = start + timedelta(microseconds=offset)
    expected = next((tick for tick in reference if tick > dt), None)
    if expected is None:
        return
    assert CronSchedule.parse(text, field=FIELD).next_after(dt) == expected


schedules = st.sampled_from(
    [
        "* * * * *",
        "*/7 * * * *",
        "0 * * * *",
        "30 2 * * *",
        "0 9 * * mon-fri",
        "0 0 1 * *",
        "0 0 29 2 *",
        "@daily",
        "@weekly",
        "TZ=Europe/Paris 30 2 * * *",
        "TZ=Europe/Paris * 2 * * *",
        "TZ=Europe/Paris 0 * * * *",
        "TZ=America/New_York 15 1,2,3 * * *",
        "TZ=Australia/Lord_Howe 0,30 2 * * *",
        "TZ=Asia/Kathmandu 0 0 * * *",
    ]
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2060, 1, 1),
    timezones=st.sampled_from([UTC, PARIS, ZoneInfo("America/New_York")]),
)


@settings(max_examples=300, deadline=None)
@given(schedules, instants)
def test_next_after_is_strictly_after_and_a_valid_tick(text: str, dt: datetime) -> None:
    schedule = CronSchedule.parse(text, field=FIELD)
    tick = schedule.next_after(dt)
    assert tick > dt
    assert tick.tzinfo is UTC
    assert tick.second == 0 and tick.microsecond == 0
    local = tick.astimezone(ZoneInfo(schedule.tz))
    assert _wall_matches(schedule.spec, local) or _after_gap(tick, ZoneInfo(schedule.tz))
    assert schedule.next_after(dt) == tick  # deterministic


@settings(max_examples=200, deadline=None)
@given(schedules, instants, st.floats(min_value=0, max_value=1, exclude_max=True))
def test_next_after_skips_no_tick(text: str, dt: datetime, fraction: float) -> None:
    schedule = CronSchedule.parse(text, field=FIELD)
    tick = schedule.next_after(dt)
    # Arithmetic on an aware local datetime is wall-clock arithmetic and drops ``fold``
    # (PEP 495): an ambiguous input would move an hour. Step between instants in UTC.
    start = dt.astimezone(UTC)
    between = start + (tick - start) * fraction
    if between < tick:
        assert schedule.next_after(between) == tick


def test_next_after_speed() -> None:
    schedule = CronSchedule.parse("TZ=Europe/Paris */5 * * * *", field=FIELD)
    current = utc(2024, 1, 1)
    count = 2000
    started = time.perf_counter()
    for _ in range(count):
        following = schedule.next_after(current)
        assert following > current
        current = following
    elapsed = time.perf_counter() - started
    assert current == utc(2024, 1, 1) + timedelta(minutes=5 * count)
    print(f"\nnext_after: {elapsed / count * 1e6:.1f} us per call")


def test_schedules_built_without_parse_fail_cleanly() -> None:
    bad_spec = CronSchedule(expression="61 * * * *", tz="UTC", spec="61 * * * *")
    with pytest.raises(InvalidCronError, match=r"CronSchedule\.parse"):
        bad_spec.next_after(utc(2024, 1, 1))
    bad_zone = CronSchedule(expression="0 * * * *", tz="Nowhere/Land", spec="0 * * * *")
    with pytest.raises(InvalidCronError, match=r"CronSchedule\.parse"):
        bad_zone.next_after(utc(2024, 1, 1))


def test_next_after_near_the_end_of_time_is_a_clean_error() -> None:
    schedule = CronSchedule.parse("0 0 1 1 *", field=FIELD)
    with pytest.raises(InvalidCronError, match="no tick after"):
        schedule.next_after(datetime(9999, 6, 1, tzinfo=UTC))


# --- the last tick before an instant, and the ticks of a range (cron catch-up) ------------------


@settings(max_examples=300, deadline=None)
@given(schedules, instants)
def test_latest_at_or_before_is_the_tick_next_after_walks_to(text: str, dt: datetime) -> None:
    # The same ticks next_after gives, daylight-saving rules included, in every zone above.
    schedule = CronSchedule.parse(text, field=FIELD)
    latest = schedule.latest_at_or_before(dt)
    assert latest is not None
    assert latest <= dt
    assert schedule.next_after(latest) > dt  # no tick between it and dt
    assert schedule.next_after(latest - timedelta(milliseconds=1)) == latest  # it is a tick


@pytest.mark.parametrize(
    ("text", "at", "expected"),
    [
        # Spring forward in Paris: 02:30 does not exist on 29 March 2026; it fires at 03:00.
        ("TZ=Europe/Paris 30 2 * * *", utc(2026, 3, 29, 5), paris(2026, 3, 29, 3, 0)),
        # Fall back in New York: 01:30 happens twice on 1 November 2026; the first counts.
        ("TZ=America/New_York 30 1 * * *", utc(2026, 11, 1, 7),
         datetime(2026, 11, 1, 1, 30, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)),
        # Lord Howe moves by half an hour: 02:00 local on 4 October 2026 does not exist.
        ("TZ=Australia/Lord_Howe 0 2 * * *", utc(2026, 10, 4, 12),
         datetime(2026, 10, 4, 2, 30, tzinfo=ZoneInfo("Australia/Lord_Howe")).astimezone(UTC)),
        ("0 0 1 1 *", utc(2026, 6, 1), utc(2026, 1, 1)),  # months back: one croniter step
        ("0 12 * * 5", utc(2026, 1, 2, 12), utc(2026, 1, 2, 12)),  # at the tick itself
    ],
)
def test_latest_at_or_before_across_daylight_saving(
    text: str, at: datetime, expected: datetime
) -> None:
    assert CronSchedule.parse(text, field=FIELD).latest_at_or_before(at) == expected


def test_latest_at_or_before_rejects_naive() -> None:
    with pytest.raises(InvalidDurationError, match="timezone-aware"):
        CronSchedule.parse("* * * * *", field=FIELD).latest_at_or_before(datetime(2026, 1, 1))


@settings(max_examples=100, deadline=None)
@given(schedules, instants, st.integers(min_value=1, max_value=30),
       st.integers(min_value=1, max_value=400))
def test_ticks_between_are_the_last_ticks_of_the_range(
    text: str, dt: datetime, limit: int, hours: int
) -> None:
    schedule = CronSchedule.parse(text, field=FIELD)
    start = dt.astimezone(UTC)
    until = start + timedelta(hours=hours)
    walked = []
    tick = schedule.next_after(start)
    while tick <= until:
        walked.append(tick)
        tick = schedule.next_after(tick)
    got, cut = schedule.ticks_between(start, until, limit)
    assert got == walked[-limit:]
    assert cut == (len(walked) > limit)


def test_ticks_between_a_year_apart_stays_cheap() -> None:
    # A year of a per-minute schedule is 525,600 ticks; only the last 1,000 are walked.
    schedule = CronSchedule.parse("* * * * *", field=FIELD)
    got, cut = schedule.ticks_between(utc(2025, 1, 1), utc(2026, 1, 1), 1_000)
    assert cut and len(got) == 1_000
    assert got[-1] == utc(2026, 1, 1) and got[0] == utc(2026, 1, 1) - timedelta(minutes=999)
