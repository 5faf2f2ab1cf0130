"""Checks of the drivers' options: a bad value is a :class:`ValidationError` naming the
option, raised when the worker or client is built, not later while it runs."""

from __future__ import annotations

import math
from typing import Any

from durable_core.base._errors import ValidationError

__all__ = ["check_callable", "check_count", "check_seconds", "check_store"]


def check_count(owner: str, name: str, value: Any, low: int = 1, high: int = 10**9) -> int:
    """``value`` as a whole number in [low, high]; else a ValidationError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            f"{owner}({name}=...) must be a whole number, got {value!r}", field=name
        )
    if not low <= value <= high:
        raise ValidationError(
            f"{owner}({name}=...) must be between {low} and {high}, got {value}", field=name
        )
    return value


def check_seconds(owner: str, name: str, value: Any, high: float = 86_400.0) -> float:
    """``value`` as a finite number of seconds in (0, high]; else a ValidationError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(
            f"{owner}({name}=...) must be a number of seconds, got {value!r}", field=name
        )
    if not (math.isfinite(value) and 0 < value <= high):
        raise ValidationError(
            f"{owner}({name}=...) must be more than 0 and at most {high:g} seconds, "
            f"got {value!r}", field=name,
        )
    return float(value)


def check_callable(owner: str, name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` callable (or None if ``optional``); else a ValidationError."""
    if value is None and optional:
        return
    if not callable(value):
        raise ValidationError(
            f"{owner}({name}=...) must be callable, got {type(value).__name__}", field=name
        )


_STORE_METHODS = ("commit", "claim_runs", "get_run", "list_runs", "load_journal")


def check_store(owner: str, store: Any) -> None:
    """``store`` has the store contract's methods (a cheap duck-typed check: a URL string
    or a forgotten ``stores.open`` is the usual mistake); else a ValidationError."""
    missing = [m for m in _STORE_METHODS if not callable(getattr(store, m, None))]
    if missing:
        hint = " (open a URL with stores.open(url))" if isinstance(store, str) else ""
        raise ValidationError(
            f"{owner}(store=...) must be a store (durable_core.Store), got "
            f"{type(store).__name__} without {', '.join(missing)}{hint}", field="store",
        )
