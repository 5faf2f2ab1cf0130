"""What orchestration code sees: ``ctx`` and the ``ctx.step`` primitives.

``ctx.step.*`` return awaitables whose ``__await__`` yields a request object to the core
(the :class:`~durable_core.RunMachine` drives the coroutine with ``send``/``throw``). The
core answers memoized requests at once and turns new ones into commands.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from durable_core.base._backoff import stable_unit
from durable_core.base._cel import Expression, compile_expression
from durable_core.base._durations import from_ms, parse_duration, parse_instant
from durable_core.base._errors import (
    InvalidDurationError,
    InvalidEventError,
    UsageError,
    ValidationError,
)
from durable_core.base._events import MAX_EVENT_NAME_BYTES, Event
from durable_core.base._serde import check_text, json_problem
from durable_core.core._function import Function
from durable_core.core._lifecycle import SYSTEM_EVENTS
from durable_core.core._model import StepKind, derive_uuid
from durable_core.core._sandbox import Unsafe

__all__ = ["Context", "Step", "Steps"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
P = ParamSpec("P")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")
T6 = TypeVar("T6")
_R = TypeVar("_R", bound="StepRequest")
_D = TypeVar("_D")

# Set by drivers while a step body runs, to ``(run_id, attempt, step_id)``, so ``ctx.attempt``
# inside a body reads the attempt of that step, and a ``ctx.step.*`` call inside a body can
# name it.
current_attempt: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "durable_core_current_attempt", default=None
)
_in_body = current_attempt.get

_MAX_WAIT = dt.timedelta(days=366)
MAX_PATCH_ID_LENGTH = 256
"""The longest patch id ``ctx.patched`` takes (characters)."""


class RunHost(Protocol):
    """What the context reads of the machine that drives it (the run machine implements it)."""

    @property
    def run_id(self) -> str: ...
    @property
    def function(self) -> Function[Any]: ...
    @property
    def run_attempt(self) -> int: ...
    @property
    def clock_ms(self) -> int: ...
    @property
    def replaying(self) -> bool: ...
    def patch(self, patch_id: str, deprecated: bool) -> bool: ...


class Step(Protocol[T_co]):
    """What a ``ctx.step.*`` call returns: a step not started yet. ``await`` it for its
    result (of type ``T_co``), or pass several to :meth:`Context.gather`.

    For type annotations only (``steps: list[Step[int]] = [ctx.step.run(...) ...]``); the
    objects are created by ``ctx.step.*``, never by user code. A coroutine is not a step:
    ``ctx.gather(fetch(1))`` is a type error (wrap it: ``ctx.step.run("fetch-1", fetch, 1)``).
    """

    @property
    def id(self) -> str:
        """The step id given to ``ctx.step.*``."""
        ...

    def __await__(self) -> Generator[Any, Any, T_co]:
        """Start the step (or read its recorded result) and wait for it."""
        ...


def _check_id(step_id: object, method: str) -> str:
    if not isinstance(step_id, str) or not step_id:
        raise ValidationError(
            f"ctx.step.{method}(id): a step id must be a non-empty string, got {step_id!r}; "
            "name each step, e.g. ctx.step.run('fetch-user', fetch_user)",
            field="step.id",
        )
    if not step_id.isascii() or "\x00" in step_id:
        # A lone surrogate cannot be stored by SQLite, a NUL by PostgreSQL: refuse it here,
        # where the run fails at once, instead of at every commit of the step's memo.
        check_text(step_id, what=f"ctx.step.{method}(id)", error=ValidationError, nul=True)
    return step_id


def _check_event_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidEventError(f"{where}: an event name is required", field=where)
    check_text(name, what=where, error=InvalidEventError, nul=True)
    if len(name) > MAX_EVENT_NAME_BYTES // 4 and len(name.encode("utf-8")) > MAX_EVENT_NAME_BYTES:
        raise InvalidEventError(
            f"{where}: {len(name.encode('utf-8'))} bytes is over the limit of "
            f"{MAX_EVENT_NAME_BYTES} bytes for an event name; use a shorter name",
            field=where,
        )


def _check_patch_id(patch_id: object, method: str, run_id: str) -> None:
    if (not isinstance(patch_id, str) or not patch_id
            or len(patch_id) > MAX_PATCH_ID_LENGTH):
        got = (f"a str of {len(patch_id)} characters" if isinstance(patch_id, str) and patch_id
               else repr(patch_id))
        raise ValidationError(
            f"ctx.{method}(patch_id): a patch id must be a non-empty string of at most "
            f"{MAX_PATCH_ID_LENGTH} characters, got {got}; name the change, e.g. "
            f"ctx.{method}('tax-v2')",
            field="patch_id",
        )
    if not patch_id.isascii() or "\x00" in patch_id:
        try:
            check_text(patch_id, what=f"ctx.{method}(patch_id)", error=ValidationError, nul=True)
        except ValidationError as bad:
            raise ValidationError(str(bad), field="patch_id") from None
    cur = current_attempt.get()
    if cur is not None and cur[0] == run_id:
        raise ValidationError(
            f"ctx.{method}({patch_id!r}) was called inside a step body; ask for patches in "
            "the orchestration code (around the ctx.step calls), not in a body",
            field="patch_id",
        )


class StepRequest:
    """Base of the requests a ``ctx.step.*`` awaitable yields to the core. Don't subclass."""

    __slots__ = ("__weakref__", "id", "position")
    kind: str = ""

    def __init__(self, step_id: str) -> None:
        self.id = step_id
        self.position = -1  # set by the core when it assigns the step a position

    def __await__(self) -> Generator[Any, Any, Any]:
        if self.position >= 0:  # the core took this request already
            raise ValidationError(
                f"step {self.id!r} was awaited twice; call ctx.step.* again for a new step",
                field="step.id",
            )
        return (yield self)


