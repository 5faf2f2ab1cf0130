"""Cron schedules: parsing, validation and computing the next tick.

A schedule is ``[TZ=<IANA zone> |CRON_TZ=<IANA zone> ]<spec>`` where ``spec`` is a classic
5-field cron expression (minute hour day-of-month month day-of-week) or a descriptor such as
``@daily``. Ticks are computed in the schedule's zone with croniter and returned in UTC.

Daylight-saving transitions follow classic (Vixie) cron:

* a wall-clock time skipped by a spring-forward gap fires once, at the first instant after
  the gap, when the hour field is restricted (``30 2 * * *`` fires at 03:00 on that day);
  schedules with a wildcard hour (``*/15 * * * *``) simply skip the missing times;
* a wall-clock time repeated by a fall-back fires once (at its first occurrence) when the
  hour field is restricted, so a daily job runs once; schedules with a wildcard hour fire
  at both occurrences, following real elapsed time.

This module is pure: it never reads the clock (croniter is always given a start time).
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import re
import zoneinfo

import attrs
from croniter import CroniterBadDateError, croniter

from durable_core.base._errors import InvalidCronError, InvalidDurationError

__all__ = ["DESCRIPTORS", "CronSchedule"]

#: The ``@`` shorthands accepted in place of five fields.
DESCRIPTORS: frozenset[str] = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)

_UTC = _dt.UTC
_HOUR_FIELD = 1
# A fixed, arbitrary start used to check at parse time that a schedule ever fires.
_PROBE_START = _dt.datetime(2000, 1, 1)
# croniter's hashed ("H") and random ("R") extensions: H needs a hash id we do not have and
# R is not deterministic, so both are rejected.
_HASH_OR_RANDOM_RE = re.compile(r"[HhRr](?:\(|/|$)")
_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_HINT = (
    "use 5 fields 'minute hour day-of-month month day-of-week' (e.g. '0 9 * * mon-fri'), "
    "or one of " + ", ".join(sorted(DESCRIPTORS)) + ", optionally prefixed by 'TZ=<IANA zone> '"
)


@functools.lru_cache(maxsize=512)
def _prototype(spec: str) -> tuple[croniter, bool]:
    """A croniter for ``spec`` (copied before each use) and whether its hour field is ``*``."""
    proto = croniter(spec, _PROBE_START)
    hour_is_wildcard = "*" in proto.expanded[_HOUR_FIELD]
    return proto, hour_is_wildcard


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> _dt.tzinfo:
    return _UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


def _is_repeated_wall_time(local: _dt.datetime) -> bool:
    """True if ``local`` is the second occurrence of a wall-clock time repeated by a fall-back."""
    return local.fold == 1 and (local.replace(fold=0).utcoffset() != local.utcoffset())


@attrs.frozen
class CronSchedule:
    """A parsed, validated cron schedule. Build it with :meth:`CronSchedule.parse`.

    ``expression`` is the text as given, ``tz`` the IANA zone the schedule runs in
    (``"UTC"`` without a ``TZ=`` prefix) and ``spec`` the 5-field or ``@descriptor`` part.
    """

    expression: str
    tz: str
    spec: str

    @classmethod
    def parse(cls, text: str, *, field: str) -> CronSchedule:
        """Parse and validate ``text``; raise :class:`InvalidCronError` naming ``field``.

        Accepts an optional ``TZ=<IANA zone>`` or ``CRON_TZ=<IANA zone>`` prefix followed by
        exactly five fields or a descriptor (``@yearly @annually @monthly @weekly @daily
        @midnight @hourly``). Seconds or years fields (6 or 7 fields), croniter's ``H``/``R``
        extensions, unknown zones and schedules that never fire are rejected.
        """
        if not isinstance(text, str):
            raise InvalidCronError(
                f"{field}: a cron schedule must be a string, not {type(text).__name__}; "
                f"{_CRON_HINT}",
                field=field,
            )
        rest = text.strip()
        tz = "UTC"
        if rest.startswith(("TZ=", "CRON_TZ=")):
            prefix, *remainder = rest.split(maxsplit=1)
            rest = remainder[0] if remainder else ""
            tz = prefix.partition("=")[2]
            _check_zone(tz, text=text, field=field)
        spec = rest
        if not spec:
            raise InvalidCronError(
                f"{field}: cron schedule {text!r} has no fields; {_CRON_HINT}",
                field=field,
            )
        if spec.startswith("@"):
            if spec.lower() not in DESCRIPTORS:
                raise InvalidCronError(
                    f"{field}: unknown cron descriptor {spec!r} in {text!r} (@every and "
                    f"@reboot are not supported); {_CRON_HINT}",
                    field=field,
                )
            croniter_spec = spec.lower()
        else:
            fields = spec.split()
            if len(fields) != 5:
                extra = (
                    " (seconds and years fields are not supported)" if len(fields) in (6, 7) else ""
                )
                raise InvalidCronError(
                    f"{field}: cron schedule {text!r} has {len(fields)} fields, expected "
                    f"exactly 5{extra}; {_CRON_HINT}",
                    field=field,
                )
            for name, value in zip(_FIELD_NAMES, fields, strict=True):
                if _HASH_OR_RANDOM_RE.match(value):
                    raise InvalidCronError(
                        f"{field}: the {name} field {value!r} of {text!r} uses croniter's "
                        "hashed/random syntax, which is not supported; use explicit values",
                        field=field,
                    )
            croniter_spec = " ".join(fields)
            if not croniter.is_valid(croniter_spec):
                raise InvalidCronError(
                    f"{field}: invalid cron expression {text!r}; check each field's values "
                    f"and ranges (minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or "
                    f"jan-dec, day-of-week 0-6 or sun-sat); {_CRON_HINT}",
                    field=field,
                )
        try:
            proto, _ = _prototype(croniter_spec)
            copy.copy(proto).get_next(_dt.datetime, start_time=_PROBE_START)
        except CroniterBadDateError:
            raise InvalidCronError(
                f"{field}: cron schedule {text!r} never fires (e.g. a day that does not exist "
                "in the chosen month); fix the day-of-month/month fields",
                field=field,
            ) from None
        except (ValueError, KeyError, TypeError) as exc:  # croniter errors are ValueErrors
            raise InvalidCronError(
                f"{field}: invalid cron expression {text!r} ({exc}); {_CRON_HINT}", field=field
            ) from None
        return cls(expression=text, tz=tz, spec=croniter_spec)

    def next_after(self, dt: _dt.datetime) -> _dt.datetime:
        """The first tick strictly after the aware datetime ``dt``, as an aware UTC datetime.

        Ticks are computed on the wall clock of the schedule's zone (see the module docstring
        for daylight-saving rules). Pure and deterministic.
        """
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise InvalidDurationError(
                f"CronSchedule.next_after() needs a timezone-aware datetime, got naive "
                f"{dt.isoformat()}; pass e.g. datetime(..., tzinfo=timezone.utc)",
                field="dt",
            )
        try:
            proto, hour_is_wildcard = _prototype(self.spec)
            zone = _zone(self.tz)
        except (ValueError, KeyError, OSError) as exc:
            # Only reachable for a CronSchedule built without parse() (e.g. deserialised).
            raise InvalidCronError(
                f"cron schedule {self.expression!r} is invalid ({exc}); build schedules "
                "with CronSchedule.parse()",
                field="cron",
            ) from None
        current = dt.astimezone(_UTC)
        # The loop only repeats to skip repeated wall-clock times after a fall-back (at most
        # one per matching minute of the repeated hour) or, defensively, a non-advancing tick.
        for _ in range(10_000):
            try:
                local_tick = copy.copy(proto).get_next(
                    _dt.datetime, start_time=current.astimezone(zone)
                )
            except (CroniterBadDateError, OverflowError, ValueError) as exc:
                raise InvalidCronError(
                    f"cron schedule {self.expression!r} has no tick after {dt.isoformat()} "
                    f"({exc}); use an earlier start time",
                    field="cron",
                ) from None
            tick = local_tick.astimezone(_UTC)
            if tick <= current:
                # Never observed; guards against an infinite loop on a croniter quirk.
                current += _dt.timedelta(seconds=1)
                continue
            if not hour_is_wildcard and _is_repeated_wall_time(tick.astimezone(zone)):
                current = tick
                continue
            return tick
        raise InvalidCronError(  # pragma: no cover - defensive
            f"cron schedule {self.expression!r}: could not compute the tick after "
            f"{dt.isoformat()}; please report this",
            field="cron",
        )


    def latest_at_or_before(self, dt: _dt.datetime) -> _dt.datetime | None:
        """The last tick at or before the aware datetime ``dt`` (the same ticks
        :meth:`next_after` gives, daylight-saving rules included), or None if the schedule
        has none before ``dt`` (in the years croniter covers). Costs a few
        :meth:`next_after` calls however long ago the tick was: croniter finds the last
        raw tick, then the ticks of the hours around it are walked forward."""
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise InvalidDurationError(
                f"CronSchedule.latest_at_or_before() needs a timezone-aware datetime, got "
                f"naive {dt.isoformat()}; pass e.g. datetime(..., tzinfo=timezone.utc)",
                field="dt",
            )
        proto, _wildcard = _prototype(self.spec)
        zone = _zone(self.tz)
        end = dt.astimezone(_UTC)
        probe = end + _dt.timedelta(microseconds=1)
        # A raw tick moved by a daylight-saving rule lands at most an hour away from it, so
        # walking forward from three hours before the last raw tick finds every adjusted
        # tick up to ``end``. A raw tick dropped as a repeated wall time leaves the walk
        # empty only if the whole window was; then look before it.
        for _ in range(64):
            try:
                raw = copy.copy(proto).get_prev(_dt.datetime, start_time=probe.astimezone(zone))
            except (CroniterBadDateError, OverflowError, ValueError):
                return None
            start = raw.astimezone(_UTC) - _dt.timedelta(hours=3)
            found: _dt.datetime | None = None
            tick = self.next_after(start)
            while tick <= end:
                found = tick
                tick = self.next_after(tick)
            if found is not None:
                return found
            probe = start
        return None  # pragma: no cover - defensive


    def ticks_between(
        self, after: _dt.datetime, until: _dt.datetime, limit: int
    ) -> tuple[list[_dt.datetime], bool]:
        """The last ``limit`` ticks in ``(after, until]``, oldest first, and whether earlier
        ticks of that range were left out. Costs about ``limit`` :meth:`next_after` calls
        however long the range: past ``limit`` ticks, croniter steps back from ``until``
        to find where the last ``limit`` start."""
        out: list[_dt.datetime] = []
        tick = self.next_after(after)
        while tick <= until and len(out) <= limit:
            out.append(tick)
            tick = self.next_after(tick)
        if len(out) <= limit:
            return out, False
        proto, _wildcard = _prototype(self.spec)
        zone = _zone(self.tz)
        it = copy.copy(proto)
        it.set_current(until.astimezone(zone), force=True)
        raw = until
        for _ in range(limit):
            raw = it.get_prev(_dt.datetime).astimezone(_UTC)
        # Adjusted ticks lie within an hour of raw ones (see latest_at_or_before).
        begin = max(after.astimezone(_UTC), raw - _dt.timedelta(hours=3))
        out = []
        tick = self.next_after(begin)
        while tick <= until:
            out.append(tick)
            tick = self.next_after(tick)
        return out[-limit:], True


def _check_zone(tz: str, *, text: str, field: str) -> None:
    hint = "use an IANA zone name such as 'UTC', 'Europe/Paris' or 'America/New_York'"
    if not tz:
        raise InvalidCronError(
            f"{field}: the TZ= prefix of {text!r} names no zone; {hint}", field=field
        )
    try:
        _zone(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidCronError(
            f"{field}: unknown time zone {tz!r} in {text!r}; {hint}", field=field
        ) from None
