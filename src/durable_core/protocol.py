"""The low-level protocol for embedders: drive durable functions from your own loop.

Most programs never need this module: :class:`~durable_core.Worker`,
:class:`~durable_core.BackgroundWorker` and :class:`~durable_core.testing.TestEngine` drive
everything. Import it to write your own driver (another event loop, a job queue, a
serverless handler). ``docs/embedding.md`` walks through a driver's duties with two complete
reference drivers (a plain synchronous loop and an asyncio loop).

There are two levels:

- :class:`Engine` runs many runs against a :class:`~durable_core.store.Store`. Its one loop,
  shared by every driver of this package, is::

      work = engine.poll(now)                  # cron, routing, claims; all committed
      for step in work.steps:                  # then, for each step (and the steps after it)
          if engine.is_current(step):
              value, error = run_step_body(step)   # or await run_step_body_async(step)
              more = engine.finish_step(step, value, error, now)
      # idle: sleep until engine.next_deadline(now), or until new events arrive

- :class:`RunMachine` is the pure state machine of one run: feed it *inputs*
  (:class:`RunStarted`, :class:`StepCompleted`, :class:`StepFailed`, :class:`TimerFired`,
  :class:`SignalReceived`, :class:`CancelRequested`) with :meth:`RunMachine.handle`; it
  returns *commands*, persistence first (:class:`AppendJournal`, :class:`SetRunState`,
  :class:`RegisterWait`, :class:`ClearWait`, :class:`EmitEvents`, :class:`StartRun`,
  :class:`SendSignal`, :class:`CompleteRun`, :class:`FailRun`, :class:`CancelRun`), then
  :class:`ExecuteStep`. The engine is the reference for carrying them out.

Times are integers of milliseconds since the Unix epoch, always passed in (nothing here
reads a clock). Payloads are JSON text.

Stability
---------
Every name in ``__all__`` is public API, covered by semantic versioning. Until 1.0, a change
to any of them (a name, field or method removed or renamed, or a meaning changed) is listed in
the CHANGELOG and, where a compatible path exists, the old spelling keeps working for one
minor release with a ``DeprecationWarning``. Adding a name, a method, a field with a default,
or a new input or command class is not a breaking change: a driver that drives
:class:`RunMachine` itself should fail loudly on a command type it does not know, so that an
upgrade cannot silently skip one. The stored text values (run statuses, step kinds, journal
ops, signal kinds) and the journal format are stable: what one version wrote, the next reads.
Every other module whose path has a ``_`` component is private and changes without notice.

Inputs (fed to :meth:`RunMachine.handle`; immutable, don't subclass)
---------------------------------------------------------------------
:class:`RunStarted` ``(now)``
    Enter (or re-enter, after a rebuild) the run's code. ``now``: the time of the claim.
:class:`StepCompleted` ``(position, attempt, value, now)``
    The body of the ``run`` step at ``position`` (the step's index in discovery order),
    dispatched as attempt ``attempt`` (0-based), returned ``value`` (JSON-serializable).
:class:`StepFailed` ``(position, attempt, error, now)``
    The same body raised ``error`` (an exception instance); the machine retries it or
    fails the step.
:class:`TimerFired` ``(now)``
    ``now`` has reached the machine's :meth:`RunMachine.next_deadline` (sleeps, wait and
    invoke timeouts, retry backoffs). Firing early is harmless: nothing not due happens.
:class:`SignalReceived` ``(signal, now)``
    ``signal`` (a :class:`Signal`) arrived among the run's signals.
:class:`CancelRequested` ``(reason, now, boundary)``
    Someone asked to cancel the run; ``reason`` becomes the error message. A cancel-on
    event or timeout reason (see ``durable_core.core._lifecycle.cancel_cause``), or
    ``boundary`` True (default False: found as a body's result arrives), waits for the
    step bodies in flight: their results are recorded, then the run ends; a request ends
    it at once.

Commands (returned by the machine; carry them out in order)
-----------------------------------------------------------
:class:`AppendJournal` ``(run_id, entries)``
    Persist ``entries`` (:class:`JournalEntry`) at the end of run ``run_id``'s journal,
    fenced by the run's lease.
:class:`SetRunState` ``(run_id, status, wake_at)``
    Persist the run's non-terminal ``status`` and ``wake_at``: when (ms) it next needs
    :class:`TimerFired`, or None.
:class:`ExecuteStep` ``(run_id, position, step_id, attempt, fn, args, kwargs)``
    Run ``fn(*args, **kwargs)`` (use :func:`run_step_body`) and answer with
    :class:`StepCompleted` or :class:`StepFailed` carrying the same ``position`` and
    ``attempt``. ``step_id`` is the step's id with its repeat suffix (``fetch:1``). Never start
    it before the persistence commands returned with it are durable.
:class:`RegisterWait` ``(run_id, position, event, if_, trigger_event, expires_at)``
    Route events named ``event`` that match the CEL expression ``if_`` (None: any), with
    ``event`` bound to ``trigger_event`` (the run's triggering event, JSON) and ``async`` to
    the candidate, to the wait at ``position`` until ``expires_at``. Only events appended
    after the wait was registered match (see :func:`wait_matches`). Idempotent. Positions
    ``-1000`` to ``-1004`` are the run's ``cancel_on`` listeners: a match cancels the run.
:class:`ClearWait` ``(run_id, position)``
    The wait at ``position`` is resolved: stop routing events to it.
:class:`EmitEvents` ``(events)``
    Append ``events`` (JSON texts, ids and timestamps filled in) to the event log.
:class:`StartRun` ``(run_id, function_id, event, parent_run_id)``
    Create run ``run_id`` of ``function_id`` triggered by ``event`` (JSON), idempotently
    (the child of an invoke, whose parent is ``parent_run_id``).
:class:`SendSignal` ``(run_id, signal)``
    Store ``signal`` for run ``run_id`` (with its signals) and wake it.
:class:`CompleteRun` ``(run_id, output)``
    The run returned ``output`` (JSON text): persist status ``completed``.
:class:`FailRun` ``(run_id, error)``
    The run failed for good with ``error`` (:class:`ErrorInfo`): persist status ``failed``.
:class:`CancelRun` ``(run_id, error, reason)``
    The run was cancelled: persist status ``cancelled`` with ``error`` (type ``Cancelled``,
    the reason as its message); ``reason`` (``request``, ``cancel_on``, ``timeout``) goes into
    its ``durable/function.cancelled`` event.

A run that ends (``CompleteRun``, ``FailRun``, ``CancelRun``) emits its system events with
the same commit: ``Engine.end_events`` builds them as ``CommitBatch.run_events``, which a
store appends only if the run's end is accepted (see docs/lifecycle.md).

Enums (str-valued: JSON and the stores keep their text)
-------------------------------------------------------
:class:`RunStatus` (``queued``, ``running``, ``sleeping``, ``waiting``, and the terminal
``completed``, ``failed``, ``cancelled``: :data:`TERMINAL_STATUSES`), :class:`StepKind`
(``run``, ``sleep``, ``wait_for_event``, ``invoke``, ``send_event``), :class:`JournalOp`
(``scheduled``, ``attempt_failed``, ``completed``, ``run_attempt_failed``, ``run_ended``,
``patched``, ``started``)
and :class:`SignalKind` (``event``, ``invoke``, ``cancel``); each member is documented.

Records
-------
:class:`JournalEntry` ``(seq, op, position, step_id, kind, ts, data)``
    One journal record: ``seq`` its dense index; ``op`` a :class:`JournalOp` (each member
    documents its ``data``); ``position`` the step's index (-1 for run-level entries);
    ``step_id`` with repeat suffix; ``kind`` a :class:`StepKind` (``""`` for run-level
    entries); ``ts`` the ``now`` of the input that led to it; ``data`` JSON text.
:class:`Signal` ``(kind, key, payload, position)``
    A durable message to one run, kept with its signals until consumed. ``kind`` a
    :class:`SignalKind`: ``"event"`` (the event ``key`` matched the wait at ``position``;
    ``payload`` is the event's JSON),
    ``"invoke"`` (the child run ``key`` ended; ``payload`` holds ``output`` or ``error``) or
    ``"cancel"`` (``payload`` is the reason).
:class:`ErrorInfo` ``(type, message, traceback)``
    A failure as stored: the exception's type name, its message and its traceback (None
    for an exception never raised; at most 16 KiB, cut in the middle with a marker;
    ignored when errors are compared).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable
from typing import Any

from durable_core.base._errors import ValidationError
from durable_core.core._context import current_attempt
from durable_core.core._machine import RunMachine
from durable_core.core._model import (
    TERMINAL_STATUSES,
    AppendJournal,
    CancelRequested,
    CancelRun,
    ClearWait,
    CompleteRun,
    EmitEvents,
    ErrorInfo,
    ExecuteStep,
    FailRun,
    JournalEntry,
    JournalOp,
    RegisterWait,
    RunStarted,
    RunStatus,
    SendSignal,
    SetRunState,
    Signal,
    SignalKind,
    SignalReceived,
    StartRun,
    StepCompleted,
    StepFailed,
    StepKind,
    TimerFired,
)
from durable_core.core._model import Command as _Command
from durable_core.core._model import Input as _Input
from durable_core.engine._engine import CRON_EVENT as _CRON_EVENT
from durable_core.engine._engine import Engine, Plan, Work, wait_matches

__all__ = [
    "CRON_EVENT",
    "TERMINAL_STATUSES",
    "AppendJournal",
    "CancelRequested",
    "CancelRun",
    "ClearWait",
    "Command",
    "CompleteRun",
    "EmitEvents",
    "Engine",
    "ErrorInfo",
    "ExecuteStep",
    "FailRun",
    "Input",
    "JournalEntry",
    "JournalOp",
    "Plan",
    "RegisterWait",
    "RunMachine",
    "RunStarted",
    "RunStatus",
    "SendSignal",
    "SetRunState",
    "Signal",
    "SignalKind",
    "SignalReceived",
    "StartRun",
    "StepCompleted",
    "StepFailed",
    "StepKind",
    "StepResult",
    "TimerFired",
    "Work",
    "run_step_body",
    "run_step_body_async",
    "wait_matches",
]

Input = _Input
"""Any input a :class:`RunMachine` accepts (the union of the input classes)."""

Command = _Command
"""Any command a :class:`RunMachine` returns (the union of the command classes)."""

CRON_EVENT = _CRON_EVENT
"""The name of the event that starts a run of a cron-triggered function
(``data``: ``cron``, the expression, and ``scheduledAt``, the tick as ISO-8601)."""

StepResult = tuple[Any, "Exception | None"]
"""What a step body did, ``(value, error)``: what it returned and None, or None and what it
raised. Pass both to :meth:`Engine.finish_step` (or feed :class:`StepCompleted` /
:class:`StepFailed` to a :class:`RunMachine`)."""

_FunctionType = types.FunctionType
_CO_COROUTINE = inspect.CO_COROUTINE
_set_attempt = current_attempt.set
_reset_attempt = current_attempt.reset
# Return types that are surely not awaitable (skips inspect.isawaitable, once per step).
_PLAIN: frozenset[type] = frozenset({int, float, str, bool, type(None), dict, list, tuple})


def _asyncio_run(fn: Callable[[], Awaitable[Any]]) -> Any:
    import asyncio

    async def main() -> Any:
        return await fn()

    return asyncio.run(main())


def run_step_body(
    step: ExecuteStep,
    *,
    run_async: Callable[[Callable[[], Awaitable[Any]]], Any] | None = None,
) -> StepResult:
    """Run a step body synchronously, with ``ctx.attempt`` inside it reading
    ``step.attempt``; never raises for what the body raises (an ``Exception`` becomes
    ``(None, error)``; ``KeyboardInterrupt`` and the like propagate).

    An ``async def`` body is run to completion by ``run_async(afn)``, which is given a
    zero-argument async function (default: a fresh :func:`asyncio.run`; pass e.g.
    ``trio.run``). A sync body that returns an awaitable is an error (pass the async function
    itself). Call it from the thread that should run the body (e.g. inside
    ``asyncio.to_thread``)."""
    fn = step.fn
    token = _set_attempt((step.run_id, step.attempt, step.step_id))
    try:
        if (fn.__code__.co_flags & _CO_COROUTINE if type(fn) is _FunctionType
                else inspect.iscoroutinefunction(fn)):
            args, kwargs = step.args, step.kwargs
            value = (run_async or _asyncio_run)(lambda: fn(*args, **kwargs))
        else:
            value = fn(*step.args, **step.kwargs)
            if type(value) not in _PLAIN and inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()  # never awaited: don't warn about it
                raise ValidationError(
                    f"step {step.step_id!r}: the body returned an awaitable; pass the async "
                    "function itself, not the result of calling it",
                    field="step.fn",
                )
        return value, None
    except Exception as exc:
        return None, exc
    finally:
        _reset_attempt(token)


async def run_step_body_async(step: ExecuteStep) -> StepResult:
    """Run a step body in the calling task of any event loop (asyncio, trio, ...), with
    ``ctx.attempt`` right. An ``async def`` body is awaited; a sync body is called directly
    (it blocks the loop: run long sync bodies in a thread with :func:`run_step_body`
    instead), and an awaitable it returns is awaited. Never raises for what the body raises
    (see :func:`run_step_body`)."""
    fn = step.fn
    token = _set_attempt((step.run_id, step.attempt, step.step_id))
    try:
        value = fn(*step.args, **step.kwargs)
        if type(value) not in _PLAIN and inspect.isawaitable(value):
            value = await value
        return value, None
    except Exception as exc:
        return None, exc
    finally:
        _reset_attempt(token)
