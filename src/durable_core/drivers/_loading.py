"""Loading an application by its ``package.module:app`` spec (the CLI and worker processes)."""

from __future__ import annotations

import importlib
import os
import sys

from durable_core.core._function import App

_CWD_ENTRIES = ("", ".")


def _cwd_last() -> None:
    """Put the working directory at the end of ``sys.path`` (adding it if missing).

    The app usually lives in the working directory, so it must be importable from there;
    but a file there must not replace a library (a ``./stores.py`` would otherwise be
    imported instead of durable-core's ``stores``, a ``./trio.py`` instead of trio). Last
    on the path, the directory provides what nothing installed provides, and nothing else.
    ``python -m`` and ``python -c`` put it first; that is undone here too."""
    cwd = os.getcwd()
    kept = [p for p in sys.path if p not in _CWD_ENTRIES and p != cwd]
    sys.path[:] = [*kept, cwd]


def load_app(spec: str) -> App:
    """Import ``package.module:app`` and return the :class:`App` it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"durable: expected 'package.module:app', got {spec!r}")
    _cwd_last()
    module = importlib.import_module(module_name)
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise SystemExit(f"durable: {spec!r} is not a durable_core.App")
    return app
