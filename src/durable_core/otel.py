"""OpenTelemetry tracing of durable runs (``pip install 'durable-core[otel]'``).

Call :func:`instrument` once per process (a worker's and a sender's) after configuring
OpenTelemetry::

    from durable_core.otel import instrument
    instrument()                       # or instrument(tracer_provider=provider)

Then:

- **a span per run** (``durable.run <function id>``), opened when a worker begins driving
  the run and ended when the run ends, with its status (``completed``, ``failed``,
  ``cancelled``) and error. A run that sleeps or waits is let go by the worker meanwhile:
  each stretch a worker drives it is one span (status ``sleeping`` or ``waiting``), all in
  the same trace: the sender's (below), or for a run started outside any trace (a cron
  tick, an event sent with no span current) a trace of its own whose id is derived from
  the run id (its stretches share a parent span id, derived too, under which no span is
  recorded).
- **a span per step attempt** (``durable.step <step id>``), a child of the run's span,
  around the step body, with the attempt, its outcome and its error; it is the current span
  while the body runs, so spans the body opens (an HTTP client's) nest under it. Steps
  replayed from the journal run no body and make no span.
- **trace context from the sender**: an event sent (``Client.send``, ``Worker.send``,
  ``TestEngine.send``, ``Client.run``) while a span is current carries its W3C
  ``traceparent``, and the runs it starts are children of that span.
- **log records correlated**: run lifecycle lines and ``ctx.logger`` records carry
  ``trace_id`` and ``span_id`` (hex), and ``durable worker --log-format json`` shows them.

Attributes: ``durable.run_id``, ``durable.function_id``, ``durable.step_id``,
``durable.attempt`` (0-based), ``durable.outcome`` (a step's: ``ok`` or ``error``; a run's:
its status), ``error.type``; errors are also recorded as span events (``exception``).

``import durable_core`` never imports OpenTelemetry; only this module does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import (
        NonRecordingSpan,
        Span,
        SpanContext,
        Status,
        StatusCode,
        TraceFlags,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - the extra is part of [dev]
    raise ImportError(
        f"durable_core.otel needs OpenTelemetry ({exc}); install it with: "
        "pip install 'durable-core[otel]'") from exc

from durable_core import __version__
from durable_core.core import _context
from durable_core.engine import _observe

__all__ = ["instrument", "instrumented", "uninstrument"]

_PROPAGATOR = TraceContextTextMapPropagator()


class _Tracing:
    """The :class:`durable_core.engine._observe.Tracing` on OpenTelemetry's API."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self.tracer = trace.get_tracer("durable_core", __version__,
                                       tracer_provider=tracer_provider)
        self.runs: dict[str, Span] = {}

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get("traceparent")

    def run_resumed(self, run_id: str, function_id: str, attempt: int,
                    traceparent: str | None) -> None:
        if run_id in self.runs:
            return
        parent = (_PROPAGATOR.extract({"traceparent": traceparent}) if traceparent
                  else _run_trace(run_id))
        self.runs[run_id] = self.tracer.start_span(
            f"durable.run {function_id}", context=parent,
            attributes={"durable.run_id": run_id, "durable.function_id": function_id,
                        "durable.attempt": attempt})

    def run_left(self, run_id: str, status: str, error: dict[str, Any] | None) -> None:
        span = self.runs.pop(run_id, None)
        if span is None:
            return
        span.set_attribute("durable.outcome", status)
        if error is not None:
            span.set_attribute("error.type", str(error.get("type", "")))
            span.add_event("exception", {"exception.type": str(error.get("type", "")),
                                         "exception.message": str(error.get("message", ""))})
        if status == "failed":
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
        elif status == "completed":
            span.set_status(Status(StatusCode.OK))
        span.end()

    def step_started(self, run_id: str, function_id: str, step_id: str,
                     attempt: int) -> Any:
        parent_span = self.runs.get(run_id)
        parent = (trace.set_span_in_context(parent_span, otel_context.Context())
                  if parent_span is not None else otel_context.Context())
        span = self.tracer.start_span(
            f"durable.step {step_id}", context=parent,
            attributes={"durable.run_id": run_id, "durable.function_id": function_id,
                        "durable.step_id": step_id, "durable.attempt": attempt})
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    def step_ended(self, token: Any, error: BaseException | None) -> None:
        span, attached = token
        try:
            otel_context.detach(attached)
        finally:
            if error is None:
                span.set_attribute("durable.outcome", "ok")
                span.set_status(Status(StatusCode.OK))
            else:
                span.set_attribute("durable.outcome", "error")
                span.set_attribute("error.type", type(error).__name__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()

    def bind(self, call: Callable[[], Any]) -> Callable[[], Any]:
        current = otel_context.get_current()

        def bound() -> Any:
            otel_context.attach(current)  # in the body's own task context, dropped with it
            return call()

        return bound

    def log_ids(self, run_id: str | None) -> dict[str, str] | None:
        span = trace.get_current_span() if run_id is None else self.runs.get(run_id)
        if span is None:
            return None
        sc = span.get_span_context()
        if not sc.is_valid:
            return None
        return {"trace_id": format(sc.trace_id, "032x"), "span_id": format(sc.span_id, "016x")}


def _run_trace(run_id: str) -> otel_context.Context:
    """The parent of the spans of a run started outside any trace (a cron tick, an event
    sent with no span current): a trace of its own, with ids derived from the run id, so
    that every stretch of the run lands in the same trace. No span is recorded under the
    parent id itself."""
    digest = hashlib.sha256(f"durable-run:{run_id}".encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    parent = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=True,
                                          trace_flags=TraceFlags(TraceFlags.SAMPLED)))
    return trace.set_span_in_context(parent, otel_context.Context())


def _describe(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return f"{error.get('type', '')}: {error.get('message', '')}"


def instrument(tracer_provider: Any = None) -> None:
    """Trace runs, steps and sends in this process, with ``tracer_provider`` (default: the
    global one, ``opentelemetry.trace.get_tracer_provider()``). Calling it again replaces
    the provider."""
    tracing = _Tracing(tracer_provider)
    _observe.tracing = tracing
    _context.log_ids = tracing.log_ids


def uninstrument() -> None:
    """Stop tracing (spans still open are dropped unended)."""
    _observe.tracing = None
    _context.log_ids = None


def instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _observe.tracing is not None
