"""durable-core: an embeddable durable-execution engine.

Write ``async def fn(ctx)`` functions made of named steps; the engine makes them survive
crashes, restarts, retries and long waits. See the README for a tutorial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._context import Context, Steps
from ._engine import Engine
from ._errors import (
    DeterminismError,
    DurableError,
    FunctionConfigError,
    InvalidCronError,
    InvalidDurationError,
    InvalidEventError,
    InvalidExpressionError,
    LeaseLostError,
    LimitExceededError,
    NonRetriableError,
    RetryAfterError,
    RunNotFoundError,
    SerializationError,
    StepError,
    StoreError,
    UnknownFunctionError,
    ValidationError,
)
from ._events import Event
from ._function import App, CronTrigger, EventTrigger, Function, on_cron, on_event
from ._gc import tuned_gc
from ._machine import RunMachine
from ._model import ErrorInfo, JournalEntry
from ._serde import converter
from ._store_api import Store
from ._views import RunView, StepView

if TYPE_CHECKING:
    from ._background import BackgroundWorker
    from ._client import Client
    from ._worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "BackgroundWorker",
    "Client",
    "Context",
    "CronTrigger",
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
    "LeaseLostError",
    "LimitExceededError",
    "NonRetriableError",
    "RetryAfterError",
    "RunMachine",
    "RunNotFoundError",
    "RunView",
    "SerializationError",
    "StepError",
    "StepView",
    "Steps",
    "Store",
    "StoreError",
    "UnknownFunctionError",
    "ValidationError",
    "Worker",
    "__version__",
    "converter",
    "on_cron",
    "on_event",
    "tuned_gc",
]


def __getattr__(name: str) -> object:
    # The trio driver and the client are imported lazily so that importing the pure core
    # never imports trio.
    if name == "Worker":
        from ._worker import Worker

        return Worker
    if name == "Client":
        from ._client import Client

        return Client
    if name == "BackgroundWorker":
        from ._background import BackgroundWorker

        return BackgroundWorker
    raise AttributeError(f"module 'durable_core' has no attribute {name!r}")
