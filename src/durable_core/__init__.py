"""durable-core: an embeddable durable-execution engine.

Write ``async def fn(ctx)`` functions made of named steps; the engine makes them survive
crashes, restarts, retries and long waits. See the README for a tutorial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

from durable_core.base._errors import (
    DeterminismError,
    DurableError,
    FunctionConfigError,
    InvalidCronError,
    InvalidDurationError,
    InvalidEventError,
    InvalidExpressionError,
    LimitExceededError,
    NonRetriableError,
    RetryAfterError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    SerializationError,
    StepError,
    StoreError,
    StoreLostError,
    UnknownFunctionError,
    UsageError,
    ValidationError,
)
from durable_core.base._events import Event, Sent
from durable_core.base._serde import converter, make_converter
from durable_core.core._context import Context, Step, Steps
from durable_core.core._flow import (
    Batch,
    Concurrency,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)
from durable_core.core._function import App, CronTrigger, EventTrigger, Function, on_cron, on_event
from durable_core.core._lifecycle import CancelOn, Timeouts
from durable_core.core._machine import RunMachine
from durable_core.core._model import ErrorInfo, JournalEntry
from durable_core.drivers._gc import tuned_gc
from durable_core.drivers._loading import open_store
from durable_core.drivers._logs import JsonLogFormatter, TextLogFormatter, configure_logging
from durable_core.engine._engine import Engine
from durable_core.engine._views import AttemptView, RunView, StepView
from durable_core.store import SkippedTrigger, Store

if _TYPE_CHECKING:
    from durable_core.drivers._async import AsyncClient, AsyncioWorker
    from durable_core.drivers._background import BackgroundWorker
    from durable_core.drivers._client import Client, RunHandle
    from durable_core.drivers._worker import Worker

__version__ = "0.1.0"
"""The package version; pyproject.toml reads it from here (the one source)."""

__all__ = [
    "App",
    "AsyncClient",
    "AsyncioWorker",
    "AttemptView",
    "BackgroundWorker",
    "Batch",
    "CancelOn",
    "Client",
    "Concurrency",
    "Context",
    "CronTrigger",
    "Debounce",
    "DeterminismError",
    "DurableError",
    "Engine",
    "ErrorInfo",
    "Event",
    "EventTrigger",
    "Function",
    "FunctionConfigError",
    "InvalidCronError",
    "InvalidDurationError",
    "InvalidEventError",
    "InvalidExpressionError",
    "JournalEntry",
    "JsonLogFormatter",
    "LimitExceededError",
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "RunFailedError",
    "RunHandle",
    "RunMachine",
    "RunNotFoundError",
    "RunTimeoutError",
    "RunView",
    "Sent",
    "SerializationError",
    "Singleton",
    "SkippedTrigger",
    "Step",
    "StepError",
    "StepView",
    "Steps",
    "Store",
    "StoreError",
    "StoreLostError",
    "TextLogFormatter",
    "Throttle",
    "Timeouts",
    "UnknownFunctionError",
    "UsageError",
    "ValidationError",
    "Worker",
    "__version__",
    "configure_logging",
    "converter",
    "make_converter",
    "on_cron",
    "on_event",
    "open_store",
    "tuned_gc",
]


def __getattr__(name: str) -> object:
    # The trio driver and the client are imported lazily so that importing the pure core
    # never imports trio.
    if name == "Worker":
        from durable_core.drivers._worker import Worker

        return Worker
    if name == "Client":
        from durable_core.drivers._client import Client

        return Client
    if name == "RunHandle":
        from durable_core.drivers._client import RunHandle

        return RunHandle
    if name in ("AsyncClient", "AsyncioWorker"):
        from durable_core.drivers import _async

        return getattr(_async, name)
    if name == "BackgroundWorker":
        from durable_core.drivers._background import BackgroundWorker

        return BackgroundWorker
    raise AttributeError(f"module 'durable_core' has no attribute {name!r}")
