"""The drivers' wall clock (the only place a driver reads the system time)."""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """Milliseconds since the epoch from the system clock (the default worker clock)."""
    return time.time_ns() // 1_000_000
