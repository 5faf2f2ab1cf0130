"""Flow control: the options of ``@app.function`` that decide when, and whether, runs start
and how many step bodies execute at once (pure: no I/O, no clock).

``concurrency`` bounds the step bodies executing at once (per key); ``throttle`` delays run
starts past a rate (lossless); ``rate_limit`` drops triggers past a rate (lossy);
``debounce`` starts one run after a quiet period; ``batch_events`` starts one run per batch
of events; ``priority`` lets some runs jump the queue; ``singleton`` keeps one active run per
key. Each option is checked here when the function is registered (a typed error naming the
field and the fix) and bound: durations in ms, CEL expressions compiled. The shapes and
bounds follow Inngest's (``docs/concepts/flow-control.md`` lists every difference).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import attrs

from durable_core.base._cel import Expression, compile_expression
from durable_core.base._durations import format_duration, parse_duration
from durable_core.base._errors import FunctionConfigError, InvalidExpressionError, ValidationError
from durable_core.core._lifecycle import idempotency_text

__all__ = [
    "CONCURRENCY_SCOPES",
    "MAX_CONCURRENCY_ENTRIES",
    "MAX_CONCURRENCY_LIMIT",
    "SINGLETON_MODES",
    "Batch",
    "BoundBatch",
    "BoundConcurrency",
    "BoundDebounce",
    "BoundPriority",
    "BoundRateLimit",
    "BoundSingleton",
    "BoundThrottle",
    "Concurrency",
    "Debounce",
    "FlowControl",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
    "bind_flow_control",
    "flow_key",
]

MAX_CONCURRENCY_ENTRIES = 2
"""At most this many ``Concurrency`` entries per function (Inngest's
``MaxConcurrencyLimits``)."""
MAX_CONCURRENCY_LIMIT = 100_000
"""The largest ``Concurrency.limit`` accepted."""
CONCURRENCY_SCOPES = ("fn", "app")
"""``Concurrency(scope=)``: the function's own limit, or one shared by every function of
the app that names the same key value (Inngest's ``env`` scope)."""
SINGLETON_MODES = ("skip", "cancel")
"""``Singleton(mode=)``: drop the newcomer, or cancel the active run for it."""
MAX_BATCH_SIZE = 100
"""The largest ``Batch.max_size`` (Inngest's ``DefaultBatchSizeLimit``)."""
MAX_BATCH_BYTES = 10 * 1024 * 1024
"""A batch whose events reach this many bytes starts at once (Inngest's 10 MiB)."""
PRIORITY_BOUND_S = 600
"""``Priority(run=)`` values are clipped to [-600, 600] seconds (Inngest's default)."""

_SECOND = dt.timedelta(seconds=1)
_MINUTE = dt.timedelta(minutes=1)
_DAY = dt.timedelta(days=1)
_WEEK = dt.timedelta(days=7)

Duration = str | float | dt.timedelta
"""A duration as options take it: seconds, a time string (``"30s"``, ``"1h"``) or a
:class:`datetime.timedelta`."""


@attrs.frozen
class Concurrency:
    """Bound the step bodies executing at once: at most ``limit`` (1-100,000). A run that
    sleeps, waits for an event or waits for an invoked function holds no slot.

    ``key`` (a CEL expression over ``event``, e.g. ``"event.data.customer_id"``) makes one
    virtual queue per value, each with its own ``limit``; keys are served fairly, so one
    busy key cannot starve the others. ``scope="app"`` shares the limit with every function
    of the app whose key gives the same value (it requires a ``key``)."""

    limit: int
    key: str | None = None
    scope: str = "fn"


@attrs.frozen
class Throttle:
    """Bound run *starts*: at most ``limit`` per ``period`` (1 s to 7 days), with up to
    ``burst`` starts at once (GCRA). Lossless: runs over the limit wait, first in first out.
    ``key`` (CEL over ``event``) throttles each value apart."""

    limit: int
    period: Duration
    burst: int = 1
    key: str | None = None


@attrs.frozen
class RateLimit:
    """Bound run starts, lossy: at most ``limit`` runs per ``period`` (1 s to 24 h); a
    trigger over the limit starts nothing (the skip is stored and shown on the event).
    ``key`` (CEL over ``event``) limits each value apart."""

    limit: int
    period: Duration
    key: str | None = None


@attrs.frozen
class Debounce:
    """Start one run ``period`` (1 s to 7 days) after the *last* matching event, with that
    event; each new event pushes the start back. ``timeout`` caps the total delay from the
    first event (at most 7 days). ``key`` (CEL over ``event``) debounces each value apart."""

    period: Duration
    key: str | None = None
    timeout: Duration | None = None


@attrs.frozen
class Batch:
    """Start one run per batch of events: when ``max_size`` (1-100) events have arrived, or
    ``timeout`` (1 s to 60 s) after the batch's first event, or when the batch reaches
    10 MiB. The run sees them as ``ctx.events`` (``ctx.event`` is the first). ``key`` (CEL
    over ``event``) batches each value apart; an event for which ``if_`` (CEL over
    ``event``) is not true runs alone, at once."""

    max_size: int
    timeout: Duration
    key: str | None = None
    if_: str | None = None


@attrs.frozen
class Priority:
    """``run``: a CEL expression over ``event`` giving seconds (an int, clipped to
    [-600, 600]): a run with value ``n`` starts ahead of work queued within the last ``n``
    seconds (a negative value delays it). Work queued longer ago than the bound is never
    overtaken, so nothing starves. An expression that fails or gives no int counts as 0."""

    run: str | None = None


@attrs.frozen
class Singleton:
    """At most one active run per ``key`` value (CEL over ``event``; without a key, one per
    function). ``mode="skip"`` drops a newcomer while a run is active (even while it is
    retrying); ``mode="cancel"`` cancels the active run and starts the newcomer."""

    key: str | None = None
    mode: str = "skip"


# --------------------------------------------------------------------------- bound forms


@attrs.frozen
class BoundConcurrency:
    """A checked ``Concurrency``: its key compiled."""

    index: int
    limit: int
    key: str | None
    scope: str
    key_expression: Expression | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BoundThrottle:
    """A checked ``Throttle``: its period in ms, its key compiled."""

    limit: int
    period_ms: int
    burst: int
    key: str | None
    key_expression: Expression | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BoundRateLimit:
    """A checked ``RateLimit``: its period in ms, its key compiled."""

    limit: int
    period_ms: int
    key: str | None
    key_expression: Expression | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BoundDebounce:
    """A checked ``Debounce``: its durations in ms, its key compiled."""

    period_ms: int
    key: str | None
    timeout_ms: int | None
    key_expression: Expression | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BoundBatch:
    """A checked ``Batch``: its timeout in ms, its expressions compiled."""

    max_size: int
    timeout_ms: int
    key: str | None
    if_: str | None
    key_expression: Expression | None = attrs.field(default=None, eq=False, repr=False)
    if_expression: Expression | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BoundPriority:
    """A checked ``Priority``: its expression compiled."""

    run: str | None
    run_expression: Expression | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BoundSingleton:
    """A checked ``Singleton``: its key compiled."""

    key: str | None
    mode: str
    key_expression: Expression | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class FlowControl:
    """A function's checked flow-control options (each None or empty when not set)."""

    concurrency: tuple[BoundConcurrency, ...] = ()
    throttle: BoundThrottle | None = None
    rate_limit: BoundRateLimit | None = None
    debounce: BoundDebounce | None = None
    batch: BoundBatch | None = None
    priority: BoundPriority | None = None
    singleton: BoundSingleton | None = None

    @property
    def any(self) -> bool:
        """Whether any option is set."""
        return bool(self.concurrency) or any(
            x is not None for x in (self.throttle, self.rate_limit, self.debounce,
                                    self.batch, self.priority, self.singleton))

    def describe(self) -> dict[str, Any]:
        """The options that are set, as JSON-ready values (``Function.describe``)."""
        out: dict[str, Any] = {}
        if self.concurrency:
            out["concurrency"] = [{"limit": c.limit, "key": c.key, "scope": c.scope}
                                  for c in self.concurrency]
        if (t := self.throttle) is not None:
            out["throttle"] = {"limit": t.limit, "period": _text(t.period_ms),
                               "burst": t.burst, "key": t.key}
        if (r := self.rate_limit) is not None:
            out["rate_limit"] = {"limit": r.limit, "period": _text(r.period_ms), "key": r.key}
        if (d := self.debounce) is not None:
            out["debounce"] = {"period": _text(d.period_ms), "key": d.key,
                               "timeout": None if d.timeout_ms is None else _text(d.timeout_ms)}
        if (b := self.batch) is not None:
            out["batch_events"] = {"max_size": b.max_size, "timeout": _text(b.timeout_ms),
                                   "key": b.key, "if": b.if_}
        if (p := self.priority) is not None:
            out["priority"] = {"run": p.run}
        if (s := self.singleton) is not None:
            out["singleton"] = {"key": s.key, "mode": s.mode}
        return out


def flow_key(expression: Expression | None, event: dict[str, Any]) -> str | None:
    """The value of a flow-control ``key`` expression for ``event`` (dict form), as text (a
    string as it is, another value as its compact JSON): None without an expression.

    Raises :class:`~durable_core.InvalidExpressionError` when the expression fails on this
    event (a missing field, a wrong type): the caller decides what that means for its
    option (documented per option)."""
    if expression is None:
        return None
    return idempotency_text(expression.evaluate({"event": event}))


# --------------------------------------------------------------------------- checking


def _text(ms: int) -> str:
    return format_duration(dt.timedelta(milliseconds=ms))


def _ms(td: dt.timedelta) -> int:
    return int(td.total_seconds() * 1000)


class _Checker:
    """Checks the options of one function; every error names the function and the field."""

    def __init__(self, function_id: str) -> None:
        self.function_id = function_id

    def fail(self, field: str, message: str) -> FunctionConfigError:
        return FunctionConfigError(f"function {self.function_id!r}: {field}: {message}",
                                   field=field)

    def instance(self, value: Any, cls: type, field: str, shape: str) -> None:
        if not isinstance(value, cls):
            raise self.fail(field, f"expected {shape}, got {value!r}")

    def int_in(self, value: Any, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, f"must be an int in [{low}, {high}], got {value!r}")
        return value

    def duration(self, value: Any, field: str, low: dt.timedelta, high: dt.timedelta) -> int:
        try:
            td = parse_duration(value, field=field, maximum=high)
        except ValidationError as exc:
            raise FunctionConfigError(f"function {self.function_id!r}: {exc}",
                                      field=field) from None
        if td < low:
            raise self.fail(field, f"{format_duration(td)} is under the minimum of "
                                   f"{format_duration(low)}")
        return _ms(td)

    def expression(self, value: Any, field: str, what: str) -> Expression | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"must be a CEL expression over event ({what}), got "
                                   f"{value!r}")
        try:
            return compile_expression(value, field=field, variables=("event",))
        except InvalidExpressionError as exc:
            raise InvalidExpressionError(f"function {self.function_id!r}: {exc}",
                                         field=field) from None

    def concurrency(self, value: Any) -> tuple[BoundConcurrency, ...]:
        if value is None:
            return ()
        if isinstance(value, int) and not isinstance(value, bool):
            value = [Concurrency(limit=value)]
        elif isinstance(value, Concurrency):
            value = [value]
        elif not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise self.fail("concurrency", "expected an int, Concurrency(...) or a list of "
                                           f"up to {MAX_CONCURRENCY_ENTRIES}, got {value!r}")
        if len(value) > MAX_CONCURRENCY_ENTRIES:
            raise self.fail("concurrency", f"{len(value)} entries is over the limit of "
                                           f"{MAX_CONCURRENCY_ENTRIES}")
        out: list[BoundConcurrency] = []
        for i, c in enumerate(value):
            field = f"concurrency[{i}]"
            self.instance(c, Concurrency, field, "Concurrency(limit, key=..., scope=...)")
            limit = self.int_in(c.limit, f"{field}.limit", 1, MAX_CONCURRENCY_LIMIT)
            if c.scope not in CONCURRENCY_SCOPES:
                raise self.fail(f"{field}.scope", f"must be 'fn' or 'app', got {c.scope!r}")
            expr = self.expression(c.key, f"{field}.key", "e.g. 'event.data.customer_id'")
            if c.scope == "app" and expr is None:
                raise self.fail(f"{field}.key", "scope='app' shares the limit between "
                                                "functions by key value, so it needs a key")
            out.append(BoundConcurrency(i, limit, c.key, c.scope, expr))
        seen = [(c.scope, c.key) for c in out]
        if len(set(seen)) != len(seen):
            raise self.fail("concurrency", "two entries have the same scope and key; "
                                           "keep the one with the lower limit")
        return tuple(out)

    def throttle(self, value: Any) -> BoundThrottle | None:
        if value is None:
            return None
        self.instance(value, Throttle, "throttle", "Throttle(limit, period, burst=, key=)")
        limit = self.int_in(value.limit, "throttle.limit", 1, 10_000)
        burst = self.int_in(value.burst, "throttle.burst", 1, 10_000)
        period = self.duration(value.period, "throttle.period", _SECOND, _WEEK)
        expr = self.expression(value.key, "throttle.key", "e.g. 'event.data.customer_id'")
        return BoundThrottle(limit, period, burst, value.key, expr)

    def rate_limit(self, value: Any) -> BoundRateLimit | None:
        if value is None:
            return None
        self.instance(value, RateLimit, "rate_limit", "RateLimit(limit, period, key=)")
        limit = self.int_in(value.limit, "rate_limit.limit", 1, 10_000)
        period = self.duration(value.period, "rate_limit.period", _SECOND, _DAY)
        expr = self.expression(value.key, "rate_limit.key", "e.g. 'event.data.customer_id'")
        return BoundRateLimit(limit, period, value.key, expr)

    def debounce(self, value: Any) -> BoundDebounce | None:
        if value is None:
            return None
        self.instance(value, Debounce, "debounce", "Debounce(period, key=, timeout=)")
        period = self.duration(value.period, "debounce.period", _SECOND, _WEEK)
        timeout = None
        if value.timeout is not None:
            timeout = self.duration(value.timeout, "debounce.timeout", _SECOND, _WEEK)
            if timeout < period:
                raise self.fail("debounce.timeout", "is shorter than debounce.period, so no "
                                                    "run could ever be pushed back; raise it "
                                                    "or leave it out")
        expr = self.expression(value.key, "debounce.key", "e.g. 'event.data.customer_id'")
        return BoundDebounce(period, value.key, timeout, expr)

    def batch(self, value: Any) -> BoundBatch | None:
        if value is None:
            return None
        self.instance(value, Batch, "batch_events", "Batch(max_size, timeout, key=, if_=)")
        size = self.int_in(value.max_size, "batch_events.max_size", 1, MAX_BATCH_SIZE)
        timeout = self.duration(value.timeout, "batch_events.timeout", _SECOND, _MINUTE)
        key = self.expression(value.key, "batch_events.key", "e.g. 'event.data.customer_id'")
        cond = self.expression(value.if_, "batch_events.if_", "e.g. 'event.data.bulk'")
        return BoundBatch(size, timeout, value.key, value.if_, key, cond)

    def priority(self, value: Any) -> BoundPriority | None:
        if value is None:
            return None
        self.instance(value, Priority, "priority", "Priority(run='<CEL giving seconds>')")
        expr = self.expression(value.run, "priority.run", "giving seconds, e.g. "
                               "\"event.data.plan == 'enterprise' ? 120 : 0\"")
        return BoundPriority(value.run, expr)

    def singleton(self, value: Any) -> BoundSingleton | None:
        if value is None:
            return None
        self.instance(value, Singleton, "singleton", "Singleton(key=, mode='skip'|'cancel')")
        if value.mode not in SINGLETON_MODES:
            raise self.fail("singleton.mode", f"must be 'skip' or 'cancel', got {value.mode!r}")
        expr = self.expression(value.key, "singleton.key", "e.g. 'event.data.user_id'")
        return BoundSingleton(value.key, value.mode, expr)


