"""Apps, functions and triggers: what the user registers."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Generic

import attrs
from typing_extensions import TypeVar

from durable_core.base._cel import Expression, compile_expression
from durable_core.base._cron import CronSchedule
from durable_core.base._durations import format_duration
from durable_core.base._errors import (
    FunctionConfigError,
    InvalidExpressionError,
    UnknownFunctionError,
    ValidationError,
)
from durable_core.base._events import MAX_EVENT_NAME_BYTES
from durable_core.base._match import condition_keys, event_keys, key_path
from durable_core.base._safelog import safe_logger
from durable_core.base._serde import app_converter, check_text
from durable_core.core._flow import (
    Batch,
    Concurrency,
    Debounce,
    FlowControl,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    bind_flow_control,
)
from durable_core.core._lifecycle import (
    FAILED_EVENT,
    FAILURE_SUFFIX,
    BoundCancelOn,
    BoundTimeouts,
    CancelOn,
    Timeouts,
    bind_cancel_on,
    bind_timeouts,
    idempotency_text,
)

if TYPE_CHECKING:
    from cattrs import Converter

__all__ = ["App", "CronTrigger", "EventTrigger", "Function", "on_cron", "on_event"]

MAX_TRIGGERS = 10
MAX_RETRIES = 20
DEFAULT_RETRIES = 4
FAILURE_HANDLER_RETRIES = 1
"""The retries of a failure handler (``on_failure=``), as Inngest's."""
DEFAULT_MAX_STEPS = 1_000
ABSOLUTE_MAX_STEPS = 10_000
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
ASYNCIO = "asyncio"
TRIO = "trio"
ASYNC_BODIES = (ASYNCIO, TRIO)
"""The values of ``App(async_bodies=...)``."""

FunctionBody = Callable[[Any], Coroutine[Any, Any, Any]]
"""An orchestration function: ``async def fn(ctx: Context)``."""
T = TypeVar("T")
Output = TypeVar("Output", covariant=True, default=Any)
"""What a function returns (``Function[int]`` for ``async def fn(ctx) -> int``)."""


