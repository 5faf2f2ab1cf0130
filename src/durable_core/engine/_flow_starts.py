"""Flow control of run starts: ``throttle``, ``rate_limit`` and ``singleton`` (pure).

The router calls :func:`start_limits` for each run it creates from an event: it evaluates the
options' keys on the event and names the state each limit uses (its *bucket*: the limit,
the function and the key value). The store decides the limits in the commit that creates
the run (:class:`durable_core.store.StartLimiter`), so every worker and process sharing
the store shares them.

A key expression that fails on an event (a missing field, a wrong type) does not stop the
run: the run is put in the function's unkeyed bucket for that option (the one a function
without a key uses), and a warning is logged naming the function, the option and the
event."""

from __future__ import annotations

import json
import logging
from typing import Any

from durable_core.base._cel import Expression
from durable_core.base._errors import InvalidExpressionError
from durable_core.core._flow import flow_key
from durable_core.store import StartLimits

__all__ = ["bucket", "start_limits"]

log = logging.getLogger("durable_core.flow")


def bucket(option: str, function_id: str, key: str | None) -> str:
    """The state name of ``option`` (``"throttle"``, ``"rate_limit"``, ``"singleton"``) for
    a function and key value (None: the function's unkeyed bucket)."""
    return json.dumps([option, function_id, key], ensure_ascii=False, separators=(",", ":"))


def _key(option: str, function_id: str, expr: Expression | None,
         event: dict[str, Any]) -> str | None:
    try:
        return flow_key(expr, event)
    except (InvalidExpressionError, RecursionError, ValueError, TypeError) as exc:
        log.warning(
            "function %s: %s.key failed on event %s (%s); the run uses the function's "
            "unkeyed %s", function_id, option, ascii(event.get("id"))[:80],
            str(exc)[:200], option)
        return None


def start_limits(function: Any, event: dict[str, Any]) -> StartLimits | None:
    """The start limits of a run of ``function`` (a :class:`~durable_core.Function`)
    triggered by ``event`` (dict form), or None when the function sets none."""
    flow = getattr(function, "flow", None)
    if flow is None:
        return None
    t, r, s = flow.throttle, flow.rate_limit, flow.singleton
    if t is None and r is None and s is None:
        return None
    fid = function.id
    throttle = rate = single = None
    rate_key = single_key = None
    if t is not None:
        k = _key("throttle", fid, t.key_expression, event)
        throttle = (bucket("throttle", fid, k), t.period_ms, t.limit, t.burst)
    if r is not None:
        rate_key = _key("rate_limit", fid, r.key_expression, event)
        rate = (bucket("rate_limit", fid, rate_key), r.period_ms, r.limit)
    if s is not None:
        single_key = _key("singleton", fid, s.key_expression, event)
        single = (bucket("singleton", fid, single_key), s.mode)
    return StartLimits(throttle=throttle, rate_limit=rate, singleton=single,
                       rate_limit_key=rate_key or "", singleton_key=single_key or "")