def bind_flow_control(
    function_id: str,
    *,
    concurrency: Any = None,
    throttle: Any = None,
    rate_limit: Any = None,
    debounce: Any = None,
    batch_events: Any = None,
    priority: Any = None,
    singleton: Any = None,
    idempotency: str | None = None,
    cancel_on: bool = False,
) -> FlowControl:
    """The flow-control options of ``@app.function`` checked and bound. Raises
    :class:`~durable_core.FunctionConfigError` naming the field for a bad value, and for the
    combinations Inngest rejects: ``debounce`` with ``batch_events``, and ``batch_events``
    with ``idempotency``, ``rate_limit``, ``cancel_on``, ``priority`` or ``singleton``
    (``cancel_on`` says whether the function has cancel-on entries)."""
    check = _Checker(function_id)
    flow = FlowControl(
        concurrency=check.concurrency(concurrency),
        throttle=check.throttle(throttle),
        rate_limit=check.rate_limit(rate_limit),
        debounce=check.debounce(debounce),
        batch=check.batch(batch_events),
        priority=check.priority(priority),
        singleton=check.singleton(singleton),
    )
    if flow.batch is not None:
        clashes = {
            "debounce": (flow.debounce is not None,
                         "a debounced run has one event and a batch many"),
            "idempotency": (idempotency is not None,
                            "a batch's run has many events, so no one key"),
            "rate_limit": (flow.rate_limit is not None,
                           "a batch's run has many events; rate-limit the sender instead"),
            "cancel_on": (cancel_on, "a batch's run has many events to match against"),
            "priority": (flow.priority is not None,
                         "a batch's run has many events, so no one priority"),
            "singleton": (flow.singleton is not None,
                          "a batch's run has many events, so no one key"),
        }
        for name, (clash, why) in clashes.items():
            if clash:
                raise check.fail(
                    "batch_events", f"cannot be combined with {name} ({why}; Inngest rejects "
                                    "it too): drop one of them")
    return flow
