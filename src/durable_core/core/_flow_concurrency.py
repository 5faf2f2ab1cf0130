"""Concurrency and priority, decided at run creation (pure: no I/O, no clock).

A run of a function with ``concurrency`` carries its **slots**: one ``(slot key, limit)``
pair per entry. The store counts, per slot key, the runs holding a live lease (a run holds
its lease exactly while it executes step bodies: a sleeping, waiting or invoking run gives
it up), and claims a run only if each of its slot keys counts fewer than its limit (see
:func:`durable_core.store.pick_limited`). A run of a function with ``priority`` carries its
priority in ms: claims order queued runs by ``created_at - priority_ms``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from durable_core.base._safelog import safe_logger
from durable_core.core._flow import PRIORITY_BOUND_S, FlowControl, flow_key

__all__ = ["priority_ms", "slot_keys"]

log = safe_logger("durable_core.flow")

_HASH_CHARS = 32  # slot keys hold a hash of the key value: bounded, whatever the event


def _digest(*parts: str) -> str:
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:_HASH_CHARS]


def slot_keys(
    app_id: str, function_id: str, flow: FlowControl, event: dict[str, Any] | None,
    run_id: str = "",
) -> tuple[tuple[str, int], ...]:
    """The ``(slot key, limit)`` pairs of a new run of ``function_id`` triggered by
    ``event`` (dict form), one per ``concurrency`` entry (``()`` without any).

    ``scope="fn"``: ``fn:<function id>:<hash of the key expression and its value>`` (no key:
    one queue for the function); ``scope="app"``: ``app:<app id>:<hash of the value>``, so
    every function of the app whose key gives the same value shares the count; the limit is
    always the run's own function's. A key that fails on the event (a missing field, a
    wrong type) puts the run under the empty value (logged): it is still limited, with
    every other run whose key failed."""
    out: list[tuple[str, int]] = []
    for c in flow.concurrency:
        value = ""
        if c.key_expression is not None:
            try:
                got = flow_key(c.key_expression, event or {})
                value = "" if got is None else got
            except Exception as exc:
                log.warning(
                    "run %s of function %s: concurrency[%d].key %r failed on its event "
                    "(%s: %s); the run is limited under the empty key value", run_id,
                    function_id, c.index, c.key, type(exc).__name__, str(exc)[:200],
                    extra={"run_id": run_id, "function_id": function_id})
        if c.scope == "app":
            out.append((f"app:{app_id}:{_digest(value)}", c.limit))
        else:
            out.append((f"fn:{function_id}:{_digest(c.key or '', value)}", c.limit))
    return tuple(out)


def priority_ms(
    function_id: str, flow: FlowControl, event: dict[str, Any] | None, run_id: str = ""
) -> int:
    """The priority of a new run in ms: its ``priority.run`` expression's value on the
    triggering ``event`` (seconds, an int), clipped to [-600, 600] s; 0 without the option,
    and 0 (logged) when the expression fails or gives anything but an int."""
    p = flow.priority
    if p is None or p.run_expression is None:
        return 0
    try:
        value = p.run_expression.evaluate({"event": event or {}})
    except Exception as exc:
        log.warning("run %s of function %s: priority.run %r failed on its event (%s: %s); "
                    "it counts as 0", run_id, function_id, p.run, type(exc).__name__,
                    str(exc)[:200], extra={"run_id": run_id, "function_id": function_id})
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        log.warning("run %s of function %s: priority.run %r gave %s, not an int; it counts "
                    "as 0", run_id, function_id, p.run,
                    json.dumps(value, default=repr)[:100],
                    extra={"run_id": run_id, "function_id": function_id})
        return 0
    return max(-PRIORITY_BOUND_S, min(PRIORITY_BOUND_S, value)) * 1000
