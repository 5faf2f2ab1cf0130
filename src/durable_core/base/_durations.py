"""Durations and points in time: parsing, formatting and millisecond conversion.

Durations follow Inngest's time strings: a sequence of decimal numbers, each with a unit
(``"300ms"``, ``"1h30m"``, ``"2.5d"``, ``"1w2d"``). Points in time must be timezone-aware;
everything is normalised to UTC. This module is pure: it never reads the clock.
"""

from __future__ import annotations

import datetime as _dt
import math
import re

from durable_core.base._errors import InvalidDurationError

__all__ = [
    "DEFAULT_MAXIMUM_DURATION",
    "format_duration",
    "from_ms",
    "parse_duration",
    "parse_instant",
    "to_ms",
]

#: The default upper bound of :func:`parse_duration` (sleeps may last at most about a year).
DEFAULT_MAXIMUM_DURATION = _dt.timedelta(days=366)

_UTC = _dt.UTC
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_ONE_MS = _dt.timedelta(milliseconds=1)

_NS_PER_US = 1_000
_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000
_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": _NS_PER_US,
    "\u00b5s": _NS_PER_US,  # MICRO SIGN
    "\u03bcs": _NS_PER_US,  # GREEK SMALL LETTER MU
    "ms": _NS_PER_MS,
    "s": _NS_PER_S,
    "m": 60 * _NS_PER_S,
    "h": 3_600 * _NS_PER_S,
    "d": 86_400 * _NS_PER_S,
    "w": 7 * 86_400 * _NS_PER_S,
}
# Longest units first so that "ms" is not read as "m" followed by garbage.
_UNIT_PATTERN = "|".join(sorted((re.escape(u) for u in _UNIT_NS), key=len, reverse=True))
_COMPONENT = rf"(\d+(?:\.\d*)?|\.\d+)({_UNIT_PATTERN})"
_COMPONENT_RE = re.compile(_COMPONENT)
_DURATION_RE = re.compile(rf"(?:{_COMPONENT})+")

_DURATION_HINT = (
    "pass a number of seconds, a datetime.timedelta, or a string such as '30s', '1h30m', "
    "'2.5d' or '1w2d' (units: ns, us, ms, s, m, h, d, w)"
)
_NEGATIVE_HINT = "durations must be zero or more, e.g. '0s' or '30s'"
_INSTANT_HINT = (
    "pass a timezone-aware value, e.g. datetime(..., tzinfo=timezone.utc) or an ISO-8601 "
    "string ending in 'Z' or '+00:00'"
)


def parse_duration(
    value: str | int | float | _dt.timedelta,
    *,
    field: str,
    maximum: _dt.timedelta | None = DEFAULT_MAXIMUM_DURATION,
) -> _dt.timedelta:
    """Parse a non-negative duration.

    ``value`` is a number of seconds (int or float), a :class:`datetime.timedelta`, or an
    Inngest time string such as ``"300ms"``, ``"1h30m"``, ``"2.5d"`` or ``"1w2d"`` (units
    ``ns``, ``us``/``µs``, ``ms``, ``s``, ``m``, ``h``, ``d`` = 24 h, ``w`` = 7 d; surrounding
    whitespace is ignored). The result has microsecond resolution (finer parts are rounded).

    Raises :class:`InvalidDurationError` (naming ``field``) for malformed, negative, NaN or
    infinite values, and for durations longer than ``maximum`` (``None``: no maximum).
    """
    if isinstance(value, _dt.timedelta):
        td = value
        if td < _dt.timedelta(0):
            raise InvalidDurationError(
                f"{field}: duration {value!r} is negative; {_NEGATIVE_HINT}",
                field=field,
            )
    elif isinstance(value, bool):
        raise InvalidDurationError(
            f"{field}: {value!r} is a bool, not a duration; {_DURATION_HINT}", field=field
        )
    elif isinstance(value, int | float):
        td = _seconds_to_timedelta(value, field=field, maximum=maximum)
    elif isinstance(value, str):
        td = _parse_duration_string(value, field=field, maximum=maximum)
    else:
        raise InvalidDurationError(
            f"{field}: cannot use a {type(value).__name__} as a duration; {_DURATION_HINT}",
            field=field,
        )
    if maximum is not None and td > maximum:
        raise _too_long(td, maximum, field)
    return td


def _too_long(td: _dt.timedelta, maximum: _dt.timedelta, field: str) -> InvalidDurationError:
    return InvalidDurationError(
        f"{field}: duration {format_duration(td)} is longer than the maximum of "
        f"{format_duration(maximum)}; use a shorter duration (sleeps, waits and timeouts "
        "may last at most about one year)",
        field=field,
    )


def _seconds_to_timedelta(
    value: float, *, field: str, maximum: _dt.timedelta | None
) -> _dt.timedelta:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidDurationError(
            f"{field}: duration {value!r} is not a finite number; {_DURATION_HINT}",
            field=field,
        )
    if value < 0:
        raise InvalidDurationError(
            f"{field}: duration {value!r} s is negative; {_NEGATIVE_HINT}",
            field=field,
        )
    if maximum is not None and value > maximum.total_seconds() + 1:
        # Checked before building the timedelta so huge values cannot overflow.
        raise InvalidDurationError(
            f"{field}: duration {value!r} s is longer than the maximum of "
            f"{format_duration(maximum)}; use a shorter duration (sleeps, waits and timeouts "
            "may last at most about one year)",
            field=field,
        )
    try:
        return _dt.timedelta(seconds=value)
    except OverflowError:
        raise InvalidDurationError(
            f"{field}: duration {value!r} s is too large; use a shorter duration", field=field
        ) from None