@attrs.frozen
class EventTrigger:
    """Start a run for each event named ``event`` for which the CEL filter ``if_`` is true.

    The filter sees the event as ``event`` (``event.name``, ``event.data``, ``event.id``,
    ``event.ts``). It is compiled when the trigger is created.
    """

    event: str
    if_: str | None = None
    expression: Expression | None = attrs.field(default=None, eq=False, repr=False)

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether an event (in dict form) fires this trigger."""
        if event["name"] != self.event:
            return False
        if self.expression is None:
            return True
        try:
            return self.expression.matches({"event": event})
        except InvalidExpressionError as exc:
            # The event cannot be passed to CEL (nested too deeply, ...): no match, logged.
            _log.warning("%s; the trigger does not match", exc)
            return False


@attrs.frozen
class CronTrigger:
    """Start one run per tick of a 5-field cron schedule (``"TZ=Europe/Paris 0 12 * * 5"``)."""

    cron: str
    catch_up: str = "latest"
    """What happens to ticks missed while no worker ran (see :func:`on_cron`)."""
    schedule: CronSchedule | None = attrs.field(default=None, eq=False, repr=False)


Trigger = EventTrigger | CronTrigger
_log = safe_logger("durable_core.cel")


class _TriggerIndex:
    """The event triggers of one event name, indexed by match key (see
    :mod:`durable_core.base._match`): an event is tested only against the triggers without
    keys and those under one of its own keys. Entries are positions in registration order."""

    __slots__ = ("by_key", "paths", "unkeyed")

    def __init__(self) -> None:
        self.unkeyed: list[int] = []
        self.by_key: dict[str, list[int]] = {}
        self.paths: list[str] = []

    def add(self, position: int, trigger: EventTrigger) -> None:
        keys = condition_keys(trigger.if_, incoming="event")
        if not keys:
            self.unkeyed.append(position)
            return
        for key in keys:
            self.by_key.setdefault(key, []).append(position)
            path = key_path(key)
            if path not in self.paths:
                self.paths.append(path)

    def candidates(self, event: dict[str, Any]) -> list[int]:
        """The positions of the triggers ``event`` may fire, in registration order."""
        picks = list(self.unkeyed)
        by_key = self.by_key
        for key in event_keys(event, self.paths):
            hit = by_key.get(key)
            if hit:
                picks += hit
        picks.sort()
        return picks


def on_event(name: str, *, if_: str | None = None) -> EventTrigger:
    """A trigger on events named ``name``, optionally filtered by a CEL expression over
    ``event`` (for example ``"event.data.amount > 100"``).

    Raises :class:`~durable_core.InvalidExpressionError` for a filter that does not compile.
    """
    if not isinstance(name, str) or not name:
        raise FunctionConfigError(
            f"on_event(name): must be a non-empty event name, got {name!r}", field="trigger.event"
        )
    check_text(name, what="on_event(name)", error=FunctionConfigError, nul=True)
    if len(name.encode("utf-8")) > MAX_EVENT_NAME_BYTES:
        raise FunctionConfigError(
            f"on_event(name): {len(name.encode('utf-8'))} bytes is over the limit of "
            f"{MAX_EVENT_NAME_BYTES} bytes for an event name, so no event could ever match; "
            "use a shorter name",
            field="trigger.event",
        )
    if if_ is not None and not isinstance(if_, str):
        raise FunctionConfigError(
            f"on_event(if_): must be a CEL expression string, got {if_!r}", field="trigger.if_"
        )
    # The filter is compiled when the function is registered, so the error can name it.
    return EventTrigger(event=name, if_=if_)


CATCH_UP_MODES = ("latest", "all", "skip")
"""The values of ``on_cron(..., catch_up=)``."""


def on_cron(cron: str, *, catch_up: str = "latest") -> CronTrigger:
    """A trigger on a 5-field cron schedule with an optional ``TZ=``/``CRON_TZ=`` prefix
    (UTC without one). The schedule is checked when the function is registered; an invalid
    one raises :class:`~durable_core.InvalidCronError` naming the function.

    ``catch_up`` decides what happens to ticks that fell due while no worker ran (a tick
    is *missed* once a later tick is also due, or once it is more than a minute late):
    ``"latest"`` (the default) starts one run, for the most recent due tick; ``"all"`` starts
    one run per missed tick of the last 24 hours, oldest first (older ones are skipped);
    ``"skip"`` starts none, and only a tick at most a minute late runs. Skipped ticks are
    logged (``durable_core.cron``, INFO). Each tick starts at most one run whatever the
    mode, even with several workers."""
    if not isinstance(cron, str):
        raise FunctionConfigError(
            f"on_cron(cron): must be a string such as '0 12 * * 5', got {cron!r}",
            field="trigger.cron",
        )
    if catch_up not in CATCH_UP_MODES:
        raise FunctionConfigError(
            f"on_cron(catch_up): must be one of {', '.join(map(repr, CATCH_UP_MODES))}, "
            f"got {catch_up!r}",
            field="trigger.catch_up",
        )
    return CronTrigger(cron=cron, catch_up=catch_up)


def _bind(trigger: Trigger, function_id: str, index: int) -> Trigger:
    """The trigger with its expression compiled; errors name the function and the field."""
    field = f"trigger[{index}]"
    try:
        if isinstance(trigger, EventTrigger) and trigger.if_ is not None:
            field += ".if_"
            expr = compile_expression(trigger.if_, field=field, variables=("event",))
            return attrs.evolve(trigger, expression=expr)
        if isinstance(trigger, CronTrigger):
            field += ".cron"
            return attrs.evolve(trigger, schedule=CronSchedule.parse(trigger.cron, field=field))
    except ValidationError as exc:
        raise type(exc)(f"function {function_id!r}: {exc}", field=field) from None
    return trigger


@attrs.frozen(eq=False)
class Function(Generic[Output]):
    """A function registered on an :class:`App`; returned by ``@app.function``.

    Pass it (or its id) to ``ctx.step.invoke(function=...)``. Calling it directly is not
    supported: send an event, or invoke it from another function.

    Generic over what the function returns: ``@app.function`` on ``async def fn(ctx) -> int``
    gives a ``Function[int]``, and ``await ctx.step.invoke("x", function=fn)`` is an ``int``
    to a type checker. A bare ``Function`` is ``Function[Any]``.
    """

    id: str
    fn: Callable[[Any], Coroutine[Any, Any, Output]] = attrs.field(repr=False)
    triggers: tuple[Trigger, ...]
    retries: int
    max_steps: int
    app: App = attrs.field(repr=False)
    sandbox: bool = True
    """Whether the determinism sandbox guards this function's orchestration code (see
    docs/determinism.md); ``@app.function(sandbox=False)`` or ``App(sandbox=False)`` turn
    it off."""
    idempotency: str | None = None
    """The CEL expression over ``event`` whose value is the run's idempotency key: at most
    one run per key per 24 h (see docs/lifecycle.md)."""
    idempotency_expression: Expression | None = attrs.field(default=None, eq=False,
                                                            repr=False)
    failure_handler: str | None = None
    """The id of the function ``on_failure=`` registered for this one (``<id>-failure``)."""

    def idempotency_key(self, event: dict[str, Any]) -> str | None:
        """The idempotency key of a run triggered by ``event`` (dict form): the value of
        ``idempotency`` (a string as it is, another value as its JSON text). None without
        ``idempotency``, or when the expression gives null or fails on this event (then the
        run starts without a key, and a warning is logged)."""
        expr = self.idempotency_expression
        if expr is None:
            return None
        try:
            return idempotency_text(expr.evaluate({"event": event}))
        except (InvalidExpressionError, RecursionError, ValueError) as exc:
            _log.warning("function %r: idempotency: %s; the run starts without a key",
                         self.id, exc)
            return None
    cancel_on: tuple[BoundCancelOn, ...] = ()
    """The checked ``cancel_on=`` entries (see :class:`~durable_core.CancelOn`)."""
    timeouts: BoundTimeouts | None = None
    """The checked ``timeouts=`` (see :class:`~durable_core.Timeouts`), or None."""
    flow: FlowControl = attrs.field(factory=FlowControl)
    """The checked flow-control options (concurrency, throttle, rate limit, debounce,
    batching, priority, singleton; see docs/concepts/flow-control.md)."""

    @property
    def event_triggers(self) -> tuple[EventTrigger, ...]:
        """The event triggers of this function."""
        return tuple(t for t in self.triggers if isinstance(t, EventTrigger))

    @property
    def cron_triggers(self) -> tuple[CronTrigger, ...]:
        """The cron triggers of this function."""
        return tuple(t for t in self.triggers if isinstance(t, CronTrigger))

    def describe(self) -> dict[str, Any]:
        """The function's triggers and options as JSON-ready values: what ``durable
        functions`` and the dashboard show. Options at their defaults are included only
        for ``retries``, ``max_steps`` and ``sandbox``."""
        triggers: list[dict[str, Any]] = [{"event": t.event, "if": t.if_}
                                          for t in self.event_triggers]
        triggers += [{"cron": c.cron, "catch_up": c.catch_up} for c in self.cron_triggers]
        options: dict[str, Any] = {"retries": self.retries, "max_steps": self.max_steps,
                                   "sandbox": self.sandbox}
        if self.idempotency is not None:
            options["idempotency"] = self.idempotency
        if self.failure_handler is not None:
            options["on_failure"] = self.failure_handler
        if self.cancel_on:
            options["cancel_on"] = [
                {"event": c.event, "if": c.if_,
                 "timeout": format_duration(dt.timedelta(milliseconds=c.timeout_ms))}
                for c in self.cancel_on]
        if self.timeouts is not None:
            options["timeouts"] = {"start": self.timeouts.start_text,
                                   "finish": self.timeouts.finish_text}
        options.update(self.flow.describe())
        return {"id": self.id, "triggers": triggers, "options": options}


class App:
    """A named collection of durable functions.

    >>> app = App("shop")
    >>> @app.function(id="hello", trigger=on_event("demo/hello"))
    ... async def hello(ctx):
    ...     return "hi"

    ``async_bodies`` names the event loop library the app's ``async def`` step bodies are
    written for: ``"asyncio"`` (the default: most of the async ecosystem, aiohttp, asyncpg,
    httpx) or ``"trio"``. Every worker and ``TestEngine`` runs them on that library (see
    docs/asyncio.md); sync bodies run in threads either way.

    ``logger`` is where ``ctx.logger`` writes (a :class:`logging.Logger` or
    ``LoggerAdapter``; default ``logging.getLogger("durable_core.run")``): ``ctx.logger``
    adds the run's ids to each record and stays silent while a run replays (see
    docs/observability.md).

    ``converter`` is the cattrs converter that stores the app's step and run outputs as JSON
    and rebuilds them into their annotated types (see docs/concepts/types.md): by default
    the app's own, made by :func:`~durable_core.make_converter`. Register hooks for your own
    types on ``app.converter``, or pass a converter you configured.
    """

    def __init__(
        self,
        id: str,
        *,
        sandbox: bool = True,
        async_bodies: str = ASYNCIO,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        converter: Converter | None = None,
    ) -> None:
        if not isinstance(id, str) or not _ID_RE.match(id):
            raise FunctionConfigError(
                f"App(id): {id!r} is not a valid app id; use 1-128 letters, digits and "
                "'_.:/-', starting with a letter or digit",
                field="app.id",
            )
        if async_bodies not in ASYNC_BODIES:
            raise FunctionConfigError(
                f"App({id!r}, async_bodies=...): must be 'asyncio' or 'trio' (the library "
                f"the app's async step bodies are written for), got {async_bodies!r}",
                field="app.async_bodies",
            )
        if not isinstance(sandbox, bool):
            raise FunctionConfigError(
                f"App(sandbox): must be True or False, got {sandbox!r}", field="app.sandbox"
            )
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            raise FunctionConfigError(
                f"App({id!r}, logger=...): must be a logging.Logger (or LoggerAdapter), e.g. "
                f"logging.getLogger('myapp'), got {type(logger).__name__}",
                field="app.logger",
            )
        if converter is not None and not (
            callable(getattr(converter, "structure", None))
            and callable(getattr(converter, "unstructure", None))
        ):
            raise FunctionConfigError(
                f"App({id!r}, converter=...): must be a cattrs Converter (for example "
                f"durable_core.make_converter()), got {type(converter).__name__}",
                field="app.converter",
            )
        self.id = id
        self.logger: logging.Logger | logging.LoggerAdapter[Any] = (
            logging.getLogger("durable_core.run") if logger is None else logger)
        """Where ``ctx.logger`` sends its records (``App(id, logger=...)``; by default the
        logger ``durable_core.run``)."""
        self.sandbox = sandbox
        """The default of ``@app.function(sandbox=...)``: whether the determinism sandbox
        guards orchestration code (on unless turned off)."""
        self.async_bodies = async_bodies
        """The library async step bodies run on: ``"asyncio"`` or ``"trio"``."""
        self.converter: Converter = app_converter() if converter is None else converter
        """The cattrs converter of the app's step and run outputs: register hooks for your
        own types on it (``app.converter.register_structure_hook(Money, ...)``)."""
        self._functions: dict[str, Function[Any]] = {}
        self._by_event: dict[str, list[tuple[Function[Any], EventTrigger]]] = {}
        self._trigger_index: dict[str, _TriggerIndex] = {}

    def function(
        self,
        *,
        id: str,
        trigger: Trigger | Sequence[Trigger] | None = None,
        retries: int = DEFAULT_RETRIES,
        max_steps: int = DEFAULT_MAX_STEPS,
        sandbox: bool | None = None,
        idempotency: str | None = None,
        on_failure: Callable[[Any], Coroutine[Any, Any, Any]] | None = None,
        cancel_on: Sequence[CancelOn] | CancelOn | None = None,
        timeouts: Timeouts | None = None,
        concurrency: int | Concurrency | Sequence[Concurrency] | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        batch_events: Batch | None = None,
        priority: Priority | None = None,
        singleton: Singleton | None = None,
    ) -> Callable[[Callable[[Any], Coroutine[Any, Any, T]]], Function[T]]:
        """Register ``async def fn(ctx)`` as a durable function.

        ``trigger`` is one trigger or a list of up to 10 (``on_event``/``on_cron``); a
        function without triggers can still be invoked. ``retries`` (0-20, default 4) is the
        number of retries of each step, and of orchestration code that raises outside a step.
        ``max_steps`` (default 1,000, at most 10,000) bounds the steps of one run.
        ``sandbox`` (default: the app's, on) makes calls that break replay (the clock,
        randomness, blocking waits, threads, I/O) raise ``DeterminismError`` at once in the
        orchestration code (never in step bodies); see docs/determinism.md.
        ``idempotency`` is a CEL expression over ``event`` (``"event.data.cart_id"``): at
        most one run per value per 24 h from the first run's creation; the triggers it folds
        are recorded (``Client.skipped_triggers``). ``on_failure`` is an
        ``async def handler(ctx)`` registered as function ``<id>-failure`` (retries 1), run
        once when a run of this function fails for good, with the
        ``durable/function.failed`` event as ``ctx.event``. See docs/lifecycle.md.
        ``cancel_on`` (up to 5 :class:`~durable_core.CancelOn`) cancels a run when a matching
        event arrives; ``timeouts`` (:class:`~durable_core.Timeouts`) cancels a run that does
        not start or finish in time (docs/lifecycle.md). Their expressions and
        durations are checked here.
        ``concurrency``, ``throttle``, ``rate_limit``, ``debounce``, ``batch_events``,
        ``priority`` and ``singleton`` are the flow-control options (docs/concepts/flow-control.md),
        checked here too, with the combinations Inngest rejects.
        """
        if not isinstance(id, str) or not _ID_RE.match(id):
            raise FunctionConfigError(
                f"function id {id!r} is invalid; use 1-128 letters, digits and '_.:/-', "
                "starting with a letter or digit",
                field="id",
            )
        if id in self._functions:
            raise FunctionConfigError(
                f"function {id!r}: another function of app {self.id!r} already has this id; "
                "ids must be unique within an app",
                field="id",
            )
        if trigger is None:
            triggers: tuple[Any, ...] = ()
        elif isinstance(trigger, EventTrigger | CronTrigger):
            triggers = (trigger,)
        elif isinstance(trigger, Sequence) and not isinstance(trigger, str):
            triggers = tuple(trigger)
        else:
            raise FunctionConfigError(
                f"function {id!r}: trigger: expected on_event(...), on_cron(...) or a list of "
                f"them, got {type(trigger).__name__}",
                field="trigger",
            )
        if len(triggers) > MAX_TRIGGERS:
            raise FunctionConfigError(
                f"function {id!r}: trigger: {len(triggers)} triggers is over the limit of "
                f"{MAX_TRIGGERS}",
                field="trigger",
            )
        for i, t in enumerate(triggers):
            if not isinstance(t, EventTrigger | CronTrigger):
                raise FunctionConfigError(
                    f"function {id!r}: trigger[{i}]: expected on_event(...) or on_cron(...), "
                    f"got {t!r}",
                    field=f"trigger[{i}]",
                )
        triggers = tuple(_bind(t, id, i) for i, t in enumerate(triggers))
        if isinstance(retries, bool) or not isinstance(retries, int) or not (
            0 <= retries <= MAX_RETRIES
        ):
            raise FunctionConfigError(
                f"function {id!r}: retries: must be an int in [0, {MAX_RETRIES}], got {retries!r}",
                field="retries",
            )
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not (
            1 <= max_steps <= ABSOLUTE_MAX_STEPS
        ):
            raise FunctionConfigError(
                f"function {id!r}: max_steps: must be an int in [1, {ABSOLUTE_MAX_STEPS}], "
                f"got {max_steps!r}",
                field="max_steps",
            )

        if sandbox is not None and not isinstance(sandbox, bool):
            raise FunctionConfigError(
                f"function {id!r}: sandbox: must be True or False, got {sandbox!r}",
                field="sandbox",
            )
        guarded = self.sandbox if sandbox is None else sandbox
        idem_expr: Expression | None = None
        if idempotency is not None:
            if not isinstance(idempotency, str) or not idempotency.strip():
                raise FunctionConfigError(
                    f"function {id!r}: idempotency: must be a CEL expression over event "
                    f"(e.g. 'event.data.cart_id'), got {idempotency!r}",
                    field="idempotency",
                )
            try:
                idem_expr = compile_expression(idempotency, field="idempotency",
                                               variables=("event",))
            except InvalidExpressionError as exc:
                raise InvalidExpressionError(f"function {id!r}: {exc}",
                                             field="idempotency") from None
        failure_id: str | None = None
        if on_failure is not None:
            failure_id = id + FAILURE_SUFFIX
            if not inspect.iscoroutinefunction(on_failure):
                raise FunctionConfigError(
                    f"function {id!r}: on_failure: must be an 'async def handler(ctx)', got "
                    f"{on_failure!r}",
                    field="on_failure",
                )
            if not _ID_RE.match(failure_id):
                raise FunctionConfigError(
                    f"function {id!r}: on_failure: the handler's id {failure_id!r} is over "
                    "128 characters; use a shorter function id",
                    field="on_failure",
                )
            if failure_id in self._functions:
                raise FunctionConfigError(
                    f"function {id!r}: on_failure: the handler's id {failure_id!r} is taken "
                    "by another function of the app; rename that function",
                    field="on_failure",
                )
        bound_cancel_on = bind_cancel_on(cancel_on, id)
        bound_timeouts = bind_timeouts(timeouts, id)
        flow = bind_flow_control(
            id, concurrency=concurrency, throttle=throttle, rate_limit=rate_limit,
            debounce=debounce, batch_events=batch_events, priority=priority,
            singleton=singleton, idempotency=idempotency, cancel_on=bool(bound_cancel_on))

        def register(fn: Callable[[Any], Coroutine[Any, Any, T]]) -> Function[T]:
            if not inspect.iscoroutinefunction(fn):
                raise FunctionConfigError(
                    f"function {id!r}: {getattr(fn, '__name__', fn)!r} must be an "
                    "'async def fn(ctx)'",
                    field="fn",
                )
            if failure_id is not None and failure_id in self._functions:
                raise FunctionConfigError(
                    f"function {id!r}: on_failure: the handler's id {failure_id!r} is taken "
                    "by another function of the app; rename that function",
                    field="on_failure",
                )
            func = Function(
                id=id, fn=fn, triggers=triggers, retries=retries, max_steps=max_steps, app=self,
                sandbox=guarded, idempotency=idempotency, idempotency_expression=idem_expr,
                failure_handler=failure_id, cancel_on=bound_cancel_on, timeouts=bound_timeouts,
                flow=flow,
            )
            self._functions[id] = func
            for t in func.event_triggers:
                entries = self._by_event.setdefault(t.event, [])
                self._trigger_index.setdefault(t.event, _TriggerIndex()).add(len(entries), t)
                entries.append((func, t))
            if on_failure is not None and failure_id is not None:
                # The handler is an ordinary function, triggered by this function's failed
                # events: one event per failed run (its id is derived from the run id), and
                # routing starts one run per event, so the handler runs once per failure.
                self.function(
                    id=failure_id,
                    trigger=on_event(FAILED_EVENT, if_=f"event.data.function_id == '{id}'"),
                    retries=FAILURE_HANDLER_RETRIES, max_steps=max_steps, sandbox=guarded,
                )(on_failure)
            return func

        return register

    @property
    def functions(self) -> dict[str, Function[Any]]:
        """The registered functions by id (a copy)."""
        return dict(self._functions)

    def get(self, function_id: str) -> Function[Any]:
        """The function with this id; :class:`UnknownFunctionError` if there is none."""
        try:
            return self._functions[function_id]
        except KeyError:
            known = ", ".join(sorted(self._functions)) or "none"
            raise UnknownFunctionError(
                f"unknown function {function_id!r} in app {self.id!r}; known: {known}",
                field="function_id",
            ) from None

    def resolve(self, function: Function[Any] | str) -> Function[Any]:
        """A function given as a :class:`Function` or an id."""
        if isinstance(function, Function):
            return function
        return self.get(function)

    def triggered_by(self, event: dict[str, Any]) -> list[Function[Any]]:
        """The functions an event (in dict form) starts, in registration order.

        Filters are looked up by match key: only the triggers whose filter has no indexable
        part, or whose key the event has, are evaluated (the others cannot be true)."""
        out: list[Function[Any]] = []
        name = event["name"]
        entries = self._by_event.get(name)
        if not entries:
            return out
        index = self._trigger_index[name]
        if index.by_key:
            entries = [entries[i] for i in index.candidates(event)]
        for func, trig in entries:
            if trig.matches(event) and func not in out:
                out.append(func)
        return out