class RunRequest(StepRequest):
    """``ctx.step.run``."""

    __slots__ = ("args", "fn", "kwargs")
    kind = StepKind.RUN

    def __init__(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.id = step_id
        self.position = -1
        self.fn = fn
        self.args = args
        self.kwargs = kwargs


class SleepRequest(StepRequest):
    """``ctx.step.sleep`` / ``ctx.step.sleep_until``: exactly one of the two is set."""

    __slots__ = ("duration", "until")
    kind = StepKind.SLEEP

    def __init__(
        self, step_id: str, duration: dt.timedelta | None, until: dt.datetime | None
    ) -> None:
        super().__init__(step_id)
        self.duration = duration
        self.until = until


class WaitRequest(StepRequest):
    """``ctx.step.wait_for_event``."""

    __slots__ = ("event", "expression", "if_", "timeout", "timeout_at")
    kind = StepKind.WAIT_FOR_EVENT

    def __init__(
        self,
        step_id: str,
        event: str,
        timeout: dt.timedelta | None,
        timeout_at: dt.datetime | None,
        if_: str | None,
        expression: Expression | None,
    ) -> None:
        super().__init__(step_id)
        self.event = event
        self.timeout = timeout
        self.timeout_at = timeout_at
        self.if_ = if_
        self.expression = expression


class InvokeRequest(StepRequest):
    """``ctx.step.invoke``."""

    __slots__ = ("data", "function", "timeout")
    kind = StepKind.INVOKE

    def __init__(
        self, step_id: str, function: Function[Any], data: dict[str, Any], timeout: dt.timedelta
    ) -> None:
        super().__init__(step_id)
        self.function = function
        self.data = data
        self.timeout = timeout


class SendRequest(StepRequest):
    """``ctx.step.send_event``."""

    __slots__ = ("events",)
    kind = StepKind.SEND_EVENT

    def __init__(self, step_id: str, events: tuple[Event, ...]) -> None:
        super().__init__(step_id)
        self.events = events


class GatherRequest:
    """``ctx.gather``: several step requests started together."""

    __slots__ = ("awaited", "requests")

    def __init__(self, requests: tuple[StepRequest, ...]) -> None:
        self.requests = requests
        self.awaited = False

    def __await__(self) -> Generator[Any, Any, Any]:
        if self.awaited:
            raise ValidationError("a ctx.gather(...) was awaited twice", field="gather")
        self.awaited = True
        return (yield self)


class Steps:
    """The step primitives, reached as ``ctx.step``. Each returns an awaitable; await it."""

    __slots__ = ("_host", "_made")

    def __init__(self, host: RunHost) -> None:
        # The machine, not the context: a context <-> steps cycle would keep every finished
        # run (its machine, journal and events) in memory until a full garbage collection.
        self._host = host
        self._made: list[Any] = []
        """Every step created, for the machine's check that each is awaited (it takes the
        list: ``RunMachine._review``)."""

    def _nested(self, step_id: str, method: str) -> None:
        """Raise the error for a step primitive called inside a step body of this run."""
        cur = current_attempt.get()
        if cur is None or cur[0] != self._host.run_id:
            return  # another run's body (a test driving an engine from a body): not ours
        body = repr(cur[2]) if len(cur) > 2 else "(unknown)"
        raise UsageError(
            f"run {cur[0]}: step {step_id!r} (ctx.step.{method}) was called inside the body "
            f"of step {body}; steps do not nest: a body does the work and returns its "
            f"result, and the function's code calls the next step (`await "
            f"ctx.step.{method}({step_id!r}, ...)` after `await ctx.step.run({body}, ...)`)"
        )

    @overload
    def run(
        self, id: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Step[T]: ...
    @overload
    def run(self, id: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Step[T]: ...
    def run(self, id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Step[Any]:
        """Run ``fn(*args, **kwargs)`` (sync or async) once, durably; returns its result.

        The result is recorded as JSON: on replay the recorded value is returned without
        calling ``fn``. If ``fn`` has a return annotation ``-> T`` (an attrs class, a
        dataclass, a datetime, ``Decimal``, ``bytes``, a set, a union cattrs can tell
        apart...), the value is stored as a ``T`` and rebuilt into one by the app's
        converter, live and on replay; without one it must be plain JSON. A value that
        would come back different is refused: the step fails with a
        :class:`~durable_core.SerializationError` saying what to annotate (see
        docs/concepts/types.md). Failures are retried per the function's ``retries``; when
        they run out, a :class:`~durable_core.StepError` is raised here.

        Typed: the awaited value has the type ``fn`` returns (``T`` for ``def fn() -> T`` and
        for ``async def fn() -> T``), and ``args``/``kwargs`` are checked against ``fn``'s
        parameters.
        """
        if type(id) is not str or not id or not id.isascii() or "\x00" in id:
            _check_id(id, "run")
        if not callable(fn):
            raise ValidationError(
                f"ctx.step.run({id!r}, fn): fn must be callable, got {type(fn).__name__}",
                field="step.fn",
            )
        if _in_body() is not None:
            self._nested(id, "run")
        req = RunRequest(id, fn, args, kwargs)
        self._made.append(req)
        return req

    def sleep(self, id: str, duration: str | float | dt.timedelta, /) -> Step[None]:
        """Pause the run for ``duration`` (``"1h30m"``, seconds, or a timedelta; at most
        366 days). Durable: the run resumes after a restart at the same instant."""
        _check_id(id, "sleep")
        td = parse_duration(duration, field=f"step.sleep({id!r}).duration")
        return self._made_one(SleepRequest(id, td, None), "sleep")

    def sleep_until(self, id: str, until: str | dt.datetime, /) -> Step[None]:
        """Pause the run until ``until`` (an aware datetime or an ISO-8601 string with an
        offset). A time in the past returns at once."""
        _check_id(id, "sleep_until")
        field = f"step.sleep_until({id!r}).until"
        when = parse_instant(until, field=field)
        # The same bound as ``sleep``: at most 366 days after the run's clock (what
        # ``ctx.now()`` returns here, the same on every replay).
        latest = from_ms(self._host.clock_ms) + _MAX_WAIT
        if when > latest:
            raise InvalidDurationError(
                f"{field}: {when.isoformat()} is more than {_MAX_WAIT.days} days after the "
                f"run's current time ({from_ms(self._host.clock_ms).isoformat()}); "
                "sleep at most 366 days at a time (loop for longer)",
                field=field,
            )
        return self._made_one(SleepRequest(id, None, when), "sleep_until")

    def wait_for_event(
        self,
        id: str,
        /,
        *,
        event: str,
        timeout: str | float | dt.timedelta | dt.datetime,
        if_: str | None = None,
    ) -> Step[Event | None]:
        """Wait for the first event named ``event`` sent after this step starts and for
        which the CEL expression ``if_`` (over ``event``, the trigger, and ``async``, the
        candidate) is true. Returns the :class:`Event`, or ``None`` after ``timeout``."""
        _check_id(id, "wait_for_event")
        _check_event_name(event, "step.wait_for_event.event")
        field = f"step.wait_for_event({id!r}).timeout"
        if isinstance(timeout, dt.datetime):
            td, at = None, parse_instant(timeout, field=field)
        else:
            td, at = parse_duration(timeout, field=field, maximum=_MAX_WAIT), None
        expression = None
        if if_ is not None:
            expression = compile_expression(
                if_, field=f"step.wait_for_event({id!r}).if_", variables=("event", "async")
            )
        return self._made_one(WaitRequest(id, event, td, at, if_, expression), "wait_for_event")

    @overload
    def invoke(
        self,
        id: str,
        /,
        *,
        function: Function[T],
        data: dict[str, Any] | None = None,
        timeout: str | float | dt.timedelta = ...,
    ) -> Step[T]: ...
    @overload
    def invoke(
        self,
        id: str,
        /,
        *,
        function: str,
        data: dict[str, Any] | None = None,
        timeout: str | float | dt.timedelta = ...,
    ) -> Step[Any]: ...
    def invoke(
        self,
        id: str,
        /,
        *,
        function: Function[Any] | str,
        data: dict[str, Any] | None = None,
        timeout: str | float | dt.timedelta = dt.timedelta(days=366),
    ) -> Step[Any]:
        """Start ``function`` as a child run with ``data`` as its event data and wait for it.
        Returns the child's output; raises :class:`~durable_core.StepError` if the child
        fails or does not finish within ``timeout`` (default one year).

        Typed: invoking a :class:`~durable_core.Function` ``Function[T]`` (what
        ``@app.function`` returns for ``async def fn(ctx) -> T``) gives a ``T``, rebuilt
        from the child's recorded output by its app's converter (live and on replay);
        invoking by id gives ``Any`` to a type checker (the value is rebuilt all the same)."""
        _check_id(id, "invoke")
        func = self._host.function.app.resolve(function)
        payload = {} if data is None else data
        if not isinstance(payload, dict):
            raise ValidationError(
                f"ctx.step.invoke({id!r}, data=...): data must be a dict, got "
                f"{type(payload).__name__}",
                field="step.invoke.data",
            )
        problem = json_problem(payload)
        if problem is not None:
            raise InvalidEventError(
                f"ctx.step.invoke({id!r}, data=...): {problem}", field="step.invoke.data"
            )
        td = parse_duration(timeout, field=f"step.invoke({id!r}).timeout", maximum=_MAX_WAIT)
        return self._made_one(InvokeRequest(id, func, payload, td), "invoke")

    def send_event(self, id: str, events: Event | Sequence[Event], /) -> Step[list[str]]:
        """Send one event or a list, exactly once per run (memoized). Returns their ids;
        events without an ``id`` get one that is stable across replays."""
        _check_id(id, "send_event")
        batch = (events,) if isinstance(events, Event) else tuple(events)
        for i, e in enumerate(batch):
            if not isinstance(e, Event):
                raise InvalidEventError(
                    f"ctx.step.send_event({id!r}): item {i} is {type(e).__name__}, not an Event",
                    field="step.send_event.events",
                )
            if e.name in SYSTEM_EVENTS:
                raise InvalidEventError(
                    f"ctx.step.send_event({id!r}): item {i} is named {e.name!r}, a system "
                    "event only the engine emits when a run ends; send your own event name",
                    field="step.send_event.events",
                )
        return self._made_one(SendRequest(id, batch), "send_event")

    def _made_one(self, req: _R, method: str) -> _R:
        if _in_body() is not None:
            self._nested(req.id, method)
        self._made.append(req)
        return req


class Context:
    """The run's view of itself, passed to every durable function as ``ctx``.

    ``events`` are the triggering events, a tuple in arrival order: the batch of a function
    with ``batch_events=``, else the one event that started the run (as Inngest's
    ``events``); ``event`` is the first of them. ``run_id`` is the run, ``step`` the step
    primitives, ``logger`` a replay-aware logger. ``events``, ``now()``, ``random()`` and
    ``uuid4()`` are the same when the run is replayed.
    """

    __slots__ = ("_machine", "_random_count", "event", "events", "logger", "run_id", "step")

    def __init__(self, machine: RunHost, events: Sequence[Event]) -> None:
        self._machine = machine
        self.run_id: str = machine.run_id
        self.events: tuple[Event, ...] = tuple(events)
        self.event: Event = self.events[0]
        self.step = Steps(machine)
        self.logger: logging.LoggerAdapter[logging.Logger] = RunLogger(machine)
        self._random_count = 0

    @property
    def function_id(self) -> str:
        """The id of the running function."""
        return self._machine.function.id

    @property
    def unsafe(self) -> Unsafe:
        """Explicit ways out of the determinism sandbox:
        ``with ctx.unsafe.nondeterministic("why"):`` lifts it for a block."""
        return Unsafe(self._machine)

    @property
    def attempt(self) -> int:
        """0-based attempt number: of the current step inside a step body, else of the
        run's orchestration code (re-entries after it raised outside a step)."""
        cur = current_attempt.get()
        if cur is not None and cur[0] == self.run_id:
            attempt: int = cur[1]
            return attempt
        return self._machine.run_attempt

    def event_data(self, cls: type[_D]) -> _D:
        """The triggering event's data as a ``cls`` (an attrs class, a dataclass, a pydantic
        model...), built by the app's converter (``app.converter``): the typed counterpart
        of ``ctx.event.data``. Raises :class:`~durable_core.SerializationError` when the
        data does not fit ``cls`` (orchestration code that raises is retried, then fails)."""
        return self.event.data_as(cls, self._machine.function.app.converter)

    def now(self) -> dt.datetime:
        """A deterministic "current" time (aware, UTC): the time of the latest step result
        the code has seen, or the run's start (or, after orchestration code raised and was
        re-entered, the time of that retry). The same on every replay."""
        return from_ms(self._machine.clock_ms)

    def random(self) -> float:
        """A deterministic float in [0, 1), the same sequence on every replay."""
        self._random_count += 1
        return stable_unit(self.run_id, "random", self._random_count)

    def uuid4(self) -> uuid.UUID:
        """A deterministic UUID, the same sequence on every replay."""
        self._random_count += 1
        return derive_uuid(self.run_id, "uuid", self._random_count)

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new branch of a code change named ``patch_id``::

            if ctx.patched("tax-v2"):
                total = await ctx.step.run("tax", compute_tax_v2, order)
            else:
                total = await ctx.step.run("tax", compute_tax, order)

        True for a run that reaches this call past the end of its journal (a new run, or a
        running one that had not got this far): the run records a ``patched`` marker and
        answers True ever after. False for a run replaying steps it recorded before the
        change without the marker: it ran the old code there and must keep following it.
        The same id asked again in the run gives the same answer. Once no run without the
        marker is running, replace the call with :meth:`deprecate_patch`; once no run that
        recorded the marker is running, remove that too (``durable replay`` tells when).
        """
        _check_patch_id(patch_id, "patched", self.run_id)
        return self._machine.patch(patch_id, False)

    def deprecate_patch(self, patch_id: str) -> None:
        """The second stage of removing ``ctx.patched(patch_id)``: every running run takes
        the new branch now, so the code keeps only it and says so here. Runs that recorded
        the marker still replay (this call stands for the ``patched`` they asked), and new
        runs record a deprecated marker, which code without the call accepts: the call can
        be removed once no run that recorded the (not deprecated) marker is running."""
        _check_patch_id(patch_id, "deprecate_patch", self.run_id)
        self._machine.patch(patch_id, True)

    @overload
    def gather(self, s1: Step[T1], /) -> Awaitable[tuple[T1]]: ...
    @overload
    def gather(self, s1: Step[T1], s2: Step[T2], /) -> Awaitable[tuple[T1, T2]]: ...
    @overload
    def gather(
        self, s1: Step[T1], s2: Step[T2], s3: Step[T3], /
    ) -> Awaitable[tuple[T1, T2, T3]]: ...
    @overload
    def gather(
        self, s1: Step[T1], s2: Step[T2], s3: Step[T3], s4: Step[T4], /
    ) -> Awaitable[tuple[T1, T2, T3, T4]]: ...
    @overload
    def gather(
        self, s1: Step[T1], s2: Step[T2], s3: Step[T3], s4: Step[T4], s5: Step[T5], /
    ) -> Awaitable[tuple[T1, T2, T3, T4, T5]]: ...
    @overload
    def gather(
        self,
        s1: Step[T1], s2: Step[T2], s3: Step[T3], s4: Step[T4], s5: Step[T5], s6: Step[T6], /,
    ) -> Awaitable[tuple[T1, T2, T3, T4, T5, T6]]: ...
    @overload
    def gather(self, steps: Sequence[Step[T]], /) -> Awaitable[tuple[T, ...]]: ...
    @overload
    def gather(self, *steps: Step[T]) -> Awaitable[tuple[T, ...]]: ...
    def gather(self, *steps: Any) -> Awaitable[tuple[Any, ...]]:
        """Run several steps in parallel; returns their results as a tuple, in order.

        Pass the steps as arguments (``ctx.gather(a, b)``) or as one list or tuple
        (``ctx.gather(steps)``). Waits for every step to settle; if any failed for good,
        raises the :class:`~durable_core.StepError` of the first one (in argument order).

        Typed: ``await ctx.gather(a, b)`` with ``a: Step[int]`` and ``b: Step[str]`` is a
        ``tuple[int, str]`` (up to six steps as arguments; more, or a list of
        ``Step[T]``, give ``tuple[T, ...]``)."""
        items: Iterable[Any] = steps[0] if len(steps) == 1 and isinstance(
            steps[0], list | tuple
        ) else steps
        requests = tuple(items)
        for i, r in enumerate(requests):
            if not isinstance(r, StepRequest):
                raise ValidationError(
                    f"ctx.gather: argument {i} is {type(r).__name__}; pass ctx.step.* calls "
                    "(not awaited)",
                    field="gather",
                )
        return GatherRequest(requests)


log_ids: Callable[[str | None], dict[str, str] | None] | None = None
"""Set by tracing (:mod:`durable_core.otel`): the ``trace_id``/``span_id`` to put on a
``ctx.logger`` record of a run (None: the current span's)."""


class RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``ctx.logger``: the app's logger (``App(id, logger=...)``, by default
    ``durable_core.run``) that stays silent while its run is replaying, so a record is
    emitted once, not again each time the journal is replayed.

    Records carry ``run_id``, ``function_id``, ``step_id`` (inside a step body, the step's;
    None in orchestration code) and ``attempt`` (0-based: the step's attempt inside a body,
    else the orchestration code's) as ``extra`` fields, plus ``trace_id``/``span_id`` when
    tracing is on. Logging never raises into the run: a handler, filter or logger that
    fails is ignored."""

    def __init__(self, machine: RunHost) -> None:
        super().__init__(machine.function.app.logger, None)
        self._machine = machine

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Add the run's ids to the record's ``extra`` (the caller's own keys kept)."""
        m = self._machine
        cur = current_attempt.get()
        if cur is not None and cur[0] == m.run_id:
            step_id, attempt = cur[2], cur[1]
        else:
            step_id, attempt = None, m.run_attempt
        extra = {"run_id": m.run_id, "function_id": m.function.id, "step_id": step_id,
                 "attempt": attempt}
        hook = log_ids
        if hook is not None:
            with contextlib.suppress(Exception):
                # In a body, the step's span is the current one; else the run's.
                extra.update(hook(None if step_id is not None else m.run_id) or {})
        given = kwargs.get("extra")
        if given:
            extra = {**given, **extra}
        kwargs["extra"] = extra
        return msg, kwargs

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log unless the run is replaying; never raises."""
        if self._machine.replaying:
            return
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # the caller's line, not ours
        with contextlib.suppress(Exception):
            if not self.isEnabledFor(level):
                return
            call: MutableMapping[str, Any] = kwargs
            msg, call = self.process(msg, call)
            target: Any = self.logger
            while isinstance(target, logging.LoggerAdapter):
                # The app's logger is an adapter: its own processing, with the run's ids
                # kept (a plain LoggerAdapter would replace ``extra`` with its own).
                ours = call["extra"]
                msg, call = target.process(msg, call)
                call["extra"] = {**(call.get("extra") or {}), **ours}
                target = target.logger
            target.log(level, msg, *args, **call)
