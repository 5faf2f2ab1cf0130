"""Retry backoff and deterministic pseudo-randomness.

Everything here is a pure function of its arguments: jitter (and ``ctx.random()``) is derived
from a SHA-256 of stable identifiers, never from ``random`` or the salted ``hash()``, so two
processes replaying the same run compute the same values.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math

from durable_core.base._durations import from_ms, parse_duration, parse_instant
from durable_core.base._errors import RetryAfterError

__all__ = [
    "BACKOFF_TABLE",
    "MAX_JITTER",
    "MAX_RETRY_AFTER",
    "MIN_RETRY_AFTER",
    "retry_after_delay",
    "retry_delay",
    "stable_unit",
]

#: Delay before retrying, indexed by the 0-based number of the attempt that just failed
#: (Inngest's table). Attempts beyond the table use its last entry.
BACKOFF_TABLE: tuple[_dt.timedelta, ...] = (
    _dt.timedelta(seconds=15),
    _dt.timedelta(seconds=30),
    _dt.timedelta(minutes=1),
    _dt.timedelta(minutes=2),
    _dt.timedelta(minutes=5),
    _dt.timedelta(minutes=10),
    _dt.timedelta(minutes=20),
    _dt.timedelta(minutes=40),
    _dt.timedelta(hours=1),
    _dt.timedelta(hours=2),
)

#: Jitter added to a table delay lies in ``[0, MAX_JITTER)``, at millisecond resolution.
MAX_JITTER = _dt.timedelta(seconds=30)
#: Bounds a :class:`~durable_core.RetryAfterError` delay is clamped to.
MIN_RETRY_AFTER = _dt.timedelta(seconds=1)
MAX_RETRY_AFTER = _dt.timedelta(hours=24)

_MAX_JITTER_MS = MAX_JITTER // _dt.timedelta(milliseconds=1)
_RETRY_AFTER_FIELD = "RetryAfterError.after"


def stable_unit(*parts: str | int) -> float:
    """A deterministic value in ``[0, 1)`` derived from ``parts``.

    The parts are encoded unambiguously (each tagged with its type and length-prefixed, so
    ``("ab", "c")``, ``("a", "bc")`` and ``("1",)`` vs ``(1,)`` all differ) and hashed with
    SHA-256; the top 53 bits of the digest become the fraction. The value is the same in
    every process and on every platform.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, str | int):
            raise TypeError(
                f"stable_unit() parts must be str or int, not {type(part).__name__}; "
                "convert the value to a string first"
            )
        tag = b"s" if isinstance(part, str) else b"i"
        payload = (part if isinstance(part, str) else str(part)).encode("utf-8", "surrogatepass")
        digest.update(tag + str(len(payload)).encode("ascii") + b":" + payload)
    top = int.from_bytes(digest.digest()[:8], "big") >> 11  # 53 bits
    return top / float(1 << 53)


def retry_delay(run_id: str, step_id: str, attempt: int) -> _dt.timedelta:
    """The delay before retrying after attempt number ``attempt`` (0-based) failed.

    It is ``BACKOFF_TABLE[min(attempt, 9)]`` plus a jitter in ``[0, 30 s)`` with millisecond
    resolution, derived from ``stable_unit(run_id, step_id, attempt)`` so that it is
    reproducible.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(
            f"retry_delay(): attempt must be a non-negative int (the 0-based number of the "
            f"attempt that failed), got {attempt!r}"
        )
    base = BACKOFF_TABLE[min(attempt, len(BACKOFF_TABLE) - 1)]
    jitter_ms = int(stable_unit(run_id, step_id, attempt) * _MAX_JITTER_MS)
    return base + _dt.timedelta(milliseconds=min(jitter_ms, _MAX_JITTER_MS - 1))


def retry_after_delay(
    after: float | int | _dt.timedelta | str | _dt.datetime, now: _dt.datetime
) -> _dt.timedelta:
    """The delay requested by a :class:`~durable_core.RetryAfterError`, clamped to [1 s, 24 h].

    ``after`` is a number of seconds, a :class:`datetime.timedelta`, a duration string such as
    ``"30s"`` (see :func:`~durable_core.base._durations.parse_duration`), or an aware
    :class:`datetime.datetime` meaning "retry at that time" (the delay is ``after - now``).
    Delays in the past or below one second become one second. Malformed values raise
    :class:`~durable_core.InvalidDurationError` naming ``RetryAfterError.after``.
    """
    delay: _dt.timedelta
    if isinstance(after, _dt.datetime):
        at = parse_instant(after, field=_RETRY_AFTER_FIELD)
        delay = at - parse_instant(now, field="now")
    elif isinstance(after, _dt.timedelta):
        delay = after
    elif isinstance(after, str):
        delay = parse_duration(after, field=_RETRY_AFTER_FIELD, maximum=None)
    elif isinstance(after, int | float) and not isinstance(after, bool):
        if math.isnan(after):
            # parse_duration words the error (NaN is never a valid delay).
            parse_duration(after, field=_RETRY_AFTER_FIELD, maximum=None)
        seconds = min(max(float(after), 0.0), MAX_RETRY_AFTER.total_seconds())
        delay = _dt.timedelta(seconds=seconds)
    else:
        # parse_duration words the error for bools and unsupported types.
        parse_duration(after, field=_RETRY_AFTER_FIELD, maximum=None)
        raise AssertionError("unreachable")  # pragma: no cover
    return min(max(delay, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def retry_at_ms(error: BaseException, now_ms: int, run_id: str, step_id: str,
                attempt: int) -> int:
    """When to retry after attempt ``attempt`` (0-based) of ``step_id`` failed with ``error``
    at ``now_ms``: the delay a :class:`~durable_core.RetryAfterError` asks for, otherwise the
    backoff table with jitter (:func:`retry_delay`). Milliseconds since the epoch.

    Raises :class:`~durable_core.ValidationError` when a ``RetryAfterError`` carries a value
    that is not a delay or an instant (a bug in the code that raised it)."""
    if isinstance(error, RetryAfterError):
        delay = retry_after_delay(error.after, from_ms(now_ms))
    else:
        delay = retry_delay(run_id, step_id, attempt)
    return now_ms + int(delay.total_seconds() * 1000)
