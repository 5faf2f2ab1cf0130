"""Loggers that never raise: the engine's and the drivers' own lines must not stop a run or
a worker, whatever handlers, filters and formatters the application installed."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import MutableMapping
from typing import Any

__all__ = ["SafeLogger", "safe_logger"]


class SafeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A :class:`logging.Logger` whose calls swallow what a filter, handler or logger
    raises (a handler's own errors already go to its ``handleError``). ``extra`` passes
    through as given."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Leave the call as it is (``LoggerAdapter`` would replace ``extra``)."""
        return msg, kwargs

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log; never raises."""
        if not self.logger.isEnabledFor(level):
            return
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        with contextlib.suppress(Exception):
            super().log(level, msg, *args, **kwargs)


def safe_logger(name: str) -> SafeLogger:
    """``logging.getLogger(name)`` behind a :class:`SafeLogger`."""
    return SafeLogger(logging.getLogger(name), None)