def _parse_duration_string(
    value: str, *, field: str, maximum: _dt.timedelta | None
) -> _dt.timedelta:
    text = value.strip()
    if not text:
        raise InvalidDurationError(f"{field}: empty duration string; {_DURATION_HINT}", field=field)
    if text.startswith("-"):
        raise InvalidDurationError(
            f"{field}: duration {value!r} is negative; {_NEGATIVE_HINT}",
            field=field,
        )
    if _DURATION_RE.fullmatch(text) is None:
        raise InvalidDurationError(
            f"{field}: invalid duration {value!r} ({_diagnose(text)}); {_DURATION_HINT}",
            field=field,
        )
    total_ns = 0
    for match in _COMPONENT_RE.finditer(text):
        number, unit = match.group(1), match.group(2)
        unit_ns = _UNIT_NS[unit]
        whole, _, fraction = number.partition(".")
        total_ns += int(whole or "0") * unit_ns
        if fraction:
            total_ns += int(fraction) * unit_ns // 10 ** len(fraction)
    total_us = (total_ns + _NS_PER_US // 2) // _NS_PER_US
    if total_us > _MAX_TIMEDELTA_US:
        raise InvalidDurationError(
            f"{field}: duration {value!r} is far too large; use a shorter duration", field=field
        )
    td = _dt.timedelta(microseconds=total_us)
    if maximum is not None and td > maximum:
        raise _too_long(td, maximum, field)
    return td


_MAX_TIMEDELTA_US = _dt.timedelta.max // _dt.timedelta(microseconds=1)


_TOKEN_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([^\d.\s]*)")


def _diagnose(text: str) -> str:
    """Say what is wrong with a string that does not match the duration grammar."""
    position = 0
    while position < len(text):
        token = _TOKEN_RE.match(text, position)
        if token is None:
            return f"unexpected {text[position]!r} at position {position}"
        number, unit = token.group(1), token.group(2)
        if not unit:
            if token.end() == len(text):
                return f"the number {number!r} has no unit"
            return f"unexpected {text[token.end()]!r} after {number!r}"
        if unit not in _UNIT_NS:
            return f"unknown unit {unit!r}"
        position = token.end()
    return "malformed"  # pragma: no cover - the grammar matched after all


def parse_instant(value: str | _dt.datetime, *, field: str) -> _dt.datetime:
    """Parse a point in time and return it as an aware UTC datetime.

    ``value`` is a timezone-aware :class:`datetime.datetime` or an ISO-8601 string with an
    offset (``"2024-05-01T12:00:00Z"``, ``"2024-05-01T14:00:00+02:00"``). Naive datetimes and
    strings without an offset are rejected with :class:`InvalidDurationError` naming ``field``:
    the engine never guesses a timezone.
    """
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidDurationError(
                f"{field}: datetime {value.isoformat()} is naive (it has no timezone); "
                f"{_INSTANT_HINT}",
                field=field,
            )
        return value.astimezone(_UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidDurationError(
                f"{field}: {value!r} is not an ISO-8601 timestamp; {_INSTANT_HINT}", field=field
            ) from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise InvalidDurationError(
                f"{field}: timestamp {value!r} has no UTC offset; {_INSTANT_HINT}", field=field
            )
        try:
            return parsed.astimezone(_UTC)
        except OverflowError:
            raise InvalidDurationError(
                f"{field}: timestamp {value!r} is out of range; {_INSTANT_HINT}", field=field
            ) from None
    raise InvalidDurationError(
        f"{field}: cannot use a {type(value).__name__} as a point in time; {_INSTANT_HINT}",
        field=field,
    )


def to_ms(dt: _dt.datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime (floored, exact integer math)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise InvalidDurationError(
            f"datetime {dt.isoformat()} is naive (it has no timezone); {_INSTANT_HINT}"
        )
    return (dt - _EPOCH) // _ONE_MS


def from_ms(ms: int) -> _dt.datetime:
    """The aware UTC datetime ``ms`` milliseconds after the Unix epoch."""
    return _EPOCH + _dt.timedelta(milliseconds=ms)


_FORMAT_UNITS_US: tuple[tuple[str, int], ...] = (
    ("d", 86_400_000_000),
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
    ("us", 1),
)


def format_duration(td: _dt.timedelta) -> str:
    """Format a duration compactly: ``"1h30m"``, ``"15s"``, ``"250ms"``, ``"0s"``.

    The output parses back to the same value with :func:`parse_duration` (negative values
    get a leading ``-``, which :func:`parse_duration` rejects).
    """
    rest = td // _dt.timedelta(microseconds=1)
    if rest == 0:
        return "0s"
    sign = "-" if rest < 0 else ""
    rest = abs(rest)
    parts: list[str] = []
    for unit, size in _FORMAT_UNITS_US:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)
